"""Architecture settings for the ZSE-SBIR model, and its named presets.

Numbers follow the ZSE-SBIR paper (Lin et al., CVPR 2023) and its reference code, as
recorded in `shared/reference/zse-sbir-facts.md`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from models.types import ConfigDict

CrossAttentionForm = Literal["reference", "paper"]


@dataclass(frozen=True)
class ZSEConfig(ConfigDict):
    """Settings of one ZSE model.

    image_size / patch_size give the token grid (224 / 16 -> 14x14 = 196 tokens); the
    downsampling conv halves it (7x7 = 49 anchors), so the kernel is anchors x anchors.
    """

    name: str = "zse-vit-b16"
    image_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    # Output channels of the first three convs of the tokenizer's stack; the last maps to embed_dim.
    stack_channels: tuple[int, int, int] = (64, 128, 256)
    # Pre-norm blocks use nn.LayerNorm's default epsilon in the reference, not timm's 1e-6.
    norm_eps: float = 1e-5
    dropout: float = 0.1
    # Token selection (EViT-style): 0-based block indices and keep rates per modality.
    # The paper selects at blocks 4, 7, 10 (0-based 3, 6, 9); the reference default keeps all.
    selection_layers: tuple[int, ...] = (3, 6, 9)
    keep_rate_sketch: float = 1.0
    keep_rate_photo: float = 1.0
    cross_heads: int = 8
    cross_ff_dim: int = 1024
    cross_norm_eps: float = 1e-6
    cross_form: CrossAttentionForm = "reference"
    kernel_dim: int = 512
    relation_hidden: int = 343
    # A pre-scorer (models.prescore) beside the relation head: the cheap first stage of the
    # prescoreM re-rank modes. Off in the paper's model and in reference checkpoints.
    prescorer: bool = False
    # Initialise the self-attention part from a timm ViT of the same size: `pretrained` is the timm
    # name (e.g. "vit_base_patch16_224.augreg_in21k_ft_in1k"), `pretrained_file` a local weights file
    # for it. Without a file timm would download, which only works where the network is reachable.
    pretrained: str | None = None
    pretrained_file: str | None = None
    family: str = field(default="zse", init=False)
    tuple_fields: ClassVar[tuple[str, ...]] = ("stack_channels", "selection_layers")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    @property
    def anchor_grid(self) -> int:
        return self.grid_size // 2

    @property
    def num_anchors(self) -> int:
        return self.anchor_grid**2


ZSE_PRESETS: dict[str, ZSEConfig] = {
    # The paper's configuration: ViT-B/16 self-attention, 224x224 input.
    "zse-vit-b16": ZSEConfig(),
    # Small enough to train and test on 2 CPU cores; same token grid and kernel size.
    "zse-tiny": ZSEConfig(
        name="zse-tiny",
        embed_dim=96,
        depth=4,
        num_heads=3,
        mlp_dim=192,
        stack_channels=(16, 32, 64),
        selection_layers=(1, 2, 3),
        cross_heads=4,
        cross_ff_dim=128,
        kernel_dim=64,
    ),
}
