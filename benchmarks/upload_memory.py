"""Peak memory of decoding and preprocessing one very large sketch upload, with and without the early
reduction (`decode_sketch(..., shrink=...)`).

    python -m benchmarks.upload_memory [--width 5000 --height 5000] [--formats png-rgb,...]
        [--original-code DIR --original-label TEXT] [--out benchmarks/results/upload_memory.json]

Draws a black-on-white line drawing with thin strokes (`--stroke` px) at `--width` x `--height`
(default 25 Mpx: the service's default `max_pixels`), encodes it in each of `--formats`, and for each
file and each variant runs `decode_sketch` + `preprocess.sketch` once in a fresh Python process:

- before: `shrink=False`, the full-size image goes to preprocessing (as all uploads did before);
- after: `shrink=True` (the service's default);
- original (only with `--original-code DIR`): the `models` and `service` packages found in DIR (say
  the commit before the reduction: `git archive COMMIT models service | tar -x -C DIR`), called
  without `shrink`; "before" already has the cheaper ink mask of `preprocess.crop_to_ink`.

The child imports everything and preprocesses a small sketch first, so that imports and first-use
allocations are in its baseline, then resets its peak-RSS mark (/proc/self/clear_refs) and reports
its peak RSS (VmHWM) minus its RSS at that point. Not ru_maxrss (getrusage or wait4): Linux carries
the parent's peak over into it at fork + exec, so a child of a big process reads big. Not a timing
benchmark: the seconds are recorded for interest.
Also reports how far the two variants' tensors are apart and how many ink pixels each keeps.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from benchmarks._report import finish, header

TARGET_MIB = 150.0  # the goal for a max-pixel upload, above the process baseline
FORMATS = ("png-rgb", "png-rgba", "png-grey", "png-16bit", "jpeg", "webp")
# A pixel of the model input counts as ink below this (normalised to [-1, 1]; paper is 1.0). An
# output pixel whose 2 x 2 source block holds one black pixel is 191/255 -> 0.498.
INK_BELOW = 0.6


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.upload_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=5000)
    parser.add_argument("--height", type=int, default=5000)
    parser.add_argument("--stroke", type=int, default=2, help="stroke width in pixels")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, of {', '.join(FORMATS)}")
    parser.add_argument("--max-pixels", type=int, default=25_000_000, help="decode_sketch's limit")
    parser.add_argument("--original-code", type=Path, default=None,
                        help="folder with older `models` and `service` packages to measure as well")
    parser.add_argument("--original-label", default=None, help="what --original-code is (say, its commit)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/upload_memory.json"))
    # The child process (internal).
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--shrink", type=int, default=1, help=argparse.SUPPRESS)  # -1: do not pass it
    parser.add_argument("--tensor-out", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def large_sketch(width: int, height: int, stroke: int = 2) -> Any:
    """An RGB line drawing (ellipse, rectangle, diagonal, zigzag) filling most of the canvas."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def at(*points: float) -> list[float]:
        return [value * (width if number % 2 == 0 else height) for number, value in enumerate(points)]

    draw.ellipse(at(0.2, 0.25, 0.8, 0.75), outline="black", width=stroke)
    draw.rectangle(at(0.3, 0.4, 0.6, 0.9), outline="black", width=stroke)
    draw.line(at(0.1, 0.1, 0.9, 0.6), fill="black", width=stroke)
    draw.line(at(0.1, 0.8, 0.2, 0.9, 0.3, 0.8, 0.4, 0.9), fill="black", width=stroke)
    return image


def encode(image: Any, fmt: str) -> bytes:
    """`image` (RGB drawing) as the upload `fmt` names."""
    from PIL import Image

    buffer = io.BytesIO()
    if fmt == "png-rgb":
        image.save(buffer, format="PNG")
    elif fmt == "png-rgba":  # a canvas export: transparent paper, opaque ink
        layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
        layer.putalpha(image.convert("L").point(lambda value: 255 - value))
        layer.save(buffer, format="PNG")
    elif fmt == "png-grey":
        image.convert("L").save(buffer, format="PNG")
    elif fmt == "png-16bit":
        image.convert("L").point(lambda value: value * 257, mode="I").convert("I;16").save(buffer, format="PNG")
    elif fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=95)
    elif fmt == "webp":
        image.save(buffer, format="WEBP", lossless=True)
    else:
        raise SystemExit(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return buffer.getvalue()


def _status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(path: Path, shrink: bool | None, max_pixels: int, tensor_out: Path | None) -> NoReturn:
    """Decode and preprocess `path` once; print a JSON line (baseline RSS, seconds, decoded shape) and
    leave at once."""
    import torch

    from models import preprocess
    from service.uploads import decode_sketch

    torch.set_num_threads(1)
    options = {} if shrink is None else {"shrink": shrink}  # None: code from before the option
    small = io.BytesIO()
    large_sketch(200, 200).save(small, format="PNG")
    preprocess.sketch(decode_sketch(small.getvalue(), max_pixels=max_pixels, **options))
    data = path.read_bytes()
    del small
    gc.collect()
    peak_before = _status_kib("VmHWM")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # VmHWM := VmRSS
    baseline = _status_kib("VmRSS")
    started = time.perf_counter()
    image = decode_sketch(data, max_pixels=max_pixels, **options)
    decoded = time.perf_counter()
    tensor = preprocess.sketch(image)
    done = time.perf_counter()
    peak = _status_kib("VmHWM")
    if tensor_out is not None:
        np.save(tensor_out, tensor.numpy())
    print(json.dumps({"code": str(Path(preprocess.__file__).parent.parent), "baseline_rss_kib": baseline,
                      "peak_rss_kib": peak, "peak_before_baseline_kib": peak_before,
                      "decode_s": round(decoded - started, 3), "preprocess_s": round(done - decoded, 3),
                      "decoded_mode": image.mode, "decoded_size": list(image.size)}), flush=True)
    os._exit(0)  # skip the interpreter's shutdown: tearing torch down is slow


def measure(path: Path, shrink: bool | None, max_pixels: int, tensor_out: Path,
            code: Path | None = None) -> dict[str, Any]:
    """Run `child` in a fresh process (importing `models` and `service` from `code` when given)."""
    command = [sys.executable, "-m", "benchmarks.upload_memory", "--child", str(path),
               "--shrink", str(-1 if shrink is None else int(shrink)), "--max-pixels", str(max_pixels),
               "--tensor-out", str(tensor_out)]
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code.absolute()), *filter(None, [env.get("PYTHONPATH")])])
    # In `code` when given: `python -m` puts the working directory first on sys.path.
    completed = subprocess.run(command, capture_output=True, env=env, cwd=code, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"child failed ({completed.returncode}): {completed.stderr.decode(errors='replace')[-2000:]}")
    result = json.loads(completed.stdout.decode().strip().splitlines()[-1])
    return {
        "shrink": shrink,
        "code": result["code"],
        "peak_above_baseline_mib": round((result["peak_rss_kib"] - result["baseline_rss_kib"]) / 1024, 1),
        "peak_rss_mib": round(result["peak_rss_kib"] / 1024, 1),
        "baseline_rss_mib": round(result["baseline_rss_kib"] / 1024, 1),
        "peak_before_baseline_mib": round(result["peak_before_baseline_kib"] / 1024, 1),
        "decode_s": result["decode_s"],
        "preprocess_s": result["preprocess_s"],
        "decoded_mode": result["decoded_mode"],
        "decoded_size": result["decoded_size"],
    }


def compare(before: np.ndarray, after: np.ndarray) -> dict[str, Any]:
    """How the reduced path's model input differs from the full-size one."""
    ink_before, ink_after = before < INK_BELOW, after < INK_BELOW
    return {
        "mean_abs_diff": round(float(np.abs(before - after).mean()), 4),
        "max_abs_diff": round(float(np.abs(before - after).max()), 4),
        "ink_pixels_before": int(ink_before.any(axis=0).sum()),
        "ink_pixels_after": int(ink_after.any(axis=0).sum()),
        # Of the full-size path's ink pixels, how many the reduced path has within one pixel.
        "before_ink_kept_within_1px": round(float((ink_before & _near(ink_after)).sum() / max(1, ink_before.sum())), 4),
    }


def _near(mask: np.ndarray) -> np.ndarray:
    """[C, H, W] bool -> True where `mask` holds within one pixel (3 x 3 neighbourhood)."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    height, width = mask.shape[1:]
    return np.logical_or.reduce([padded[:, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
                                 for dy in (-1, 0, 1) for dx in (-1, 0, 1)])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        child(args.child, None if args.shrink < 0 else bool(args.shrink), args.max_pixels, args.tensor_out)
    if not Path("/proc/self/clear_refs").exists():
        raise SystemExit("needs Linux (/proc/self/status and clear_refs)")
    report = header("upload_memory", argv)
    formats = [name.strip() for name in args.formats.split(",") if name.strip()]
    drawing = large_sketch(args.width, args.height, args.stroke)
    results = []
    with tempfile.TemporaryDirectory(prefix="sbir-upload-memory-") as temporary:
        folder = Path(temporary)
        files = {}
        for fmt in formats:
            files[fmt] = folder / f"sketch-{fmt}"
            files[fmt].write_bytes(encode(drawing, fmt))
        del drawing
        gc.collect()
        for fmt in formats:
            row: dict[str, Any] = {"format": fmt, "bytes": files[fmt].stat().st_size}
            variants: list[tuple[str, bool | None, Path | None]] = [("before", False, None), ("after", True, None)]
            if args.original_code is not None:
                variants.append(("original", None, args.original_code))
            for variant, shrink, code in variants:
                row[variant] = measure(files[fmt], shrink, args.max_pixels, folder / f"{fmt}-{variant}.npy", code)
            row["saved_mib"] = round(row["before"]["peak_above_baseline_mib"] - row["after"]["peak_above_baseline_mib"], 1)
            row["after_under_target"] = row["after"]["peak_above_baseline_mib"] < TARGET_MIB
            row["tensors"] = compare(np.load(folder / f"{fmt}-before.npy"), np.load(folder / f"{fmt}-after.npy"))
            if args.original_code is not None:
                original = np.load(folder / f"{fmt}-original.npy")
                row["original_equals_before"] = bool(np.array_equal(original, np.load(folder / f"{fmt}-before.npy")))
            results.append(row)
            if args.original_code is not None:
                print(f"{fmt:<10} original {row['original']['peak_above_baseline_mib']:>7.1f} MiB")
            print(f"{fmt:<10} before {row['before']['peak_above_baseline_mib']:>7.1f} MiB  "
                  f"after {row['after']['peak_above_baseline_mib']:>7.1f} MiB  "
                  f"(decode+preprocess {row['before']['decode_s'] + row['before']['preprocess_s']:.2f} s -> "
                  f"{row['after']['decode_s'] + row['after']['preprocess_s']:.2f} s)  ink pixels "
                  f"{row['tensors']['ink_pixels_before']} -> {row['tensors']['ink_pixels_after']}")
    report.update({
        "image": {"width": args.width, "height": args.height, "pixels": args.width * args.height,
                  "stroke_px": args.stroke},
        "max_pixels": args.max_pixels,
        "target_mib": TARGET_MIB,
        "measure": "in a fresh process: peak RSS (VmHWM, reset just before) minus RSS just before decode_sketch",
        "original_code": str(args.original_code) if args.original_code is not None else None,
        "original_label": args.original_label,
        "results": results,
    })
    finish(report, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
