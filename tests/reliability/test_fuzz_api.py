"""Schemathesis over the app's own OpenAPI schema: every operation, a small deterministic number of
generated cases each, no 5xx and every response conforming to its documented schema.
`benchmarks/fuzz_api.py` runs the same with hundreds of cases per operation."""

from __future__ import annotations

import pytest
import schemathesis

from tests.reliability.fuzz_target import fuzz_app, fuzz_operation
from tests.support.api import ADMIN_TOKEN, running

CASES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def fuzzed_app(workspace, tmp_path_factory):
    app = fuzz_app(workspace.root, workspace.checkpoint, workspace.index_dir, tmp_path_factory.mktemp("fuzz"),
                   ADMIN_TOKEN)
    with running(app) as client:  # lifespan run once, model and index loaded
        yield app, client


@pytest.fixture(scope="module")
def api_schema(fuzzed_app):
    # From the dict: loading it over ASGI would run (and end) the app's lifespan, closing the index.
    return schemathesis.openapi.from_dict(fuzzed_app[0].openapi())


# Listed rather than collected from the schema (schemathesis' pytest plugin does not run on this
# pytest); the first test keeps the list equal to the schema's operations.
OPERATIONS = [
    ("POST", "/search"), ("GET", "/images/{image_id}"), ("GET", "/explain/{query_id}/{image_id}"),
    ("GET", "/index"), ("POST", "/index/build"), ("POST", "/index/activate"), ("GET", "/jobs"), ("GET", "/jobs/{job_id}"),
    ("DELETE", "/jobs/{job_id}"), ("POST", "/train"), ("POST", "/evaluate"), ("GET", "/healthz"),
    ("GET", "/readyz"), ("GET", "/metrics"),
]


def test_every_operation_of_the_schema_is_fuzzed(fuzzed_app):
    documented = {(method.upper(), path) for path, methods in fuzzed_app[0].openapi()["paths"].items()
                  for method in methods}
    assert documented == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_server_error_and_responses_match_the_schema(api_schema, fuzzed_app, method, path):
    fuzz_operation(api_schema, fuzzed_app[1], method, path, CASES_PER_OPERATION, ADMIN_TOKEN)
