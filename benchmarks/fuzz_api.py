"""Fuzz the HTTP API from its own OpenAPI schema with schemathesis, hundreds of cases per operation.

    python -m benchmarks.fuzz_api --cases 300 --seed 1

The test suite runs the same (`tests/reliability/test_fuzz_api.py`) at 25 cases per operation.
The app is the real one over a real zse-tiny checkpoint and index built in a temporary folder; jobs
run real workers with a no-op work function (see tests/reliability/fuzz_target.py). Checks: no 5xx,
every response conforms to its documented schema and content type. Exit status 1 when any
operation fails; each failure is printed with a curl line that reproduces it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ADMIN_TOKEN = "fuzz-admin-token"


def build_workspace(root: Path) -> tuple[Path, Path]:
    """A small gallery, a zse-tiny checkpoint and an fp16 index under `root`: (checkpoint, index dir)."""
    import torch

    import indexer
    import models
    from tests.support.datasets import write_gallery

    write_gallery(root / "gallery", 8, seed=0)
    torch.manual_seed(0)
    checkpoint = root / "zse-tiny.pt"
    models.save_checkpoint(models.build_model("zse-tiny"), checkpoint)
    index_dir = indexer.build(root / "gallery", checkpoint, root / "indexes" / "main", tokens="fp16", device="cpu",
                              num_workers=0, progress=False)
    return checkpoint, Path(index_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz_api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=300, help="generated cases per operation (default 300)")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: derandomized)")
    parser.add_argument("--operation", action="append", default=None,
                        help="only this operation, e.g. 'POST /search' (repeatable)")
    parser.add_argument("--no-token", action="store_true", help="fuzz without the admin token")
    parser.add_argument("--out", type=Path, default=None, help="write a JSON summary here")
    args = parser.parse_args(argv)

    import schemathesis

    from tests.reliability.fuzz_target import fuzz_app, fuzz_operation
    from tests.reliability.test_fuzz_api import OPERATIONS
    from tests.support.api import running

    selected = [op for op in OPERATIONS if args.operation is None or f"{op[0]} {op[1]}" in args.operation]
    summary: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="sbir-fuzz-") as folder:
        root = Path(folder)
        checkpoint, index_dir = build_workspace(root)
        (root / "state").mkdir()
        app = fuzz_app(root, checkpoint, index_dir, root / "state", ADMIN_TOKEN)
        with running(app) as client:
            schema = schemathesis.openapi.from_dict(app.openapi())
            for method, path in selected:
                name = f"{method} {path}"
                started = time.perf_counter()
                try:
                    sent = fuzz_operation(schema, client, method, path, args.cases,
                                          None if args.no_token else ADMIN_TOKEN, seed=args.seed)
                except Exception as error:  # a failing check or a crash: report it and go on
                    summary[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"}
                else:
                    summary[name] = {"ok": True, "requests": sent}
                summary[name]["seconds"] = round(time.perf_counter() - started, 1)
                print(f"{'ok  ' if summary[name]['ok'] else 'FAIL'} {name}: {summary[name].get('requests', '-')} "
                      f"requests ({summary[name]['seconds']} s)", flush=True)
                if not summary[name]["ok"]:
                    print(summary[name]["error"], flush=True)
    if args.out is not None:
        from benchmarks._report import finish, header

        report = header("fuzz_api", argv)
        report.update(cases_per_operation=args.cases, seed=args.seed, with_token=not args.no_token,
                      operations=summary)
        finish(report, args.out)
    failed = [name for name, outcome in summary.items() if not outcome["ok"]]
    print(f"{len(summary) - len(failed)}/{len(summary)} operations passed, {args.cases} cases each")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
