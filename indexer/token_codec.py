"""The residual-quantised token codec of ``--tokens rq``: FAISS's IVF + residual quantiser codec.

Each token vector [D] is stored as the id of its nearest of ``COARSE_CENTROIDS`` centroids (1 byte)
plus a residual quantisation of what is left: M = ``token_bytes`` - 1 stages of 256 codewords, each
stage coding the residual of the ones before (1 byte a stage), so a token takes exactly
``token_bytes`` bytes. For ViT-B/16 tokens (D = 768) and 32 bytes: 32 bytes a token against 1,536 in
fp16, 48x smaller. Centroids and codebooks are trained once, on a sample of the gallery's tokens
(k-means, then the residual quantiser's beam search), and kept beside the segments as
``tokens.codec.faiss``; ``sbir index add`` encodes new photos with the same codec.

A residual quantiser was chosen over a product quantiser of the same size for its lower
reconstruction error on the demo's tokens (the relation network is sensitive to it); its beam-search
encoding is slower, which only an index build pays (`benchmarks/RESULTS.md`, "Compressed token store").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import IndexerError

CODEC_FILE = "tokens.codec.faiss"
COARSE_CENTROIDS = 256  # one byte of list id
TRAIN_SAMPLE = 65_536  # token vectors k-means sees at most (FAISS samples 256 per centroid anyway)
MIN_TRAIN = 256  # each 8-bit codebook needs at least as many points as codewords


class CodecError(IndexerError):
    """A codec that cannot be made or used (the message says why)."""


def sub_quantizers(token_bytes: int) -> int:
    """M: the residual quantiser's stages, 1 byte each, beside the centroid's byte."""
    if token_bytes < 2:
        raise CodecError(f"--token-bytes must be at least 2 (1 for the centroid, 1 for the residual), not {token_bytes}")
    return token_bytes - 1


def describe(token_bytes: int) -> dict[str, Any]:
    """The manifest's codec entry: factory string and code size (any vector width)."""
    m = sub_quantizers(token_bytes)
    return {"factory": f"IVF{COARSE_CENTROIDS},RQ{m}x8", "code_size": 1 + m, "token_bytes": int(token_bytes),
            "file": CODEC_FILE}


def train(sample: np.ndarray, token_bytes: int, seed: int = 0) -> Any:
    """A trained codec for token vectors like ``sample`` [n, D] float32 (n >= 256)."""
    import faiss

    sample = np.ascontiguousarray(sample, dtype=np.float32)
    count, dim = sample.shape
    if count < MIN_TRAIN:
        raise CodecError(f"--tokens rq needs at least {MIN_TRAIN} token vectors to train its codec, the gallery has "
                         f"{count}: use --tokens fp16 or int8 for a gallery this small")
    if count > TRAIN_SAMPLE:
        sample = sample[np.random.default_rng(seed).choice(count, TRAIN_SAMPLE, replace=False)]
    entry = describe(token_bytes)
    lists = COARSE_CENTROIDS if len(sample) >= 4 * COARSE_CENTROIDS else max(1, len(sample) // 4)
    codec: Any = faiss.index_factory(dim, entry["factory"].replace(f"IVF{COARSE_CENTROIDS},", f"IVF{lists},"))
    codec.cp.seed = seed
    codec.cp.min_points_per_centroid = 1  # small galleries: fewer points per centroid, no warning spam
    codec.train(sample)
    if codec.sa_code_size() != entry["code_size"]:
        raise CodecError(f"codec code size {codec.sa_code_size()} differs from {entry['code_size']}")
    return codec


def encode(codec: Any, tokens: np.ndarray) -> np.ndarray:
    """tokens [B, T, D] float -> codes [B, T, C] uint8."""
    batch, count, dim = tokens.shape
    flat = np.ascontiguousarray(tokens.reshape(-1, dim), dtype=np.float32)
    return np.asarray(codec.sa_encode(flat)).reshape(batch, count, -1)


def decode(codec: Any, codes: np.ndarray) -> np.ndarray:
    """codes [B, T, C] uint8 -> tokens [B, T, D] float32 (centroid + quantised residual)."""
    batch, count, size = codes.shape
    flat = np.ascontiguousarray(codes.reshape(-1, size), dtype=np.uint8)
    return np.asarray(codec.sa_decode(flat), dtype=np.float32).reshape(batch, count, codec.d)


def save(codec: Any, directory: Path) -> Path:
    import faiss

    path = directory / CODEC_FILE
    faiss.write_index(codec, str(path))
    return path


def load(directory: Path) -> Any:
    import faiss

    return faiss.read_index(str(directory / CODEC_FILE))
