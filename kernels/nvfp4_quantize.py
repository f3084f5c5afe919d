"""NVFP4 rounding of activations in one pass — Triton kernels and launch wrappers; the references are
`dq_kernels.nvfp4.nvfp4_carrier` and `quantize_nvfp4` + `pack_fp4` (ModelOpt's numerics, see
`dq_kernels.nvfp4`), matched bit for bit. One rounding (`_round_blocks`), two outputs: BF16 carriers
for Hopper's carrier path (`nvfp4_carrier_triton`), packed codes and E4M3 scales for Blackwell's
NVFP4 GEMM (`quantize_nvfp4_triton`, used by `nvfp4_gemm.nvfp4_linear`).

6Bit-Diffusion's NVFP4 route on Hopper multiplies exact BF16 *carriers* (e2m1 · float(s8), the
tensor scale factored out; dq_cli/quant/carrier_path.py). The PyTorch reference forms them with
about fifteen elementwise and reduction passes over an fp32 X, then a cast to BF16 for the GEMM:
at Wan A14B's 32,760 × 5,120 each pass moves ~0.7 GB. This kernel reads X once and writes the BF16
carrier once, given the tensor scale (one reduction, `nvfp4_tensor_scale`, before the launch).

Per block of 16 along K, as the reference:
    s    = fp32(block_amax / fp32(6 · ts)); 1.0 for an all-zero block
    s8   = e4m3(clamp(s, 2**-9, 448))                     round to nearest even, subnormals kept
    v    = fp32(x / fp32(float(s8) · ts))                 0 where that product underflows to 0
    q    = e2m1(v): |v| clamped to 6, rounded half to even on the E2M1 grid (steps .5, 1, 2)
    carrier = q · float(s8)                               exact in BF16 (2- and 4-bit significands)

Divisions are correctly rounded (`div_rn`), as torch's. Checked bit for bit against the reference
under TRITON_INTERPRET=1 and on an H200 (tests/test_formats_nvfp4.py, with E2M1 ties, subnormal and
clamped block scales, all-zero blocks, a shard's tensor scale; tools/probe_carriers.py at Wan A14B
shapes). On the H200 at 32,760 × 5,120: 0.25 ms from BF16 X (0.76 from fp32) against torch's 7.8;
32×64 tiles with 4 warps were the fastest of seven tried (64×128, 16×256, 128×64, ...: 0.27–0.28).
"""

from __future__ import annotations

import torch

from .checks import check_last_dim_multiple
from .interpreter import interpreting
from .nvfp4 import E2M1_MAX, E4M3_MAX, E4M3_MIN_SUBNORMAL, NVFP4_BLOCK, nvfp4_tensor_scale

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs without triton
    triton = None

__all__ = ["nvfp4_carrier_triton", "quantize_nvfp4_triton"]

if triton is not None:
    from .interpreter import round_to_e4m3

    @triton.jit
    def _round_blocks(x, ts, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, INTERPRET: tl.constexpr):
        """x [BLOCK_M, BLOCK_K] → (k, its E2M1 step, v's sign, float(s8)) per element / block: the
        value is ±k·step, k = round-half-even(min(|v|, 6) / step), v = x / (float(s8) · ts)."""
        xb = tl.reshape(x.to(tl.float32), (BLOCK_M, BLOCK_K // 16, 16))
        s = tl.math.div_rn(tl.max(tl.abs(xb), axis=2), tl.full((BLOCK_M, BLOCK_K // 16), 6.0, tl.float32) * ts)
        s = tl.where(s == 0, 1.0, s)
        s = tl.minimum(tl.maximum(s, 0.001953125), 448.0)  # [2**-9, 448]: the E4M3 range, subnormals kept
        if INTERPRET:
            s = round_to_e4m3(s)
        s8 = s.to(tl.float8e4nv).to(tl.float32)
        dq_scale = (s8 * ts)[:, :, None]
        v = tl.where(dq_scale > 0, tl.math.div_rn(xb, tl.where(dq_scale > 0, dq_scale, 1.0)), 0.0)
        m = tl.minimum(tl.abs(v), 6.0)
        step = tl.where(m < 2.0, 0.5, tl.where(m < 4.0, 1.0, 2.0))
        # m / step is exact (a power-of-two step) and below 2**22: the magic add rounds half to even
        k = (tl.math.div_rn(m, step) + 12582912.0) - 12582912.0
        return k, step, v < 0, s8

    @triton.jit
    def nvfp4_carrier_kernel(x_ptr, out_ptr, ts_ptr, M, K, stride_x, stride_out,
                             BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, INTERPRET: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        inside = (rows < M)[:, None] & (cols < K)[None, :]
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_x + cols[None, :], mask=inside, other=0.0)
        k, step, negative, s8 = _round_blocks(x, tl.load(ts_ptr), BLOCK_M, BLOCK_K, INTERPRET)
        q = tl.where(negative, -(k * step), k * step)
        carrier = tl.reshape(q * s8[:, :, None], (BLOCK_M, BLOCK_K))
        tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_out + cols[None, :], carrier.to(tl.bfloat16),
                 mask=inside)

    @triton.jit
    def nvfp4_codes_kernel(x_ptr, packed_ptr, scales_ptr, ts_ptr, M, K, stride_x,
                           BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, INTERPRET: tl.constexpr):
        """The same rounding to dq's NVFP4 storage: codes packed two a byte (element 2i low) and
        the E4M3 block scales, what `nvfp4_gemm` (Blackwell) multiplies."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        row_ok = rows < M
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_x + cols[None, :],
                    mask=row_ok[:, None] & (cols < K)[None, :], other=0.0)
        k, step, negative, s8 = _round_blocks(x, tl.load(ts_ptr), BLOCK_M, BLOCK_K, INTERPRET)
        # the magnitude's index: k below 2 (step .5), k + 2 in [2, 4) (step 1), k + 4 from 4 (step 2)
        index = (k + tl.where(step == 0.5, 0.0, tl.where(step == 1.0, 2.0, 4.0))).to(tl.int32)
        codes = tl.reshape(tl.where(negative, index | 8, index), (BLOCK_M, BLOCK_K // 2, 2))
        lo, hi = tl.split(codes)
        half = tl.program_id(1) * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
        tl.store(packed_ptr + rows[:, None].to(tl.int64) * (K // 2) + half[None, :], (lo | (hi << 4)).to(tl.uint8),
                 mask=row_ok[:, None] & (half < K // 2)[None, :])
        group = tl.program_id(1) * (BLOCK_K // 16) + tl.arange(0, BLOCK_K // 16)
        tl.store(scales_ptr + rows[:, None].to(tl.int64) * (K // 16) + group[None, :], s8.to(tl.float8e4nv),
                 mask=row_ok[:, None] & (group < K // 16)[None, :])


def nvfp4_carrier_triton(x: torch.Tensor, amax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`nvfp4_carrier(x)` for x [M, K] (K a multiple of 16) in one Triton pass: (BF16 carrier [M, K],
    fp32 tensor scale). `amax`: the whole tensor's absmax when x is a shard of it."""
    if triton is None:
        raise RuntimeError("nvfp4_carrier_triton: triton is not installed")
    check_last_dim_multiple(x, NVFP4_BLOCK, "nvfp4_carrier_triton")
    m, k = x.shape
    x = x if x.stride(-1) == 1 else x.contiguous()
    ts = nvfp4_tensor_scale(x, amax).reshape(1)
    out = torch.empty(m, k, dtype=torch.bfloat16, device=x.device)
    block_m, block_k = 32, 64
    nvfp4_carrier_kernel[(triton.cdiv(m, block_m), triton.cdiv(k, block_k))](
        x, out, ts, m, k, x.stride(0), out.stride(0), BLOCK_M=block_m, BLOCK_K=block_k, INTERPRET=interpreting(),
        num_warps=4)
    return out, ts.reshape(())


def quantize_nvfp4_triton(x: torch.Tensor, tensor_scale: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`quantize_nvfp4(x)` with its codes packed (`pack_fp4`), in one Triton pass: (packed uint8
    [M, K/2], float8_e4m3fn block scales [M, K/16], fp32 tensor scale). `tensor_scale`: a calibrated
    one, else x's own amax / 2688."""
    if triton is None:
        raise RuntimeError("quantize_nvfp4_triton: triton is not installed")
    check_last_dim_multiple(x, NVFP4_BLOCK, "quantize_nvfp4_triton")
    m, k = x.shape
    x = x if x.stride(-1) == 1 else x.contiguous()
    ts = (nvfp4_tensor_scale(x) if tensor_scale is None
          else torch.as_tensor(tensor_scale, dtype=torch.float32, device=x.device)).reshape(1)
    packed = torch.empty(m, k // 2, dtype=torch.uint8, device=x.device)
    scales = torch.empty(m, k // NVFP4_BLOCK, dtype=torch.float8_e4m3fn, device=x.device)
    block_m, block_k = 32, 64
    nvfp4_codes_kernel[(triton.cdiv(m, block_m), triton.cdiv(k, block_k))](
        x, packed, scales, ts, m, k, x.stride(0), BLOCK_M=block_m, BLOCK_K=block_k, INTERPRET=interpreting(),
        num_warps=4)
    return packed, scales, ts.reshape(())


# The constants the kernel spells out (tl.constexpr literals), kept equal to the reference's.
assert (E2M1_MAX, E4M3_MAX, E4M3_MIN_SUBNORMAL) == (6.0, 448.0, 0.001953125)
