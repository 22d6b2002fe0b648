"""ZSE model: shapes, parameter counts, selection, relation, checkpoints and the reference's function."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models import convert
from models.config import ZSE_PRESETS, ZSEConfig
from models.zse import select_tokens
from models.zse_loss import zse_loss
from tests.models import reference_forward

TSV = Path(__file__).resolve().parents[1] / "data" / "zse_reference_state_dict.tsv"


def expected_parameter_count(c: ZSEConfig) -> int:
    """Parameter count from the architecture description, term by term."""
    d, m, f, k = c.embed_dim, c.mlp_dim, c.cross_ff_dim, c.kernel_dim
    c1, c2, c3 = c.stack_channels
    a = c.num_anchors
    tokenizer = (3 * 16 * 16 * d + d) + (3 * c1 * 49 + c1 * c2 * 9 + c2 * c3 * 9 + c3 * d * 9)
    tokens = d + (1 + c.num_tokens) * d
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * m + m) + (m * d + d)
    cross_layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 4 * d
    downsample = d * k * 4 + k
    relation = (a * a * c.relation_hidden + c.relation_hidden) + (c.relation_hidden * a + a) + (a + 1)
    return tokenizer + tokens + c.depth * block + 2 * d + 2 * cross_layer + downsample + relation


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build_model("zse-tiny").eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 224, 224, generator=generator) * 2 - 1


def test_vit_b16_parameter_count_is_the_reference_less_its_unused_layer() -> None:
    model = models.build_model("zse-vit-b16")
    assert count(model) == 98_240_536
    assert count(model) == expected_parameter_count(ZSE_PRESETS["zse-vit-b16"])


def test_tiny_parameter_count_follows_the_architecture(tiny: torch.nn.Module) -> None:
    assert count(tiny) == expected_parameter_count(ZSE_PRESETS["zse-tiny"])
    assert count(tiny) < 2_000_000


def test_encode_shapes_and_normalised_ret(tiny: torch.nn.Module, images: torch.Tensor) -> None:
    with torch.no_grad():
        encoded = tiny.encode(images)
    assert encoded.ret.shape == (4, 96)
    assert encoded.tokens.shape == (4, 197, 96)
    assert encoded.kept is None
    torch.testing.assert_close(encoded.ret.norm(dim=1), torch.ones(4))
    # [Ret] embedding is the normalised first token of the self-attention output.
    torch.testing.assert_close(encoded.ret, torch.nn.functional.normalize(encoded.tokens[:, 0], dim=-1))


def test_eval_mode_is_deterministic(tiny: torch.nn.Module, images: torch.Tensor) -> None:
    with torch.no_grad():
        first = tiny.encode(images)
        second = tiny.encode(images)
        scores_a = tiny.relation(first.tokens[:1], first.tokens)
        scores_b = tiny.relation(second.tokens[:1], second.tokens)
    assert torch.equal(first.ret, second.ret)
    assert torch.equal(scores_a, scores_b)


def test_relation_scores_in_unit_interval_and_broadcast_equals_repeat(
    tiny: torch.nn.Module, images: torch.Tensor
) -> None:
    with torch.no_grad():
        tokens = tiny.encode(images).tokens
        broadcast = tiny.relation(tokens[:1], tokens)
        repeated = tiny.relation(tokens[:1].repeat(4, 1, 1), tokens)
        kernel = tiny.kernel(tokens[:1], tokens)
    assert broadcast.shape == (4,)
    assert ((broadcast > 0) & (broadcast < 1)).all()
    torch.testing.assert_close(broadcast, repeated, atol=1e-6, rtol=0)
    assert kernel.shape == (4, 49, 49)
    assert kernel.abs().max() <= 1 + 1e-5


def test_select_tokens_keeps_the_most_attended_in_order() -> None:
    x = torch.arange(11, dtype=torch.float32).view(1, 11, 1).repeat(1, 1, 2)  # token i holds value i
    # Two heads; head-mean attention of [Ret] to tokens 1..10.
    attention = torch.zeros(1, 2, 11)
    attention[0, 0, 1:] = torch.tensor([0.1, 0.9, 0.0, 0.5, 0.2, 0.8, 0.0, 0.3, 0.0, 0.6])
    attention[0, 1, 1:] = torch.tensor([0.1, 0.1, 0.0, 0.5, 0.2, 0.0, 0.0, 0.3, 0.0, 0.6])
    kept_x, index = select_tokens(x, attention, keep_rate=0.45)  # ceil(0.45 * 10) = 5
    # means: t1 .1, t2 .5, t4 .5, t5 .2, t6 .4, t8 .3, t10 .6 -> top 5 = t10, t2, t4, t6, t8
    assert index.tolist() == [[1, 3, 5, 7, 9]]  # positions among non-[Ret] tokens, sorted
    assert kept_x[0, :, 0].tolist() == [0, 2, 4, 6, 8, 10]


def test_token_selection_counts_follow_ceil_of_keep_rate(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    config = replace(ZSE_PRESETS["zse-tiny"], keep_rate_sketch=0.7, keep_rate_photo=0.5)
    model = models.build_model(config).eval()
    with torch.no_grad():
        sketch = model.encode(images, modality="sketch", trace=True)
        photo = model.encode(images, modality="photo")
        scores = model.relation(sketch.tokens[:1], photo.tokens, sketch.kept[:1], photo.kept)
    counts = [196]
    for _ in config.selection_layers:
        counts.append(math.ceil(0.7 * counts[-1]))
    assert [s.shape[1] for s in sketch.selections] == counts[1:]
    assert sketch.tokens.shape[1] == 1 + counts[-1]
    assert photo.tokens.shape[1] == 1 + math.ceil(0.5 * math.ceil(0.5 * math.ceil(0.5 * 196)))
    for later, earlier in zip(sketch.selections[1:], sketch.selections[:-1], strict=False):
        assert set(later[0].tolist()) <= set(earlier[0].tolist())
    assert (sketch.kept.diff(dim=1) > 0).all()  # original order
    assert ((scores > 0) & (scores < 1)).all()


def test_trace_gives_ret_attention_distributions(tiny: torch.nn.Module, images: torch.Tensor) -> None:
    with torch.no_grad():
        encoded = tiny.encode(images, trace=True)
    assert encoded.ret_attention.shape == (4, 3, 197)
    torch.testing.assert_close(encoded.ret_attention.sum(-1), torch.ones(4, 3))


def reference_format(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under the reference's names, plus the reference's unused CA layer."""
    state = convert.to_reference(model.state_dict())
    for key in [k for k in state if k.startswith("ca.encoder.layer1.0.")]:
        state[key.replace("ca.encoder.layer1.0.", "ca.encoder.layers.0.")] = torch.randn_like(state[key])
    return state


def test_reference_names_and_shapes_match_the_official_checkpoint() -> None:
    rows = [line.split("\t") for line in TSV.read_text().splitlines()[1:] if line.strip()]
    official = {key: tuple(int(n) for n in shape.strip("()").split(",") if n.strip()) for key, shape in rows}
    assert len(official) == 210
    ours = {k: tuple(v.shape) for k, v in reference_format(models.build_model("zse-vit-b16")).items()}
    assert ours == official


def test_reference_checkpoint_loads_to_identical_outputs(
    tiny: torch.nn.Module, images: torch.Tensor, tmp_path: Path
) -> None:
    path = tmp_path / "best_checkpoint.pth"
    torch.save(
        {"model": reference_format(tiny), "epoch": 7, "map_all": np.float64(0.7), "precision_100": 0.8}, path
    )
    loaded = models.load_checkpoint(path)
    assert not loaded.training
    assert loaded.config.embed_dim == 96 and loaded.config.depth == 4
    with torch.no_grad():
        a, b = tiny.encode(images), loaded.encode(images)
        assert torch.equal(a.ret, b.ret)
        assert torch.equal(tiny.relation(a.tokens[:1], a.tokens), loaded.relation(b.tokens[:1], b.tokens))


@pytest.mark.parametrize("preset", ["zse-tiny", "zse-vit-b16"])
def test_outputs_match_an_independent_reference_forward(preset: str, images: torch.Tensor) -> None:
    torch.manual_seed(3)
    model = models.build_model(preset).eval()
    # Larger-than-init weights on the embeddings so every path carries signal.
    with torch.no_grad():
        model.encoder.pos_embed.normal_(0, 0.5)
        model.encoder.ret_token.normal_(0, 0.5)
    state = convert.to_reference(model.state_dict())
    batch = images[:2] if preset == "zse-vit-b16" else images
    with torch.no_grad():
        ours = model.encode(batch)
        sa = reference_forward.self_attention(state, batch, heads=model.config.num_heads)
        ref_ret = torch.nn.functional.normalize(sa[:, 0], dim=-1)
        sketch = sa[:1].repeat(len(batch), 1, 1)
        ref_kernel, ref_scores = reference_forward.relation(state, sketch, sa, heads=model.config.cross_heads)
        our_kernel = model.kernel(ours.tokens[:1], ours.tokens)
        our_scores = model.relation(ours.tokens[:1], ours.tokens)
    assert (ours.ret - ref_ret).abs().max() < 1e-4
    assert (ours.tokens - sa).abs().max() < 1e-4
    assert (our_kernel - ref_kernel).abs().max() < 1e-4
    assert (our_scores - ref_scores).abs().max() < 1e-4


def test_own_checkpoint_round_trip_with_fp16_storage(
    tiny: torch.nn.Module, images: torch.Tensor, tmp_path: Path
) -> None:
    full = models.save_checkpoint(tiny, tmp_path / "full.pt", epoch=3)
    half = models.save_checkpoint(tiny, tmp_path / "half.pt", dtype=torch.float16)
    assert half.stat().st_size < full.stat().st_size * 0.6
    with torch.no_grad():
        expected = tiny.encode(images).ret
        assert torch.equal(models.load_checkpoint(full).encode(images).ret, expected)
        assert (models.load_checkpoint(half).encode(images).ret - expected).abs().max() < 2e-2
    assert torch.load(full, weights_only=True)["epoch"] == 3
    assert models.checkpoint_hash(full) != models.checkpoint_hash(half)
    assert not list(tmp_path.glob("*.tmp"))


def test_truncated_checkpoint_is_a_clear_error(tiny: torch.nn.Module, tmp_path: Path) -> None:
    path = models.save_checkpoint(tiny, tmp_path / "model.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(models.CheckpointError, match="model.pt: not a readable checkpoint"):
        models.load_checkpoint(path)
    with pytest.raises(models.CheckpointError, match="no such checkpoint file"):
        models.load_checkpoint(tmp_path / "absent.pt")


def test_a_text_or_pickled_object_file_is_not_a_checkpoint_without_torchs_unsafe_advice(tmp_path: Path) -> None:
    import pickle

    text = tmp_path / "notes.txt"
    text.write_text("these are my notes, not weights\n")
    with pytest.raises(models.CheckpointError) as caught:
        models.load_checkpoint(text)
    message = str(caught.value)
    assert message.startswith(f"{text}: not a checkpoint (it is a text file") and "\n" not in message
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(models.CheckpointError, match=r"empty\.pt: not a checkpoint \(the file is empty"):
        models.load_checkpoint(tmp_path / "empty.pt")
    # A pickle of arbitrary objects: refused, and the message never suggests weights_only=False.
    pickled = tmp_path / "objects.pt"
    pickled.write_bytes(pickle.dumps({"model": object()}, protocol=2))
    with pytest.raises(models.CheckpointError) as caught:
        models.load_checkpoint(pickled)
    message = str(caught.value)
    assert "objects.pt: not a readable checkpoint (it holds Python objects" in message
    assert "weights_only" not in message and "\n" not in message


def test_mismatched_reference_checkpoints_name_the_keys(tiny: torch.nn.Module, tmp_path: Path) -> None:
    state = reference_format(tiny)
    missing = dict(state)
    del missing["rn.rn.3.bias"]
    torch.save({"model": missing}, tmp_path / "missing.pth")
    with pytest.raises(models.CheckpointError, match=r"missing keys: relation_head\.layers\.3\.bias"):
        models.load_checkpoint(tmp_path / "missing.pth")

    extra = dict(state, **{"sa.model.extra_head.weight": torch.zeros(2)})
    torch.save({"model": extra}, tmp_path / "extra.pth")
    with pytest.raises(models.CheckpointError, match=r"sa\.model\.extra_head\.weight"):
        models.load_checkpoint(tmp_path / "extra.pth")

    wrong = dict(state, **{"rn.rn.6.weight": torch.zeros(1, 50)})
    torch.save({"model": wrong}, tmp_path / "wrong.pth")
    with pytest.raises(models.CheckpointError, match=r"shape mismatch.*relation_head\.layers\.6\.weight"):
        models.load_checkpoint(tmp_path / "wrong.pth")

    torch.save({"weights": {"a": torch.zeros(1)}}, tmp_path / "foreign.pth")
    with pytest.raises(models.CheckpointError, match="neither an sbir-service checkpoint"):
        models.load_checkpoint(tmp_path / "foreign.pth")


def test_conversion_is_a_pure_inverse_pair(tiny: torch.nn.Module) -> None:
    state = tiny.state_dict()
    reference = convert.to_reference(state)
    reference["ca.encoder.layers.0.feed_forward.w_1.bias"] = torch.zeros(128)  # dropped by name
    back = convert.from_reference(reference)
    assert back.keys() == state.keys()
    assert all(back[k] is state[k] for k in state)  # renaming only: the very same tensors


def test_one_step_lowers_each_zse_loss() -> None:
    torch.manual_seed(0)
    model = models.build_model(replace(ZSE_PRESETS["zse-tiny"], dropout=0.0)).train()
    generator = torch.Generator().manual_seed(5)
    sketches, positives, negatives = (torch.rand(3, 3, 3, 224, 224, generator=generator) * 2 - 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-2)

    def losses() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return zse_loss(model.training_forward(sketches, positives, negatives))

    total, parts = losses()
    assert parts["triplet"] > 0 and parts["relation"] > 0
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    with torch.no_grad():
        after_total, after_parts = losses()
    assert after_total < total
    assert after_parts["triplet"] < parts["triplet"]
    assert after_parts["relation"] < parts["relation"]


def test_zse_loss_matches_its_formula() -> None:
    from models.zse import TripletOutput

    out = TripletOutput(
        sketch_ret=torch.tensor([[0.0, 0.0]]),
        positive_ret=torch.tensor([[3.0, 4.0]]),  # d(a, p) = 5
        negative_ret=torch.tensor([[1.0, 0.0]]),  # d(a, n) = 1
        positive_scores=torch.tensor([0.5]),
        negative_scores=torch.tensor([1.0]),
        sketch_sa_ret=torch.tensor([[2.0, 0.0]]),  # normalised (1, 0)
        positive_sa_ret=torch.tensor([[0.0, 5.0]]),  # (0, 1): d(a, p) = sqrt(2)
        negative_sa_ret=torch.tensor([[3.0, 0.0]]),  # (1, 0): d(a, n) = 0
    )
    total, parts = zse_loss(out)
    # triplet: max(5 - 1 + 1, 0) = 5 (up to pairwise_distance's eps); MSE: ((0.5-0.99)^2 + (1-0.01)^2) / 2
    assert parts["triplet"].item() == pytest.approx(2 * 5.0, abs=1e-4)
    assert parts["relation"].item() == pytest.approx(4 * ((0.49**2 + 0.99**2) / 2), abs=1e-6)
    assert set(parts) == {"triplet", "relation"}  # the reference's loss: no SA [Ret] term by default
    assert total.item() == pytest.approx(parts["triplet"].item() + parts["relation"].item())

    # The optional SA [Ret] term on unit vectors: 3 * max(sqrt(2) - 0 + 0.2, 0).
    total, parts = zse_loss(out, ret_weight=3.0, ret_margin=0.2)
    assert parts["ret"].item() == pytest.approx(3 * (2**0.5 + 0.2), abs=1e-4)
    assert total.item() == pytest.approx(parts["triplet"].item() + parts["relation"].item() + parts["ret"].item())


def test_backbone_initialises_from_a_local_timm_file(tmp_path: Path) -> None:
    import timm

    config = ZSE_PRESETS["zse-tiny"]
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, embed_dim=96, depth=4, num_heads=3, mlp_ratio=2.0
    )
    file = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), file)
    model = models.build_model(replace(config, pretrained="vit_tiny_patch16_224", pretrained_file=str(file)))
    torch.testing.assert_close(model.encoder.blocks[2].attn.qkv.weight, vit.blocks[2].attn.qkv.weight)
    torch.testing.assert_close(model.encoder.ret_token, vit.cls_token)
    torch.testing.assert_close(model.encoder.tokenizer.patch.weight, vit.patch_embed.proj.weight)
