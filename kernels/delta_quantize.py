"""DeltaQuant's activation quantizer for the Hopper W4A4 GEMM — Triton kernel, launch wrapper and
the PyTorch reference it must meet.

In: X [M, K] (M = B·T·H·W tokens, T-major), the smoothing vector λ and the low-rank down factor
L₂ [r, K]. Out, in one launch:

- core        fp32 [B·n_cubes, K]  the cube means of X/λ (the core tokens; the caller makes them FP8)
- delta       E4M3 [M, K]          each token's delta d = x/λ − c rounded to INT4, in one of two formats:
                                   `int4_pow2`: power-of-two group scales, stored as code·s_g/s_tok;
                                   `int4_row`: one scale per token, stored as the code itself
                                   (both exact in E4M3)
- scale       fp32 [M]             s_tok = (largest group scale of the token) · 2**-6 (`int4_pow2`),
                                   the token's scale bf16(max|d| / 7) (`int4_row`)
- down        fp32 [M, r]          (X/λ)·L₂ᵀ, the input of the 16-bit low-rank branch, in token order
                                   (the GEMM reads it by each row's token)
- cube_of_row int32 [M]            the cube of each row (non-decreasing)
- row_token   int32 [M]            the token (row of X and of the output) each row holds

Rows come in cube order — a cube's tokens together, cubes in order, T-major inside a cube —
so that a GEMM tile of 128 rows touches only a few consecutive cubes and adds the core term as
a small one-hot matrix product instead of gathering a [128, N] block (dq_kernels.scaled_gemm);
the GEMM writes each row back to its token. The GEMM multiplies two E4M3 operands and applies
s_tok and the weight's row scale once, after its K loop. Without cubes (`cube=None`) the deltas
are the tokens themselves, in token order (RTN / SVDQuant activations in `int4_pow2`).

Two launches over (cube, slice of 1,024 columns): `delta_stats_kernel` writes the core tokens, each
token's largest |d| per slice and the slice's share of (X/λ)·L₂ᵀ; `delta_round_kernel` takes the
token's largest group scale (or its one scale) from those maxima and rounds. X is read twice; splitting K gives
cubes × slices programs (a first version with one program per cube walking all of K was
latency-bound). The low-rank input is summed over slices in a fixed order: deterministic.
Ragged edge cubes mask the tokens they lack and average the ones they hold, like the reference.

Exactness against the reference: λ is applied as X·(1/λ), as the reference does
(dq_kernels.smoothing); the cube mean is a float sum in another order, so a delta can land on the other
side of a rounding boundary and a few codes may differ by one step. Tests bound how many.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .delta_cubes import clip_cube, cube_ids, split_deltas
from .formats import KERNEL_INT4_FORMATS, quantize_int4_format
from .int4 import POW2_SPAN
from .expand_int4 import CARRIER_SHIFT, GROUP, to_carriers
from .interpreter import interpreting, round_to_bf16
from .smoothing import apply_smooth, inverse_smooth

__all__ = ["delta_quantize", "delta_quantize_reference", "DeltaActivations"]



class DeltaActivations(NamedTuple):
    """What the GEMMs of one layer need (see the module docstring)."""
    core: torch.Tensor | None
    delta: torch.Tensor
    scale: torch.Tensor
    down: torch.Tensor | None
    cube_of_row: torch.Tensor | None
    row_token: torch.Tensor | None


def cube_order(grid: tuple[int, int, int], cube: tuple[int, int, int], batch: int, device=None):
    """(row_token, cube_of_row, row_start, n_cubes): the rows of all batches in cube order.
    Cached per grid, cube, batch and device: a model's layers all share a step's order, and its
    argsort and scans were ~0.1 ms of small launches per layer on an H200. Read-only tensors.
    Under CUDA graphs, fill the cache before the recording (dq_cli.models.base.ForwardTracker): tensors
    made while a graph records come from its private pool, which must not outlive the graph."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return _cube_order(tuple(grid), tuple(cube), batch, dev)


@functools.lru_cache(maxsize=64)
def _cube_order(grid, cube, batch, device):
    ids, n_cubes = cube_ids(grid, cube, device)
    order = torch.argsort(ids, stable=True)  # stable: T-major inside each cube
    per_batch = ids.numel()
    offsets = torch.arange(batch, device=ids.device)[:, None]
    row_token = (order[None, :] + per_batch * offsets).reshape(-1).to(torch.int32)
    cube_of_row = (ids[order][None, :] + n_cubes * offsets).reshape(-1).to(torch.int32)
    sizes = torch.bincount(ids, minlength=n_cubes)
    row_start = (torch.cumsum(sizes, 0) - sizes).to(torch.int32)
    return row_token, cube_of_row, row_start, n_cubes


def delta_quantize_reference(x: torch.Tensor, smooth: torch.Tensor | None, lora_down: torch.Tensor | None,
                             batch: int, grid: tuple[int, int, int] | None, cube: tuple[int, int, int] | None,
                             fmt: str = "int4_pow2") -> DeltaActivations:
    """The same outputs from dq_kernels' PyTorch formats (K a multiple of 64 for `int4_pow2`)."""
    xs = apply_smooth(x, smooth)
    down = (xs.to(lora_down.dtype) @ lora_down.T).float() if lora_down is not None else None
    core = row_token = cube_of_row = None
    deltas = xs
    if cube is not None:
        core, deltas, _ = split_deltas(xs.reshape(batch, -1, xs.shape[-1]), grid, cube)
        core, deltas = core.reshape(-1, xs.shape[-1]), deltas.reshape(-1, xs.shape[-1])
        row_token, cube_of_row, _, _ = cube_order(grid, clip_cube(cube, grid), batch, x.device)
        deltas = deltas[row_token.long()]
    delta, s_tok = to_carriers(*quantize_int4_format(deltas, fmt, GROUP))
    return DeltaActivations(core, delta, s_tok, down, cube_of_row, row_token)


@triton.jit
def _ceil_exp(amax):
    """Smallest e with 7·2**e >= amax (amax a positive normal fp32): the exponent of the
    power-of-two INT4 scale. From the bits, without a division: amax = (1 + m)·2**E, and
    7·2**(E-2) = 1.75·2**E."""
    bits = amax.to(tl.int32, bitcast=True)
    e = ((bits >> 23) & 0xFF) - 127
    return tl.where((bits & 0x7FFFFF) <= 0x600000, e - 2, e - 1)


@triton.jit
def _pow2(e):
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _cube_rows(pid, batch, row_start_ptr, T, H, W, tokens_per_batch, CT: tl.constexpr, CH: tl.constexpr,
               CW: tl.constexpr, CUBE_TOKENS: tl.constexpr, HAS_CUBES: tl.constexpr):
    """For cube `pid` (or the pid-th block of tokens): the tokens it reads, the rows it writes
    (cube order, compact for ragged edge cubes), and which of the CUBE_TOKENS slots exist."""
    j = tl.arange(0, CUBE_TOKENS)
    if HAS_CUBES:
        nh, nw = tl.cdiv(H, CH), tl.cdiv(W, CW)
        t0, h0, w0 = (pid // (nh * nw)) * CT, ((pid // nw) % nh) * CH, (pid % nw) * CW
        dt, dh, dw = j // (CH * CW), (j // CW) % CH, j % CW
        valid = (j < CT * CH * CW) & (t0 + dt < T) & (h0 + dh < H) & (w0 + dw < W)
        tokens = batch * tokens_per_batch + ((t0 + dt) * H + h0 + dh) * W + w0 + dw
        ch_e, cw_e = tl.minimum(H - h0, CH), tl.minimum(W - w0, CW)
        rows = batch * tokens_per_batch + tl.load(row_start_ptr + pid) + (dt * ch_e + dh) * cw_e + dw
    else:
        tokens = pid * CUBE_TOKENS + j
        valid = tokens < tokens_per_batch
        rows = tokens
    return tokens, rows, valid


@triton.jit
def _load_chunk(x_ptr, inv_smooth_ptr, tokens, valid, cols, K, stride_x, HAS_SMOOTH: tl.constexpr):
    """X/λ = X·(1/λ) for the tokens × 64 columns → fp32 [CUBE_TOKENS, 64] (dq_kernels.smoothing)."""
    mask = valid[:, None] & (cols[None, :] < K)
    xt = tl.load(x_ptr + tokens[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_SMOOTH:
        xt = xt * tl.load(inv_smooth_ptr + cols, mask=cols < K, other=1.0)[None, :]
    return xt


@triton.jit
def delta_stats_kernel(
    x_ptr, inv_smooth_ptr, down_w_ptr, row_start_ptr,  # X [M, K], 1/λ [K], L₂ [R, K], first row of each cube
    core_ptr, part_max_ptr, down_part_ptr,           # core [B·n_cubes, KP]; per slice: max |d| [M, S], (X/λ)L₂ᵀ [S, M, R]
    K, KP, stride_x, T, H, W, tokens_per_batch, M, n_splits,
    CT: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr, CUBE_TOKENS: tl.constexpr, HAS_CUBES: tl.constexpr,
    HAS_SMOOTH: tl.constexpr, HAS_DOWN: tl.constexpr, DOWN_IEEE: tl.constexpr, R: tl.constexpr,
    SPLIT_K: tl.constexpr, CHUNK_K: tl.constexpr,
):
    pid, split, batch = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    tokens, rows, valid = _cube_rows(pid, batch, row_start_ptr, T, H, W, tokens_per_batch, CT, CH, CW,
                                     CUBE_TOKENS, HAS_CUBES)
    count = tl.sum(valid.to(tl.float32), axis=0)
    cube_row = batch * tl.num_programs(0) + pid
    r = tl.arange(0, R)
    row_max = tl.zeros((CUBE_TOKENS,), dtype=tl.float32)
    down = tl.zeros((CUBE_TOKENS, R), dtype=tl.float32)
    for k0 in range(split * SPLIT_K, min(split * SPLIT_K + SPLIT_K, KP), CHUNK_K):
        cols = k0 + tl.arange(0, CHUNK_K)
        xt = _load_chunk(x_ptr, inv_smooth_ptr, tokens, valid, cols, K, stride_x, HAS_SMOOTH)
        if HAS_DOWN:
            lw = tl.load(down_w_ptr + r[:, None] * K + cols[None, :], mask=cols[None, :] < K, other=0.0)
            if DOWN_IEEE:  # accumulate in place: no second register tile
                down = tl.dot(xt, tl.trans(lw), down, input_precision="ieee")
            else:
                down = tl.dot(xt.to(lw.dtype), tl.trans(lw), down)
        if HAS_CUBES:
            mean = tl.math.div_rn(tl.sum(xt, axis=0), count)
            tl.store(core_ptr + cube_row * KP + cols, mean, mask=cols < KP)
            xt = tl.where(valid[:, None], xt - mean[None, :], 0.0)
        row_max = tl.maximum(row_max, tl.max(tl.abs(xt), axis=1))
    tl.store(part_max_ptr + rows * n_splits + split, row_max, mask=valid)
    if HAS_DOWN:
        tl.store(down_part_ptr + (split * M + tokens[:, None]) * R + r[None, :], down, mask=valid[:, None])


@triton.jit
def delta_round_kernel(
    x_ptr, inv_smooth_ptr, row_start_ptr, core_ptr, part_max_ptr,   # inputs (core, part_max: delta_stats_kernel)
    delta_ptr, scale_ptr,                                       # outputs: E4M3 carriers [M, KP], scales [M]
    K, KP, stride_x, T, H, W, tokens_per_batch, n_splits,
    CT: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr, CUBE_TOKENS: tl.constexpr, HAS_CUBES: tl.constexpr,
    HAS_SMOOTH: tl.constexpr, SPLITS: tl.constexpr, SPLIT_K: tl.constexpr, CHUNK_K: tl.constexpr,
    SPAN: tl.constexpr, SHIFT: tl.constexpr, ROW_SCALE: tl.constexpr,
):
    pid, split, batch = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    tokens, rows, valid = _cube_rows(pid, batch, row_start_ptr, T, H, W, tokens_per_batch, CT, CH, CW,
                                     CUBE_TOKENS, HAS_CUBES)
    cube_row = batch * tl.num_programs(0) + pid
    s = tl.arange(0, SPLITS)
    part = tl.load(part_max_ptr + rows[:, None] * n_splits + s[None, :],
                   mask=valid[:, None] & (s[None, :] < n_splits), other=0.0)
    row_max = tl.max(part, axis=1)
    nonzero = row_max > 0
    e_tok = tl.where(nonzero, _ceil_exp(tl.where(nonzero, row_max, 1.0)), 0)
    # int4_row: the reference's bf16(fp32(max|d|) / 7), each step rounded to nearest even, and
    # its reciprocal (codes are d·(1/s): dq_kernels.int4)
    s_row = round_to_bf16(tl.math.div_rn(row_max, 7.0))
    inv_row = tl.math.div_rn(1.0, tl.where(nonzero, s_row, 1.0))
    for k0 in range(split * SPLIT_K, min(split * SPLIT_K + SPLIT_K, KP), CHUNK_K):
        cols = k0 + tl.arange(0, CHUNK_K)
        xt = _load_chunk(x_ptr, inv_smooth_ptr, tokens, valid, cols, K, stride_x, HAS_SMOOTH)
        if HAS_CUBES:
            mean = tl.load(core_ptr + cube_row * KP + cols, mask=cols < KP, other=0.0)
            xt = tl.where(valid[:, None], xt - mean[None, :], 0.0)
        if ROW_SCALE:
            q = xt * inv_row[:, None]
        else:
            g_max = tl.max(tl.abs(xt), axis=1)
            e_g = tl.where(g_max > 0, _ceil_exp(tl.where(g_max > 0, g_max, 1.0)), e_tok - SPAN)
            e_g = tl.maximum(e_g, e_tok - SPAN)  # within 2**SPAN of the token's largest group
            q = xt * _pow2(-e_g)[:, None]
        q = (q + 12582912.0) - 12582912.0  # round half to even (1.5·2**23 trick; |q| < 2**22)
        q = tl.minimum(tl.maximum(q, -8.0), 7.0)
        carrier = q if ROW_SCALE else q * _pow2(e_g - e_tok + SHIFT)[:, None]
        carrier = tl.where(nonzero[:, None], carrier, 0.0)
        tl.store(delta_ptr + rows[:, None] * KP + cols[None, :], carrier.to(delta_ptr.dtype.element_ty),
                 mask=valid[:, None] & (cols[None, :] < KP))
    if split == 0:
        scale = s_row if ROW_SCALE else _pow2(e_tok - SHIFT)
        tl.store(scale_ptr + rows, tl.where(nonzero, scale, 0.0), mask=valid)


# Columns per program and warps: the best of a sweep at 32,760×5,120 on an H200 (tools/kernel_probe.py):
# 0.31 ms, against 0.33–0.38 for 2,048 or 4,096 columns and 2 or 4 warps (1.12 ms before λ became a
# multiply). Small programs, many of them, keep the most loads in flight.
SPLIT_K = 1024
NUM_WARPS = 1
# Columns a program loads per step: one scale group for `int4_pow2` (its rounding needs the group's
# maximum); any width for `int4_row`, whose codes do not depend on it. A one-warp program does best
# with about 2,048 elements a step (tools/probe_quantizer.py, H200, 32,760 rows, no low-rank input):
# 16-token cubes 0.305 → 0.281 ms at 5,120 columns and 0.807 → 0.743 ms at 13,824 going from 64 to 128
# columns (256: 0.294 / 0.767); 64-token cubes 0.299 ms at 64 columns but 0.418 at 128.
ROW_STEP_ELEMENTS = 2048
ROW_CHUNK_K: int | None = None  # None: ROW_STEP_ELEMENTS // tokens per program, at least one group
MIN_PROGRAMS = 2048  # one-warp programs: ~16 per SM on an H100/H200


def _split_k(k: int, programs: int) -> int:
    """SPLIT_K, halved (down to one group) until there are enough (cube, slice) programs to fill a
    GPU: LTX-Video's 6,144 tokens make only 96 cubes, and at 1,024 columns its quantizer was
    latency-bound (~1 ms for 6,144×2,048 on an H200)."""
    split = SPLIT_K
    while split > GROUP and programs * triton.cdiv(k, split) < MIN_PROGRAMS:
        split //= 2
    return split


def _row_chunk_k(tokens_per_program: int) -> int:
    return ROW_CHUNK_K or max(GROUP, ROW_STEP_ELEMENTS // tokens_per_program)


def delta_quantize(x: torch.Tensor, smooth: torch.Tensor | None, lora_down: torch.Tensor | None,
                   batch: int, grid: tuple[int, int, int] | None, cube: tuple[int, int, int] | None,
                   fmt: str = "int4_pow2") -> DeltaActivations:
    """X [M, K] (M = batch·T·H·W when `cube` is given; K a multiple of 64 for `int4_pow2` and with
    cubes, whose FP8 core tokens have a scale per 64 channels) → DeltaActivations in `fmt`."""
    m, k = x.shape
    if fmt not in KERNEL_INT4_FORMATS:
        raise ValueError(f"delta_quantize: format {fmt!r} is not one of {KERNEL_INT4_FORMATS}")
    if k % GROUP and (fmt == "int4_pow2" or cube is not None):
        raise ValueError(f"delta_quantize: K={k} is not a multiple of {GROUP}")
    x = x if x.stride(-1) == 1 else x.contiguous()
    dev = x.device
    rank = lora_down.shape[0] if lora_down is not None else 0
    r = max(16, triton.next_power_of_2(rank))  # tl.dot wants a power of two >= 16: pad with zero rows
    if lora_down is not None and r != rank:
        lora_down = torch.cat([lora_down, lora_down.new_zeros(r - rank, k)])
    if lora_down is not None and interpreting():
        lora_down = lora_down.float()  # the interpreter's bf16 tl.dot is wrong (FACTS.md)
    scale = torch.empty(m, dtype=torch.float32, device=dev)
    core = row_token = cube_of_row = None
    row_start = scale  # unused without cubes
    if cube is not None:
        t, h, w = grid
        ct, ch, cw = clip_cube(cube, grid)
        row_token, cube_of_row, row_start, n_cubes = cube_order(grid, (ct, ch, cw), batch, dev)
        cube_tokens = max(16, triton.next_power_of_2(ct * ch * cw))
        core = torch.empty(batch * n_cubes, k, dtype=torch.float32, device=dev)
        programs, per_batch = n_cubes, m // batch
    else:
        t = h = w = ct = ch = cw = 1
        cube_tokens = 64
        programs, per_batch, batch = triton.cdiv(m, 64), m, 1
    split_k = _split_k(k, programs * batch)
    splits = triton.cdiv(k, split_k)
    delta = torch.empty(m, k, dtype=torch.float8_e4m3fn, device=dev)
    part_max = torch.empty(m, splits, dtype=torch.float32, device=dev)
    down_part = torch.empty(splits, m, r, dtype=torch.float32, device=dev) if lora_down is not None else None
    dummy = scale  # any tensor: pointers of absent inputs are never read
    shape = dict(CT=ct, CH=ch, CW=cw, CUBE_TOKENS=cube_tokens, HAS_CUBES=cube is not None,
                 HAS_SMOOTH=smooth is not None, SPLIT_K=split_k,
                 CHUNK_K=min(_row_chunk_k(cube_tokens), split_k) if fmt == "int4_row" else GROUP,
                 num_warps=NUM_WARPS)
    launch = (programs, splits, batch)
    sm = inverse_smooth(smooth) if smooth is not None else dummy
    delta_stats_kernel[launch](
        x, sm, lora_down if lora_down is not None else dummy, row_start, core if core is not None else dummy,
        part_max, down_part if down_part is not None else dummy, k, k, x.stride(0), t, h, w, per_batch, m, splits,
        HAS_DOWN=lora_down is not None, DOWN_IEEE=lora_down is not None and lora_down.dtype == torch.float32,
        R=r, **shape)
    delta_round_kernel[launch](
        x, sm, row_start, core if core is not None else dummy, part_max, delta, scale, k, k, x.stride(0), t, h, w,
        per_batch, splits, SPLITS=max(2, triton.next_power_of_2(splits)), SPAN=POW2_SPAN, SHIFT=CARRIER_SHIFT,
        ROW_SCALE=fmt == "int4_row", **shape)
    down = down_part.sum(0)[:, :rank] if down_part is not None else None
    return DeltaActivations(core, delta, scale, down, cube_of_row, row_token)
