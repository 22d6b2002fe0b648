"""Model construction by preset name or config, for both families."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from models.config import ZSE_PRESETS, ZSEConfig


def _amff() -> Any:
    # Imported on demand: the AMFF module pulls in timm's ResNet, which ZSE users never need.
    from models import amff

    return amff


def preset_names() -> list[str]:
    return sorted([*ZSE_PRESETS, *_amff().AMFF_PRESETS])


def build_model(name_or_config: str | Any, pretrained: bool = True) -> nn.Module:
    """A model from a preset name ("zse-vit-b16", "zse-tiny", "amff-r50", "amff-tiny") or a config.

    pretrained=False skips backbone initialisation from `pretrained`/`pretrained_file` (used when a
    checkpoint's weights are about to replace them anyway).
    """
    config = name_or_config
    if isinstance(name_or_config, str):
        if name_or_config in ZSE_PRESETS:
            config = ZSE_PRESETS[name_or_config]
        elif name_or_config in _amff().AMFF_PRESETS:
            config = _amff().AMFF_PRESETS[name_or_config]
        else:
            raise ValueError(f"unknown model {name_or_config!r}; presets: {', '.join(preset_names())}")
    if isinstance(config, ZSEConfig):
        from models.zse import ZSEModel

        model = ZSEModel(config)
        if pretrained and config.pretrained:
            init_from_timm_vit(model, config.pretrained, config.pretrained_file)
        return model
    amff = _amff()
    if isinstance(config, amff.AMFFConfig):
        if not pretrained and config.pretrained_file:
            config = replace(config, pretrained_file=None)
        return amff.AMFFModel(config)
    raise TypeError(f"build_model takes a preset name or a model config, not {type(config).__name__}")


def config_from_dict(family: str, data: dict[str, Any]) -> Any:
    """Inverse of `config.to_dict()` for the given family."""
    if family == "zse":
        return ZSEConfig.from_dict(data)
    if family == "amff":
        return _amff().AMFFConfig.from_dict(data)
    raise ValueError(f"unknown model family {family!r}")


def init_from_timm_vit(model: nn.Module, name: str, file: str | None) -> None:
    """Copy a timm ViT's patch embedding, class token, position embedding, blocks and final norm into
    the ZSE self-attention encoder. The tokenizer's conv stack has no counterpart and keeps its init."""
    import timm

    config: ZSEConfig = model.config  # type: ignore[assignment]
    overlay = {"file": file} if file else None
    vit = timm.create_model(
        name,
        pretrained=True,
        pretrained_cfg_overlay=overlay,
        num_classes=0,
        img_size=config.image_size,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_dim / config.embed_dim,
    )
    source = vit.state_dict()
    renamed = {}
    for key, value in source.items():
        if key == "cls_token":
            renamed["ret_token"] = value
        elif key.startswith("patch_embed.proj."):
            renamed["tokenizer.patch." + key.removeprefix("patch_embed.proj.")] = value
        elif key == "pos_embed" or key.startswith(("blocks.", "norm.")):
            renamed[key] = value
    target = model.encoder.state_dict()  # type: ignore[union-attr]
    mismatched = [k for k, v in renamed.items() if k not in target or target[k].shape != v.shape]
    if mismatched:
        raise ValueError(f"timm model {name!r} does not fit the ZSE encoder: {', '.join(mismatched[:8])}")
    model.encoder.load_state_dict(renamed, strict=False)  # type: ignore[union-attr]
