"""Background jobs: a SQLite job store and a manager that runs each job in its own process.

Why a process: index builds and training hold the GIL and the CPU for minutes; in a subprocess
they never stall searches, can be cancelled by a signal, and die with nothing half-written in the
server. The store is the single source of truth for job state; the worker process writes its
progress and outcome into it, the manager alone moves a job to a final state.

States: queued -> running -> succeeded | failed | cancelled (queued -> cancelled too).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

logger = logging.getLogger("service.jobs")

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
RESTART_REASON = "server restarted while the job was running"
QUEUED_RESTART_REASON = "server restarted before the job started"
SHUTDOWN_REASON = "server stopped while the job was running"

# Work functions by job kind, as "module:function" resolved inside the worker process (see service.work).
DEFAULT_WORK_FUNCTIONS: Mapping[str, str] = {
    "index_build": "service.work:build_index",
    "train": "service.work:train",
    "evaluate": "service.work:evaluate",
}

# The worker must not inherit the server's secret.
_SECRET_ENV = ("SBIR_ADMIN_TOKEN", "SBIR_ADMIN_TOKEN_FILE")
_TERMINATE_GRACE_S = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    params TEXT NOT NULL,
    result TEXT,
    error TEXT,
    log_path TEXT,
    pid INTEGER,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created_at);
"""


@dataclass(frozen=True)
class Job:
    """One job row. progress in [0, 1]; result set on success, error on failure/cancel."""

    id: str
    kind: str
    state: str
    progress: float
    message: str
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    log_path: str | None
    pid: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def log_tail(self, lines: int = 20, max_bytes: int = 16384) -> list[str]:
        """The last `lines` lines of the job's log (at most `max_bytes` read from its end)."""
        if not self.log_path:
            return []
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - max_bytes))
                text = handle.read().decode("utf-8", errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]


class JobStore:
    """Jobs in SQLite (WAL, so the server reads while a worker writes). One short-lived connection
    per call keeps it safe from any thread and any process; every write is one transaction."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(_SCHEMA)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=30.0)
        connection.row_factory = sqlite3.Row
        try:
            with connection:  # commit on success, roll back on error
                yield connection
        finally:
            connection.close()

    def create(self, kind: str, params: Mapping[str, Any]) -> Job:
        job_id = uuid.uuid4().hex
        with self._connection() as connection:
            connection.execute(
                "INSERT INTO jobs (id, kind, state, params, created_at) VALUES (?, ?, 'queued', ?, ?)",
                (job_id, kind, json.dumps(dict(params)), time.time()),
            )
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        with self._connection() as connection:
            row = connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job_from_row(row)

    def list(self, state: str | None = None, kind: str | None = None, limit: int = 100) -> list[Job]:
        """Newest first."""
        query, args = "SELECT * FROM jobs WHERE 1 = 1", cast(list[Any], [])
        if state is not None:
            query, args = query + " AND state = ?", [*args, state]
        if kind is not None:
            query, args = query + " AND kind = ?", [*args, kind]
        with self._connection() as connection:
            rows = connection.execute(query + " ORDER BY created_at DESC LIMIT ?", (*args, limit)).fetchall()
        return [_job_from_row(row) for row in rows]

    def next_queued(self) -> Job | None:
        with self._connection() as connection:
            row = connection.execute(
                "SELECT * FROM jobs WHERE state = 'queued' ORDER BY created_at LIMIT 1"
            ).fetchone()
        return None if row is None else _job_from_row(row)

    def counts(self) -> dict[str, int]:
        """Jobs per state, every state present (zeros included)."""
        with self._connection() as connection:
            rows = connection.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        counts = dict.fromkeys(STATES, 0)
        counts.update({row[0]: row[1] for row in rows})
        return counts

    def mark_running(self, job_id: str, log_path: str) -> bool:
        with self._connection() as connection:
            cursor = connection.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, log_path = ? WHERE id = ? AND state = 'queued'",
                (time.time(), log_path, job_id),
            )
        return cursor.rowcount == 1

    def set_pid(self, job_id: str, pid: int) -> None:
        with self._connection() as connection:
            connection.execute("UPDATE jobs SET pid = ? WHERE id = ?", (pid, job_id))

    def set_progress(self, job_id: str, progress: float, message: str = "") -> None:
        """Called by the worker; a job no longer running (cancelled) is left alone."""
        with self._connection() as connection:
            connection.execute(
                "UPDATE jobs SET progress = ?, message = ? WHERE id = ? AND state = 'running'",
                (min(1.0, max(0.0, float(progress))), message, job_id),
            )

    def set_outcome(self, job_id: str, *, result: Mapping[str, Any] | None = None, error: str | None = None) -> None:
        """Called by the worker before it exits; the manager turns it into a final state."""
        with self._connection() as connection:
            connection.execute(
                "UPDATE jobs SET result = ?, error = ? WHERE id = ? AND state = 'running'",
                (None if result is None else json.dumps(dict(result)), error, job_id),
            )

    def finish(self, job_id: str, state: str, *, error: str | None = None,
               result: Mapping[str, Any] | None = None) -> bool:
        """Move a queued or running job to a final state; False when it already was final."""
        if state not in FINAL_STATES:
            raise ValueError(f"{state!r} is not a final state")
        progress_sql = ", progress = 1.0" if state == "succeeded" else ""
        with self._connection() as connection:
            cursor = connection.execute(
                f"UPDATE jobs SET state = ?, error = ?, result = COALESCE(?, result), finished_at = ?{progress_sql} "
                "WHERE id = ? AND state IN ('queued', 'running')",
                (state, error, None if result is None else json.dumps(dict(result)), time.time(), job_id),
            )
        return cursor.rowcount == 1

    def fail_unfinished(self) -> int:
        """At startup: jobs a previous server left running or queued can never finish; say why."""
        now = time.time()
        with self._connection() as connection:
            running = connection.execute(
                "UPDATE jobs SET state = 'failed', error = ?, finished_at = ? WHERE state = 'running'",
                (RESTART_REASON, now),
            ).rowcount
            queued = connection.execute(
                "UPDATE jobs SET state = 'failed', error = ?, finished_at = ? WHERE state = 'queued'",
                (QUEUED_RESTART_REASON, now),
            ).rowcount
        return running + queued


def _job_from_row(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"], kind=row["kind"], state=row["state"], progress=float(row["progress"]),
        message=row["message"], params=json.loads(row["params"]),
        result=None if row["result"] is None else json.loads(row["result"]), error=row["error"],
        log_path=row["log_path"], pid=row["pid"], created_at=row["created_at"], started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


class JobInputError(Exception):
    """Raised by a work function for a problem a person can fix (bad gallery, missing file): the
    job fails with the message alone, no traceback. Defined here, not in the worker's `__main__`
    module, so work functions and the worker see the same class."""


class JobFinishedError(Exception):
    """Cancel asked for a job that is already in a final state."""


# A success hook runs in the server after the worker succeeded (e.g. swap the new index in); what
# it returns is merged into the job's result, what it raises fails the job.
SuccessHook = Callable[[Job], Mapping[str, Any] | None]


class JobManager:
    """Runs queued jobs, at most `max_concurrent` at once, each as `python -m service.job_worker`."""

    def __init__(
        self,
        store: JobStore,
        *,
        max_concurrent: int = 1,
        work_functions: Mapping[str, str] = DEFAULT_WORK_FUNCTIONS,
        log_dir: str | os.PathLike[str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.store = store
        self.max_concurrent = max_concurrent
        self.work_functions = dict(work_functions)
        self.log_dir = Path(log_dir) if log_dir is not None else store.path.parent / "job-logs"
        self.python = python
        self._hooks: dict[str, SuccessHook] = {}
        self._processes: dict[str, subprocess.Popen] = {}
        self._watchers: dict[str, threading.Thread] = {}
        self._lock = threading.RLock()
        self._stopping = False

    def on_success(self, kind: str, hook: SuccessHook) -> None:
        self._hooks[kind] = hook

    def start(self) -> None:
        """Fail what a previous server left unfinished, then run anything queued since."""
        with self._lock:
            self._stopping = False  # an app may be started again after a shutdown (tests do)
        interrupted = self.store.fail_unfinished()
        if interrupted:
            logger.warning("marked %d unfinished job(s) from a previous run as failed", interrupted)
        self._pump()

    def submit(self, kind: str, params: Mapping[str, Any]) -> Job:
        if kind not in self.work_functions:
            raise ValueError(f"no work function for job kind {kind!r}")
        job = self.store.create(kind, params)
        self._pump()
        return self.store.get(job.id) or job

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job (its process group is terminated). KeyError if unknown."""
        with self._lock:
            job = self.store.get(job_id)
            if job is None:
                raise KeyError(job_id)
            if not self.store.finish(job_id, "cancelled", error="cancelled by request"):
                raise JobFinishedError(f"job {job_id} is already {job.state}")
            process = self._processes.get(job_id)
        if process is not None:
            threading.Thread(target=_terminate, args=(process,), name=f"sbir-cancel-{job_id[:8]}",
                             daemon=True).start()
        return self.store.get(job_id) or job

    def running_count(self) -> int:
        with self._lock:
            return len(self._processes)

    def shutdown(self, timeout: float = _TERMINATE_GRACE_S) -> None:
        """Stop running workers and record why; queued jobs stay queued and fail at next start."""
        with self._lock:
            self._stopping = True
            processes = dict(self._processes)
        for job_id, process in processes.items():
            self.store.finish(job_id, "failed", error=SHUTDOWN_REASON)
            _terminate(process, timeout)
        for watcher in list(self._watchers.values()):
            watcher.join(timeout)

    # Internals -----------------------------------------------------------------------------

    def _pump(self) -> None:
        with self._lock:
            while not self._stopping and len(self._processes) < self.max_concurrent:
                job = self.store.next_queued()
                if job is None:
                    return
                self._launch(job)

    def _launch(self, job: Job) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{job.id}.log"
        if not self.store.mark_running(job.id, str(log_path)):
            return  # cancelled between listing and launching
        command = [self.python, "-m", "service.job_worker", "--db", str(self.store.path), "--job-id", job.id,
                   "--work", self.work_functions[job.kind]]
        try:
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=_worker_environment(), start_new_session=True,  # its own group: cancel kills its children
                )
        except OSError as error:
            self.store.finish(job.id, "failed", error=f"could not start the worker: {error}")
            return
        self.store.set_pid(job.id, process.pid)
        self._processes[job.id] = process
        watcher = threading.Thread(target=self._watch, args=(job.id, process), name=f"sbir-job-{job.id[:8]}",
                                   daemon=True)
        self._watchers[job.id] = watcher
        watcher.start()
        logger.info("job %s (%s) started as pid %d", job.id, job.kind, process.pid)

    def _watch(self, job_id: str, process: subprocess.Popen) -> None:
        returncode = process.wait()
        try:
            self._finalise(job_id, returncode)
        except Exception:  # the store itself failing must still free the slot below
            logger.exception("finalising job %s failed", job_id)
        finally:
            with self._lock:
                self._processes.pop(job_id, None)
                self._watchers.pop(job_id, None)
            self._pump()

    def _finalise(self, job_id: str, returncode: int) -> None:
        job = self.store.get(job_id)
        if job is None or job.finished:
            return  # cancelled or shut down: that state stands
        if returncode != 0 or job.error is not None:
            error = job.error or f"the worker exited with status {returncode}"
            self.store.finish(job_id, "failed", error=error)
            logger.warning("job %s failed: %s", job_id, error)
            return
        result = dict(job.result or {})
        hook = self._hooks.get(job.kind)
        if hook is not None:
            try:
                result.update(hook(job) or {})
            except Exception as error:  # e.g. the new index does not open: the job failed, say why
                logger.exception("success hook of job %s failed", job_id)
                self.store.finish(job_id, "failed", error=f"finishing the job failed: {type(error).__name__}: {error}")
                return
        self.store.finish(job_id, "succeeded", result=result)
        logger.info("job %s succeeded", job_id)


def _worker_environment() -> dict[str, str]:
    # The worker is `python -m service.job_worker` of the installed package: no PYTHONPATH of our own.
    environment = {name: value for name, value in os.environ.items() if name not in _SECRET_ENV}
    environment["PYTHONUNBUFFERED"] = "1"  # progress lines reach the log as they happen
    return environment


def _terminate(process: subprocess.Popen, grace: float = _TERMINATE_GRACE_S) -> None:
    """SIGTERM the worker's process group, SIGKILL it if still alive after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)  # pgid == pid: the worker leads its own session
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue
