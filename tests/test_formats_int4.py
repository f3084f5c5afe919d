"""INT4 reference (dq_kernels.int4) against float64 math written out independently.

The oracle mirrors the fp32 contract: `float32(float64(a) / float64(b))` is the correctly
rounded fp32 quotient, bf16 rounding is done on the fp32 bit pattern, and round-half-to-even
is spelled out with floor().
"""

from __future__ import annotations

import pytest
import torch

from dq_kernels.int4 import dequantize_int4, pack_int4, quantize_int4, unpack_int4

F64 = torch.float64


def f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).to(F64)


def bf16_rne(t: torch.Tensor) -> torch.Tensor:
    """Round non-negative fp32 values to bf16 (nearest, ties to even) on their bit patterns."""
    bits = t.to(torch.float32).view(torch.int32).to(torch.int64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.to(torch.int32).view(torch.float32).to(F64)


def round_half_even(q: torch.Tensor) -> torch.Tensor:
    f = torch.floor(q)
    d = q - f
    return f + (d > 0.5) + ((d == 0.5) & (torch.remainder(f, 2) == 1))


def ref_quantize(x: torch.Tensor, g: int, pow2: bool = False, reciprocal: bool = False):
    x = x.to(torch.float32).to(F64)
    xg = x.reshape(*x.shape[:-1], -1, g)
    s = f32(xg.abs().amax(-1, keepdim=True) / 7)
    if pow2:
        s = torch.where(s > 0, 2.0 ** torch.ceil(torch.log2(s)), 0.0)
        s = torch.maximum(s, s.amax(-2, keepdim=True) * 2.0**-15)  # within 2**15 of the row's largest
    s = bf16_rne(s)
    q = torch.where(s > 0, f32(xg * f32(1 / s)) if reciprocal else f32(xg / s), 0.0)
    codes = round_half_even(q).clamp(-8, 7)
    return codes.reshape(x.shape).to(torch.int8), s.squeeze(-1)


def assert_matches_ref(x, g=64, pow2=False):
    codes, scales = quantize_int4(x, g, pow2_scales=pow2)
    rc, rs = ref_quantize(x, g, pow2)
    assert codes.dtype == torch.int8 and scales.dtype == torch.bfloat16
    assert scales.shape == (*x.shape[:-1], x.shape[-1] // g)
    assert torch.equal(scales.to(F64), rs)
    assert torch.equal(codes, rc)
    return codes, scales


def assert_error_within_half_scale(x, codes, scales, g):
    # x̂ = code·s is the grid point nearest to x whenever |x/s| <= 7.5, and with s = bf16(amax/7)
    # |x/s| <= 7·(1 + 2**-8) < 7.5: the error is at most s/2, plus the fp32 rounding of x/s
    # (a relative 2**-24, hence the slack).
    err = (x.to(F64) - dequantize_int4(codes, scales, g).to(F64)).abs()
    bound = scales.to(F64).repeat_interleave(g, dim=-1) / 2 * (1 + 2.0**-20)
    assert (err <= bound).all()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("g", [32, 64, 128])
def test_random_matches_reference(seed, g):
    gen = torch.Generator().manual_seed(100 * g + seed)
    x = torch.randn(3, 9, 256, generator=gen) * torch.exp(2 * torch.randn(3, 9, 1, generator=gen))
    codes, scales = assert_matches_ref(x, g)
    assert_error_within_half_scale(x, codes, scales, g)


def test_bf16_input_and_default_group():
    gen = torch.Generator().manual_seed(17)
    x = (torch.randn(16, 512, generator=gen) * 40).to(torch.bfloat16)
    codes, scales = assert_matches_ref(x)
    assert scales.shape == (16, 8)
    assert_error_within_half_scale(x, codes, scales, 64)


def test_dequantize_is_code_times_stored_scale():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 128, generator=gen)
    codes, scales = quantize_int4(x)
    expected = codes.to(F64) * scales.to(F64).repeat_interleave(64, dim=-1)
    assert torch.equal(dequantize_int4(codes, scales).to(F64), expected)
    assert dequantize_int4(codes, scales, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_half_steps_round_to_even():
    # amax 3.5 -> s = 0.5 exactly; x = (k + 1/2)·s lands exactly halfway between codes.
    halves = torch.tensor([0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5])
    x = torch.cat([torch.tensor([7.0]), halves, -halves, torch.zeros(49)]) * 0.5
    codes, scales = quantize_int4(x)
    assert scales.float().tolist() == [0.5]
    expected = [7, 0, 2, 2, 4, 4, 6, 6, 0, -2, -2, -4, -4, -6, -6]
    assert codes[:15].tolist() == expected


def test_scale_is_the_stored_bf16_one():
    # amax/7 = 1 + 2**-9 is not a bf16 value (bf16 steps by 2**-7 there) and rounds down to 1;
    # x/s then exceeds 7 slightly: still code 7, never 8 or a wrap.
    amax = 7 * (1 + 2.0**-9)
    x = torch.tensor([amax, -amax] + [0.0] * 62)
    codes, scales = quantize_int4(x)
    assert scales.float().item() == 1.0
    assert codes[:2].tolist() == [7, -7]
    assert_matches_ref(x)


def test_all_zero_group_and_negative_zero():
    x = torch.zeros(2, 128)
    x[0, 64:] = torch.linspace(-1, 1, 64)
    x[1, 0] = -0.0
    codes, scales = quantize_int4(x)
    assert scales.float()[:, 0].tolist() == [0.0, 0.0] and scales.float()[1, 1].item() == 0.0
    assert codes[0, :64].eq(0).all() and codes[1].eq(0).all()
    out = dequantize_int4(codes, scales)
    assert torch.isfinite(out).all() and out[0, :64].eq(0).all() and out[1].eq(0).all()
    assert_matches_ref(x)


@pytest.mark.parametrize("magnitude", [1e-30, 1e30])
def test_tiny_and_huge_groups(magnitude):
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(4, 192, generator=gen)
    x[:, 64:128] *= magnitude
    codes, scales = assert_matches_ref(x)
    assert torch.isfinite(scales.float()).all() and (scales.float() > 0).all()
    assert_error_within_half_scale(x, codes, scales, 64)


@pytest.mark.parametrize("factor", [2.0**-100, 2.0**100])
def test_power_of_two_rescaling_is_exact(factor):
    gen = torch.Generator().manual_seed(22)
    x = torch.randn(4, 128, generator=gen)
    codes, scales = quantize_int4(x)
    codes2, scales2 = quantize_int4(x * factor)
    assert torch.equal(codes, codes2)
    assert torch.equal(scales2.to(F64), scales.to(F64) * factor)


@pytest.mark.parametrize("seed", [0, 1])
def test_pow2_scales(seed):
    gen = torch.Generator().manual_seed(300 + seed)
    x = torch.randn(8, 256, generator=gen) * torch.exp(3 * torch.randn(8, 1, generator=gen))
    x[0, :64] = 0.0
    x[1, :64] = torch.tensor([3.5] + [0.0] * 63)  # amax/7 = 0.5 is already a power of two
    codes, scales = assert_matches_ref(x, 64, pow2=True)
    s = scales.to(F64)
    mantissa, _ = torch.frexp(s[s > 0])
    assert mantissa.eq(0.5).all()  # powers of two
    amax = x.reshape(8, 4, 64).abs().amax(-1).to(F64)
    floor = s.amax(-1, keepdim=True) * 2.0**-15
    assert ((s >= amax / 7) & ((s < 2 * amax / 7) | (s == floor))).all()
    assert s[1, 0].item() == 0.5 and s[0, 0].item() == floor[0, 0].item() and codes[0, :64].eq(0).all()
    assert codes.abs().max() <= 7  # rounded up: nothing clips
    assert_error_within_half_scale(x, codes, scales, 64)


def test_pow2_codes_fold_exactly_into_an_e4m3_carrier():
    """The Hopper kernel multiplies code·s/s_row·2**6 in E4M3 with one scale per row: that value
    must be exact, also for groups 2**20 smaller than the row's largest (they take the floor)."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(16, 1024, generator=gen) * torch.exp(4 * torch.randn(16, 16, 1, generator=gen)).reshape(16, -1, 1
                                                                                                    ).repeat(1, 1, 64).reshape(16, 1024)
    x[3, 64:128] *= 2.0**-20
    codes, scales = quantize_int4(x, 64, pow2_scales=True)
    s = scales.float().repeat_interleave(64, -1)
    carrier = codes.float() * s / scales.float().amax(-1, keepdim=True) * 2.0**6
    assert carrier.abs().max() <= 448
    assert torch.equal(carrier.to(torch.float8_e4m3fn).float(), carrier)


def test_k_must_be_a_multiple_of_the_group():
    with pytest.raises(ValueError, match="multiple of 64"):
        quantize_int4(torch.randn(3, 100))
    with pytest.raises(ValueError, match="multiple of 32"):
        dequantize_int4(torch.zeros(3, 48, dtype=torch.int8), torch.zeros(3, 1), 32)


def test_pack_nibble_order():
    assert pack_int4(torch.tensor([1, 2], dtype=torch.int8)).tolist() == [0x21]
    assert pack_int4(torch.tensor([-1, 3], dtype=torch.int8)).tolist() == [0x3F]
    assert pack_int4(torch.tensor([[-8, 7, 0, -2]], dtype=torch.int8)).tolist() == [[0x78, 0xE0]]


def test_pack_unpack_round_trip():
    every_byte = torch.arange(256, dtype=torch.uint8).reshape(2, 128)
    codes = unpack_int4(every_byte)
    assert codes.dtype == torch.int8 and codes.shape == (2, 256)
    assert codes.min() == -8 and codes.max() == 7
    assert torch.equal(pack_int4(codes), every_byte)
    gen = torch.Generator().manual_seed(4)
    codes = torch.randint(-8, 8, (3, 5, 64), generator=gen, dtype=torch.int8)
    assert torch.equal(unpack_int4(pack_int4(codes)), codes)


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError):
        pack_int4(torch.zeros(2, 3, dtype=torch.int8))
    with pytest.raises(ValueError):
        pack_int4(torch.tensor([8, 0], dtype=torch.int8))
    with pytest.raises(ValueError):
        unpack_int4(torch.zeros(2, dtype=torch.int8))


@pytest.mark.parametrize("fmt", ["int4", "int4_pow2", "int4_row"])
def test_int4_family_by_name(fmt):
    """formats.py: the three scale granularities pack, unpack and fake-quantize consistently, and
    each is the INT4 reference with its own group (64, 64 with power-of-two scales, the row)."""
    from dq_kernels.formats import fake_quant, pack_weight, unpack_weight

    gen = torch.Generator().manual_seed(11)
    w = torch.randn(6, 256, generator=gen) * torch.exp(torch.randn(6, 256, generator=gen))
    packed = pack_weight(w, fmt, 64)
    groups = {"int4": 4, "int4_pow2": 4, "int4_row": 1}[fmt]
    assert packed["qweight"].shape == (6, 128) and packed["scales"].shape == (6, groups)
    g = 256 // groups
    codes, scales = quantize_int4(w, g, pow2_scales=fmt == "int4_pow2", reciprocal=fmt == "int4_row")
    expected = dequantize_int4(codes, scales, g)
    assert torch.equal(unpack_weight(packed, fmt, 64), expected)
    assert torch.equal(fake_quant(w, fmt, 64), expected)


def test_reciprocal_rounding_matches_its_oracle_and_stays_within_half_a_step():
    """int4_row rounds x·fp32(1/s) (one division per row in the kernel): the oracle's fp32 product
    of the correctly rounded reciprocal, and at most one step from division's codes, only where x/s
    sits within a few ulps of a half-integer; the error stays s/2 up to those ulps."""
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(64, 1024, generator=gen) * torch.exp(torch.randn(64, 1, generator=gen))
    x[0, :5] = torch.tensor([3.5, -2.5, 0.5, 7.0, 1.5])  # scale 1 exactly: ties, which both round to even
    x[0, 5:] = 0.0
    codes, scales = quantize_int4(x, 1024, reciprocal=True)
    rc, rs = ref_quantize(x, 1024, reciprocal=True)
    assert torch.equal(codes, rc) and torch.equal(scales.to(F64), rs)
    assert codes[0, :5].tolist() == [4, -2, 0, 7, 2]
    by_division, _ = quantize_int4(x, 1024)
    differ = codes != by_division
    assert (codes.to(torch.int16) - by_division).abs().max() <= 1
    s = scales.to(F64).expand_as(x)
    exact = x.to(F64) / s
    assert ((exact - exact.floor() - 0.5).abs()[differ] < 2**-18).all()  # only near-ties differ
    assert ((x.to(F64) - codes.to(F64) * s).abs() <= s * (0.5 + 2**-18)).all()
