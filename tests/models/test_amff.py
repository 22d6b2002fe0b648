"""AMFF embedding model and FFMLN losses, checked against independent computations."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import timm
import torch

from models.amff import AMFF_PRESETS, AMFFConfig, AMFFModel
from models.ffmln_loss import ffmln_loss, freeze_classifier, l_cls, l_cro, l_mul, l_norm, l_sin
from models.types import CheckpointError

TINY = AMFF_PRESETS["amff-tiny"]


# ---------------------------------------------------------------- model


def test_presets_follow_the_paper():
    r50 = AMFF_PRESETS["amff-r50"]
    assert (r50.backbone, r50.stages, r50.embed_dim, r50.image_size) == ("resnet50", (2, 3, 4), 512, 224)
    assert r50.pretrained_file is None and r50.num_classes == 0
    assert AMFFConfig.from_dict(r50.to_dict()) == r50
    # JSON turns tuples into lists; from_dict must give back an equal (hashable) config.
    data = {**TINY.to_dict(), "stages": [2, 3, 4]}
    assert AMFFConfig.from_dict(data) == TINY
    with pytest.raises(ValueError, match="unknown AMFF config keys"):
        AMFFConfig.from_dict({**data, "depth": 3})


def test_encode_shapes_norm_and_forward():
    torch.manual_seed(0)
    model = AMFFModel(TINY).eval()
    assert model.family == "amff" and model.config is TINY and model.embed_dim == 64
    assert [b.kernel for b in model.branches] == [7, 7, 7]  # the paper's kernel at 224 (28, 14, 7 maps)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = model.encode(images)
        again = model(images)
    assert out.ret.shape == (2, 64) and out.tokens is None and out.kept is None
    torch.testing.assert_close(out.ret.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(again.ret, out.ret)
    assert model.classifier is None and model.proxies is None


def test_eval_mode_is_deterministic_and_per_image():
    torch.manual_seed(0)
    model = AMFFModel(replace(TINY, image_size=128)).eval()
    images = torch.randn(3, 3, 128, 128)
    with torch.no_grad():
        first = model.encode(images).ret
        second = model.encode(images).ret
        alone = model.encode(images[1:2]).ret
    assert torch.equal(first, second)
    # Eval-mode BatchNorm uses running statistics: an image's embedding ignores the rest of the batch.
    torch.testing.assert_close(alone[0], first[1], atol=1e-5, rtol=1e-5)


def test_small_maps_use_smaller_patch_kernels():
    torch.manual_seed(0)
    model = AMFFModel(replace(TINY, image_size=64)).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = model.trunk(images)
        ret = model.encode(images).ret
    # ResNet-10-T stage maps at 64 px are 8, 4, 2 wide: kernels min(7, side).
    assert [m.shape[-1] for m in maps] == [8, 4, 2]
    assert [b.kernel for b in model.branches] == [7, 4, 2]
    assert ret.shape == (2, 64)


def test_input_size_other_than_configured():
    torch.manual_seed(0)
    model = AMFFModel(replace(TINY, image_size=128)).eval()
    with torch.no_grad():
        # Larger inputs are pooled to the configured last-stage grid before the projection.
        assert model.encode(torch.randn(1, 3, 160, 160)).ret.shape == (1, 64)
        # A last-stage map of 2 cannot hold the 4-wide kernel chosen for 128 px (map 4).
        with pytest.raises(ValueError, match="smaller than the patch kernel"):
            model.encode(torch.randn(1, 3, 64, 64))


def _expected_parameter_count(config: AMFFConfig, channels: list[int], strides: list[int]) -> int:
    """Parameter count from the module structure, written out term by term."""
    trunk = timm.create_model(config.backbone, num_classes=0)  # the backbone without its classifier
    total = sum(p.numel() for p in trunk.parameters())
    attn, embed, classes = config.attn_dim, config.embed_dim, config.num_classes
    sides = [-(-config.image_size // s) for s in strides]
    for c, side in zip(channels, sides, strict=True):
        kernel = min(7, side)
        total += c * attn * kernel * kernel + attn  # patch conv weight + bias
        total += 3 * attn * attn + 3 * attn  # attention in-projection (q, k, v) weight + bias
        total += attn * attn + attn  # attention out-projection
        total += 2 * attn  # LayerNorm
    total += (channels[-1] + attn) * sides[-1] ** 2 * embed + embed  # projection of the spliced map
    total += embed * classes + classes + classes * embed  # classifier + proxies
    return total


@pytest.mark.parametrize(
    ("config", "channels", "expected"),
    [
        # Hand check for amff-tiny at 224, K = 5: trunk 4,922,488 + patch convs 1,405,024
        # + attention/LayerNorm 12,864 + projection 1,706,048 + classifier 325 + proxies 320.
        (replace(TINY, num_classes=5), [128, 256, 512], 8_047_069),
        (replace(TINY, image_size=64), [128, 256, 512], None),
        (AMFF_PRESETS["amff-r50"], [512, 1024, 2048], 236_123_456),
    ],
    ids=["tiny-k5", "tiny-64px", "r50"],
)
def test_parameter_count(config, channels, expected):
    # Built on the meta device: shapes only, so even amff-r50 costs no memory or init time.
    with torch.device("meta"):
        model = AMFFModel(config)
        formula = _expected_parameter_count(config, channels, [8, 16, 32])
    count = sum(p.numel() for p in model.parameters())
    assert count == formula
    if expected is not None:
        assert count == expected


def _perturbed_source(features_only: bool) -> torch.nn.Module:
    torch.manual_seed(1)
    if features_only:
        source = timm.create_model("resnet10t", features_only=True, out_indices=(2, 3, 4))
    else:  # a whole classifier, as ImageNet checkpoints are
        source = timm.create_model("resnet10t")
    with torch.no_grad():
        for name, buffer in source.named_buffers():
            if name.endswith("running_mean"):  # so that buffers are checked too, not only weights
                buffer.normal_()
    return source


@pytest.mark.parametrize("features_only", [True, False], ids=["trunk-state-dict", "full-model-state-dict"])
def test_pretrained_file_is_honoured(tmp_path, features_only):
    source = _perturbed_source(features_only)
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    model = AMFFModel(replace(TINY, pretrained_file=str(path)))
    saved = source.state_dict()
    trunk = model.trunk.state_dict()
    assert len(trunk) > 50
    for key, value in trunk.items():
        assert torch.equal(value, saved[key]), key
    torch.manual_seed(2)
    plain = AMFFModel(TINY)
    assert not torch.equal(plain.trunk.state_dict()["conv1.0.weight"], trunk["conv1.0.weight"])


def test_pretrained_file_with_wrong_keys_or_missing_raises(tmp_path):
    path = tmp_path / "prefixed.pth"
    torch.save({"encoder." + k: v for k, v in _perturbed_source(True).state_dict().items()}, path)
    with pytest.raises(CheckpointError, match="backbone weights missing"):
        AMFFModel(replace(TINY, pretrained_file=str(path)))
    with pytest.raises(CheckpointError, match="not found"):
        AMFFModel(replace(TINY, pretrained_file=str(tmp_path / "absent.pth")))


# ---------------------------------------------------------------- losses, brute force


def _dist(u, v):
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v, strict=True)))


def _brute_triplet(anchors, anchor_labels, positives, positive_labels, negatives, negative_labels,
                   margin, mining, same_set):
    """Enumerate every triplet; hard = per-anchor largest hinge averaged over anchors."""
    per_anchor, every = [], []
    for i, a in enumerate(anchors):
        hinges = []
        for j, p in enumerate(positives):
            if positive_labels[j] != anchor_labels[i] or (same_set and j == i):
                continue
            for k, n in enumerate(negatives):
                if negative_labels[k] == anchor_labels[i]:
                    continue
                hinges.append(max(0.0, _dist(a, p) - _dist(a, n) + margin))
        if hinges:
            per_anchor.append(max(hinges))
            every.extend(hinges)
    chosen = per_anchor if mining == "hard" else every
    return sum(chosen) / len(chosen) if chosen else 0.0


def _brute_softmax_ce(logit_rows, labels):
    total = 0.0
    for row, y in zip(logit_rows, labels, strict=True):
        top = max(row)
        total += top + math.log(sum(math.exp(v - top) for v in row)) - row[y]
    return total / len(labels)


@pytest.fixture
def batch():
    """5 sketches, 6 photos, 4-d; sketch class 2 has one sketch (no single-modal positive) and photo
    class 3 has no sketch (no cross-modal positive), so anchors without triplets are exercised."""
    gen = torch.Generator().manual_seed(7)
    sketch = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    photo = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    return sketch, torch.tensor([0, 0, 1, 1, 2]), photo, torch.tensor([0, 1, 1, 2, 2, 3])


@pytest.mark.parametrize("mining", ["hard", "all"])
@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_triplet_losses_match_enumeration(batch, mining, margin):
    sk, skl, ph, phl = batch
    S, P, sl, pl = sk.tolist(), ph.tolist(), skl.tolist(), phl.tolist()

    def brute(a, al, p, plab, n, nl, same=False):
        return _brute_triplet(a, al, p, plab, n, nl, margin, mining, same)

    expected = {
        "sin": brute(S, sl, S, sl, S, sl, True) + brute(P, pl, P, pl, P, pl, True),
        "mul": brute(S, sl, P, pl, S, sl) + brute(P, pl, S, sl, P, pl),
        "cro": brute(S, sl, P, pl, P, pl) + brute(P, pl, S, sl, S, sl),
    }
    got = {name: fn(sk, skl, ph, phl, margin=margin, mining=mining).item()
           for name, fn in (("sin", l_sin), ("mul", l_mul), ("cro", l_cro))}
    for name, value in expected.items():
        assert value > 0, name  # the batch must make every term non-trivial
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name


def test_triplet_loss_without_valid_triplets_is_zero_and_differentiable():
    emb = torch.randn(3, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 0])  # no negatives anywhere
    loss = l_sin(emb, labels, emb, labels)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(emb.grad, torch.zeros(3, 4))


def test_l_norm_and_l_cls_match_enumeration(batch):
    sk, skl, ph, phl = batch
    emb = torch.cat([sk, ph])
    labels = torch.cat([skl, phl]).tolist()
    gen = torch.Generator().manual_seed(3)
    proxies = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    classifier = torch.nn.Linear(4, 4).double()

    def cos(u, v):
        return sum(a * b for a, b in zip(u, v, strict=True)) / (_dist(u, [0] * 4) * _dist(v, [0] * 4))

    rows = emb.tolist()
    norm_logits = [[cos(x, w) / 0.05 for w in proxies.tolist()] for x in rows]
    weight, bias = classifier.weight.tolist(), classifier.bias.tolist()
    cls_logits = [[sum(wk[e] * x[e] for e in range(4)) + bk for wk, bk in zip(weight, bias, strict=True)]
                  for x in rows]
    assert l_norm(emb, torch.tensor(labels), proxies).item() == pytest.approx(
        _brute_softmax_ce(norm_logits, labels), rel=1e-9)
    assert l_cls(emb, torch.tensor(labels), classifier).item() == pytest.approx(
        _brute_softmax_ce(cls_logits, labels), rel=1e-9)


def test_ffmln_total_combines_parts(batch):
    sk, skl, ph, phl = batch
    torch.manual_seed(0)
    with torch.device("meta"):
        shell = AMFFModel(replace(TINY, embed_dim=4, num_classes=4))
    shell.classifier = torch.nn.Linear(4, 4).double()
    shell.proxies = torch.nn.Parameter(torch.randn(4, 4, dtype=torch.float64))
    total, parts = ffmln_loss(shell, sk, skl, ph, phl, lam=0.7, margin=0.3)
    emb, labels = torch.cat([sk, ph]), torch.cat([skl, phl])
    assert parts["norm"].item() == pytest.approx(l_norm(emb, labels, shell.proxies).item())
    assert parts["cls"].item() == pytest.approx(l_cls(emb, labels, shell.classifier).item())
    assert parts["sin"].item() == pytest.approx(l_sin(sk, skl, ph, phl, margin=0.3).item())
    assert parts["mul"].item() == pytest.approx(l_mul(sk, skl, ph, phl, margin=0.3).item())
    assert parts["cro"].item() == pytest.approx(l_cro(sk, skl, ph, phl, margin=0.3).item())
    by_hand = parts["norm"] + 0.7 * (parts["cls"] + parts["sin"] + parts["mul"])  # Eq. 9, no L_cro
    assert total.item() == pytest.approx(by_hand.item()) and parts["total"] is total
    with pytest.raises(ValueError, match="num_classes"):
        with torch.device("meta"):
            ffmln_loss(AMFFModel(TINY), sk, skl, ph, phl)


# ---------------------------------------------------------------- training step


@pytest.mark.parametrize("part", ["norm", "cls", "sin", "mul", "cro", "total"])
def test_one_adamw_step_lowers_each_loss(part):
    """One AdamW step on that loss alone lowers it on the same fixed batch.

    The model stays in train mode: BatchNorm then normalises with the batch's own statistics, which
    for a fixed batch makes the loss a fixed function of the weights, before and after the step.
    The classifier is frozen (Algorithm 1), so L_cls can only fall through the embedding.
    """
    torch.manual_seed(0)
    model = freeze_classifier(AMFFModel(replace(TINY, image_size=128, num_classes=3))).train()
    classifier_before = copy.deepcopy(model.classifier.state_dict())
    proxies_before = model.proxies.detach().clone()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(12, 3, 128, 128, generator=gen)  # 6 sketches then 6 photos
    labels = torch.tensor([0, 0, 1, 1, 2, 2])

    def loss_value():
        ret = model(images).ret
        _, parts = ffmln_loss(model, ret[:6], labels, ret[6:], labels)
        return parts[part]

    # The paper's AdamW settings. Adam's first step moves every weight by about lr whatever its
    # gradient's size, so a larger lr overshoots L_norm (logits scaled by 1 / 0.05) on this batch.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5,
                                  weight_decay=5e-4)
    before = loss_value()
    assert before.item() > 0
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = loss_value()
    assert after.item() < before.item()
    for key, value in model.classifier.state_dict().items():
        assert torch.equal(value, classifier_before[key])
    assert torch.equal(model.proxies, proxies_before) == (part not in ("norm", "total"))
