"""Types shared by every model family: what `encode` returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked: the message names the file and keys at fault."""
