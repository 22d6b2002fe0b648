"""Entry point of a job's process: `python -m service.job_worker --db DB --job-id ID --work MOD:FUNC`.

Runs one work function `func(params: dict, report: Callable[[float, str], None]) -> dict` and
records its outcome in the job store; the server (service.jobs.JobManager) turns that into the
job's final state. Exit status: 0 success, 1 failure, 4 the server that started it went away.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from service.jobs import JobInputError, JobStore

WorkFunction = Callable[[dict[str, Any], Callable[[float, str], None]], dict[str, Any] | None]


def resolve_work_function(spec: str) -> WorkFunction:
    """"package.module:function" -> the function."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"work function must be 'module:function', got {spec!r}")
    return getattr(importlib.import_module(module_name), function_name)


def _exit_with_parent(poll_seconds: float = 1.0) -> None:
    """Exit when the server that started this worker dies (we get re-parented), so a killed
    server leaves no orphan build behind; the restarted server marks the job failed."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent:
                print("the server went away; stopping", flush=True)
                os._exit(4)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run(store: JobStore, job_id: str, work: str) -> int:
    job = store.get(job_id)
    if job is None:
        print(f"job {job_id} is not in {store.path}", file=sys.stderr)
        return 1

    def report(progress: float, message: str = "") -> None:
        store.set_progress(job_id, progress, message)
        print(f"[progress {min(1.0, max(0.0, progress)):.3f}] {message}", flush=True)

    print(f"job {job_id}: {job.kind} with {job.params}", flush=True)
    report(0.0, "starting")
    try:
        result = resolve_work_function(work)(dict(job.params), report) or {}
    except JobInputError as error:
        store.set_outcome(job_id, error=str(error))
        print(f"failed: {error}", flush=True)
        return 1
    except Exception as error:  # any other failure: full traceback in the log, one line in the job
        traceback.print_exc()
        store.set_outcome(job_id, error=f"{type(error).__name__}: {error}")
        return 1
    report(1.0, "done")
    store.set_outcome(job_id, result=result)
    print(f"result: {result}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.job_worker")
    parser.add_argument("--db", required=True)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--work", required=True, help="module:function")
    args = parser.parse_args(argv)
    _exit_with_parent()
    return run(JobStore(args.db), args.job_id, args.work)


if __name__ == "__main__":
    sys.exit(main())
