"""The 8-bit tensor-core GEMM under dq's quantized linears — Triton kernel, launch wrapper and the
PyTorch reference.

    Y[row_token[m], n] = ((Σ_k A[m, k]·B[n, k]) · a_scale[m]                 (E4M3×E4M3 or INT8×INT8)
                          + core[cube_of_row[m], n]) · b_scale[n]           DeltaQuant's core term
                         + down[row_token[m], :] · up[n, :]                  the 16-bit low-rank branch
                         + bias[n]

A's rows come in cube order (dq_kernels.delta_quantize): a tile's rows belong to a few
consecutive cubes, so the core term is a small matrix product — one-hot(cube of row) [BM, NC]
times NC rows of `core` — rather than a gather of a [BM, BN] fp32 block, which cost as much as
a third of the GEMM on an H100 (register pressure in the epilogue). With a low-rank branch of
rank 32 both share one bf16 MMA (`_fused_extra`); from rank 64 they are small MMAs one after the
other (`_split_extra`, see EPILOGUE). Each row is then stored to its token.

The scales are applied once, after the K loop: group scales inside the loop cost the FP8 rate
(FACTS.md: 272–355 TFLOP/s against 1,108–1,236), which is why the W4A4 path uses power-of-two
group scales folded exactly into E4M3 carriers (dq_kernels.delta_quantize, expand_int4). DeltaQuant's
core tokens, FP8 with a scale per 64 channels, are not multiplied here: a grouped variant of this
kernel took 0.53 ms for their 2,048 rows at 4×1×4 cubes and Wan A14B 480p on an H200, one cuBLAS BF16
GEMM on their exact BF16 carriers 0.27 ms (dq_kernels.linear_ops, docs/measurements/probe_core_gemm_h200.txt).

A and B reach the K loop through TMA tensor descriptors (`GEMM_TMA`; pointer loads where a row
is not a multiple of 16 bytes, or with DQ_GEMM_TMA=0): at Wan A14B 480p on an H200 that took one
block's W8A8 GEMMs from 1.28× to 1.45× cuBLAS BF16 and left the W4A4 GEMM as it was
(docs/measurements/gemm_tma_h200.log). A persistent launch (one program an SM walking the tiles,
the loops flattened so the next tile's loads may overlap this tile's epilogue) is opt-in with
DQ_GEMM_PERSISTENT=1: timed by tools/probe_gemm_tiles.py on an H200, it lost 1–3% on W4A4 and won
2.3% on W8A8, inside the run-to-run spread (docs/measurements/gemm_tiles_h200.log).

Accumulation: INT8 in int32 (exact); E4M3 in fp32 — on Hopper the FP8 MMA accumulator is
narrower than fp32 (FACTS.md). `promote=True` adds each BLOCK_K step's partial sum into an fp32
accumulator (`max_num_imprecise_acc`), but that cost 4× (4.46 ms against 1.14 ms at
32,760×5,120×5,120 on an H100), so it is off by default, as in Triton and cuBLAS; the error
that remains is measured by `dq bench kernels` against the reference.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .interpreter import interpreting

__all__ = ["scaled_gemm", "scaled_gemm_reference"]


def scaled_gemm_reference(a, b, a_scale, b_scale, *, core=None, cube_of_row=None,
                          row_token=None, down=None, up=None, bias=None, out_dtype=torch.bfloat16) -> torch.Tensor:
    y = (a.double() @ b.double().T).float()
    y = y * (a_scale.float()[:, None] if a_scale is not None else 1.0)
    if core is not None:
        y = y + core.float()[cube_of_row.long()]
    y = y * b_scale.float()[None, :]
    if down is not None:  # down is in token (output row) order
        rows = down if row_token is None else down[row_token.long()]
        y = y + (rows.to(up.dtype) @ up.T).float()
    if bias is not None:
        y = y + bias.float()
    if row_token is not None:
        y = torch.empty_like(y).index_copy_(0, row_token.long(), y)
    return y.to(out_dtype)


def tma_block_shapes(a_arg: str, b_arg: str):
    """An autotune pre-hook for a GEMM whose A [M, K] and B [N, K] arguments `a_arg`, `b_arg` may be
    TMA tensor descriptors: their tile shapes follow the config being tried (pointers are left alone)."""
    def hook(nargs):
        if isinstance(nargs[a_arg], TensorDescriptor):
            nargs[a_arg].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_K"]]
            nargs[b_arg].block_shape = [nargs["BLOCK_N"], nargs["BLOCK_K"]]
    return hook


_set_block_shapes = tma_block_shapes("a_ptr", "b_ptr")


def _configs() -> list[triton.Config]:
    if interpreting():  # the interpreter runs every config: one small one
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 64, "GROUP_M": 4}, num_warps=4,
                              pre_hook=_set_block_shapes)]
    # Hopper, M in the tens of thousands and N, K in the thousands: wide tiles, deep pipelines. The
    # best of a wider sweep at Wan A14B shapes on an H100 (tools/kernel_probe.py): 128×256×128 with
    # 8 warps and 4 stages reached 1,518–1,621 TFLOP/s in FP8 and ~1,150 in INT8.
    # PREFETCH issues the epilogue's loads before the K loop. With the fused epilogue it lost at
    # 128×256 (2.02 against 1.83 ms) and 256×128 (1.86 / 1.76) and won at 128×128 (1.51 / 1.55) at
    # 32,760×5,120×5,120 on an H200 (tools/kernel_probe.py), so the autotuner tries both.
    tiles = [({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "GROUP_M": 8}, 4),
             ({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, 3),
             ({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, 4)]
    return [triton.Config(dict(tile, PREFETCH=pf), num_warps=8, num_stages=stages, pre_hook=_set_block_shapes)
            for tile, stages in tiles for pf in (False, True)] + [
        triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4,
                      pre_hook=_set_block_shapes)]


@triton.jit
def grouped_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's output tile (row, column) in grouped launch order: GROUP_M row tiles go down
    a column of tiles together, so neighbouring programs share B tiles in L2."""
    return tile_coords(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)


@triton.jit
def tile_coords(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Tile number `pid`'s (row, column) in grouped order (`grouped_tile`)."""
    num_m, num_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    first_m = pid // (GROUP_M * num_n) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    return first_m + (pid % (GROUP_M * num_n)) % size_m, (pid % (GROUP_M * num_n)) // size_m


@triton.jit
def _core_slab(core_ptr, b_scale_ptr, ids, last, rn, N):
    """Rows `ids` (up to `last`) of the core term, times the weight's column scale: [NC, BN] fp32.
    The scale is applied here, not by the caller on the whole [n_cubes, N] tensor, which was an
    elementwise pass of 0.04–0.10 ms per call at Wan A14B 480p on an H200."""
    slab = tl.load(core_ptr + ids[:, None] * N + rn[None, :], mask=(ids[:, None] <= last) & (rn[None, :] < N),
                   other=0.0)
    return slab * tl.load(b_scale_ptr + rn, mask=rn < N, other=0.0)[None, :]


@triton.jit
def _epilogue_operands(pid_m, rm, rn, M, N, core_ptr, b_scale_ptr, cube_of_row_ptr, row_token_ptr, down_ptr, up_ptr,
                       bias_ptr, HAS_CORE: tl.constexpr, ROW_MAP: tl.constexpr, NC: tl.constexpr,
                       HAS_LORA: tl.constexpr, HAS_BIAS: tl.constexpr, R: tl.constexpr, BLOCK_M: tl.constexpr):
    """What the epilogue reads besides the accumulator (unused ones are compiled away)."""
    if HAS_CORE:
        cube = tl.load(cube_of_row_ptr + rm, mask=rm < M, other=-1)
        first = tl.load(cube_of_row_ptr + pid_m * BLOCK_M)
        last = tl.load(cube_of_row_ptr + min(pid_m * BLOCK_M + BLOCK_M, M) - 1)
        slab = _core_slab(core_ptr, b_scale_ptr, first + tl.arange(0, NC), last, rn, N)
    else:
        cube, first, last = rm, 0, 0
        slab = tl.zeros((NC, rn.shape[0]), dtype=tl.float32)
    if ROW_MAP:
        out_rows = tl.load(row_token_ptr + rm, mask=rm < M, other=0)
    else:
        out_rows = rm
    r = tl.arange(0, R)
    if HAS_LORA:
        down = tl.load(down_ptr + out_rows[:, None] * R + r[None, :], mask=rm[:, None] < M, other=0.0)
        up = tl.load(up_ptr + rn[:, None] * R + r[None, :], mask=rn[:, None] < N, other=0.0)
    else:
        down = tl.zeros((rm.shape[0], R), dtype=tl.float32)
        up = tl.zeros((rn.shape[0], R), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros((rn.shape[0],), dtype=tl.float32)
    return cube, first, last, slab, down, up, bias, out_rows


@triton.jit
def _fused_extra(y, cube, first, slab, down, up, IEEE_DOTS: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, NC: tl.constexpr):
    """y + down·upᵀ + one-hot(cube)·slab as ONE matrix product [down | one-hot] · [up | slabᵀ]ᵀ.

    Two small epilogue MMAs (the core term's in tf32x3, three passes) cost 1.3 ms more than the
    bare GEMM at 32,760×5,120×5,120 on an H200, far more than either alone (register pressure);
    one bf16 MMA with K = 2R does both. The halves are interleaved by tl.join on both sides (a
    permutation of K that leaves the product unchanged), and the core values are split into
    bf16 hi + lo (the one-hot columns repeated for each), which keeps them to ~2**-17 relative —
    near fp32, where bf16 alone would add an output-sized rounding. R = 2·NC. (Adding the core
    term row by row where a tile holds few cubes, an elementwise select, measured slower still:
    2.18 ms at 128×256 tiles; docs/measurements/kernel_probe_select_5120_h200.txt.)"""
    ids = first + tl.arange(0, NC)
    if IEEE_DOTS:  # tests and the interpreter (whose bf16 dot is inexact): fp32 all through
        hi = slab
        lo = tl.zeros_like(slab)
        onehot = (cube[:, None] == ids[None, :]).to(tl.float32)
        low_a, low_b = down.to(tl.float32), up.to(tl.float32)
    else:
        hi = slab.to(tl.bfloat16)
        lo = (slab - hi.to(tl.float32)).to(tl.bfloat16)
        onehot = (cube[:, None] == ids[None, :]).to(tl.bfloat16)
        low_a, low_b = down.to(tl.bfloat16), up.to(tl.bfloat16)
    core_a = tl.reshape(tl.join(onehot, onehot), (BLOCK_M, 2 * NC))
    core_b = tl.reshape(tl.join(tl.trans(hi), tl.trans(lo)), (BLOCK_N, 2 * NC))
    a_ext = tl.reshape(tl.join(low_a, core_a), (BLOCK_M, 4 * NC))
    b_ext = tl.reshape(tl.join(low_b, core_b), (BLOCK_N, 4 * NC))
    if IEEE_DOTS:
        return tl.dot(a_ext, tl.trans(b_ext), y, input_precision="ieee")
    return tl.dot(a_ext, tl.trans(b_ext), y)


@triton.jit
def _scaled(acc, rm, rn, M, N, a_scale_ptr, b_scale_ptr, HAS_A_SCALE: tl.constexpr):
    """The accumulator in fp32 times the per-row and per-column scales (once, after the K loop)."""
    y = acc.to(tl.float32)
    if HAS_A_SCALE:
        y *= tl.load(a_scale_ptr + rm, mask=rm < M, other=0.0)[:, None]
    return y * tl.load(b_scale_ptr + rn, mask=rn < N, other=0.0)[None, :]


@triton.jit
def _split_extra(y, rm, out_rows, rn, M, N, cube, first, last, core_ptr, b_scale_ptr, down_ptr, up_ptr,
                 HAS_CORE: tl.constexpr, HAS_LORA: tl.constexpr, R: tl.constexpr, RC: tl.constexpr,
                 NC: tl.constexpr, IEEE_DOTS: tl.constexpr):
    """y + down·upᵀ + one-hot(cube)·core as small bf16 MMAs into y, each operand loaded just before
    its MMA: the low-rank branch in chunks of RC ranks, the core term NC cubes at a time (bf16 hi
    + lo, ~2**-17 relative). Nothing of the epilogue is live across the K loop or held whole, so a
    rank-128 branch does not take a [BM, 128] + [BN, 128] block of registers at once."""
    if HAS_LORA:
        for r0 in tl.static_range(0, R, RC):
            r = r0 + tl.arange(0, RC)
            down = tl.load(down_ptr + out_rows[:, None] * R + r[None, :], mask=rm[:, None] < M, other=0.0)
            up_t = tl.load(up_ptr + rn[None, :] * R + r[:, None], mask=rn[None, :] < N, other=0.0)  # [RC, BN]
            if IEEE_DOTS:
                y = tl.dot(down.to(tl.float32), up_t.to(tl.float32), y, input_precision="ieee")
            else:
                y = tl.dot(down.to(tl.bfloat16), up_t.to(tl.bfloat16), y)
    if HAS_CORE:
        for c0 in range(first, last + 1, NC):  # one step unless the tile spans more than NC cubes
            ids = c0 + tl.arange(0, NC)
            slab = _core_slab(core_ptr, b_scale_ptr, ids, last, rn, N)
            if IEEE_DOTS:
                y = tl.dot((cube[:, None] == ids[None, :]).to(tl.float32), slab, y, input_precision="ieee")
            else:
                onehot = (cube[:, None] == ids[None, :]).to(tl.bfloat16)
                hi = slab.to(tl.bfloat16)
                y = tl.dot(onehot, hi, y)
                y = tl.dot(onehot, (slab - hi.to(tl.float32)).to(tl.bfloat16), y)
    return y


@triton.jit
def _mma(a, b, acc, ACC_INT: tl.constexpr, PROMOTE: tl.constexpr, BLOCK_K: tl.constexpr):
    # One return at the end: the compiler (not the interpreter) still compiles the statements after
    # a `return` inside a constexpr branch.
    if ACC_INT:
        acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32)
    elif PROMOTE:  # Hopper's FP8 MMA accumulates with reduced precision: promote every BLOCK_K products
        acc = tl.dot(a, tl.trans(b), acc, max_num_imprecise_acc=BLOCK_K)
    else:
        acc = tl.dot(a, tl.trans(b), acc)
    return acc


@triton.jit
def _scaled_gemm_body(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, core_ptr, cube_of_row_ptr, row_token_ptr,
                      down_ptr, up_ptr, bias_ptr, M, N, K, stride_am, stride_bn, stride_cm,
                      HAS_A_SCALE: tl.constexpr, HAS_CORE: tl.constexpr,
                      ROW_MAP: tl.constexpr, NC: tl.constexpr,
                      HAS_LORA: tl.constexpr, HAS_BIAS: tl.constexpr, R: tl.constexpr, IEEE_DOTS: tl.constexpr, ACC_INT: tl.constexpr,
                      PROMOTE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, PREFETCH: tl.constexpr = False,
                      FUSE: tl.constexpr = False, SPLIT: tl.constexpr = False, RC: tl.constexpr = 32,
                      TMA: tl.constexpr = False, PERSISTENT: tl.constexpr = False, NUM_SMS: tl.constexpr = 1):
    """One output tile a program, or with PERSISTENT one program an SM walking the tiles NUM_SMS
    apart (the loops flattened, so the pipeliner may issue the next tile's loads during this
    tile's epilogue)."""
    if PERSISTENT:
        tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
        for tile in tl.range(tl.program_id(0), tiles, NUM_SMS, flatten=True):
            _gemm_tile(tile, a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, core_ptr, cube_of_row_ptr, row_token_ptr,
                       down_ptr, up_ptr, bias_ptr, M, N, K, stride_am, stride_bn, stride_cm, HAS_A_SCALE, HAS_CORE,
                       ROW_MAP, NC, HAS_LORA, HAS_BIAS, R, IEEE_DOTS, ACC_INT, PROMOTE, BLOCK_M, BLOCK_N, BLOCK_K,
                       GROUP_M, PREFETCH, FUSE, SPLIT, RC, TMA)
    else:
        _gemm_tile(tl.program_id(0), a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, core_ptr, cube_of_row_ptr,
                   row_token_ptr, down_ptr, up_ptr, bias_ptr, M, N, K, stride_am, stride_bn, stride_cm, HAS_A_SCALE,
                   HAS_CORE, ROW_MAP, NC, HAS_LORA, HAS_BIAS, R, IEEE_DOTS, ACC_INT, PROMOTE, BLOCK_M, BLOCK_N,
                   BLOCK_K, GROUP_M, PREFETCH, FUSE, SPLIT, RC, TMA)


@triton.jit
def _gemm_tile(tile, a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, core_ptr, cube_of_row_ptr, row_token_ptr,
               down_ptr, up_ptr, bias_ptr, M, N, K, stride_am, stride_bn, stride_cm,
               HAS_A_SCALE: tl.constexpr, HAS_CORE: tl.constexpr, ROW_MAP: tl.constexpr, NC: tl.constexpr,
               HAS_LORA: tl.constexpr, HAS_BIAS: tl.constexpr, R: tl.constexpr, IEEE_DOTS: tl.constexpr,
               ACC_INT: tl.constexpr, PROMOTE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, PREFETCH: tl.constexpr, FUSE: tl.constexpr,
               SPLIT: tl.constexpr, RC: tl.constexpr, TMA: tl.constexpr):
    pid_m, pid_n = tile_coords(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    if PREFETCH and not SPLIT:  # issue the epilogue's loads before the K loop, so their latency hides behind it
        cube, first, last, slab, down, up, bias, out_rows = _epilogue_operands(
            pid_m, rm, rn, M, N, core_ptr, b_scale_ptr, cube_of_row_ptr, row_token_ptr, down_ptr, up_ptr, bias_ptr,
            HAS_CORE, ROW_MAP, NC, HAS_LORA, HAS_BIAS, R, BLOCK_M)
    if ACC_INT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if TMA:  # a_ptr and b_ptr are tensor descriptors: the copy engine fetches and zero-fills the edges
        for k0 in range(0, K, BLOCK_K):
            acc = _mma(a_ptr.load([pid_m * BLOCK_M, k0]), b_ptr.load([pid_n * BLOCK_N, k0]), acc, ACC_INT, PROMOTE,
                       BLOCK_K)
    else:
        a_ptrs = a_ptr + rm[:, None] * stride_am + rk[None, :]
        b_ptrs = b_ptr + rn[:, None] * stride_bn + rk[None, :]
        for k0 in range(0, K, BLOCK_K):
            kmask = (k0 + rk) < K
            a = tl.load(a_ptrs, mask=(rm[:, None] < M) & kmask[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=(rn[:, None] < N) & kmask[None, :], other=0.0)
            acc = _mma(a, b, acc, ACC_INT, PROMOTE, BLOCK_K)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K

    if SPLIT:
        y = _scaled(acc, rm, rn, M, N, a_scale_ptr, b_scale_ptr, HAS_A_SCALE)
        if HAS_CORE:
            cube = tl.load(cube_of_row_ptr + rm, mask=rm < M, other=-1)
            first = tl.load(cube_of_row_ptr + pid_m * BLOCK_M)
            last = tl.load(cube_of_row_ptr + min(pid_m * BLOCK_M + BLOCK_M, M) - 1)
        else:
            cube, first, last = rm, 0, -1
        out_rows = tl.load(row_token_ptr + rm, mask=rm < M, other=0) if ROW_MAP else rm
        y = _split_extra(y, rm, out_rows, rn, M, N, cube, first, last, core_ptr, b_scale_ptr, down_ptr, up_ptr,
                         HAS_CORE, HAS_LORA, R, RC, NC, IEEE_DOTS)
        if HAS_BIAS:
            y += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        tl.store(c_ptr + out_rows[:, None] * stride_cm + rn[None, :], y.to(c_ptr.dtype.element_ty), mask=mask)
    else:
        if not PREFETCH:
            cube, first, last, slab, down, up, bias, out_rows = _epilogue_operands(
                pid_m, rm, rn, M, N, core_ptr, b_scale_ptr, cube_of_row_ptr, row_token_ptr, down_ptr, up_ptr,
                bias_ptr, HAS_CORE, ROW_MAP, NC, HAS_LORA, HAS_BIAS, R, BLOCK_M)
        y = _scaled(acc, rm, rn, M, N, a_scale_ptr, b_scale_ptr, HAS_A_SCALE)
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        c_next = first
        if FUSE:  # the low-rank branch and the first NC cubes' core term in one MMA
            y = _fused_extra(y, cube, first, slab, down, up, IEEE_DOTS, BLOCK_M, BLOCK_N, NC)
            c_next = first + NC
        if HAS_CORE:  # the core term: one row per cube, broadcast to the cube's tokens
            for c0 in range(c_next, last + 1, NC):  # one step unless the tile spans many small cubes
                ids = c0 + tl.arange(0, NC)
                onehot = (cube[:, None] == ids[None, :]).to(tl.float32)
                if c0 != first:
                    slab = _core_slab(core_ptr, b_scale_ptr, ids, last, rn, N)
                # Accumulate into y itself: a second [BM, BN] fp32 tile would spill registers.
                if IEEE_DOTS:
                    y = tl.dot(onehot, slab, y, input_precision="ieee")
                else:  # one-hot rows are exact; tf32x3 keeps the core values to ~fp32
                    y = tl.dot(onehot, slab, y, input_precision="tf32x3")
        if HAS_LORA and not FUSE:
            if IEEE_DOTS:  # fp32 factors (tests) or the interpreter: no TF32 rounding
                y = tl.dot(down.to(up.dtype), tl.trans(up), y, input_precision="ieee")
            else:
                y = tl.dot(down.to(up.dtype), tl.trans(up), y)
        if HAS_BIAS:
            y += bias[None, :]
        tl.store(c_ptr + out_rows[:, None] * stride_cm + rn[None, :], y.to(c_ptr.dtype.element_ty), mask=mask)


# How the epilogue adds the core term and the low-rank branch: "joined" = one MMA over
# [down | one-hot] (`_fused_extra`), "split" = chunked small MMAs (`_split_extra`), "auto" = split
# from rank 64 up. Compiled offline for sm_90a (tools/gemm_sass.py) the joined epilogue spills
# 784 bytes a thread at rank 32 and 1,800 at rank 128 (128×256 tiles), the split one none; timed on
# an H200 at 32,760×5,120→5,120 (docs/measurements/profile_epilogues_h200.txt) the GEMM took
# 1.58 (joined) / 1.78 (split) ms at rank 32 and 2.09 / 1.94 ms at rank 128: the spills cost
# less than the split's extra MMAs until the rank grows.
EPILOGUE = "auto"
SPLIT_FROM_RANK = 64
LORA_CHUNK = 32  # ranks per MMA of the split epilogue


def _prune(configs, named_args, **kwargs):
    """Small problems (tests, dq-tiny) take the smallest tile at once: tuning them costs compiles, not time.
    The split epilogue ignores PREFETCH: its PREFETCH configs would be compiled and timed twice."""
    if kwargs.get("SPLIT"):
        configs = [c for c in configs if not c.kwargs.get("PREFETCH")]
    if named_args["M"] * named_args["N"] < 2**22:
        return [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]
    return configs


_KEY = ["M", "N", "K", "ACC_INT", "HAS_CORE", "HAS_LORA", "SPLIT", "TMA", "PERSISTENT"]
scaled_gemm_kernel = triton.autotune(_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune}
                                     )(_scaled_gemm_body)


# A and B through TMA tensor descriptors instead of per-element pointer loads in the K loop (where
# their shapes allow: 16-byte rows and base). DQ_GEMM_TMA=0 keeps the pointer loads.
GEMM_TMA = os.environ.get("DQ_GEMM_TMA", "1") == "1"


# One program an SM looping over the tiles (`_scaled_gemm_body`'s PERSISTENT), opt-in with
# DQ_GEMM_PERSISTENT=1 (within ±3% of the default on an H200: module docstring).
GEMM_PERSISTENT = os.environ.get("DQ_GEMM_PERSISTENT", "0") == "1"


def _programs(device: torch.device) -> int:
    """How many programs a persistent launch starts at most: one an SM (three in the interpreter, so
    that a program walks several tiles in the tests)."""
    if device.type != "cuda":
        return 3
    return torch.cuda.get_device_properties(device).multi_processor_count


def _tma_operands(a: torch.Tensor, b: torch.Tensor):
    """(A, B) as tensor descriptors when TMA is on and can read them, else the tensors. The tile
    shapes are placeholders: the autotuner's pre-hook sets each config's."""
    k_bytes = a.shape[1] * a.element_size()
    if not GEMM_TMA or k_bytes % 16 or a.data_ptr() % 16 or b.data_ptr() % 16:
        return a, b
    return TensorDescriptor.from_tensor(a, [32, 32]), TensorDescriptor.from_tensor(b, [32, 32])


def pad_rank(down: torch.Tensor | None, up: torch.Tensor | None):
    """The low-rank factors with zero columns up to R, the power of two >= 16 that tl.dot wants:
    (down, up, R); R = 16 without a branch."""
    rank = up.shape[1] if up is not None else 0
    r = max(16, triton.next_power_of_2(rank)) if rank else 16
    if up is not None and r != rank:
        up, down = torch.nn.functional.pad(up, (0, r - rank)), torch.nn.functional.pad(down, (0, r - rank))
    return down, up, r


def scaled_gemm(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor | None, b_scale: torch.Tensor, *,
                core: torch.Tensor | None = None,
                cube_of_row: torch.Tensor | None = None, row_token: torch.Tensor | None = None,
                down: torch.Tensor | None = None,
                up: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                out_dtype: torch.dtype = torch.bfloat16, promote: bool = False) -> torch.Tensor:
    """A [M, K] and B [N, K], both E4M3 or both INT8 (K-major), → Y [M, N] in `out_dtype`.
    `core` [n_cubes, N] fp32 with `cube_of_row` (non-decreasing), in the units of A·Bᵀ·a_scale (b_scale
    multiplies it in the epilogue); `row_token` scatters the rows; `down` [M, R] is in the output's
    row order (by token), `up` [N, R]."""
    m, k = a.shape
    n = b.shape[0]
    if b.shape[1] != k or a.dtype != b.dtype:
        raise ValueError(f"scaled_gemm: A {tuple(a.shape)} {a.dtype} and B {tuple(b.shape)} {b.dtype} do not match")
    a, b = a.contiguous(), b.contiguous()
    rank = up.shape[1] if up is not None else 0
    down, up, r = pad_rank(down, up)
    if up is not None and interpreting():
        up = up.float()  # the interpreter's bf16 tl.dot is wrong (FACTS.md)
    # The interpreter truncates in-kernel fp32→bf16 casts (FACTS.md): it stores fp32, torch rounds.
    c = torch.empty(m, n, dtype=torch.float32 if interpreting() else out_dtype, device=a.device)
    # The fused epilogue splits K = 2R into R low-rank and 2·NC core columns; NC = R/2 must be >= 16
    # (tl.dot's smallest K) for the core steps after the first.
    split = EPILOGUE == "split" or (EPILOGUE == "auto" and rank >= SPLIT_FROM_RANK)
    fuse = core is not None and up is not None and r >= 32 and not split
    dummy = b_scale
    num_sms = _programs(a.device) if GEMM_PERSISTENT else 1

    def grid(meta):
        tiles = triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])
        return (min(tiles, num_sms) if GEMM_PERSISTENT else tiles,)

    a_arg, b_arg = _tma_operands(a, b)
    scaled_gemm_kernel[grid](
        a_arg, b_arg, c, a_scale if a_scale is not None else dummy, b_scale,
        core if core is not None else dummy, cube_of_row if cube_of_row is not None else dummy,
        row_token if row_token is not None else dummy,
        down.contiguous() if down is not None else dummy, up.contiguous() if up is not None else dummy,
        bias if bias is not None else dummy, m, n, k, a.stride(0), b.stride(0), c.stride(0),
        HAS_A_SCALE=a_scale is not None, HAS_CORE=core is not None,
        ROW_MAP=row_token is not None, NC=r // 2 if fuse else 16, FUSE=fuse, SPLIT=split, RC=min(LORA_CHUNK, r),
        HAS_LORA=up is not None, HAS_BIAS=bias is not None, R=r,
        IEEE_DOTS=interpreting() or (up is not None and up.dtype == torch.float32), ACC_INT=a.dtype == torch.int8,
        PROMOTE=promote and a.dtype == torch.float8_e4m3fn, TMA=isinstance(a_arg, TensorDescriptor),
        PERSISTENT=GEMM_PERSISTENT, NUM_SMS=num_sms)
    return c.to(out_dtype)
