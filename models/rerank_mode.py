"""How re-ranking computes relation scores: exact, or a fast mode that trades a measured amount of
ranking for speed (benchmarks/RESULTS.md, "fast modes", has each mode's speed and agreement).

- ``fp32`` (exact): float32, scores within float rounding of ``ZSEModel.relation`` (on CUDA the
  service's float16 autocast, ``SBIR_AUTOCAST``, still applies).
- ``bf16``: bfloat16 autocast (CPUs with AVX512-BF16 or AMX, and GPUs) for the sketch's embedding
  and the re-ranking; norms and the relation head stay in float32.
- ``int8``: the large products as int8 (``models.int8``), the rest in float32.
- ``cascade = M`` with a fast precision: every shortlisted photo is scored in that precision, then the
  top M of that order are scored again exactly, so the first M results are in exact order.
- ``prescore = M``: every shortlisted photo is pre-scored by the checkpoint's pre-scorer
  (``models.prescore``: no cross-attention, a few percent of a relation score's cost), and only the
  best M of that order get a relation score, in the mode's precision; the others follow them in
  pre-score order. Needs a checkpoint with a pre-scorer (``sbir demo prescore``).

A mode is written ``fp32``, ``bf16``, ``int8``, ``bf16+cascade20``, ``int8+cascade20``,
``prescore30`` (= ``fp32+prescore30``) or ``bf16+prescore50``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "int8")


@dataclass(frozen=True)
class RerankMode:
    """precision of the scores of every shortlisted photo; cascade: how many of the best of them are
    scored again exactly (0 = none; only with a fast precision)."""

    precision: Precision = "fp32"
    cascade: int = 0
    prescore: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"re-rank precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.cascade < 0:
            raise ValueError(f"re-rank cascade must be 0 or more photos, not {self.cascade}")
        if self.prescore < 0:
            raise ValueError(f"re-rank prescore must be 0 or more photos, not {self.prescore}")
        if self.cascade and self.precision == "fp32":
            raise ValueError("a re-rank cascade needs a fast precision (bf16 or int8): fp32 is exact already")
        if self.cascade and self.prescore:
            raise ValueError("a re-rank mode takes a cascade or a prescore stage, not both")

    @property
    def exact(self) -> bool:
        """Every shortlisted photo gets an exact relation score."""
        return self.precision == "fp32" and not self.prescore

    def autocast_dtype(self, device: Any, amp: bool) -> Any:
        """The autocast dtype of this mode's forward passes: bfloat16 for bf16, else the device's
        inference dtype (float16 on CUDA when ``amp``; None, float32, on a CPU)."""
        import torch

        from models.device import inference_dtype

        return torch.bfloat16 if self.precision == "bf16" else inference_dtype(device, amp)

    def slow_here(self, device: Any, flags: frozenset[str] | None = None) -> str | None:
        """Why this mode's precision is slower than float32 on ``device``, or None: on a CPU without
        native bf16 (AVX-512 BF16 / AMX) torch emulates bf16, and without VNNI / AMX int8 dynamic
        quantization has no fast kernel (both measured several times slower than fp32 there)."""
        from models.device import bf16_supported, int8_supported

        if getattr(device, "type", device) != "cpu" or self.precision == "fp32":
            return None
        if self.precision == "bf16" and not bf16_supported(flags):
            return (f"re-rank mode {self.label}: this CPU has no native bf16 (AVX-512 BF16 or AMX), so bf16 is "
                    f"slower than fp32 here; use {self.with_precision('fp32').label}")
        if self.precision == "int8" and not int8_supported(flags):
            return (f"re-rank mode {self.label}: this CPU has no int8 dot-product instructions (VNNI or AMX), so "
                    f"int8 is slower than fp32 here; use {self.with_precision('fp32').label}")
        return None

    def with_precision(self, precision: Precision) -> RerankMode:
        """The same stages at another precision (a cascade, which needs a fast precision, is dropped
        for fp32)."""
        return RerankMode(precision, 0 if precision == "fp32" else self.cascade, self.prescore)

    @property
    def label(self) -> str:
        stage = f"+cascade{self.cascade}" if self.cascade else f"+prescore{self.prescore}" if self.prescore else ""
        return self.precision + stage

    @classmethod
    def parse(cls, text: str) -> RerankMode:
        """``fp32`` | ``exact`` | ``bf16`` | ``int8``, optionally ``+cascadeM`` or ``+prescoreM``; a bare
        ``prescoreM`` is ``fp32+prescoreM``. ValueError otherwise."""
        name, _, stage = text.strip().lower().partition("+")
        if name.startswith("prescore") and not stage:
            name, stage = "fp32", name
        precision = "fp32" if name == "exact" else name
        kind = next((kind for kind in ("cascade", "prescore") if stage.startswith(kind)), None)
        if stage and kind is None:
            raise ValueError(f"re-rank mode {text!r}: write PRECISION, PRECISION+cascadeM or PRECISION+prescoreM, "
                             "e.g. bf16+cascade20")
        try:
            count = int(stage.removeprefix(kind)) if kind else 0
        except ValueError:
            raise ValueError(f"re-rank mode {text!r}: the {kind} size must be a whole number") from None
        return cls(cast(Precision, precision), count if kind == "cascade" else 0, count if kind == "prescore" else 0)


@dataclass(frozen=True)
class Reranking:
    """A mode made ready for one model: the int8 layers quantised once (None unless int8)."""

    mode: RerankMode
    int8: Any = None

    @classmethod
    def prepare(cls, model: Any, mode: RerankMode) -> Reranking:
        """Quantise what ``mode`` needs of ``model`` (models without a relation network need nothing).
        A prescore mode with a model that has no pre-scorer is a ``CheckpointError`` (a ValueError) that
        names the mode."""
        if mode.prescore and getattr(model, "has_relation", False) and getattr(model, "prescorer", None) is None:
            from models.types import CheckpointError

            raise CheckpointError(f"re-rank mode {mode.label}: the checkpoint has no pre-scorer (train one with "
                             "`sbir demo prescore`, or use a mode without +prescore)")
        if mode.precision != "int8" or not getattr(model, "has_relation", False):
            return cls(mode)
        from models.int8 import int8_relation

        return cls(mode, int8_relation(model))


EXACT = Reranking(RerankMode())
