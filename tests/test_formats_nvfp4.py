"""NVFP4 reference (dq_kernels.nvfp4) against float64 math, torchao and ModelOpt.

The float64 oracle reproduces the fp32 contract exactly: every fp32 step of the module is one
IEEE operation on fp32 operands, and float64's 53 bits make `float32(float64(a) op float64(b))`
the correctly rounded fp32 result for + - * /. Rounding to E2M1 and E4M3 is a brute-force
nearest-grid-point search, ties to the even code.
"""

from __future__ import annotations

import pytest
import torch

from dq_kernels.nvfp4 import (
    dequantize_nvfp4,
    e2m1_to_float,
    float_to_e2m1,
    nvfp4_tensor_scale,
    pack_fp4,
    quantize_nvfp4,
    unpack_fp4,
)

F64 = torch.float64
E2M1_MAGS = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=F64)
# All 256 E4M3 bit patterns; codes 0..126 are the finite non-negative values, ascending.
E4M3_MAGS = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(F64)[:127]


def f32(t: torch.Tensor) -> torch.Tensor:
    """Round float64 values to fp32 (round to nearest even), back in float64."""
    return t.to(torch.float32).to(F64)


def nearest_even_index(a: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Index of the grid value nearest to each a >= 0; on a tie the even index wins."""
    d = (a.unsqueeze(-1) - grid).abs()
    nearest = d == d.min(dim=-1, keepdim=True).values
    odd = (torch.arange(grid.numel()) % 2).bool()
    score = torch.where(nearest, odd.to(torch.int64), 2)
    return score.argmin(dim=-1)


def ref_e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    idx = nearest_even_index(v.to(F64).abs(), E2M1_MAGS)
    return (idx + 8 * (v < 0).to(torch.int64)).to(torch.uint8)


def ref_e4m3(v: torch.Tensor) -> torch.Tensor:
    return E4M3_MAGS[nearest_even_index(v, E4M3_MAGS)]


def ref_quantize(x: torch.Tensor, tensor_scale: float | None = None, block: int = 16):
    """ModelOpt's convention, written out in float64 (see the module docstring of nvfp4.py)."""
    x = x.to(torch.float32).to(F64)
    if tensor_scale is None:
        ts = f32(x.abs().amax() / 2688.0)
        ts = ts if ts > 0 else torch.tensor(1.0, dtype=F64)
    else:
        ts = f32(torch.tensor(tensor_scale, dtype=F64))
    xb = x.reshape(*x.shape[:-1], -1, block)
    s = f32(xb.abs().amax(-1) / f32(6.0 * ts))
    s = torch.where(s == 0, 1.0, s).clamp(2.0**-9, 448.0)
    s8 = ref_e4m3(s)
    p = f32(s8 * ts).unsqueeze(-1)
    v = f32(xb / p)
    return ref_e2m1_codes(v).reshape(x.shape), s8, ts


def heavy_tailed(seed: int, rows: int = 64, k: int = 512) -> torch.Tensor:
    """Blocks whose magnitudes span ~30 binades: normal, subnormal and clamped block scales."""
    g = torch.Generator().manual_seed(seed)
    mag = torch.exp(3.0 * torch.randn(rows, k // 16, 1, generator=g))
    return (torch.randn(rows, k // 16, 16, generator=g) * mag).reshape(rows, k)


def assert_matches_ref(x, tensor_scale=None):
    codes, s8, ts = quantize_nvfp4(x, tensor_scale)
    rc, rs8, rts = ref_quantize(x, tensor_scale)
    assert ts.dtype == torch.float32 and ts.dim() == 0
    assert ts.item() == rts.item()
    assert s8.dtype == torch.float8_e4m3fn
    assert torch.equal(s8.to(F64), rs8)
    assert codes.dtype == torch.uint8 and torch.equal(codes, rc)
    return codes, s8, ts


# ---- E2M1 helpers -------------------------------------------------------------------------


def test_e2m1_to_float_table():
    codes = torch.arange(16, dtype=torch.uint8)
    expected = torch.cat([E2M1_MAGS, -E2M1_MAGS]).to(torch.float32)
    assert torch.equal(e2m1_to_float(codes), expected)
    assert torch.signbit(e2m1_to_float(torch.tensor([8], dtype=torch.uint8))).item()


def test_float_to_e2m1_ties_go_to_even():
    mids = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    # Neighbours (0,.5) (.5,1) (1,1.5) (1.5,2) (2,3) (3,4) (4,6): the even code wins.
    expected = torch.tensor([0, 2, 2, 4, 4, 6, 6], dtype=torch.uint8)
    assert torch.equal(float_to_e2m1(mids), expected)
    assert torch.equal(float_to_e2m1(-mids), expected | 8)


def test_float_to_e2m1_against_brute_force():
    g = torch.Generator().manual_seed(11)
    grid = torch.cat([E2M1_MAGS, (E2M1_MAGS[1:] + E2M1_MAGS[:-1]) / 2]).to(torch.float32)
    nudged = torch.cat([grid, grid.nextafter(torch.tensor(0.0)), grid.nextafter(torch.tensor(9.0))])
    v = torch.cat([nudged, -nudged, torch.randn(20000, generator=g) * 3, torch.tensor([6.0, 7.5, 1e9])])
    assert torch.equal(float_to_e2m1(v), ref_e2m1_codes(v))


def test_float_to_e2m1_saturates_and_signs():
    v = torch.tensor([6.0, -6.0, 6.5, -100.0, float("1e30"), -0.0, 0.0, -1e-3])
    assert float_to_e2m1(v).tolist() == [7, 15, 7, 15, 7, 0, 0, 8]


# ---- quantize / dequantize against the float64 oracle ------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_gaussian_matches_reference(seed):
    g = torch.Generator().manual_seed(1000 + seed)
    assert_matches_ref(torch.randn(3, 17, 128, generator=g) * (seed + 0.1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heavy_tailed_matches_reference(seed):
    x = heavy_tailed(2000 + seed)
    _, s8, _ = assert_matches_ref(x)
    s = s8.float()
    assert (s < 2.0**-6).any() and (s == 2.0**-9).any() and (s > 2.0**-6).any()


def test_bf16_input_and_given_tensor_scale():
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(32, 256, generator=g) * 5).to(torch.bfloat16)
    assert_matches_ref(x)
    assert_matches_ref(x, tensor_scale=0.0007)  # calibrated scale, too small: some saturate


def test_dequantize_matches_reference():
    x = heavy_tailed(3000)
    codes, s8, ts = quantize_nvfp4(x)
    p = f32(s8.to(F64) * ts.to(F64)).repeat_interleave(16, dim=-1)
    expected = f32(torch.cat([E2M1_MAGS, -E2M1_MAGS])[codes.long()] * p)
    out = dequantize_nvfp4(codes, s8, ts)
    assert out.dtype == torch.float32 and torch.equal(out.to(F64), expected)
    assert dequantize_nvfp4(codes, s8, ts, dtype=torch.bfloat16).dtype == torch.bfloat16
    # Every unclipped element is within half the grid step around its code (in units of p).
    q = e2m1_to_float(codes).abs()
    half_step = torch.where(q < 2, 0.25, torch.where(q < 4, 0.5, 1.0)).to(F64) * p
    unclipped = (x.to(F64) / p).abs() <= 6
    assert ((x.to(F64) - out.to(F64)).abs() <= half_step * (1 + 2.0**-20))[unclipped].all()


# ---- edge values --------------------------------------------------------------------------


def test_ties_exact_six_and_above_six_times_scale():
    ones = torch.ones(1)
    blocks = [
        # tensor scale 1, block scale 6/6 = 1: values are their own E2M1 units.
        torch.tensor([6, .25, .75, 1.25, 1.75, 2.5, 3.5, 5, -.25, -.75, -1.25, -1.75, -2.5, -3.5, -5, -6.0]),
        # block scale 3/6 = 0.5: the same ties at half the size.
        0.5 * torch.tensor([6, .25, .75, 1.25, 1.75, 2.5, 3.5, 5, -.25, -.75, -1.25, -1.75, -2.5, -3.5, -5, -6.0]),
        # amax 6.375: s = 1.0625 is an E4M3 tie and rounds to 1.0, so 6.375 maps above 6 -> 6.
        torch.cat([torch.tensor([6.375, -6.375, 6.2]), torch.zeros(13)]),
        # amax 7.125: s = 1.1875 ties between 1.125 (odd code) and 1.25 (even code).
        torch.cat([7.125 * ones, torch.zeros(15)]),
    ]
    codes, s8, ts = quantize_nvfp4(torch.stack(blocks), tensor_scale=1.0)
    assert s8.float()[:, 0].tolist() == [1.0, 0.5, 1.0, 1.25]
    tie_codes = [7, 0, 2, 2, 4, 4, 6, 6, 8, 10, 10, 12, 12, 14, 14, 15]
    assert codes[0].tolist() == tie_codes and codes[1].tolist() == tie_codes
    assert codes[2, :3].tolist() == [7, 15, 7]
    assert dequantize_nvfp4(codes, s8, ts)[2, :2].tolist() == [6.0, -6.0]
    assert codes[3, 0].item() == 7  # 7.125 / 1.25 = 5.7 -> 6


def test_saturation_with_a_too_small_tensor_scale():
    x = torch.tensor([[1000.0, -1000.0] + [0.0] * 14])
    codes, s8, ts = quantize_nvfp4(x, tensor_scale=1e-3)
    assert s8.float().item() == 448.0 and codes[0, :2].tolist() == [7, 15]
    assert dequantize_nvfp4(codes, s8, ts)[0, 0].item() == pytest.approx(6 * 448 * 1e-3)


def test_zero_blocks_and_zero_tensor():
    x = torch.zeros(2, 48)
    x[1, 16:32] = torch.linspace(-3, 3, 16)
    x[0, 0] = -0.0
    codes, s8, ts = quantize_nvfp4(x)
    # All-zero blocks: scale 1.0 (ModelOpt's convention), codes 0 (-0.0 included), no NaN.
    assert s8.float()[0].tolist() == [1.0, 1.0, 1.0] and codes[0].eq(0).all()
    assert torch.equal(dequantize_nvfp4(codes, s8, ts)[0], torch.zeros(48))
    codes, s8, ts = quantize_nvfp4(torch.zeros(4, 32))
    assert ts.item() == 1.0 and codes.eq(0).all() and s8.float().eq(1.0).all()
    assert nvfp4_tensor_scale(torch.zeros(3)).item() == 1.0
    out = dequantize_nvfp4(codes, s8, ts)
    assert torch.isfinite(out).all() and out.eq(0).all()


def test_subnormal_and_clamped_block_scales():
    x = torch.zeros(3, 16)
    x[0, 0] = 6 * 2.0**-8   # s = 2**-8: an E4M3 subnormal, kept
    x[1, 0] = 6 * 2.0**-11  # s = 2**-11 < 2**-9: clamped up to 2**-9, value becomes 1.5 units
    x[2, 0] = 1e-30         # far below: rounds to zero
    codes, s8, _ = quantize_nvfp4(x, tensor_scale=1.0)
    assert s8.float()[:, 0].tolist() == [2.0**-8, 2.0**-9, 2.0**-9]
    assert codes[:, 0].tolist() == [7, 3, 0]


@pytest.mark.parametrize("factor", [2.0**-100, 2.0**100])
def test_tiny_and_huge_tensors_scale_exactly(factor):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 64, generator=g)
    codes, s8, ts = quantize_nvfp4(x)
    codes2, s82, ts2 = quantize_nvfp4(x * factor)
    assert torch.equal(codes, codes2) and torch.equal(s8.float(), s82.float())
    assert ts2.item() == ts.item() * factor
    assert_matches_ref(x * factor)


@pytest.mark.parametrize("magnitude", [1e-30, 1e30])
def test_tiny_and_huge_blocks_next_to_normal_ones(magnitude):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 64, generator=g)
    x[:, 16:32] *= magnitude
    codes, s8, ts = assert_matches_ref(x)
    assert torch.isfinite(dequantize_nvfp4(codes, s8, ts)).all()


def test_k_must_be_a_multiple_of_the_block():
    with pytest.raises(ValueError, match="multiple of 16"):
        quantize_nvfp4(torch.randn(4, 40))


# ---- packing ------------------------------------------------------------------------------


def test_pack_nibble_order():
    assert pack_fp4(torch.tensor([1, 2], dtype=torch.uint8)).tolist() == [0x21]
    assert pack_fp4(torch.tensor([[15, 8, 0, 7]], dtype=torch.uint8)).tolist() == [[0x8F, 0x70]]


def test_pack_unpack_round_trip():
    every_byte = torch.arange(256, dtype=torch.uint8).reshape(4, 64)
    assert torch.equal(pack_fp4(unpack_fp4(every_byte)), every_byte)
    assert unpack_fp4(torch.tensor([0x21], dtype=torch.uint8)).tolist() == [1, 2]
    g = torch.Generator().manual_seed(9)
    codes = torch.randint(0, 16, (3, 5, 32), generator=g, dtype=torch.uint8)
    assert torch.equal(unpack_fp4(pack_fp4(codes)), codes)
    with pytest.raises(ValueError):
        pack_fp4(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(ValueError):
        pack_fp4(torch.tensor([16, 0], dtype=torch.uint8))


# ---- the public references ----------------------------------------------------------------


def _modelopt():
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

    return NVFP4QTensor


def _torchao():
    from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize, per_tensor_amax_to_scale

    return nvfp4_quantize, per_tensor_amax_to_scale


@pytest.mark.parametrize("seed", [0, 1])
def test_bit_exact_with_modelopt_everywhere(seed):
    NVFP4QTensor = _modelopt()
    x = heavy_tailed(4000 + seed, rows=128)
    x[0, :16] = 0.0   # all-zero block
    x[1, 16:32] = -0.0
    x[2, :8] = -0.0   # -0.0 next to non-zeros
    codes, s8, ts = quantize_nvfp4(x)
    qt, mo_s8, mo_ts = NVFP4QTensor.quantize(x.clone(), 16)
    assert mo_ts.item() == ts.item()
    assert torch.equal(mo_s8.view(torch.uint8), s8.view(torch.uint8))
    assert torch.equal(qt._quantized_data, pack_fp4(codes))
    assert (s8.float() < 2.0**-6).any()  # the region where torchao differs is covered
    mo_out = qt.dequantize(torch.float32, scale=mo_s8, double_scale=mo_ts, block_sizes={-1: 16})
    assert torch.equal(mo_out, dequantize_nvfp4(codes, s8, ts))
    # A calibrated (given) tensor scale goes through the same arithmetic.
    qt, mo_s8, _ = NVFP4QTensor.quantize(x.clone(), 16, weights_scaling_factor_2=ts * 0.5)
    codes, s8, _ = quantize_nvfp4(x, ts * 0.5)
    assert torch.equal(mo_s8.view(torch.uint8), s8.view(torch.uint8))
    assert torch.equal(qt._quantized_data, pack_fp4(codes))


def _near_a_rounding_boundary(v: torch.Tensor, ulps: int = 4) -> torch.Tensor:
    bounds = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    ulp = torch.finfo(torch.float32).eps * bounds
    return ((v.abs().unsqueeze(-1) - bounds).abs() <= ulps * ulp).any(-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bit_exact_with_torchao_on_normal_block_scales(seed):
    nvfp4_quantize, per_tensor_amax_to_scale = _torchao()
    g = torch.Generator().manual_seed(5000 + seed)
    x = torch.randn(256, 512, generator=g) * torch.exp(torch.randn(256, 1, generator=g))
    codes, s8, ts = quantize_nvfp4(x)
    assert (s8.float() >= 2.0**-6).all()  # torchao's domain of agreement
    ao_s8, ao_packed = nvfp4_quantize(x, 16, per_tensor_amax_to_scale(x.abs().amax()))
    assert torch.equal(ao_s8.view(torch.uint8), s8.view(torch.uint8))
    ao_codes = torch.stack((ao_packed & 0xF, ao_packed >> 4), -1).reshape(x.shape)
    # torchao multiplies by (1/ts)/s instead of dividing by s*ts: the quotient may move by an
    # ulp or two, which changes a code only for values sitting on a rounding boundary.
    v = (x.reshape(256, -1, 16) / (s8.float() * ts).unsqueeze(-1)).reshape(x.shape)
    differ = ao_codes != codes
    assert not (differ & ~_near_a_rounding_boundary(v)).any()
    assert differ.sum() <= 4


def test_where_torchao_differs_is_as_documented():
    nvfp4_quantize, _ = _torchao()
    x = torch.zeros(3, 16)
    x[0, 0] = 6 * 2.0**-8   # our scale 2**-8 (subnormal), torchao clamps to 2**-6
    x[1, 0] = -0.0          # all-zero block: ours 1.0, torchao 2**-6; -0.0: ours code 0, torchao 8
    x[2, 0] = 3.0
    ao_s8, ao_packed = nvfp4_quantize(x, 16, torch.tensor(1.0))
    codes, s8, _ = quantize_nvfp4(x, 1.0)
    assert s8.float()[:, 0].tolist() == [2.0**-8, 1.0, 0.5]
    assert ao_s8.float()[:, 0].tolist() == [2.0**-6, 2.0**-6, 0.5]
    assert codes[1, 0].item() == 0 and (ao_packed[1, 0] & 0xF).item() == 8
    assert torch.equal(ao_packed[2], pack_fp4(codes)[2])


def test_block_scale_is_amax_over_six_times_tensor_scale():
    # A case (found by search) where fp32(amax / fp32(6·ts)) — ModelOpt, and us — and torchao's
    # fp32(fp32(amax / 6) / ts) sit on either side of the E4M3 midpoint between 2.75 and 3.
    amax, ts = torch.tensor([1023197128, 988442394], dtype=torch.int32).view(torch.float32)
    x = torch.zeros(1, 16)
    x[0, 0] = amax
    codes, s8, _ = assert_matches_ref(x, tensor_scale=ts.item())
    assert s8.float().item() == 2.75
    _, mo_s8, _ = _modelopt().quantize(x.clone(), 16, weights_scaling_factor_2=ts)
    assert mo_s8.float().item() == 2.75
    nvfp4_quantize, _ = _torchao()
    ao_s8, _ = nvfp4_quantize(x, 16, ts)
    assert ao_s8.float().item() == 3.0


def test_fake_quantize_is_bit_exact_with_quantize_then_dequantize():
    """The activation path's shortcut (no codes formed) gives the same fp32 values bit for bit,
    including all-zero blocks, values past ±6·scale, ties and tiny scales."""
    from dq_kernels.nvfp4 import dequantize_nvfp4, fake_quantize_nvfp4, quantize_nvfp4

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=g) * torch.logspace(-6, 3, 256)
    x[3, :16] = 0.0
    x[5, 16:32] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 2)
    ref = dequantize_nvfp4(*quantize_nvfp4(x))
    assert torch.equal(fake_quantize_nvfp4(x), ref)


# ---- the one-pass Triton carrier kernel (dq_kernels.nvfp4_quantize), under the interpreter ---------
def edge_activations() -> torch.Tensor:
    """Heavy-tailed channels (block scales from E4M3 subnormal to normal), an all-zero block, -0.0,
    E2M1 ties at block scale 1, a block past ±6 (saturating), a ragged row count (37) and K = 272
    (not a multiple of the kernel's 64)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 272, generator=g) * torch.logspace(-6, 3, 272)
    x[3, :16] = 0.0
    x[4, 0] = -0.0
    x[5, 16:32] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 2)  # exact ties when ts = 1
    x[6, 32:48] = 1e-30
    return x


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("amax", [None, 2.0e3, 2688.0])  # own; a shard's (larger); ts = 1 (exact ties)
def test_triton_carrier_is_bit_exact_with_the_reference(dtype, amax, device):
    from dq_kernels.nvfp4 import nvfp4_carrier
    from dq_kernels.nvfp4_quantize import nvfp4_carrier_triton, triton

    if triton is None:
        pytest.skip("triton is not installed")
    x = edge_activations().to(device, dtype)
    amax = None if amax is None else torch.tensor(amax, device=device)
    carrier, ts = nvfp4_carrier_triton(x, amax)
    ref_carrier, ref_ts = nvfp4_carrier(x, amax=amax)
    assert carrier.dtype == torch.bfloat16 and ts.item() == ref_ts.item()
    assert torch.equal(carrier.float(), ref_carrier)  # the carriers are exact in BF16


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])])
def test_triton_weight_expansion_is_bit_exact(device):
    """Every code (both nibbles, both signs) with block scales from E4M3 subnormals to 448; N = 45
    and K = 208 ragged against the kernel's 32 × 128 tiles."""
    from dq_kernels.expand_nvfp4 import expand_nvfp4, triton
    from dq_kernels.nvfp4 import weight_carrier

    if triton is None:
        pytest.skip("triton is not installed")
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (45, 208), generator=g, dtype=torch.uint8)
    codes[0, :16] = torch.arange(16, dtype=torch.uint8)
    scales = E4M3_MAGS[torch.randint(1, 127, (45, 13), generator=g)].to(torch.float8_e4m3fn)
    scales[1, 0] = torch.tensor(2.0**-9).to(torch.float8_e4m3fn)  # the smallest subnormal
    scales[2, 0] = torch.tensor(448.0).to(torch.float8_e4m3fn)
    out = expand_nvfp4(pack_fp4(codes).to(device), scales.to(device))
    assert out.dtype == torch.bfloat16
    assert torch.equal(out.cpu().float(), weight_carrier(codes, scales))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])])
@pytest.mark.parametrize("tensor_scale", [None, 1.0, 0.37])  # own amax; 1 (exact ties); a calibrated one
def test_triton_codes_are_bit_exact(tensor_scale, device):
    """The same rounding to packed codes and E4M3 scales (the Blackwell GEMM's operands)."""
    from dq_kernels.nvfp4_quantize import quantize_nvfp4_triton, triton

    if triton is None:
        pytest.skip("triton is not installed")
    x = edge_activations().to(device)
    packed, scales, ts = quantize_nvfp4_triton(x, tensor_scale)
    codes, ref_scales, ref_ts = quantize_nvfp4(x.cpu(), tensor_scale)
    assert torch.equal(packed.cpu(), pack_fp4(codes))
    assert torch.equal(scales.cpu().view(torch.uint8), ref_scales.view(torch.uint8)) and ts.item() == ref_ts.item()
