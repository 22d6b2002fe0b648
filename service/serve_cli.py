"""`sbir serve`: run the search service with uvicorn.

Registration is cheap (argparse only); the handler imports FastAPI, torch and uvicorn when run.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

# Every setting, for `sbir serve --help` (tests/service/test_serve_cli.py keeps it equal to Settings).
SETTINGS_HELP = (
    "settings (environment variables; flags win over them, they win over --settings):\n"
    "  what to serve     SBIR_INDEX_DIR, SBIR_CHECKPOINT, SBIR_INDEX_WATCH_S\n"
    "  admin endpoints   SBIR_ADMIN_TOKEN or SBIR_ADMIN_TOKEN_FILE (none: POST /index/build, /index/activate,\n"
    "                    /train, /evaluate and DELETE /jobs are disabled), SBIR_DATA_ROOTS (folders request\n"
    "                    paths must lie under, a JSON list), SBIR_INDEX_ROOT (where indexes are built and\n"
    "                    activated from; default: the parent of SBIR_INDEX_DIR), SBIR_JOBS_DB\n"
    "  network           SBIR_HOST, SBIR_PORT, SBIR_CORS_ORIGINS\n"
    "  responses         SBIR_SHOW_PATHS\n"
    "  limits            SBIR_MAX_UPLOAD_BYTES, SBIR_MAX_PIXELS, SBIR_K_MAX, SBIR_SHORTLIST_MAX, SBIR_THUMBNAIL_MAX\n"
    "  engine and jobs   SBIR_DEVICE, SBIR_RERANK_BATCH_SIZE, SBIR_QUERY_CACHE_SIZE, SBIR_MAX_CONCURRENT_JOBS,\n"
    "                    SBIR_AUTOCAST, SBIR_TORCH_THREADS\n"
    "  re-ranking speed  SBIR_RERANK_MODE (fp32 exact; bf16, int8, bf16+cascadeM, int8+cascadeM,\n"
    "                    prescoreM, bf16+prescoreM)\n"
    "  ranking           SBIR_ANN_WEIGHT (order by relation + W x [Ret] cosine; 0 = relation alone)\n"
    "Each is described in docs/service.md. Start-up logs one line saying which of these are on."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the HTTP search service",
        description="Serve sketch search over an index. Flags override SBIR_* environment variables, "
                    "which override the settings file.",
        epilog=SETTINGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--index", type=Path, help="index directory (SBIR_INDEX_DIR)")
    parser.add_argument("--checkpoint", type=Path, help="model checkpoint (SBIR_CHECKPOINT)")
    parser.add_argument("--admin-token-file", type=Path, metavar="FILE",
                        help="file holding the admin token, which turns the admin endpoints on (SBIR_ADMIN_TOKEN_FILE; "
                             "or the token itself in SBIR_ADMIN_TOKEN)")
    parser.add_argument("--data-root", type=Path, action="append", metavar="DIR",
                        help="folder that paths in requests may lie under; repeat for several (SBIR_DATA_ROOTS)")
    parser.add_argument("--index-root", type=Path, metavar="DIR",
                        help="where POST /index/build writes and POST /index/activate finds indexes "
                             "(SBIR_INDEX_ROOT, default: the parent of --index)")
    parser.add_argument("--host", help="address to bind (SBIR_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (SBIR_PORT, default 8000)")
    parser.add_argument("--settings", type=Path, help="settings file: JSON or .env of SBIR_* lines")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from models.errors import CliError
    from service.settings import load_settings

    try:
        settings = load_settings(args.settings, index_dir=args.index, checkpoint=args.checkpoint, host=args.host,
                                 port=args.port, admin_token_file=args.admin_token_file, data_roots=args.data_root,
                                 index_root=args.index_root)
    except FileNotFoundError as error:
        raise CliError(str(error)) from None
    for what, flag, path in (("checkpoint", "--checkpoint or SBIR_CHECKPOINT", settings.checkpoint),
                             ("index directory", "--index or SBIR_INDEX_DIR", settings.index_dir)):
        if path is not None and not path.exists():
            raise CliError(f"{what} {path} (from {flag}) does not exist")

    import uvicorn

    from service.engine import SearchEngine
    from service.main import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "debug":
        # FAISS's loader logs every instruction set it tries and fails to load (ModuleNotFoundError) at INFO.
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    engine = SearchEngine(settings)
    failures: list[BaseException] = []
    # One process: the model, the index and the job manager live in it; concurrency is threads.
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engine=engine), host=settings.host,
                                           port=settings.port, log_level=args.log_level, workers=1))

    def stop_on_load_error(error: BaseException) -> None:
        # The configured checkpoint or index cannot be served: that does not fix itself, so stop
        # rather than answer 503 for ever.
        failures.append(error)
        server.should_exit = True

    engine.on_load_error = stop_on_load_error
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it shut down on (as uvicorn.run does, ignore it)
        pass
    if failures:
        raise CliError(_one_line(failures[0]))
    return 0


def _one_line(error: Any) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
