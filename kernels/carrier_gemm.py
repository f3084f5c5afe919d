"""The BF16 GEMM of 6Bit-Diffusion's carrier path on Hopper — Triton kernel (TMA loads), launch
wrapper and the PyTorch reference.

    Y[m, n] = (Σ_k A[m, k]·B[n, k]) · a_scale[m] · b_scale[n] + down[m, :]·up[n, :] + bias[n]

A and B are exact BF16 carriers (NVFP4 e2m1·s8, or INT8 codes; dq_cli/quant/carrier_path.py), so
the fp32-accumulated product is the reference's up to summation order, and the epilogue rounds the
output once. The scales are GPU tensors (NVFP4's tensor scale comes from each call's amax), which
is why this is not cuBLAS: `torch.addmm`'s alpha is a host number, and reading it back would
synchronise every layer and break torch.compile's graphs; cuBLAS with an fp32 output followed by
torch's scale, bias and cast took 3.68 ms at 32,760 × 5,120 → 5,120 on an H200, against 2.37 for
the bare cuBLAS BF16 GEMM.

Why not `scaled_gemm` (whose epilogue helpers this kernel calls): its per-element pointer loads
reach at most 518–535 TFLOP/s in BF16 at Wan A14B's shapes on an H200, the best of ten tiles
(`tools/probe_carriers.py --gemm-sweep`, docs/measurements/carriers_gemm_sweep_h200.log), cuBLAS ~700. Here A and B tiles come through TMA tensor descriptors (no address arithmetic or
masks in the K loop; the edges are zero-filled by the copy engine), as Triton's persistent-matmul
tutorial does to reach cuBLAS on Hopper.
"""

from __future__ import annotations

import torch

from .interpreter import interpreting

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

    from .scaled_gemm import _scaled, _split_extra, grouped_tile, pad_rank, tma_block_shapes
except ImportError:  # pragma: no cover - CPU-only installs without triton
    triton = None

__all__ = ["carrier_gemm", "carrier_gemm_reference"]


def carrier_gemm_reference(a, b, a_scale, b_scale, *, down=None, up=None, bias=None,
                           out_dtype=torch.bfloat16) -> torch.Tensor:
    y = (a.double() @ b.double().T) * b_scale.double()[None, :]
    if a_scale is not None:
        y = y * a_scale.double()[:, None]
    if down is not None:
        y = y + down.double() @ up.double().T
    if bias is not None:
        y = y + bias.double()
    return y.to(out_dtype)


if triton is not None:

    @triton.jit
    def carrier_gemm_kernel(a_desc, b_desc, c_ptr, a_scale_ptr, b_scale_ptr, down_ptr, up_ptr, bias_ptr,
                            M, N, K, stride_cm, HAS_A_SCALE: tl.constexpr, HAS_LORA: tl.constexpr,
                            HAS_BIAS: tl.constexpr, R: tl.constexpr, RC: tl.constexpr, IEEE: tl.constexpr,
                            LORA_IEEE: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            GROUP_M: tl.constexpr):
        pid_m, pid_n = grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            a = a_desc.load([pid_m * BLOCK_M, k0])
            b = b_desc.load([pid_n * BLOCK_N, k0])
            if IEEE:  # fp32 operands in the interpreter, whose bf16 dot is inexact (FACTS.md)
                acc = tl.dot(a, b.T, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b.T, acc)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        y = _scaled(acc, rm, rn, M, N, a_scale_ptr, b_scale_ptr, HAS_A_SCALE)
        # The low-rank branch as scaled_gemm's split epilogue adds it (no core term here): small MMAs of
        # RC ranks, fp32 for fp32 factors (tests) and in the interpreter.
        y = _split_extra(y, rm, rm, rn, M, N, rm, 0, -1, b_scale_ptr, b_scale_ptr, down_ptr, up_ptr,
                         False, HAS_LORA, R, RC, 16, LORA_IEEE)
        if HAS_BIAS:
            y += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        tl.store(c_ptr + rm[:, None].to(tl.int64) * stride_cm + rn[None, :], y.to(c_ptr.dtype.element_ty),
                 mask=(rm < M)[:, None] & (rn < N)[None, :])

    _set_block_shapes = tma_block_shapes("a_desc", "b_desc")

    def _configs() -> list:
        if interpreting():  # the interpreter runs every config: one small one
            return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4,
                                  pre_hook=_set_block_shapes)]
        # Hopper, M in the tens of thousands: the tiles that led the pointer-based sweep
        # (carriers_gemm_sweep_h200.log: 256×128×64 and 128×256×64 at 8 warps), 3 and 4 stages
        # (48 KB of shared memory a stage), and 128×128 for the narrow layers.
        tiles = [(256, 128, 64, 8, 3), (256, 128, 64, 8, 4), (128, 256, 64, 8, 3), (128, 256, 64, 8, 4),
                 (128, 128, 64, 8, 4), (128, 128, 64, 4, 5)]
        return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w,
                              num_stages=s, pre_hook=_set_block_shapes) for bm, bn, bk, w, s in tiles]

    def _prune(configs, named_args, **kwargs):
        """Small problems (tests, dq-tiny) take the smallest tile at once."""
        if named_args["M"] * named_args["N"] < 2**22:
            return [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]
        return configs

    carrier_gemm_tuned = triton.autotune(_configs(), key=["M", "N", "K", "HAS_A_SCALE", "HAS_LORA"],
                                         prune_configs_by={"early_config_prune": _prune})(carrier_gemm_kernel)


def carrier_gemm(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor | None, b_scale: torch.Tensor, *,
                 down: torch.Tensor | None = None, up: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """A [M, K] and B [N, K] BF16 (A may be a column slice of a wider tensor; K·2 bytes and A's row
    stride multiples of 16, as TMA wants), fp32 scales a_scale [M] (or None) and b_scale [N],
    low-rank factors down [M, R] and up [N, R], bias [N] → Y [M, N] in `out_dtype`."""
    if triton is None:
        raise RuntimeError("carrier_gemm: triton is not installed")
    m, k = a.shape
    n = b.shape[0]
    if a.dtype != torch.bfloat16 or b.dtype != torch.bfloat16 or b.shape[1] != k:
        raise ValueError(f"carrier_gemm: A {tuple(a.shape)} {a.dtype} and B {tuple(b.shape)} {b.dtype}: "
                         "BF16 with the same K")
    ieee = interpreting()
    if ieee:  # the interpreter's bf16 dot is inexact: the same (exact) values in fp32
        a, b = a.float(), b.float()
    a = a if a.stride(-1) == 1 else a.contiguous()
    b = b.contiguous()
    down, up, r = pad_rank(down, up)
    # The interpreter truncates in-kernel fp32→bf16 casts (FACTS.md): it stores fp32, torch rounds.
    c = torch.empty(m, n, dtype=torch.float32 if ieee else out_dtype, device=a.device)
    # Placeholder tile shapes: the autotuner's pre-hook sets each config's.
    a_desc, b_desc = TensorDescriptor.from_tensor(a, [32, 32]), TensorDescriptor.from_tensor(b, [32, 32])
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    dummy = b_scale
    carrier_gemm_tuned[grid](
        a_desc, b_desc, c, a_scale if a_scale is not None else dummy, b_scale,
        down.contiguous() if down is not None else dummy, up.contiguous() if up is not None else dummy,
        bias if bias is not None else dummy, m, n, k, c.stride(0), HAS_A_SCALE=a_scale is not None,
        HAS_LORA=up is not None, HAS_BIAS=bias is not None, R=r, RC=min(32, r), IEEE=ieee,
        LORA_IEEE=ieee or (up is not None and up.dtype == torch.float32))
    return c.to(out_dtype)
