"""The app that schemathesis fuzzes, shared by the test suite and benchmarks/fuzz_api.py.

Jobs are real job-manager rows and real worker processes, but every kind runs a no-op work
function: fuzzing is about the HTTP layer, and a generated gallery path that happens to exist
must not start a minutes-long index build.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from service.jobs import JobManager, JobStore
from service.main import create_app
from service.settings import Settings

NO_OP_WORK = {kind: "tests.reliability.fuzz_target:no_op" for kind in ("index_build", "train", "evaluate")}


def no_op(params, report):
    report(1.0, "fuzzing: nothing done")
    return {"fuzzed": True}


def fuzz_app(data_root: Path, checkpoint: Path, index_dir: Path, state: Path, admin_token: str) -> FastAPI:
    settings = Settings(index_dir=index_dir, checkpoint=checkpoint, index_root=state / "indexes",
                        data_roots=[data_root], jobs_db=state / "jobs.sqlite3", admin_token=admin_token, device="cpu")
    jobs = JobManager(JobStore(settings.jobs_db_path()), max_concurrent=1, work_functions=NO_OP_WORK)
    return create_app(settings, job_manager=jobs)


CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def fuzz_operation(api_schema, client: TestClient, method: str, path: str, cases: int,
                   token: str | None, seed: int | None = None) -> int:
    """Send up to `cases` generated cases of one operation through `client` (an app whose lifespan is
    already running: schemathesis' own ASGI transport would run the lifespan, and so close the
    index, around every call) and check each response; raises on the first failing check.
    seed None: hypothesis' derandomized (fixed) sequence. Returns the number of requests sent
    (fewer than `cases` when the operation's inputs are fewer, e.g. no parameters at all)."""
    sent = [0]
    operation = api_schema[path][method]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    options = dict(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    if seed is None:
        options["derandomize"] = True

    @given(case=operation.as_strategy())
    @settings(**options)
    def run(case) -> None:
        # With the token the cases reach the handlers behind the admin guard, not just its 401.
        request = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
        request.pop("cookies", None)
        if request.get("files"):
            request["files"] = [(name, _file_part(part)) for name, part in request["files"]]
        response = client.request(**request)
        sent[0] += 1
        response.request.read()  # a multipart body is a stream; the checks read the request back
        case.validate_response(response, checks=CHECKS)

    if seed is not None:
        from hypothesis import seed as hypothesis_seed

        run = hypothesis_seed(seed)(run)
    run()
    return sent[0]


def _file_part(part):
    """Schemathesis builds requests-style file parts whose content may be any JSON value; httpx
    wants bytes (requests would send str() of it too)."""
    if not isinstance(part, tuple):
        return ("upload", _as_bytes(part))
    return (part[0], _as_bytes(part[1]), *part[2:])


def _as_bytes(content) -> bytes:
    if isinstance(content, bytes):
        return content
    return content.encode() if isinstance(content, str) else str(content).encode()
