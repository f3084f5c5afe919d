"""NVFP4: E2M1 values, an E4M3 scale per block of 16 along K, an FP32 per-tensor scale.

Layout (K is the last dimension; leading dims free):

- codes         uint8          [..., K]       4-bit codes: bit 3 sign, bits 0-2 index into the
                                              E2M1 magnitudes (0, .5, 1, 1.5, 2, 3, 4, 6)
- block_scales  float8_e4m3fn  [..., K // 16]
- tensor_scale  float32        0-dim          amax(|x|) / (448 * 6) unless given
- packed        uint8          [..., K // 2]  element 2i in the low nibble (`pack_fp4`)

    x̂ = e2m1(code) * (float(block_scale) * tensor_scale)

Numerics — ModelOpt's `NVFP4QTensor.quantize` convention, bit for bit:
    ts    = fp32(amax(|x|) / 2688)                              (when not given)
    s     = fp32(block_amax / fp32(6 * ts)); s = 1.0 where s == 0 (all-zero block)
    s8    = e4m3(clamp(s, 2**-9, 448))                          RNE, subnormals kept
    code  = e2m1(clamp(fp32(x / fp32(float(s8) * ts)), -6, 6)) RNE; sign bit set iff x < 0

Why this convention (torchao's `nvfp4_quantize` and ModelOpt agree on normal block scales and
differ elsewhere; we follow ModelOpt everywhere):
- Block scales below 2**-6 (blocks whose amax is under ~1/28,672 of the tensor amax — common in
  DiT activations, where a few outlier channels set the tensor amax): ModelOpt keeps the E4M3
  subnormals down to 2**-9, torchao clamps the scale up to 2**-6 and so quantizes those blocks
  up to 8x more coarsely. Subnormals are also what a GPU's satfinite fp32->e4m3 cast produces.
- The data is divided by the dequantization scale `float(s8) * ts` itself, so a value exactly
  halfway between two grid points of x̂ is a real tie and rounds to even. torchao (0.18)
  multiplies by `(1/ts) / float(s8)` instead, which can move such values by an ulp.
- All-zero block: ModelOpt stores scale 1.0, torchao 2**-6; the codes are 0 either way.
- -0.0 gives code 0 here and in ModelOpt (sign = x < 0); torchao gives 0x8 (sign bit copied).
  Both dequantize to zero.
- torchao computes s as fp32(fp32(block_amax / 6) / ts): at most an ulp away, it changes the
  E4M3 scale only when s lies within an ulp of an E4M3 rounding midpoint.
- An all-zero tensor (or one whose amax/2688 underflows fp32) gets tensor_scale 1.0; both
  references return NaN scales there (0/0).
A `tensor_scale` passed in is used as is (calibrated activations); values above 448*6*ts
saturate to ±6 * 448 * ts.

NaN/inf inputs are not handled: run `checks.check_finite` first.
"""

from __future__ import annotations

import torch

from .checks import check_last_dim_multiple

__all__ = [
    "absmax",
    "quantize_nvfp4",
    "dequantize_nvfp4",
    "fake_quantize_nvfp4",
    "pack_fp4",
    "unpack_fp4",
    "e2m1_to_float",
    "float_to_e2m1",
    "nvfp4_tensor_scale",
    "nvfp4_carrier",
    "weight_carrier",
]

E2M1_MAX = 6.0
E4M3_MAX = 448.0
E4M3_MIN_SUBNORMAL = 2.0**-9
NVFP4_BLOCK = 16

# Code -> value; code 8 is -0.0.
_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def e2m1_to_float(codes: torch.Tensor) -> torch.Tensor:
    """4-bit E2M1 codes (uint8, 0..15) -> float32 values."""
    table = torch.tensor(
        _E2M1_VALUES + tuple(-v for v in _E2M1_VALUES), dtype=torch.float32, device=codes.device
    )
    return table[codes.long()]


def float_to_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Round float values to 4-bit E2M1 codes: clamp to ±6, then round half to even."""
    m = x.float().abs().clamp(max=E2M1_MAX)
    # E2M1 magnitudes are evenly spaced inside each binade: step 0.5 below 2, 1 in [2, 4),
    # 2 in [4, 6]. m/step is exact, and an even multiple of the step is an even code, so
    # torch.round (half to even) is exactly E2M1 round-to-nearest-even.
    step = torch.where(m < 2.0, 0.5, torch.where(m < 4.0, 1.0, 2.0))
    k = torch.round(m / step)
    index = torch.where(m < 2.0, k, torch.where(m < 4.0, k + 2.0, k + 4.0))
    sign = (x < 0).to(torch.uint8) << 3
    return index.to(torch.uint8) | sign


def absmax(x: torch.Tensor) -> torch.Tensor:
    """max |x| in x's own dtype (exact: no fp32 copy of a BF16 activation), as the ∞-norm: one
    reduction, where abs().amax() writes |x| first (an activation-sized pass per NVFP4 layer call)."""
    return torch.linalg.vector_norm(x, float("inf"))


def nvfp4_tensor_scale(x: torch.Tensor, amax: torch.Tensor | None = None) -> torch.Tensor:
    """Per-tensor scale amax/(448*6) in fp32, 0-dim; 1.0 if that is 0 (all-zero tensor). `amax`,
    when given, replaces max|x| (the whole tensor's, when x is one shard of it)."""
    amax = absmax(x).float() if amax is None else amax.float().reshape(())
    ts = amax / (E4M3_MAX * E2M1_MAX)
    return torch.where(ts > 0, ts, torch.ones_like(ts))


def quantize_nvfp4(
    x: torch.Tensor, tensor_scale: torch.Tensor | float | None = None, block_size: int = NVFP4_BLOCK
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize the last dim of `x` to NVFP4: (codes uint8, block_scales e4m3, tensor_scale)."""
    check_last_dim_multiple(x, block_size, "quantize_nvfp4")
    xf = x.float()
    if tensor_scale is None:
        ts = nvfp4_tensor_scale(xf)
    else:
        ts = torch.as_tensor(tensor_scale, dtype=torch.float32, device=x.device).reshape(())
    xb = xf.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)
    s = xb.abs().amax(dim=-1) / (E2M1_MAX * ts)
    s = torch.where(s == 0, torch.ones_like(s), s)
    # Explicit clamp before the cast: CPU saturates, GPUs use satfinite; neither is relied on.
    s8 = s.clamp(E4M3_MIN_SUBNORMAL, E4M3_MAX).to(torch.float8_e4m3fn)
    dq_scale = (s8.float() * ts).unsqueeze(-1)
    # where(): dq_scale underflows to 0 only for tensor scales below ~2**-140; keep codes 0.
    v = torch.where(dq_scale > 0, xb / dq_scale, torch.zeros_like(xb))
    return float_to_e2m1(v).reshape(x.shape), s8, ts


def _round_nvfp4(x: torch.Tensor, block_size: int, amax: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NVFP4 rounding without forming the codes: (e2m1 values [..., blocks, block_size] fp32,
    float(block scale) [..., blocks, 1], tensor scale)."""
    xf = x.float()
    ts = nvfp4_tensor_scale(xf, amax)
    xb = xf.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)
    s = xb.abs().amax(dim=-1, keepdim=True) / (E2M1_MAX * ts)
    s = torch.where(s == 0, torch.ones_like(s), s)
    s8 = s.clamp(E4M3_MIN_SUBNORMAL, E4M3_MAX).to(torch.float8_e4m3fn).float()
    dq_scale = s8 * ts
    v = torch.where(dq_scale > 0, xb / dq_scale, torch.zeros_like(xb))
    m = v.abs().clamp_(max=E2M1_MAX)
    step = torch.where(m < 2.0, 0.5, torch.where(m < 4.0, 1.0, 2.0))  # as in float_to_e2m1
    return torch.round(m / step).mul_(step).copysign_(v), s8, ts


def fake_quantize_nvfp4(x: torch.Tensor, block_size: int = NVFP4_BLOCK, amax: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """dequantize_nvfp4(*quantize_nvfp4(x)) in fp32, bit for bit, without forming the codes: about
    twice as fast on the CPU, where activations are rounded on every forward of the reference path.
    `amax`: the per-tensor absmax to scale by, when x is a shard of the tensor (sequence parallelism)."""
    check_last_dim_multiple(x, block_size, "fake_quantize_nvfp4")
    q, s8, ts = _round_nvfp4(x, block_size, amax)
    return (q * (s8 * ts)).reshape(x.shape)


def nvfp4_carrier(x: torch.Tensor, block_size: int = NVFP4_BLOCK, amax: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """NVFP4 rounding of x with the tensor scale factored out: (e2m1 · float(block_scale), ts), so
    that carrier · ts is fake_quantize_nvfp4(x) up to fp32 rounding order. The carrier is the
    product of a 2-bit and a 4-bit significand: exact in BF16 (and fp32), which lets a BF16 GEMM
    with fp32 accumulation do the reference's NVFP4 arithmetic (dq_cli/quant/carrier_path.py)."""
    check_last_dim_multiple(x, block_size, "nvfp4_carrier")
    q, s8, ts = _round_nvfp4(x, block_size, amax)
    return (q * s8).reshape(x.shape), ts


def weight_carrier(codes: torch.Tensor, block_scales: torch.Tensor, block_size: int = NVFP4_BLOCK) -> torch.Tensor:
    """e2m1(codes) · float(block_scale), fp32 [..., K]: exact (see nvfp4_carrier)."""
    values = e2m1_to_float(codes).reshape(*codes.shape[:-1], codes.shape[-1] // block_size, block_size)
    return (values * block_scales.float().unsqueeze(-1)).reshape(codes.shape)


def dequantize_nvfp4(
    codes: torch.Tensor,
    block_scales: torch.Tensor,
    tensor_scale: torch.Tensor | float,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Inverse of `quantize_nvfp4`; the block size is K // block_scales.shape[-1]."""
    k = codes.shape[-1]
    nb = block_scales.shape[-1]
    if block_scales.shape[:-1] != codes.shape[:-1] or nb == 0 or k % nb != 0:
        raise ValueError(
            f"dequantize_nvfp4: block_scales shape {tuple(block_scales.shape)} does not match "
            f"codes {tuple(codes.shape)}"
        )
    ts = torch.as_tensor(tensor_scale, dtype=torch.float32, device=codes.device)
    scale = block_scales.float() * ts
    xb = e2m1_to_float(codes).reshape(*codes.shape[:-1], nb, k // nb) * scale.unsqueeze(-1)
    return xb.reshape(codes.shape).to(dtype)


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes (uint8 0..15) two per byte: element 2i low nibble, 2i+1 high nibble."""
    check_last_dim_multiple(codes, 2, "pack_fp4")
    if codes.dtype != torch.uint8:
        raise ValueError(f"pack_fp4: expected uint8 codes, got {codes.dtype}")
    if codes.numel() and int(codes.max()) > 15:
        raise ValueError("pack_fp4: codes must lie in 0..15")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_fp4`: uint8 [..., K // 2] -> uint8 codes [..., K]."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_fp4: expected uint8, got {packed.dtype}")
    nibbles = torch.stack((packed & 0xF, packed >> 4), dim=-1)
    return nibbles.reshape(*packed.shape[:-1], packed.shape[-1] * 2)
