"""`python -m benchmarks NAME [ARGS...]`: the same as `sbir bench NAME [ARGS...]`."""

from __future__ import annotations

import sys

from benchmarks.cli import BENCHMARKS, run_benchmark


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m benchmarks {{{','.join(sorted(BENCHMARKS))}}} [ARGS...]", file=sys.stderr)
        return 2
    return run_benchmark(argv[0], argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
