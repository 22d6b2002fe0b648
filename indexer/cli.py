"""`sbir index build|add|info`: command-line front of the indexer.

Registration imports nothing heavy; each handler imports the indexer modules it runs.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

TOKEN_CHOICES = ("fp16", "int8", "rq", "none")


def register(subparsers: Any) -> None:
    """Add the `index` command and its `build`, `add` and `info` subcommands."""
    index = subparsers.add_parser("index", help="build, extend and inspect gallery indexes",
                                  description="Embed a photo gallery into a FAISS index with a token store.")
    commands = index.add_subparsers(dest="index_command", metavar="SUBCOMMAND", required=True)

    build = commands.add_parser("build", help="embed a gallery into a new index directory")
    _gallery_arguments(build)
    build.add_argument("--out", required=True, type=Path, help="index directory to publish (replaced atomically)")
    build.add_argument("--index-type", metavar="FACTORY", default=None,
                       help="FAISS factory string (Flat, HNSW32, IVF1024,Flat, IVF4096,PQ48, ...); "
                            "default by gallery size: Flat < 50k, IVF{4*sqrt(n)},Flat < 2M, else IVF,PQ")
    build.add_argument("--tokens", choices=TOKEN_CHOICES, default="fp16",
                       help="token store for relation re-ranking (default fp16); rq: residual-quantised codes of "
                            "--token-bytes per token, decoded for the shortlist only")
    build.add_argument("--token-bytes", type=int, default=32, metavar="N",
                       help="with --tokens rq: bytes per token, e.g. 16, 32, 64 (default 32)")
    build.add_argument("--name", default=None, help="index name (default: the --out folder name)")
    build.add_argument("--patch-index", action="store_true",
                       help="also index every patch token and its pixels, for gallery-wide sketch-to-photo "
                            "synthesis (GET /explain ...?kind=synthesis&source=gallery); needs --tokens fp16|int8")
    build.add_argument("--skip-current", action="store_true",
                       help="leave --out as it is when it already indexes exactly this gallery (same files, "
                            "sizes and mtimes) with this checkpoint, in this index format")
    build.add_argument("--patch-index-type", metavar="FACTORY", default=None,
                       help="FAISS factory of the patch index (default by patch count: Flat, else IVF,PQ)")
    build.add_argument("--ray", metavar="auto|local|ADDRESS", default=None,
                       help="embed the shards as Ray tasks (one GPU each where the cluster has GPUs, else one CPU): "
                            "auto = the running cluster, local = start one here, or HOST:PORT; needs the gallery, "
                            "checkpoint and --out's folder on storage shared by every node")
    build.add_argument("--on-disk", action="store_true",
                       help="keep the IVF lists in index.ivfdata, memory-mapped when serving, for indexes larger "
                            "than RAM; needs an IVF --index-type (default IVF{4*sqrt(n)},Flat, or ,PQ from 2M)")
    _embedding_arguments(build)
    build.set_defaults(handler=_build)

    add = commands.add_parser("add", help="append a gallery's new photos to an index")
    add.add_argument("directory", type=Path, help="published index directory")
    _gallery_arguments(add)
    _embedding_arguments(add)
    add.set_defaults(handler=_add)

    info = commands.add_parser("info", help="print an index's manifest and file sizes")
    info.add_argument("directory", type=Path, help="published index directory")
    info.set_defaults(handler=_info)


def _gallery_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gallery", required=True, type=Path,
                        help="folder of images (label = parent folder), manifest (.csv/.jsonl) or split file")
    parser.add_argument("--root", type=Path, default=None,
                        help="folder that relative paths of a split file or manifest are resolved against")
    parser.add_argument("--checkpoint", required=True, type=Path, help="model checkpoint")


def _embedding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cores - 1, max 8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _build(args: argparse.Namespace) -> int:
    from indexer import pipeline

    if args.skip_current and _run(lambda: pipeline.is_current(args.out, args.gallery, args.checkpoint, root=args.root)):
        print(f"{args.out}: up to date (this gallery, this checkpoint); not rebuilt")
        return 0
    out = _run(lambda: pipeline.build(
        args.gallery, args.checkpoint, args.out, index_type=args.index_type, tokens=args.tokens,
        token_bytes=args.token_bytes, batch_size=args.batch_size, device=args.device, num_workers=args.workers,
        progress=not args.no_progress, root=args.root, name=args.name,
        patch_index=args.patch_index or args.patch_index_type is not None, patch_index_type=args.patch_index_type,
        ray=args.ray, on_disk=args.on_disk,
    ))
    _summary(out, args.gallery)
    return 0


def _add(args: argparse.Namespace) -> int:
    from indexer import pipeline

    def add() -> Path | pipeline.NothingToAdd:
        try:
            return pipeline.add(
                args.directory, args.gallery, args.checkpoint, batch_size=args.batch_size, device=args.device,
                num_workers=args.workers, progress=not args.no_progress, root=args.root,
            )
        except pipeline.NothingToAdd as nothing:
            return nothing

    out = _run(add)
    if isinstance(out, pipeline.NothingToAdd):
        print(out)  # not an error: the index already holds every photo, and stays as it was
        return 0
    _summary(out, args.gallery, added=True)
    return 0


def _info(args: argparse.Namespace) -> int:
    from indexer.gallery_index import footprint
    from indexer.manifest import read_manifest

    directory = args.directory.expanduser().absolute()
    manifest = _run(lambda: read_manifest(directory))
    print(json.dumps(manifest, indent=2, sort_keys=True))
    print()
    print(f"files in {directory}:")
    total = 0
    for path in sorted(directory.iterdir()):
        size = path.stat().st_size
        total += size
        print(f"  {path.name:<28} {size:>16,d} B  {_human(size):>10}")
    count = max(1, int(manifest.get("count", 0)))
    print(f"  {'total':<28} {total:>16,d} B  {_human(total):>10}  ({total / count:,.0f} B per photo)")
    layout = manifest.get("tokens") or {}
    if layout.get("shape"):
        per_token = (layout.get("codec") or {}).get("code_size") or layout["bytes_per_photo"] // layout["shape"][0]
        print(f"token store: {layout['format']}, {layout['bytes_per_photo']:,d} B per photo "
              f"({layout['shape'][0]} tokens x {per_token} B, width {layout['shape'][1]})")
    if layout.get("anchors"):
        anchors = layout["anchors"]
        print(f"pre-scorer anchors: {anchors['bytes_per_photo']:,d} B per photo "
              f"({anchors['shape'][0]} x {anchors['shape'][1]} float32)")
    need = footprint(directory)
    print(f"serving: {_human(need.loaded)} loaded into RAM ({', '.join(need.loaded_files)}); "
          f"{_human(need.mapped)} memory-mapped or read per query from disk; {_human(need.disk)} on disk")
    return 0


def _summary(directory: Path, gallery: Path, *, added: bool = False) -> None:
    """One line: photos indexed, and the photos of this run that were left out (unreadable ones, in
    skipped.jsonl, and for a folder gallery the files that are not images)."""
    from indexer.manifest import read_manifest

    manifest = read_manifest(directory)
    this_run = manifest["galleries"][-1]  # the entry of the build, or of this add
    run_count = int(this_run["last_id"]) - int(this_run["first_id"]) + 1 - int(this_run["skipped"])
    counts = (f"added {run_count} photos, {this_run['skipped']} skipped; {manifest['count']} photos in all"
              if added else f"{manifest['count']} photos, {this_run['skipped']} skipped")
    ignored = _not_images(gallery)
    left_out = ""
    if ignored:
        shown = ", ".join(ignored[:3]) + (", ..." if len(ignored) > 3 else "")
        left_out = f", {len(ignored)} files that are not images left out ({shown})"
    print(f"{directory}: {counts} (see {manifest['files']['skipped']}){left_out}, "
          f"FAISS {manifest['faiss']['factory']}, tokens {manifest['tokens']['format']}"
          + (f", patch index {manifest['patch_index']['factory']}" if manifest.get("patch_index") else ""))


def _not_images(gallery: Path) -> list[str]:
    """Relative paths of the visible files of a folder gallery that it does not list as photos."""
    from indexer.gallery import IMAGE_SUFFIXES

    root = gallery.expanduser()
    if not root.is_dir():
        return []
    found: list[str] = []
    for directory, subdirs, files in os.walk(root, followlinks=True):
        subdirs[:] = [name for name in subdirs if not name.startswith(".")]
        found.extend((Path(directory) / name).relative_to(root).as_posix() for name in files
                     if not name.startswith(".") and Path(name).suffix.lower() not in IMAGE_SUFFIXES)
    return sorted(found)


def _run(action: Any) -> Any:
    """Run an indexer call; Ctrl-C becomes one line saying that nothing published was touched (its
    user errors are SbirErrors, printed by `sbir`'s main)."""
    from models.errors import CliError

    try:
        return action()
    except KeyboardInterrupt:
        raise CliError("interrupted; the published index is unchanged, and running the same command again "
                       "resumes from the finished shards") from None


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
