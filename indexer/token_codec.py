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

With a ``transform`` A [D, D] (``indexer.token_metric``: the relation network's sensitivity), the
codec codes y = A x rather than x, so that its error falls where the relation score reads least,
and is kept beside the codec as ``tokens.codec.metric.npy``. Decoding needs no product with A^-1:
x = A^-1 (centroid + codewords) is linear, so a decoder with A^-1 applied to every centroid and
codeword once, at load, gives x directly. Indexes built before the metric have no such file and
decode as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import IndexerError

CODEC_FILE = "tokens.codec.faiss"
METRIC_FILE = "tokens.codec.metric.npy"
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
            "file": CODEC_FILE, "metric_file": METRIC_FILE}


@dataclass
class TokenCodec:
    """A trained codec: ``encoder`` codes y = ``transform`` x (x itself when transform is None);
    ``decoder`` is the same codec with the inverse transform folded into its centroids and codewords,
    so that it decodes codes straight to x."""

    encoder: Any
    transform: np.ndarray | None
    decoder: Any
    keep_alive: tuple[Any, ...] = ()  # FAISS objects the decoder's views point into

    @property
    def d(self) -> int:
        return int(self.encoder.d)


def _checked_transform(transform: Any, dim: int) -> np.ndarray:
    """``transform`` as a contiguous float32 [dim, dim] array; CodecError for another shape."""
    if np.shape(transform) != (dim, dim):
        raise CodecError(f"codec transform has shape {np.shape(transform)}, the tokens have width {dim}")
    return np.ascontiguousarray(transform, dtype=np.float32)


def _with_transform(encoder: Any, transform: np.ndarray | None) -> TokenCodec:
    if transform is None:
        return TokenCodec(encoder, None, encoder)
    import faiss

    transform = _checked_transform(transform, encoder.d)
    inverse = np.linalg.inv(transform.astype(np.float64)).astype(np.float32)
    decoder = faiss.deserialize_index(faiss.serialize_index(encoder))
    ivf: Any = faiss.downcast_index(decoder)
    codebooks = faiss.vector_to_array(ivf.rq.codebooks).reshape(-1, encoder.d)
    faiss.copy_array_to_vector(np.ascontiguousarray(codebooks @ inverse.T).ravel(), ivf.rq.codebooks)
    coarse = faiss.downcast_index(ivf.quantizer)
    centroids = coarse.reconstruct_n(0, coarse.ntotal)
    coarse.reset()
    coarse.add(np.ascontiguousarray(centroids @ inverse.T))
    # A downcast view does not own its index: the deserialised owner is kept with it.
    return TokenCodec(encoder, transform, ivf, keep_alive=(decoder,))


def train(sample: np.ndarray, token_bytes: int, seed: int = 0, transform: np.ndarray | None = None) -> TokenCodec:
    """A trained codec for token vectors like ``sample`` [n, D] float32 (n >= 256); ``transform``
    [D, D] invertible: the space to code in (``indexer.token_metric.metric_transform``)."""
    import faiss

    sample = np.ascontiguousarray(sample, dtype=np.float32)
    count, dim = sample.shape
    if count < MIN_TRAIN:
        raise CodecError(f"--tokens rq needs at least {MIN_TRAIN} token vectors to train its codec, the gallery has "
                         f"{count}: use --tokens fp16 or int8 for a gallery this small")
    if count > TRAIN_SAMPLE:
        sample = sample[np.random.default_rng(seed).choice(count, TRAIN_SAMPLE, replace=False)]
    entry = describe(token_bytes)
    if transform is not None:
        transform = _checked_transform(transform, dim)
        sample = np.ascontiguousarray(sample @ transform.T)
    lists = COARSE_CENTROIDS if len(sample) >= 4 * COARSE_CENTROIDS else max(1, len(sample) // 4)
    codec: Any = faiss.index_factory(dim, entry["factory"].replace(f"IVF{COARSE_CENTROIDS},", f"IVF{lists},"))
    codec.cp.seed = seed
    codec.cp.min_points_per_centroid = 1  # small galleries: fewer points per centroid, no warning spam
    codec.train(sample)
    if codec.sa_code_size() != entry["code_size"]:
        raise CodecError(f"codec code size {codec.sa_code_size()} differs from {entry['code_size']}")
    return _with_transform(codec, transform)


def encode(codec: TokenCodec, tokens: np.ndarray) -> np.ndarray:
    """tokens [B, T, D] float -> codes [B, T, C] uint8."""
    batch, count, dim = tokens.shape
    flat = np.ascontiguousarray(tokens.reshape(-1, dim), dtype=np.float32)
    if codec.transform is not None:
        flat = np.ascontiguousarray(flat @ codec.transform.T)
    return np.asarray(codec.encoder.sa_encode(flat)).reshape(batch, count, -1)


def decode(codec: TokenCodec, codes: np.ndarray) -> np.ndarray:
    """codes [B, T, C] uint8 -> tokens [B, T, D] float32 (centroid + quantised residual)."""
    batch, count, size = codes.shape
    flat = np.ascontiguousarray(codes.reshape(-1, size), dtype=np.uint8)
    return np.asarray(codec.decoder.sa_decode(flat), dtype=np.float32).reshape(batch, count, codec.d)


def save(codec: TokenCodec, directory: Path) -> Path:
    """The codec file, and the transform's file when there is one, into ``directory`` (a staging
    folder that is published whole)."""
    import faiss

    path = directory / CODEC_FILE
    faiss.write_index(codec.encoder, str(path))
    if codec.transform is not None:
        np.save(directory / METRIC_FILE, codec.transform, allow_pickle=False)
    return path


def load(directory: Path) -> TokenCodec:
    import faiss

    encoder = faiss.read_index(str(directory / CODEC_FILE))
    metric = directory / METRIC_FILE
    return _with_transform(encoder, np.load(metric, allow_pickle=False) if metric.is_file() else None)
