"""The fast re-ranking modes: int8 products against hand-made and float cases, mode parsing, and the
cascade's guarantee (its first M results are in exact order) against the model's own relation."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from indexer import retrieval
from models.device import configure_threads, usable_cores
from models.int8 import Int8Linear, int8_relation, quantize_rows
from models.rerank_mode import Reranking, RerankMode
from tests.support.relation_case import mode_scores, spread_case


def test_int8_linear_is_exact_where_both_sides_are_representable() -> None:
    # Rows whose largest magnitude is 127 quantise with scale 1: integers in [-127, 127] stay exact,
    # and the int32 product is the float product.
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(-127, 128, (5, 16), generator=generator).float()
    weight = torch.randint(-127, 128, (7, 16), generator=generator).float()
    x[:, 0], weight[:, 0] = 127.0, -127.0
    bias = torch.arange(7, dtype=torch.float32)
    layer = Int8Linear.from_weights(weight, bias)
    torch.testing.assert_close(layer(x), x @ weight.T + bias, rtol=0, atol=0)


def test_int8_linear_error_is_bounded_by_the_rounding_of_both_sides() -> None:
    generator = torch.Generator().manual_seed(1)
    x, weight = torch.randn(3, 40, 64, generator=generator), torch.randn(32, 64, generator=generator)
    layer = Int8Linear.from_weights(weight, None)
    got, expected = layer(x), x @ weight.T
    assert got.shape == (3, 40, 32)
    # Each factor is off by at most half a step (scale / 2); the product's error is at most
    # sum_k (|x_k| dw + |w_k| dx + dx dw).
    rows = x.reshape(-1, 64)
    dx = quantize_rows(rows)[1] / 2  # [M, 1]
    dw = (weight.abs().amax(dim=1) / 127 / 2)[None, :]  # [1, N]
    bound = rows.abs().sum(1, keepdim=True) * dw + dx * weight.abs().sum(1)[None, :] + 64 * dx * dw
    error = (got.reshape(-1, 32) - expected.reshape(-1, 32)).abs()
    assert bool((error <= bound + 1e-4).all())
    assert float(error.max()) > 0  # it is a quantisation, not a copy of the float layer


@pytest.mark.parametrize(("text", "label"), [("fp32", "fp32"), ("exact", "fp32"), ("BF16", "bf16"),
                                             ("int8+cascade20", "int8+cascade20"), (" bf16+cascade5 ", "bf16+cascade5"),
                                             ("prescore30", "fp32+prescore30"), ("bf16+Prescore5", "bf16+prescore5")])
def test_modes_parse_to_their_labels(text: str, label: str) -> None:
    assert RerankMode.parse(text).label == label


@pytest.mark.parametrize(("text", "message"), [("fp16", "must be one of fp32, bf16, int8"),
                                               ("fp32+cascade10", "needs a fast precision"),
                                               ("int8+cascadeX", "whole number"), ("int8+top10", "PRECISION+cascadeM"),
                                               ("bf16+cascade-1", "0 or more"), ("prescoreX", "prescore size must be"),
                                               ("int8+prescore-2", "0 or more"), ("bf16+cascade4+prescore2", "whole number")])
def test_bad_modes_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        RerankMode.parse(text)


def test_a_mode_takes_one_second_stage_and_only_prescore_modes_skip_exact_scores() -> None:
    with pytest.raises(ValueError, match="a cascade or a prescore stage, not both"):
        RerankMode("bf16", cascade=4, prescore=2)
    assert RerankMode().exact and not RerankMode("fp32", prescore=30).exact and not RerankMode("bf16").exact


@pytest.fixture(scope="module")
def encoded():
    """A zse-tiny whose relation scores spread over (0, 1), one sketch and 12 photos."""
    return spread_case()


def _scores(encoded, mode: str, ids: np.ndarray) -> np.ndarray:
    return mode_scores(encoded, mode, ids)


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_fast_precisions_stay_close_to_the_models_relation_but_are_not_it(encoded, mode: str) -> None:
    *_, exact = encoded
    assert exact.std() > 0.02
    scores = _scores(encoded, mode, np.arange(12))
    difference = np.abs(scores - exact)
    assert difference.max() < 0.05
    assert difference.max() > 0  # a fast mode, not a second exact path


@pytest.mark.parametrize("mode", ["bf16+cascade4", "int8+cascade4"])
def test_a_cascade_puts_its_top_m_first_with_exact_scores_and_keeps_the_rest_in_fast_order(encoded, mode: str
                                                                                         ) -> None:
    *_, exact = encoded
    ids = np.arange(12)[::-1].copy()  # any order: scores come back in the order asked
    fast = _scores(encoded, mode.split("+")[0], ids)
    scores = _scores(encoded, mode, ids)
    top = np.argsort(-fast, kind="stable")[:4]
    np.testing.assert_allclose(scores[top], exact[ids[top]], atol=1e-5, rtol=0)
    rest = np.setdiff1d(np.arange(12), top)
    assert scores[rest].max() < scores[top].min()
    np.testing.assert_array_equal(np.argsort(-scores[rest], kind="stable"), np.argsort(-fast[rest], kind="stable"))
    order = retrieval.order_by_relation(scores)
    np.testing.assert_array_equal(order[:4], top[np.argsort(-exact[ids[top]], kind="stable")])


def test_int8_layers_cover_every_large_product_of_the_relation_path(encoded) -> None:
    model, *_ = encoded
    quantized = int8_relation(model)
    assert quantized.photo.weight.shape == (model.config.embed_dim, 3 * model.config.embed_dim)
    assert set(quantized.layers) == {(name, part) for name in ("sketch_layer", "photo_layer")
                                     for part in ("out_proj", "fc1", "fc2")}
    assert Reranking.prepare(model, RerankMode()).int8 is None  # exact mode quantises nothing


def test_threads_follow_the_usable_cores() -> None:
    import os

    cores = usable_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        assert configure_threads(None) == cores == torch.get_num_threads()
        assert configure_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx2 {extra}
bugs\t\t: sysret_ss_attrs

processor\t: 1
flags\t\t: fpu sse2 avx2 {extra}
"""


@pytest.mark.parametrize(("extra", "bf16", "int8"), [
    ("", False, False),                                   # AVX2 only (the 2026-12-04 machine)
    ("avx512f avx512_vnni avx512_bf16", True, True),      # Zen 4
    ("avx_vnni", False, True),                            # VNNI without AVX-512
    ("amx_bf16 amx_int8", True, True),                    # Sapphire Rapids' AMX
])
def test_cpu_flags_decide_which_fast_precisions_pay(tmp_path, extra, bf16, int8) -> None:
    from models.device import bf16_supported, cpu_flags, int8_supported

    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO.format(extra=extra), encoding="ascii")
    flags = cpu_flags(path)
    assert {"fpu", "sse2", "avx2"} <= flags and "sysret_ss_attrs" not in flags  # the flags line, not bugs
    assert (bf16_supported(flags), int8_supported(flags)) == (bf16, int8)
    cpu = torch.device("cpu")
    bf16_note = RerankMode.parse("bf16+prescore50").slow_here(cpu, flags)
    int8_note = RerankMode.parse("int8+cascade10").slow_here(cpu, flags)
    assert (bf16_note is None) == bf16 and (int8_note is None) == int8
    if not bf16:
        assert "use fp32+prescore50" in bf16_note and "\n" not in bf16_note
    if not int8:
        assert "use fp32;" not in int8_note and int8_note.endswith("use fp32")  # a cascade needs bf16/int8
    # Exact mode, a CUDA device, or an unreadable cpuinfo: nothing to say / nothing known.
    assert RerankMode().slow_here(cpu, flags) is None
    assert RerankMode.parse("bf16").slow_here(torch.device("cuda"), frozenset()) is None
    assert cpu_flags(tmp_path / "missing") == frozenset()
