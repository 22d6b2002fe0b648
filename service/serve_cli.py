"""`sbir serve`: run the search service with uvicorn.

Registration is cheap (argparse only); the handler imports FastAPI, torch and uvicorn when run.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the HTTP search service",
        description="Serve sketch search over an index. Flags override SBIR_* environment variables, "
                    "which override the settings file.",
    )
    parser.add_argument("--index", type=Path, help="index directory (SBIR_INDEX_DIR)")
    parser.add_argument("--checkpoint", type=Path, help="model checkpoint (SBIR_CHECKPOINT)")
    parser.add_argument("--host", help="address to bind (SBIR_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (SBIR_PORT, default 8000)")
    parser.add_argument("--settings", type=Path, help="settings file: JSON or .env of SBIR_* lines")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from models.errors import CliError
    from service.settings import load_settings

    try:
        settings = load_settings(args.settings, index_dir=args.index, checkpoint=args.checkpoint, host=args.host,
                                 port=args.port)
    except (FileNotFoundError, ValidationError) as error:
        raise CliError(_one_line(error)) from None
    for what, flag, path in (("checkpoint", "--checkpoint or SBIR_CHECKPOINT", settings.checkpoint),
                             ("index directory", "--index or SBIR_INDEX_DIR", settings.index_dir)):
        if path is not None and not path.exists():
            raise CliError(f"{what} {path} (from {flag}) does not exist")

    import uvicorn

    from service.main import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One process: the model, the index and the job manager live in it; concurrency is threads.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level,
                workers=1)
    return 0


def _one_line(error: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors())
    return str(error)
