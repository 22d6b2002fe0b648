"""Types shared by every model family: what `encode` returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, TypeVar

import torch

from models.errors import SbirError


@dataclass
class Encoded:
    """The output of `model.encode(images)`.

    ret:    [B, D] L2-normalised retrieval embedding ([Ret] token for ZSE, the AMFF feature).
    tokens: [B, 1+N, D] self-attention output that `relation` consumes (ZSE), None for AMFF.
    kept:   [B, N] positions (0..195 on the 14x14 grid) of the tokens that survived token
            selection, in order; None when selection is off and tokens cover the whole grid.
    ret_attention: [B, H, 1+N] attention of [Ret] per head in the last self-attention block
            (only with `encode(..., trace=True)`).
    selections: kept grid positions after each token-selection layer (only with trace=True).
    """

    ret: torch.Tensor
    tokens: torch.Tensor | None = None
    kept: torch.Tensor | None = None
    ret_attention: torch.Tensor | None = None
    selections: list[torch.Tensor] | None = None


C = TypeVar("C", bound="ConfigDict")


class ConfigDict:
    """`to_dict` / `from_dict` for frozen config dataclasses with a non-init `family` field.

    Subclasses list in `tuple_fields` the fields that JSON turns into lists and must be tuples again.
    """

    tuple_fields: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)  # type: ignore[call-overload]
        data.pop("family")
        return data

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        known = {f.name for f in fields(cls) if f.init}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known - {"family"})
        if unknown:
            family = cls.__dataclass_fields__["family"].default.upper()  # type: ignore[attr-defined]
            raise ValueError(f"unknown {family} config keys: {', '.join(unknown)}")
        values = {k: v for k, v in data.items() if k in known}
        for key in cls.tuple_fields:
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


class CheckpointError(SbirError, ValueError):
    """A checkpoint that cannot be loaded as asked: the message names the file and keys at fault."""

