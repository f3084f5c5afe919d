"""A transformer block's residual and its L1 statistics in one pass — Triton kernel, launch wrapper
and the plain-torch reference, `residual_l1_reference`.

6Bit-Diffusion's runtime (dq_cli/quant/runtime.py) needs, after every block it computes, per batch
row: Γ = ‖out − in‖₁ / ‖in‖₁ (the next step's routing), the residual Δ = out − in in the model's
dtype (the Temporal Delta Cache's cached value) and ‖Δ − Δ_cached‖₁ / ‖Δ_cached‖₁ (the cache's rate
of change). In torch that is a subtraction and two `l1_parts` calls (below; calibration's metrics
use the same function), each with fp32 copies of both operands: about 15 GB of memory traffic per
block at Wan A14B 480p (32,760 × 5,120), roughly 4 ms, 160 ms per forward over 40 blocks. This
kernel reads out, in and Δ_cached once and writes Δ once.

The math is the reference's, bit for bit, except for the order of the fp32 sums: the differences
and magnitudes are taken in fp32 from the inputs' exact values, Δ is the fp32 difference rounded
once to the model's dtype (what torch's bf16 subtraction does), and the change is measured on that
stored Δ. Each program sums one chunk of a row; the chunks' partial sums are added by torch
afterwards, in a fixed order (no atomics), so the result is deterministic.
"""

from __future__ import annotations

import torch

from .interpreter import interpreting

try:
    import triton
    import triton.language as tl

    from .interpreter import round_to_bf16
except ImportError:  # pragma: no cover - CPU-only installs without triton
    triton = None

__all__ = ["residual_l1", "residual_l1_reference", "l1_parts", "SUMS"]

# The columns of the [rows, 4] fp32 sums both functions return.
SUMS = ("delta", "input", "change", "cached")  # ‖out − in‖₁, ‖in‖₁, ‖Δ − Δ_cached‖₁, ‖Δ_cached‖₁
KERNEL_DTYPES = (torch.bfloat16, torch.float32)


def l1_parts(new: torch.Tensor, old: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(‖new − old‖₁, ‖old‖₁) per batch row in fp32: the sums behind calibration's Γ and TDC's rate
    of change (dq_calib.trajectories), which add up over the slices of a sharded sequence."""
    a, b = new.detach().float().reshape(new.shape[0], -1), old.detach().float().reshape(old.shape[0], -1)
    return (a - b).abs().sum(1), b.abs().sum(1)


def residual_l1_reference(out: torch.Tensor, inp: torch.Tensor, cached: torch.Tensor | None = None,
                          write_delta: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(Δ = out − in in out's dtype or None, fp32 sums [rows, 4] per batch row in `SUMS` order;
    the last two columns are 0 without `cached`)."""
    sums = torch.zeros(out.shape[0], 4, dtype=torch.float32, device=out.device)
    sums[:, 0], sums[:, 1] = l1_parts(out, inp)
    delta = out - inp if write_delta or cached is not None else None
    if cached is not None:
        sums[:, 2], sums[:, 3] = l1_parts(delta, cached)
    return (delta if write_delta else None), sums


if triton is not None:

    @triton.jit
    def residual_l1_kernel(out_ptr, in_ptr, cached_ptr, delta_ptr, partial_ptr, row_len, chunks,
                           HAS_CACHED: tl.constexpr, WRITE_DELTA: tl.constexpr, DELTA_BF16: tl.constexpr,
                           BLOCK: tl.constexpr, ITERS: tl.constexpr):
        row, chunk = tl.program_id(0), tl.program_id(1)
        base = row.to(tl.int64) * row_len
        acc_delta = tl.zeros((BLOCK,), dtype=tl.float32)
        acc_input = tl.zeros((BLOCK,), dtype=tl.float32)
        acc_change = tl.zeros((BLOCK,), dtype=tl.float32)
        acc_cached = tl.zeros((BLOCK,), dtype=tl.float32)
        for it in range(ITERS):
            cols = (chunk.to(tl.int64) * ITERS + it) * BLOCK + tl.arange(0, BLOCK)
            inside = cols < row_len
            o = tl.load(out_ptr + base + cols, mask=inside, other=0.0).to(tl.float32)
            x = tl.load(in_ptr + base + cols, mask=inside, other=0.0).to(tl.float32)
            d = o - x
            acc_delta += tl.abs(d)
            acc_input += tl.abs(x)
            # Δ as stored: rounded once to the model's dtype, as torch's subtraction rounds it
            stored = round_to_bf16(d) if DELTA_BF16 else d
            if WRITE_DELTA:
                tl.store(delta_ptr + base + cols, stored.to(delta_ptr.dtype.element_ty), mask=inside)
            if HAS_CACHED:
                c = tl.load(cached_ptr + base + cols, mask=inside, other=0.0).to(tl.float32)
                acc_change += tl.abs(stored - c)
                acc_cached += tl.abs(c)
        slot = partial_ptr + (row * chunks + chunk) * 4
        tl.store(slot, tl.sum(acc_delta, axis=0))
        tl.store(slot + 1, tl.sum(acc_input, axis=0))
        tl.store(slot + 2, tl.sum(acc_change, axis=0))
        tl.store(slot + 3, tl.sum(acc_cached, axis=0))


def kernel_applies(out: torch.Tensor, inp: torch.Tensor, cached: torch.Tensor | None) -> bool:
    """Whether `residual_l1` runs the kernel for these tensors (else the reference)."""
    tensors = [out, inp] + ([cached] if cached is not None else [])
    return (triton is not None and (out.is_cuda or interpreting()) and out.dtype in KERNEL_DTYPES
            and all(t.dtype == out.dtype and t.shape == out.shape and t.is_contiguous() for t in tensors))


def residual_l1(out: torch.Tensor, inp: torch.Tensor, cached: torch.Tensor | None = None,
                write_delta: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """`residual_l1_reference`'s results in one pass where the kernel applies (CUDA or the
    interpreter; BF16 or fp32; contiguous tensors of one shape and dtype), else the reference."""
    if not kernel_applies(out, inp, cached):
        return residual_l1_reference(out, inp, cached, write_delta)
    rows = out.shape[0]
    row_len = out.numel() // rows
    # The interpreter runs a program per Python call: few large programs there; on a GPU 2,048
    # elements a step, 8 steps a program (16K elements: ~10K programs at Wan A14B 480p).
    block, iters = (65536, 1) if interpreting() else (2048, 8)
    chunks = triton.cdiv(row_len, block * iters)
    delta = torch.empty_like(out) if write_delta else None
    partial = torch.empty(rows, chunks, 4, dtype=torch.float32, device=out.device)
    residual_l1_kernel[(rows, chunks)](
        out, inp, cached if cached is not None else out, delta if delta is not None else out, partial,
        row_len, chunks, HAS_CACHED=cached is not None, WRITE_DELTA=write_delta,
        DELTA_BF16=out.dtype == torch.bfloat16, BLOCK=block, ITERS=iters, num_warps=8)
    return delta, partial.sum(1)
