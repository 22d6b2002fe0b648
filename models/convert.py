"""Pure conversions between the reference ZSE-SBIR state_dict and this project's.

The reference key names and shapes are listed in `shared/reference/zse_official_state_dict.tsv`
(210 tensors). One table of renaming rules drives both directions, so they cannot drift apart.
The reference's `ca.encoder.layers.0.*` is a cross-attention layer its forward never uses; it is
dropped by name and nothing else is ever dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace

import torch

from models.config import ZSE_PRESETS, ZSEConfig
from models.types import CheckpointError

# (reference, ours): "{i}" stands for a block index; a rule ending in "." renames a prefix (the rest
# of the key is kept), any other rule renames a whole key.
_RULES: tuple[tuple[str, str], ...] = (
    ("sa.model.pos_embedding", "encoder.pos_embed"),
    ("sa.model.cls", "encoder.ret_token"),
    ("sa.model.embedding.", "encoder.tokenizer.patch."),
    ("sa.model.scale.seq.", "encoder.tokenizer.stack."),
    ("sa.model.transformer.encoder_norm.", "encoder.norm."),
    ("sa.model.transformer.layers.{i}.0.layer_norm_input.", "encoder.blocks.{i}.norm1."),
    ("sa.model.transformer.layers.{i}.0.layer_norm_out.", "encoder.blocks.{i}.norm2."),
    ("sa.model.transformer.layers.{i}.0.attention.to_qkv.", "encoder.blocks.{i}.attn.qkv."),
    ("sa.model.transformer.layers.{i}.0.attention.to_out.0.", "encoder.blocks.{i}.attn.proj."),
    ("sa.model.transformer.layers.{i}.0.mlp.net.0.", "encoder.blocks.{i}.mlp.fc1."),
    ("sa.model.transformer.layers.{i}.0.mlp.net.3.", "encoder.blocks.{i}.mlp.fc2."),
    *(
        rule
        for ref_layer, our_layer in (("layer1", "sketch_layer"), ("layer2", "photo_layer"))
        for rule in (
            (f"ca.encoder.{ref_layer}.0.self_attn.linears.0.", f"cross.{our_layer}.q_proj."),
            (f"ca.encoder.{ref_layer}.0.self_attn.linears.1.", f"cross.{our_layer}.k_proj."),
            (f"ca.encoder.{ref_layer}.0.self_attn.linears.2.", f"cross.{our_layer}.v_proj."),
            (f"ca.encoder.{ref_layer}.0.self_attn.linears.3.", f"cross.{our_layer}.out_proj."),
            (f"ca.encoder.{ref_layer}.0.feed_forward.w_1.", f"cross.{our_layer}.fc1."),
            (f"ca.encoder.{ref_layer}.0.feed_forward.w_2.", f"cross.{our_layer}.fc2."),
            (f"ca.encoder.{ref_layer}.0.sublayer.0.norm.a", f"cross.{our_layer}.norm1.weight"),
            (f"ca.encoder.{ref_layer}.0.sublayer.0.norm.b", f"cross.{our_layer}.norm1.bias"),
            (f"ca.encoder.{ref_layer}.0.sublayer.1.norm.a", f"cross.{our_layer}.norm2.weight"),
            (f"ca.encoder.{ref_layer}.0.sublayer.1.norm.b", f"cross.{our_layer}.norm2.bias"),
        )
    ),
    ("conv2d.", "downsample."),
    ("rn.rn.", "relation_head.layers."),
)

UNUSED_REFERENCE_PREFIX = "ca.encoder.layers.0."


def _compile(template: str) -> re.Pattern[str]:
    body = re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)")
    return re.compile("^" + body + ("(?P<rest>.+)$" if template.endswith(".") else "$"))


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, target in rules:
        match = pattern.match(key)
        if match:
            groups = match.groupdict()
            renamed = target.replace("{i}", groups.get("i") or "")
            return renamed + (groups.get("rest") or "")
    return None


_FROM_REFERENCE = [(_compile(ref), ours) for ref, ours in _RULES]
_TO_REFERENCE = [(_compile(ours), ref) for ref, ours in _RULES]


def is_reference_state_dict(state_dict: Mapping[str, object]) -> bool:
    """True for a state_dict with the reference's key names (possibly DataParallel-prefixed)."""
    return any(key.removeprefix("module.").startswith("sa.model.") for key in state_dict)


def from_reference(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference ZSE-SBIR state_dict -> this project's ZSEModel state_dict.

    Drops `ca.encoder.layers.0.*` (unused by the reference forward) and a DataParallel `module.`
    prefix. Any key no rule knows is a CheckpointError naming it.
    """
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for raw_key, tensor in state_dict.items():
        key = raw_key.removeprefix("module.")
        if key.startswith(UNUSED_REFERENCE_PREFIX):
            continue
        renamed = _rename(key, _FROM_REFERENCE)
        if renamed is None:
            unknown.append(raw_key)
        else:
            converted[renamed] = tensor
    if unknown:
        raise CheckpointError(f"unexpected keys in reference checkpoint: {_list(unknown)}")
    return converted


def to_reference(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This project's ZSEModel state_dict -> the reference's key names (inverse of from_reference,
    without the unused layer, which the caller may add)."""
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        renamed = _rename(key, _TO_REFERENCE)
        if renamed is None:
            raise CheckpointError(f"no reference name for key {key!r}")
        converted[renamed] = tensor
    return converted


def config_from_reference(state_dict: Mapping[str, torch.Tensor]) -> ZSEConfig:
    """Read the architecture sizes off a converted (our names) reference state_dict.

    The head counts are not visible in shapes; the reference uses 64-wide SA heads and 8 CA heads.
    """
    base = ZSE_PRESETS["zse-vit-b16"]
    try:
        dim = state_dict["encoder.pos_embed"].shape[-1]
        depth = 1 + max(
            int(key.split(".")[2]) for key in state_dict if key.startswith("encoder.blocks.")
        )
        mlp_dim = state_dict["encoder.blocks.0.mlp.fc1.weight"].shape[0]
        stack = tuple(state_dict[f"encoder.tokenizer.stack.{i}.weight"].shape[0] for i in (0, 2, 4))
        cross_ff = state_dict["cross.sketch_layer.fc1.weight"].shape[0]
        kernel_dim = state_dict["downsample.weight"].shape[0]
        hidden = state_dict["relation_head.layers.0.weight"].shape[0]
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"reference checkpoint lacks a key needed to size the model: {error}") from None
    sized = dict(
        embed_dim=dim,
        depth=depth,
        mlp_dim=mlp_dim,
        stack_channels=stack,
        cross_ff_dim=cross_ff,
        kernel_dim=kernel_dim,
        relation_hidden=hidden,
    )
    # A preset with exactly these sizes also tells the head counts; otherwise the reference's.
    for preset in ZSE_PRESETS.values():
        if all(getattr(preset, field) == value for field, value in sized.items()):
            return preset
    return replace(base, name="zse-reference", num_heads=max(1, dim // 64), **sized)  # type: ignore[arg-type]


def _list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")
