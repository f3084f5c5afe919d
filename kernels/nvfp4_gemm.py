"""NVFP4 × NVFP4 GEMM on Blackwell's block-scaled tensor cores (`tl.dot_scaled`) — Triton kernel,
launch wrapper, PyTorch reference. For 6Bit-Diffusion's NVFP4 route where the hardware has it.

dq's NVFP4 storage (`dq_kernels.nvfp4`) is already the operand layout `tl.dot_scaled` takes: E2M1
codes packed two a byte along K, element 2i in the low nibble, and one E4M3 scale per 16 elements
along K ([rows, K // 16]; an E4M3 scale tensor tells Triton the group is 16, NVFP4, not MXFP4's 32 with
E8M0). So weights go in as stored and activations as `quantize_nvfp4` returns them; the two
per-tensor FP32 scales multiply the FP32 accumulator once, in the epilogue:

    y = (Σ_k e2m1(a) · s8_a · e2m1(b) · s8_b) · ts_a · ts_b + bias

The codes come in through TMA; the block scales are first put in the tensor cores' own layout
(`preshuffle_scales`, once per weight, per call for activations) so that each tile's scales are one
contiguous load the compiler hands to the MMA without shuffles. (A first version loading codes and
scales through plain pointers compiled to the same MMA but spilled 568–1,168 bytes a thread and did
not pipeline its loads: tools/nvfp4_gemm_sass.py.)

What is and is not checked:
- On the CPU (CI): every config compiles for sm_100a, lowers to the native block-scaled MMA
  (`tcgen05.mma … kind::mxf4nvf4.block_scale.scale_vec::4X`) and does not spill; the scale layout and
  the kernel's per-tile reassembly of it are checked in torch (tests/test_nvfp4_gemm.py). The Triton
  interpreter has no `dot_scaled` (triton 3.6: "InterpreterBuilder has no create_dot_scaled"), so
  the kernel's numbers cannot be run here.
- On Hopper nothing: triton 3.6's software emulation of `dot_scaled` fails to compile with E4M3
  scales for sm_90 (an MLIR assertion in TritonGPUAccelerateMatmul), so dq's Hopper path stays the
  exact BF16 carriers (dq_cli/quant/carrier_path.py).
- On Blackwell: **not run yet** (no such GPU was lent). `pytest -m gpu tests/test_nvfp4_gemm.py`
  compares it with `nvfp4_gemm_reference` there; nothing dispatches to it until that has passed.

The product of two E2M1·E4M3 values is exact in FP32 and the tensor cores accumulate in FP32, so the
kernel should match the reference to FP32 summation order (≈ K · 2**-24 relative to Σ|terms|).
"""

from __future__ import annotations

import torch

from .nvfp4 import NVFP4_BLOCK, dequantize_nvfp4, unpack_fp4

try:  # Triton is optional: the reference below runs anywhere.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs without triton
    triton = None

__all__ = ["nvfp4_gemm", "nvfp4_gemm_reference", "nvfp4_linear", "preshuffle_scales", "unshuffle_scales", "supported"]


def supported(device: torch.device | str | None = None) -> bool:
    """Whether this GPU has the block-scaled FP4 tensor cores (compute capability 10.x and up)."""
    if triton is None or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 10


def nvfp4_gemm_reference(a_packed: torch.Tensor, a_scales: torch.Tensor, a_ts: torch.Tensor | float,
                         b_packed: torch.Tensor, b_scales: torch.Tensor, b_ts: torch.Tensor | float,
                         bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """A [M, K/2] packed with scales [M, K/16], B [N, K/2] with [N, K/16] → A·Bᵀ [M, N], from the
    dequantized operands in FP32 (what the kernel computes, up to summation order)."""
    a = dequantize_nvfp4(unpack_fp4(a_packed), a_scales, 1.0)
    b = dequantize_nvfp4(unpack_fp4(b_packed), b_scales, 1.0)
    ts = torch.as_tensor(a_ts, dtype=torch.float32, device=a.device) * torch.as_tensor(b_ts, dtype=torch.float32,
                                                                                       device=a.device)
    y = (a @ b.T) * ts
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def preshuffle_scales(scales: torch.Tensor) -> torch.Tensor:
    """E4M3 block scales [R, K/16] → the tensor cores' scale-factor layout, [I, J, 32, 4, 4]: row
    r = 128·i + 32·d + c and group g = 4·j + e land at [i, j, c, d, e]. A 128-row × 64-column tile's 512
    scales are then contiguous and in the order tcgen05 reads them (cuBLAS's "block scaling factors
    layout"; Triton's block-scaled matmul tutorial), so the kernel loads them without shuffles.
    Zero-padded to whole tiles of the largest config (256 rows, 256 columns of K: I even, J a
    multiple of 4), so the kernel's last tiles read padding, never past the end. `unshuffle_scales`
    inverts it."""
    r, g = scales.shape
    i, j = -(-r // 256) * 2, -(-g // 16) * 4
    padded = scales.new_zeros(i * 128, j * 4)
    padded[:r, :g] = scales
    return padded.reshape(i, 4, 32, j, 4).permute(0, 3, 2, 1, 4).contiguous()


def unshuffle_scales(shuffled: torch.Tensor, rows: int, groups: int) -> torch.Tensor:
    """`preshuffle_scales`' inverse: the [rows, groups] scales back (what the kernel reassembles per tile)."""
    i, j = shuffled.shape[:2]
    return shuffled.permute(0, 3, 2, 1, 4).reshape(i * 128, j * 4)[:rows, :groups]


if triton is not None:
    from triton.tools.tensor_descriptor import TensorDescriptor

    # Tiles from the range of Triton's Blackwell block-scaled matmul tutorial (BLOCK_K 256: 128 bytes
    # of codes, 16 scales a row per step). Compiled for sm_100a (tools/nvfp4_gemm_sass.py), untimed:
    # no Blackwell GPU has run them. BLOCK_M stays 128, the scale layout's row block.
    NVFP4_CONFIGS = [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 256}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 256}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128}, num_warps=4, num_stages=5),
    ]

    @triton.jit
    def nvfp4_gemm_kernel(a_desc, as_ptr, b_desc, bs_ptr, c_ptr, bias_ptr, ts_ptr, M, N, K,
                          stride_as, stride_bs, stride_c,
                          HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr):
        pid_m, pid_n = tl.program_id(0), tl.program_id(1)
        # Codes through TMA (rows and K past the end read as 0, E2M1 zero); scales as the preshuffled
        # [.., 32, 4, 4] blocks, BLOCK_K / 64 of them a row block per step, contiguous.
        SCALES: tl.constexpr = (BLOCK_K // 64) * 512
        inner = tl.arange(0, SCALES)
        sa_ptr = as_ptr + (pid_m * (BLOCK_M // 128) + tl.arange(0, BLOCK_M // 128))[:, None].to(tl.int64) * stride_as \
            + inner[None, :]
        sb_ptr = bs_ptr + (pid_n * (BLOCK_N // 128) + tl.arange(0, BLOCK_N // 128))[:, None].to(tl.int64) * stride_bs \
            + inner[None, :]
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k in tl.range(0, tl.cdiv(K, BLOCK_K)):
            a = a_desc.load([pid_m * BLOCK_M, k * (BLOCK_K // 2)])
            b = b_desc.load([pid_n * BLOCK_N, k * (BLOCK_K // 2)])
            sa = tl.load(sa_ptr + k * SCALES).reshape(BLOCK_M // 128, BLOCK_K // 64, 32, 4, 4)
            sb = tl.load(sb_ptr + k * SCALES).reshape(BLOCK_N // 128, BLOCK_K // 64, 32, 4, 4)
            sa = sa.trans(0, 3, 2, 1, 4).reshape(BLOCK_M, BLOCK_K // 16)
            sb = sb.trans(0, 3, 2, 1, 4).reshape(BLOCK_N, BLOCK_K // 16)
            acc = tl.dot_scaled(a, sa, "e2m1", b.T, sb, "e2m1", acc)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = acc * tl.load(ts_ptr)  # ts_a · ts_b, one FP32 scalar
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        tl.store(c_ptr + rows[:, None].to(tl.int64) * stride_c + cols[None, :], acc.to(c_ptr.dtype.element_ty),
                 mask=(rows < M)[:, None] & (cols < N)[None, :])

    def _set_block_shapes(nargs):
        """Autotune pre-hook: the descriptors' tile shapes follow the config being tried."""
        nargs["a_desc"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_K"] // 2]
        nargs["b_desc"].block_shape = [nargs["BLOCK_N"], nargs["BLOCK_K"] // 2]

    for _c in NVFP4_CONFIGS:
        _c.pre_hook = _set_block_shapes
    nvfp4_gemm_tuned = triton.autotune(NVFP4_CONFIGS, key=["M", "N", "K", "HAS_BIAS"])(nvfp4_gemm_kernel)


def nvfp4_gemm(a_packed: torch.Tensor, a_scales: torch.Tensor, a_ts: torch.Tensor | float,
               b_packed: torch.Tensor, b_scales: torch.Tensor, b_ts: torch.Tensor | float,
               bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16,
               b_scales_shuffled: torch.Tensor | None = None) -> torch.Tensor:
    """`nvfp4_gemm_reference` on Blackwell's tensor cores (see the module docstring: not yet run on
    one). Operands in dq's NVFP4 storage: packed uint8 [rows, K/2], float8_e4m3fn scales [rows, K/16];
    K a multiple of 32 (TMA rows of 16 bytes). `b_scales_shuffled` (`preshuffle_scales(b_scales)`,
    made once per weight) saves reshuffling the weight's scales on every call."""
    if not supported(a_packed.device):
        raise RuntimeError("nvfp4_gemm: needs a GPU of compute capability 10.0 or later (Blackwell)")
    m, n, k = a_packed.shape[0], b_packed.shape[0], a_packed.shape[1] * 2
    if (b_packed.shape[1] * 2 != k or k % 32 or a_scales.shape != (m, k // NVFP4_BLOCK)
            or b_scales.shape != (n, k // NVFP4_BLOCK)):
        raise ValueError(f"nvfp4_gemm: A {tuple(a_packed.shape)} / {tuple(a_scales.shape)} and B "
                         f"{tuple(b_packed.shape)} / {tuple(b_scales.shape)} do not match (K a multiple of 32)")
    dev = a_packed.device
    ts = (torch.as_tensor(a_ts, dtype=torch.float32, device=dev)
          * torch.as_tensor(b_ts, dtype=torch.float32, device=dev)).reshape(1)
    sa = preshuffle_scales(a_scales)
    sb = b_scales_shuffled if b_scales_shuffled is not None else preshuffle_scales(b_scales)
    # Placeholder tile shapes: the autotuner's pre-hook sets each config's.
    a_desc = TensorDescriptor.from_tensor(a_packed.contiguous(), [128, 64])
    b_desc = TensorDescriptor.from_tensor(b_packed.contiguous(), [128, 64])
    c = torch.empty(m, n, dtype=out_dtype, device=dev)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))  # noqa: E731
    nvfp4_gemm_tuned[grid](a_desc, sa, b_desc, sb, c, bias if bias is not None else ts, ts, m, n, k,
                           sa.stride(0), sb.stride(0), c.stride(0), HAS_BIAS=bias is not None)
    return c


def nvfp4_linear(x: torch.Tensor, w_packed: torch.Tensor, w_scales: torch.Tensor, w_ts: torch.Tensor | float,
                 bias: torch.Tensor | None = None, x_ts: torch.Tensor | None = None) -> torch.Tensor:
    """y = NVFP4(x) · Wᵀ + bias for x [M, K]: x rounded as `quantize_nvfp4` does (ModelOpt's numerics;
    `x_ts` a calibrated tensor scale, else x's own amax) by one Triton pass, then `nvfp4_gemm`.
    Output in x's dtype."""
    from .nvfp4_quantize import quantize_nvfp4_triton

    packed, scales, ts = quantize_nvfp4_triton(x, x_ts)
    return nvfp4_gemm(packed, scales, ts, w_packed, w_scales, w_ts, bias, out_dtype=x.dtype)
