"""INT8 rowwise, FP8 E4M3 and check_finite against float64 math written out independently.

`float32(float64(a) / float64(b))` is the correctly rounded fp32 quotient, so the oracle follows
the fp32 contract exactly. E4M3 rounding is a brute-force search over the grid built from all
256 bit patterns, ties to the even code.
"""

from __future__ import annotations

import pytest
import torch

from dq_kernels.checks import NonFiniteError, check_finite, finite_checks_on
from dq_kernels.fp8 import dequantize_fp8, quantize_fp8
from dq_kernels.int8 import dequantize_int8, quantize_int8_rowwise

F64 = torch.float64
# Codes 0..126 are the finite non-negative E4M3 values, ascending (127 is NaN).
E4M3_MAGS = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(F64)[:127]


def f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).to(F64)


def round_half_even(q: torch.Tensor) -> torch.Tensor:
    f = torch.floor(q)
    d = q - f
    return f + (d > 0.5) + ((d == 0.5) & (torch.remainder(f, 2) == 1))


def ref_e4m3(v: torch.Tensor) -> torch.Tensor:
    """Nearest E4M3 value (ties to even code, saturating at 448), sign kept."""
    d = (v.abs().unsqueeze(-1) - E4M3_MAGS).abs()
    nearest = d == d.min(dim=-1, keepdim=True).values
    odd = torch.arange(127) % 2
    idx = torch.where(nearest, odd, 2).argmin(dim=-1)
    return torch.copysign(E4M3_MAGS[idx], v)


# ---- INT8 ---------------------------------------------------------------------------------


def ref_int8(x: torch.Tensor):
    x = x.to(torch.float32).to(F64)
    s = f32(x.abs().amax(-1, keepdim=True) / 127)
    q = torch.where(s > 0, f32(x / s), 0.0)
    return round_half_even(q).clamp(-127, 127).to(torch.int8), s


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_int8_random_matches_reference(seed):
    g = torch.Generator().manual_seed(40 + seed)
    x = torch.randn(2, 33, 320, generator=g) * torch.exp(3 * torch.randn(2, 33, 1, generator=g))
    codes, scales = quantize_int8_rowwise(x)
    rc, rs = ref_int8(x)
    assert codes.dtype == torch.int8 and scales.dtype == torch.float32
    assert scales.shape == (2, 33, 1)
    assert torch.equal(scales.to(F64), rs) and torch.equal(codes, rc)
    # |x/s| <= 127·(1 + 2**-24): the nearest code is never clipped, so the error is at most
    # s/2 plus the fp32 rounding of x/s and of code·s.
    err = (x.to(F64) - dequantize_int8(codes, scales).to(F64)).abs()
    assert (err <= rs / 2 * (1 + 2.0**-20)).all()


def test_int8_edges():
    s = 2.0**-3  # amax 127/8 -> s = 1/8 exactly, so (k + 1/2)·s are exact ties
    row0 = torch.tensor([127 * s, 0.5 * s, 1.5 * s, -2.5 * s, 126.5 * s, -0.0] + [0.0] * 58)
    x = torch.stack([row0, torch.zeros(64), torch.full((64,), 1e-30), torch.full((64,), -1e30)])
    x[2, 0] = 3e-30
    codes, scales = quantize_int8_rowwise(x)
    assert codes[0, :6].tolist() == [127, 0, 2, -2, 126, 0]
    assert scales[1].item() == 0.0 and codes[1].eq(0).all()
    assert codes[3].eq(-127).all()
    out = dequantize_int8(codes, scales)
    assert torch.isfinite(out).all() and out[1].eq(0).all()
    rc, rs = ref_int8(x)
    assert torch.equal(codes, rc) and torch.equal(scales.to(F64), rs)
    assert dequantize_int8(codes, scales, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError):
        dequantize_int8(codes, scales.squeeze(-1))


def test_int8_bf16_input():
    g = torch.Generator().manual_seed(8)
    x = (torch.randn(16, 128, generator=g) * 100).to(torch.bfloat16)
    codes, scales = quantize_int8_rowwise(x)
    rc, rs = ref_int8(x)
    assert torch.equal(codes, rc) and torch.equal(scales.to(F64), rs)


# ---- FP8 ----------------------------------------------------------------------------------


def ref_fp8(x: torch.Tensor, group_size: int | None):
    x = x.to(torch.float32).to(F64)
    gs = x.shape[-1] if group_size is None else group_size
    xg = x.reshape(*x.shape[:-1], -1, gs)
    s = f32(xg.abs().amax(-1, keepdim=True) / 448)
    v = torch.where(s > 0, f32(xg / s), 0.0)
    return ref_e4m3(v).reshape(x.shape), s.squeeze(-1)


def test_e4m3_grid_sanity():
    assert E4M3_MAGS[-1].item() == 448.0 and E4M3_MAGS[1].item() == 2.0**-9
    assert (E4M3_MAGS[1:] > E4M3_MAGS[:-1]).all()


@pytest.mark.parametrize("group_size", [None, 64, 32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fp8_random_matches_reference(group_size, seed):
    g = torch.Generator().manual_seed(60 + seed)
    x = torch.randn(3, 21, 256, generator=g) * torch.exp(3 * torch.randn(3, 21, 1, generator=g))
    values, scales = quantize_fp8(x, group_size)
    rv, rs = ref_fp8(x, group_size)
    n_scales = 1 if group_size is None else 256 // group_size
    assert values.dtype == torch.float8_e4m3fn and scales.dtype == torch.float32
    assert scales.shape == (3, 21, n_scales)
    assert torch.equal(scales.to(F64), rs)
    assert torch.equal(values.to(F64), rv)
    out = dequantize_fp8(values, scales, group_size)
    gs = 256 if group_size is None else group_size
    assert torch.equal(out.to(F64), f32(rv * rs.repeat_interleave(gs, dim=-1)))


def test_fp8_ties_and_subnormals():
    # amax 448 -> s = 1: the values are their own E4M3 units.
    ties = [1.0625, 1.1875, 2.0**-10, 3 * 2.0**-10, 240.0, 432.0, -1.0625]
    # 1.0625 between 1 (even code) and 1.125; 1.1875 between 1.125 and 1.25 (even);
    # 2**-10 between 0 and 2**-9; 3·2**-10 between 2**-9 and 2**-8 (even); 240 is on the grid;
    # 432 between 416 and 448 (even); the sign is kept.
    x = torch.tensor([448.0] + ties + [0.0] * 8)
    values, scales = quantize_fp8(x)
    assert scales.item() == 1.0
    assert values.float()[:8].tolist() == [448.0, 1.0, 1.25, 0.0, 2.0**-8, 240.0, 448.0, -1.0]


def test_fp8_clamps_when_the_quotient_passes_448():
    # Find rows whose fp32 scale amax/448 rounds down, so fp32(amax/s) > 448: the explicit clamp
    # must give 448 (a bare cast on a GPU without satfinite would give NaN).
    g = torch.Generator().manual_seed(12)
    amax = torch.rand(4096, generator=g) * 1000 + 1
    s = amax / 448
    over = amax / s > 448
    assert over.any()
    x = amax[over].unsqueeze(-1) * torch.tensor([1.0, -1.0, 0.5])
    values, _ = quantize_fp8(x)
    assert values.float()[:, 0].eq(448).all() and values.float()[:, 1].eq(-448).all()


def test_fp8_zero_row_and_group_tiny_and_huge():
    x = torch.zeros(3, 128)
    x[1, 64:] = torch.linspace(-1e30, 1e30, 64)
    x[2, :64] = torch.linspace(-1e-30, 1e-30, 64)
    x[0, 5] = -0.0
    for group_size in (None, 64):
        values, scales = quantize_fp8(x, group_size)
        assert scales[0].eq(0).all() and values.float()[0].eq(0).all()
        out = dequantize_fp8(values, scales, group_size)
        assert torch.isfinite(out).all() and out[0].eq(0).all()
        rv, rs = ref_fp8(x, group_size)
        assert torch.equal(values.to(F64), rv) and torch.equal(scales.to(F64), rs)
    _, scales = quantize_fp8(x, 64)
    assert scales[1, 0].item() == 0.0 and scales[2, 1].item() == 0.0


def test_fp8_bf16_input_and_bad_shapes():
    g = torch.Generator().manual_seed(13)
    x = (torch.randn(8, 192, generator=g) * 7).to(torch.bfloat16)
    values, scales = quantize_fp8(x, 64)
    rv, rs = ref_fp8(x, 64)
    assert torch.equal(values.to(F64), rv) and torch.equal(scales.to(F64), rs)
    assert dequantize_fp8(values, scales, 64, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="multiple of 64"):
        quantize_fp8(torch.randn(2, 100), 64)
    with pytest.raises(ValueError):
        dequantize_fp8(values, scales)  # per-group scales passed as per-token


# ---- check_finite -------------------------------------------------------------------------


def test_check_finite_passes_finite_tensors():
    check_finite(torch.randn(4, 8), "blocks.0.ffn")
    check_finite(torch.randn(4, 8).to(torch.bfloat16), "blocks.0.ffn")
    check_finite(torch.arange(10), "ints")
    check_finite(torch.empty(0), "empty")


def test_check_finite_names_the_layer_and_counts():
    x = torch.zeros(4, 8)
    x[1, 2] = float("nan")
    x[2, 3] = float("nan")
    x[3, 0] = float("-inf")
    with pytest.raises(NonFiniteError) as info:
        check_finite(x, "blocks.3.attn1.to_q")
    msg = str(info.value)
    assert "blocks.3.attn1.to_q" in msg and "2 NaN and 1 inf" in msg and "(1, 2)" in msg
    assert isinstance(info.value, ValueError)
    with pytest.raises(NonFiniteError, match="layer 'w': weight has 0 NaN and 1 inf"):
        check_finite(torch.tensor([1.0, float("inf")]).to(torch.bfloat16), "w", what="weight")


def test_finite_checks_follow_the_environment(monkeypatch):
    x = torch.zeros(2)
    monkeypatch.delenv("DQ_CHECK_FINITE", raising=False)
    assert finite_checks_on(x)  # auto: on for CPU tensors (a GPU's would be off: no sync per layer)
    monkeypatch.setenv("DQ_CHECK_FINITE", "0")
    assert not finite_checks_on(x)
    monkeypatch.setenv("DQ_CHECK_FINITE", "1")
    assert finite_checks_on(x)
