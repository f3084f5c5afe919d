"""Just-in-time weight expansion for the Hopper W4A4 GEMM: packed `int4_pow2` or `int4_row` weights →
E4M3 carriers with one fp32 scale per output channel — Triton kernel, launch wrapper, PyTorch reference.

Hopper has no 4-bit tensor cores, and unpacking nibbles inside the GEMM's K loop costs half the
FP8 rate (FACTS.md: 532–572 TFLOP/s against 1,108–1,236). So the weights stay packed at rest and
a layer's are expanded right before its GEMM: one pass, N·K/2 bytes read and N·K written.

Exactness: with power-of-two group scales s_g within 2**15 of the row's largest s_max
(dq_kernels.int4, POW2_SPAN), code·s_g/s_max·2**6 is exact in E4M3, so

    carrier = code · s_g / s_row,   s_row = s_max · 2**-6,   carrier · s_row = code · s_g   exactly.

With one scale per row (`int4_row`, scales [N, 1]) the carrier is the code itself and s_row the
row's scale: exact for any scale value.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .int4 import unpack_int4

__all__ = ["expand_int4", "expand_int4_both", "expand_int4_reference"]

GROUP = 64
CARRIER_SHIFT = 6  # carriers reach 7·2**6 = 448, E4M3's largest finite value


def carrier_ratios(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Power-of-two group scales [R, G] → the row scale the GEMM applies after its K loop (fp32 [R])
    and each group's ratio s_g / s_row (powers of two in [2**-9, 2**6]: exact in fp32; 0 for an
    all-zero row)."""
    s = scales.float()
    row = s.amax(dim=-1) * 2.0**-CARRIER_SHIFT
    # An all-zero row has s = 0 everywhere: 0 / tiny = 0. (Fewer launches than a where(): this
    # runs on every W4A4 call, and small layers are launch-bound.)
    return row, s / row.clamp_min(torch.finfo(torch.float32).tiny)[:, None]


def to_carriers(codes: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """INT4 codes [R, K] with power-of-two group scales, or one scale per row ([R, 1]: the codes
    themselves, whatever the scale) → (E4M3 carriers [R, K], fp32 row scales [R]); the reference of
    both this kernel and the activation quantizer's rounding."""
    if scales.shape[-1] == 1:
        return codes.to(torch.float8_e4m3fn), scales.float().reshape(-1)
    row, ratio = carrier_ratios(scales)
    carrier = codes.float() * ratio.repeat_interleave(codes.shape[-1] // scales.shape[-1], dim=-1)
    return carrier.to(torch.float8_e4m3fn), row


def expand_int4_reference(packed: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return to_carriers(unpack_int4(packed), scales)


@triton.jit
def expand_int4_kernel(packed_ptr, ratio_ptr, out_ptr, out16_ptr, N, K,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_K: tl.constexpr, HAS_RATIO: tl.constexpr,
                       HAS_OUT16: tl.constexpr):
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    half = pid_k * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
    mask = (rows[:, None] < N) & (half[None, :] < K // 2)
    p = tl.load(packed_ptr + rows[:, None] * (K // 2) + half[None, :], mask=mask, other=0).to(tl.int32)
    # Two's-complement nibbles: element 2i is the low nibble, 2i+1 the high one.
    lo = ((p & 0xF) ^ 8) - 8
    hi = ((p >> 4) ^ 8) - 8
    codes = tl.reshape(tl.join(lo, hi), (BLOCK_N, BLOCK_K)).to(tl.float32)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    out_mask = (rows[:, None] < N) & (cols[None, :] < K)
    if HAS_RATIO:
        groups = K // GROUP_K
        codes *= tl.load(ratio_ptr + rows[:, None] * groups + cols[None, :] // GROUP_K, mask=out_mask, other=0.0)
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], codes.to(out_ptr.dtype.element_ty), mask=out_mask)
    if HAS_OUT16:  # the same carriers in BF16 too (exact), from the same pass
        tl.store(out16_ptr + rows[:, None] * K + cols[None, :], codes.to(tl.bfloat16), mask=out_mask)


def expand_int4(packed: torch.Tensor, scales: torch.Tensor,
                dtype: torch.dtype = torch.float8_e4m3fn) -> tuple[torch.Tensor, torch.Tensor]:
    """packed uint8 [N, K/2] with power-of-two scales [N, K/64] (`int4_pow2`) or one scale per row
    [N, 1] (`int4_row`) → (E4M3 carrier [N, K], fp32 row scale [N]). `dtype=torch.bfloat16` stores the
    same carriers in BF16 (exact) for a BF16 GEMM: PyTorch's E4M3 → BF16 cast of the expanded weight
    took 0.09–0.23 ms at Wan A14B's shapes on an H200, this kernel 0.01–0.03."""
    out, _, row = _expand(packed, scales, dtype, both=False)
    return out, row


def expand_int4_both(packed: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`expand_int4` to E4M3 and to BF16 in one launch → (E4M3 carrier, BF16 carrier, row scale): a
    DeltaQuant layer needs both (delta GEMM, core GEMM), and at small layers each call's host time,
    not the GPU's, is the bound (docs/performance.md, LTX-Video)."""
    return _expand(packed, scales, torch.float8_e4m3fn, both=True)


def _expand(packed, scales, dtype, both: bool):
    n, k = packed.shape[0], packed.shape[1] * 2
    per_row = scales.shape == (n, 1)
    if not per_row and scales.shape != (n, k // GROUP):
        raise ValueError(f"expand_int4: scales {tuple(scales.shape)} do not match packed {tuple(packed.shape)}")
    if per_row:
        row, ratio = scales.float().reshape(-1), None
    else:
        row, ratio = carrier_ratios(scales)
    out = torch.empty(n, k, dtype=dtype, device=packed.device)
    out16 = torch.empty(n, k, dtype=torch.bfloat16, device=packed.device) if both else None
    block_n, block_k = 32, 128
    grid = (triton.cdiv(n, block_n), triton.cdiv(k, block_k))
    expand_int4_kernel[grid](packed.contiguous(), ratio.contiguous() if ratio is not None else row, out,
                             out16 if both else out, n, k, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_K=GROUP,
                             HAS_RATIO=ratio is not None, HAS_OUT16=both)
    return out, out16, row
