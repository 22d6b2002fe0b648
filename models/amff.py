"""AMFF (Attention Map Feature Fusion): the embedding network of FFMLN.

Zhao, Liu, Li, "Feature Fusion and Metric Learning Network for Zero-Shot Sketch-Based Image
Retrieval", Entropy 25(3):502, 2023; facts in `shared/reference/ffmln-amff-facts.md`.

One network embeds sketches and photos alike (single stream). Shapes below are for the `amff-r50`
preset at 224x224: B images, A = attn_dim = 768, E = embed_dim = 512.

    images [B, 3, 224, 224]
      -> timm ResNet-50 trunk, features_only, out_indices (2, 3, 4)
         = the paper's residual stages 2, 3, 4 (timm index 0 is the stem, 1..4 are layer1..layer4):
         [B, 512, 28, 28], [B, 1024, 14, 14], [B, 2048, 7, 7]
      -> one attention branch per stage s, with feature map [B, C_s, H_s, W_s]:
           patch embedding Conv2d(C_s, A, kernel=k_s, stride=k_s)  -> [B, A, h_s, w_s], h_s = H_s // k_s
           tokens [B, h_s*w_s, A] -> tokens + MultiheadAttention(tokens)  (transformer self-attention,
           residual) -> LayerNorm(A) -> sigmoid  -> attention map [B, A, h_s, w_s], values in (0, 1)
           -> bilinear resize to the last stage's grid  -> [B, A, 7, 7]
      -> total map = sum over stages  [B, A, 7, 7]
      -> spliced with the last-stage features: concat on channels  [B, 2048 + A, 7, 7]
      -> flatten [B, (2048 + A) * 49] -> Linear -> [B, E] -> L2 normalisation = `ret`

Decisions where the paper leaves shapes open:

- Patch kernel: k_s = min(7, H_s) (square inputs assumed, H_s = ceil(image_size / stride_s) for
  timm ResNets). At 224 this is the paper's 7 at every stage (28 -> 4x4 tokens, 14 -> 2x2, 7 -> 1x1);
  on smaller inputs a stage map narrower than 7 gets one token covering all of it instead of failing.
  Rows/columns left over by a kernel that does not divide H_s are dropped (no padding), as a
  strided conv does.
- Map channels: each attention map keeps all A token channels (a multi-channel map), so the maps of
  different stages can be summed and the fused tensor carries A channels of attention next to the
  backbone's channels. Maps are resized to the last-stage grid before summing because they differ
  in size (4x4, 2x2, 1x1 at 224).
- No position embedding on the tokens: the paper mentions none, each token's map is written back
  to its own grid cell anyway, and this keeps the branch independent of the input size.
- Projection: the spliced tensor is flattened and projected by one Linear, rather than pooled
  first, so that *where* the attention maps are high still reaches the embedding (global pooling
  would reduce each map channel to its mean). The Linear is tied to the last-stage grid of
  `image_size`; inputs of another size are average-pooled to that grid before flattening.
- Parameter count: at A = 768 (ViT-Base width, 12 heads of 64) `amff-r50` has 236.1 M parameters
  (trunk 23.5 M, patch convs 134.9 M, attention 7.1 M, projection 70.6 M) against the paper's
  290.1 M; the paper does not give the branch widths. A = 1024 would give about 293 M.

`classifier` (Linear E -> num_classes) and `proxies` [num_classes, E] exist only when
num_classes > 0 and are used only by the FFMLN losses (`models.ffmln_loss`), never by `encode`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import timm
import torch
import torch.nn.functional as F
from timm.models import FeatureListNet
from torch import nn

from models.types import CheckpointError, ConfigDict, Encoded

PATCH_KERNEL = 7


@dataclass(frozen=True)
class AMFFConfig(ConfigDict):
    """Settings of one AMFF model.

    stages are timm `features_only` out_indices: for ResNets 1..4 are layer1..layer4, so the paper's
    best combination, residual stages 2, 3, 4, is (2, 3, 4). The last index is the stage whose
    features are spliced with the attention maps. `pretrained_file` is a local weights file for the
    backbone (a timm/torchvision ImageNet state_dict, with or without its `fc`); None = random init.
    """

    name: str = "amff-r50"
    backbone: str = "resnet50"
    stages: tuple[int, ...] = (2, 3, 4)
    attn_dim: int = 768
    attn_heads: int = 12
    embed_dim: int = 512
    pretrained_file: str | None = None
    image_size: int = 224
    num_classes: int = 0
    family: str = field(default="amff", init=False)

    tuple_fields: ClassVar[tuple[str, ...]] = ("stages",)


AMFF_PRESETS: dict[str, AMFFConfig] = {
    # The paper's setting: ImageNet ResNet-50, stages 2-4, 512-d embedding (64-d: embed_dim=64).
    "amff-r50": AMFFConfig(),
    # Small enough to train and test on 2 CPU cores: ResNet-10-T trunk (4.9 M), narrow attention.
    "amff-tiny": AMFFConfig(
        name="amff-tiny",
        backbone="resnet10t",
        attn_dim=32,
        attn_heads=4,
        embed_dim=64,
    ),
}


def patch_kernel(feature_size: int) -> int:
    """Kernel (= stride) of the patch embedding over a square stage map of side `feature_size`."""
    return min(PATCH_KERNEL, feature_size)


class AttentionBranch(nn.Module):
    """Attention map of one backbone stage.

    [B, C, H, W] -> patch conv -> [B, N, A] tokens -> self-attention (residual) -> LayerNorm ->
    sigmoid -> [B, A, h, w] map, resized to `out_size`.
    """

    def __init__(self, in_channels: int, attn_dim: int, heads: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.patch_embed = nn.Conv2d(in_channels, attn_dim, kernel_size=kernel, stride=kernel)
        self.attn = nn.MultiheadAttention(attn_dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(attn_dim)

    def forward(self, feature: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """feature [B, C, H, W] -> attention map [B, A, *out_size] with values in (0, 1)."""
        if min(feature.shape[-2:]) < self.kernel:
            raise ValueError(
                f"stage map {tuple(feature.shape[-2:])} is smaller than the patch kernel {self.kernel}: "
                "encode images of the configured image_size (or larger)"
            )
        grid = self.patch_embed(feature)  # [B, A, h, w]
        batch, dim, height, width = grid.shape
        tokens = grid.flatten(2).transpose(1, 2)  # [B, h*w, A]
        attended, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        tokens = self.norm(tokens + attended)
        attention_map = torch.sigmoid(tokens).transpose(1, 2).reshape(batch, dim, height, width)
        if (height, width) != tuple(out_size):
            attention_map = F.interpolate(attention_map, size=out_size, mode="bilinear", align_corners=False)
        return attention_map


class AMFFModel(nn.Module):
    """AMFF embedding network; `encode(images [B, 3, S, S]) -> Encoded(ret [B, E], tokens=None)`."""

    family = "amff"
    has_relation = False  # one embedding per image: nothing to re-rank a pair with

    def __init__(self, config: AMFFConfig) -> None:
        super().__init__()
        if config.attn_dim % config.attn_heads:
            raise ValueError(f"attn_dim {config.attn_dim} is not divisible by attn_heads {config.attn_heads}")
        if list(config.stages) != sorted(set(config.stages)) or not config.stages:
            raise ValueError(f"stages must be distinct and increasing, got {config.stages}")
        self.config = config
        self.embed_dim = config.embed_dim
        pretrained_file = config.pretrained_file
        if pretrained_file and not os.path.isfile(pretrained_file):
            raise CheckpointError(f"{pretrained_file}: backbone weights file not found")
        # Weights come only from the local file: with a `file` in the overlay timm never reaches the
        # network, and without one `pretrained` is False.
        self.trunk = cast(FeatureListNet, timm.create_model(
            config.backbone,
            features_only=True,
            out_indices=config.stages,
            pretrained=bool(pretrained_file),
            pretrained_cfg_overlay=dict(file=pretrained_file) if pretrained_file else None,
        ))
        if pretrained_file:
            _check_trunk_keys(self.trunk, pretrained_file)
        channels = self.trunk.feature_info.channels()
        # timm ResNet stages use stride-2 convs/pools padded so that each halves a side rounding up.
        sizes = [math.ceil(config.image_size / r) for r in self.trunk.feature_info.reduction()]
        self.grid = (sizes[-1], sizes[-1])
        self.branches = nn.ModuleList(
            AttentionBranch(c, config.attn_dim, config.attn_heads, patch_kernel(s))
            for c, s in zip(channels, sizes, strict=True)
        )
        fused_dim = (channels[-1] + config.attn_dim) * sizes[-1] ** 2
        self.projection = nn.Linear(fused_dim, config.embed_dim)
        self.classifier: nn.Linear | None = None
        self.proxies: nn.Parameter | None = None
        if config.num_classes > 0:
            self.classifier = nn.Linear(config.embed_dim, config.num_classes)
            # Only their direction matters (L_norm normalises them), so unit-variance init is fine.
            self.proxies = nn.Parameter(torch.randn(config.num_classes, config.embed_dim))

    def encode(self, images: torch.Tensor, modality: str = "photo") -> Encoded:
        """images [B, 3, S, S] -> Encoded(ret [B, E] L2-normalised, tokens=None).

        ``modality`` is accepted for the common interface (models.interface); sketches and photos go
        through the same network."""
        features = self.trunk(images)  # list of [B, C_s, H_s, W_s], deepest last
        last = features[-1]
        out_size = (last.shape[-2], last.shape[-1])
        total_map = sum(branch(f, out_size) for branch, f in zip(self.branches, features, strict=True))
        fused = torch.cat([last, total_map], dim=1)  # [B, C_last + A, h, w]
        if out_size != self.grid:
            fused = F.adaptive_avg_pool2d(fused, self.grid)
        embedding = self.projection(fused.flatten(1))
        return Encoded(ret=F.normalize(embedding, dim=-1))

    def forward(self, images: torch.Tensor) -> Encoded:
        return self.encode(images)

    def relation_scorer(self, sketch_tokens: torch.Tensor, sketch_kept: torch.Tensor | None = None,
                        int8: Any = None) -> None:
        """AMFF has no relation network (see ``has_relation``)."""
        return None


def _check_trunk_keys(trunk: nn.Module, pretrained_file: str) -> None:
    """Raise CheckpointError unless the file held every trunk weight.

    timm loads features_only weights with strict=False (the classifier is dropped), so a file whose
    keys do not match (another architecture, an unexpected prefix) would otherwise leave the trunk
    silently at random init. Keys are compared after timm's own cleaning (wrappers, `module.`).
    """
    from timm.models import load_state_dict

    try:
        file_keys = set(load_state_dict(pretrained_file))
    except Exception as error:  # any unreadable file is a checkpoint problem for the caller
        raise CheckpointError(f"{pretrained_file}: cannot read backbone weights: {error}") from error
    # Old torchvision checkpoints predate BatchNorm's counter; it carries no weight anyway.
    missing = [k for k in trunk.state_dict() if k not in file_keys and not k.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(
            f"{pretrained_file}: {len(missing)} backbone weights missing, e.g. {', '.join(missing[:5])}"
        )
