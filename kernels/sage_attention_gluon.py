"""8-bit attention for Hopper written in Gluon: the arithmetic of `sage_attention._sage8_attn_fwd`
(INT8 QKᵀ, online softmax in log2 units, P in E4M3 times V in E4M3, FP32 accumulation), with the
wgmma pipelining that Triton 3.6 does not generate.

Status: an experiment, not dispatched (`--attention sage8` runs `sage_attention.py`). Correct on an
H200, but slower: 31.3–31.8 ms at Wan 480p against the Triton kernel's 27.1–27.8 ms (kernel alone;
docs/measurements/attention_gluon_*_h200.md) — 207–246 registers give two CTAs an SM where the Triton
kernel fits three, and P's re-packing and the barrier per refill cost more than the overlap gains.
A warp-specialized variant (WARP-SPECIALIZED below: TMA producer warp, two consumer warpgroups, one
CTA an SM) compiles without spills but has not been run on a GPU yet.

    out = softmax(scale · q kᵀ) v      q, k, v [B, H, S, D] bf16 (any strides), D in 64/128, non-causal

Why Gluon: Triton 3.6 waits on each wgmma right after issuing it, so within a CTA the softmax
(one MUFU.EX2 per score, the conversions, the row reductions) never overlaps the tensor cores; only
the SM switching between CTAs hides one behind the other (tools/bench_attention_notes.md). Gluon
exposes `warpgroup_mma(..., is_async=True)` and `warpgroup_mma_wait(num_outstanding, deps)`, TMA and
mbarriers, so the kernel below schedules them itself, FlashAttention-3 style (intra-warpgroup
pipelining):

    prologue   TMA: Q; K and V tiles 0..STAGES-1 (one mbarrier per stage and tensor, expect-tx)
               S_0 = Q·K_0ᵀ; wait(0); softmax_0 → P_0 (E4M3), α_0; refill K stage 0 with tile STAGES
    step j     wait K_j;     issue S_j = Q·K_jᵀ         (INT8 wgmma, async, fresh int32 accumulator)
               wait V_{j-1}; issue O = P_{j-1}·V_{j-1}  (FP8 wgmma, async, fresh fp32 accumulator)
               wait(num_outstanding=1)  → S_j is done, the P·V still runs
               softmax_j → P_j, α_j                     (MUFU/ALU work overlapping the P·V wgmma)
               wait(num_outstanding=0)  → O is done
               acc = acc·α_{j-1} + O                    (the fresh-accumulator promotion, in FP32)
               thread barrier; TMA: K tile j+STAGES into K stage j, V tile j-1+STAGES into V stage j-1
    epilogue   wait V_last; O = P_last·V_last; wait(0); acc = acc·α + O; out = acc / l · vs + v_offset

CHAINED (wrapper `chained=True`; FA3's order, the P·V accumulating into acc itself, no O tile):
    step j     wait K_j;     issue S_j = Q·K_jᵀ                    (async; issued first: groups retire
               wait V_{j-1}; issue acc += P_{j-1}·V_{j-1}          in order, so wait(1) = "S_j done")
               wait(num_outstanding=1)  → S_j is done, the P·V (which writes acc) still runs
               softmax_j → P_j, α_j, m_j                           (overlaps the P·V)
               wait(num_outstanding=0)  → acc holds Σ_{i<j} at scale m_{j-1}
               acc *= α_j                                          (only now: the wgmma wrote acc until here)
               thread barrier; refills
    epilogue   wait V_last; acc += P_last·V_last; wait(0)           (acc already at the last m)
  207 registers at 64x128 / 4 warps / D 128 against 246 (two CTAs an SM either way); numerics: the
  per-tile adds happen in the FP8 wgmma's ~13-bit truncating accumulator instead of FP32 (the Triton
  kernel's PV_ACC=2). Capped at 168 registers (three CTAs) it spills: P crosses the loop's back edge as
  one byte per register (64 registers, re-packed by ~180 PRMT/LOP3 before each P·V). Two experiments
  that remove that, both off by default because ptxas then serializes every wgmma:
  PACKED_P (P carried as 16 int32 words, unpacked before the QKᵀ issue; 191 registers, 32 PRMT; note
  C7513) and ROTATED (loop body "finish j, issue j+1", so the in-flight wgmmas cross the back edge
  instead; 181 registers; note C7514).

K stage j is free once S_j is waited for, V stage j-1 once O is: each refill is issued one step before
its tile is needed, so two stages already keep a full step of TMA latency hidden.

Numerics: the same as the Triton kernel, so `sage_attention_reference(..., block_n=BLOCK_N)` is the
reference: exact int32 scores, FAST_I2F (0x4B400000 added to the int32 makes the float 1.5·2²³ + qk,
the constant folded into the one FMA that scales and shifts), the row max taken on the int32 scores,
P = exp2(s - m + log2 448) cast to E4M3, l summed from the same fp32 P, and each tile's P·V in a fresh
FP8-wgmma accumulator (Hopper's FP8 wgmma accumulates in ~22 bits; within one tile of ≤128 keys that
is what the Triton kernel's tl.dot does too) added into the FP32 acc. `max_num_imprecise_acc` is not
used. The last key tile (S_K not a multiple of BLOCK_N) is masked; the pre-pass pads K8/V8ᵀ to a
multiple of 128 keys with zeros, so every TMA tile is in bounds of its head.

P's path: from registers (no shared-memory round trip, no fence, no extra barrier per tile). The
int32 scores come out of the QKᵀ wgmma in its accumulator layout (NVMMADistributedLayout v3,
n = BLOCK_N); the P·V wgmma wants A as DotOperandLayout(operand_index=0, parent=<its accumulator
layout, n = D>, k_width=4: four E4M3 a 32-bit register). For 8-bit operands the two differ across
lanes (a convert_layout of shuffles and byte permutes). Default (PERMUTED_K): K's tile is loaded
through a 5-D TMA box that puts key 16h + 4c + 2a + b in shared row 16h + 8a + 2c + b; relabelling
the score columns back to keys (reshape/permute) then leaves each thread holding exactly the keys its
A fragment needs, so the conversion is a register renaming, and two cvt.rn.satfinite.e4m3x2 per
register pack P (inline asm; the same rounding as .to(float8e4nv)). The masked last tile maps its
columns to keys the same way. `permuted_k=False` keeps K in key order and lets convert_layout shuffle.
ptxas scheduling: α_{j-1} is tied to l_j (α + l·0) so the acc update cannot start before the last
exp2 of tile j; otherwise ptxas hoists the wait for the P·V above most of the softmax.

WARP-SPECIALIZED (wrapper `warp_specialized=True`, `_sage8_attn_fwd_gluon_ws`; FA3's structure; compiled
for sm_90a only, NOT YET RUN ON A GPU). BLOCK_M = 128, launched with num_warps = 4; `gl.warp_specialize`
makes three partitions (Triton pads the 1-warp producer to a warpgroup: 384 threads, launch cap 168
registers, then setmaxnreg: consumers 240 each, producer 24 — 2·128·240 + 128·24 ≤ 64K, one CTA an SM):
    default   consumer warpgroup 0 (4 warps, query rows 0..63 of the tile)      setmaxnreg 240 (leftover)
    worker 0  consumer warpgroup 1 (4 warps, rows 64..127), same code, WG = 1   worker_num_regs 240
    worker 1  TMA producer (1 warp)                                             worker_num_regs 24
  Barriers (shared memory): q_bars[2] (one Q tile [64, D] per consumer), k_full / v_full[STAGES]
  (count 1, expect-tx by the producer), k_empty / v_empty[STAGES] (count 2: one arrival per consumer
  warpgroup), turn_bars[2] (ping-pong only).
    producer   Q_0, Q_1; for t: wait k_empty[t%S] (parity (t/S & 1) ^ 1: the first round passes on the
               fresh barriers); TMA K_t; wait v_empty[t%S]; TMA V_t
    consumer   wait Q; wait K_0; S_0 = Q·K_0ᵀ; wait(0); arrive k_empty[0]; softmax_0
    step j     wait K_j; issue S_j; wait V_{j-1}; issue P_{j-1}·V_{j-1}            (_issue_step)
               wait(1) → S_j done;  arrive k_empty[j%S]                             (K_j is free)
               softmax_j → P_j                                                      (under the P·V)
               wait(0) → P·V done;  arrive v_empty[(j-1)%S]                         (V_{j-1} is free)
               acc update (fresh or CHAINED, as above)
    epilogue   wait V_last; P_last·V_last; wait(0); store its 64 rows
  No CTA-wide barrier per refill: Gluon's mbarrier.arrive lowers to a warpgroup-local `bar.sync id, 128`
  then one elected thread's arrive (so one arrival per consumer warpgroup), and Triton's membar adds one
  more warpgroup-local bar.sync before the K_j wait: 3 per step (4 with ping-pong), 128 threads each.
  PINGPONG (`pingpong=True`): before each GEMM issue a warpgroup waits for its turn (turn_bars[WG]),
  and passes the turn to the other one after its S_j is in (right after the K release): the two
  warpgroups alternate on the tensor cores, one's softmax under the other's wgmmas. (Passing the turn
  right after the issue, as FA3 does, made ptxas hoist the P·V wait above the softmax.) Without it the
  two warpgroups run free, synchronised only through the shared K/V stages.
  Compile report (D = 128; tools/attention_gluon_sass.py --warp-specialized [--chained] [--pingpong]):
  CHAINED at BLOCK_N 128 and 64, fresh at BLOCK_N 64: no spill, not serialized; fresh at BLOCK_N 128 spills
  60 bytes (it needs ~246 registers, above the 240 a consumer can get). ex2|| is full (64 of 64) at
  BLOCK_N 128; at BLOCK_N 64 ptxas hoists the P·V wait in the loop body (1-4 of 32), as it does for the
  non-specialized 64x64 tile.

Tiles: BLOCK_M = 16·num_warps rows (one warpgroup of 4 warps per 64 rows: 64 / 4 warps or 128 / 8
warps, the two warpgroups sharing the K/V stages), BLOCK_N 64 or 128 (one K scale per tile: it must
divide the quantization block of 128).

Runs on sm_90 (H100/H200) only. Gluon has no CPU interpreter: under TRITON_INTERPRET=1 a Gluon launch
fails ("0 active drivers"), so unlike `sage_attention.py` there is no interpreter path; the CPU tests
compile it for sm_90a instead (tools/attention_gluon_sass.py).
"""

from __future__ import annotations

import math

import torch

from .sage_quant import SageInputs, sage_quantize, triton

if triton is not None:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                  warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

__all__ = ["sage_attention_gluon", "make_descriptors", "GLUON_CONFIGS", "DEFAULT_GLUON_CONFIG", "WS_CONFIGS",
           "HEAD_DIMS"]

HEAD_DIMS = (64, 128)
QUANT_BLOCK = 128
# (BLOCK_M, BLOCK_N, num_warps, num_stages): what tools/attention_gluon_sass.py compiles and
# tools/bench_attention_gluon.py times.
GLUON_CONFIGS = [
    (64, 128, 4, 2), (64, 128, 4, 3), (64, 64, 4, 2), (64, 64, 4, 3),
    (128, 128, 8, 2), (128, 64, 8, 2), (128, 64, 8, 3),
]
DEFAULT_GLUON_CONFIG = dict(block_m=64, block_n=128, num_warps=4, num_stages=2)
# The warp-specialized kernel (_sage8_attn_fwd_gluon_ws): (BLOCK_M, BLOCK_N, consumer warps, stages),
# plus one producer warp; and the registers warp_specialize hands its worker partitions.
WS_CONFIGS = [(128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 8, 2), (128, 64, 8, 3)]
WS_CONSUMER_REGS = 240
WS_PRODUCER_REGS = 24


if triton is not None:

    @gluon.jit
    def _load_k(desc_k, k_smem, k_bars, t, k_row, n_tiles, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                PERMUTED_K: gl.constexpr):
        """TMA: K tile t (rows k_row + t·BLOCK_N) into K stage t % STAGES, if t < n_tiles. PERMUTED_K:
        through the 5-D view of K8 (see make_descriptors), whose box lands key 16h + 4c + 2a + b in
        shared-memory row 16h + 8a + 2c + b."""
        s = t % STAGES
        pred = t < n_tiles
        mbarrier.expect(k_bars.index(s), desc_k.block_type.nbytes, pred=pred)
        if PERMUTED_K:
            dst = k_smem.index(s)._reinterpret(gl.int8, desc_k.block_type.shape, desc_k.layout)
            tma.async_copy_global_to_shared(desc_k, [(k_row + t * BLOCK_N) // 16, 0, 0, 0, 0], k_bars.index(s), dst,
                                            pred=pred)
        else:
            tma.async_copy_global_to_shared(desc_k, [k_row + t * BLOCK_N, 0], k_bars.index(s), k_smem.index(s),
                                            pred=pred)

    @gluon.jit
    def _load_v(desc_v, v_smem, v_bars, t, v_row, n_tiles, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
        """TMA: V8ᵀ tile t ([D, BLOCK_N], tokens contiguous) into V stage t % STAGES, if t < n_tiles."""
        s = t % STAGES
        pred = t < n_tiles
        mbarrier.expect(v_bars.index(s), desc_v.block_type.nbytes, pred=pred)
        tma.async_copy_global_to_shared(desc_v, [v_row, t * BLOCK_N], v_bars.index(s), v_smem.index(s), pred=pred)

    @gluon.jit
    def _softmax_tile(qk, sc, m_i, l_i, start_n, S_K, s_layout: gl.constexpr, p_layout: gl.constexpr,
                      BLOCK_N: gl.constexpr, MASKED: gl.constexpr, FAST_I2F: gl.constexpr,
                      PERMUTED_K: gl.constexpr, PACKED_P: gl.constexpr = False):
        """The online-softmax step of `sage_attention._softmax_tile` on int32 scores qk (sc: log2
        units per unit of qk): P8 = E4M3(exp2(s - m_new + log2 448)) in the P·V operand layout, the
        rescale α of the old state, the new m and l."""
        if MASKED:
            offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
            if PERMUTED_K:  # the key in column 16h + 8a + 2c + b is 16h + 4c + 2a + b
                offs_n = (offs_n & -16) | (((offs_n >> 1) & 3) << 2) | (((offs_n >> 3) & 1) << 1) | (offs_n & 1)
            valid = gl.expand_dims(start_n + offs_n < S_K, 0)
            qk_max = gl.max(gl.where(valid, qk, -2147483647), 1)
        else:
            qk_max = gl.max(qk, 1)
        m_new = gl.maximum(m_i, qk_max.to(gl.float32) * sc)
        shift = m_new - 8.807354922057604  # log2(448): P lands in [0, 448]
        if FAST_I2F:
            f = (qk + 0x4B400000).to(gl.float32, bitcast=True)  # = 1.5·2**23 + qk exactly
            s = f * sc - gl.expand_dims(12582912.0 * sc + shift, 1)
        else:
            s = qk.to(gl.float32) * sc - gl.expand_dims(shift, 1)
        if MASKED:
            s = gl.where(valid, s, -float("inf"))
        p = gl.exp2(s)
        alpha = gl.exp2(m_i - m_new)
        l_i = l_i * alpha + gl.sum(p, 1)  # the same p that becomes P8
        if PERMUTED_K:
            # S column 16h + 8a + 2c + b holds key 16h + 4c + 2a + b (K's rows were loaded in that
            # order): relabel the columns as keys. Each thread then already holds the keys that the
            # wgmma A operand wants from it, in fp32 (a register renaming, no shuffles); four of them
            # go into one register with two cvt.rn.satfinite.e4m3x2 (the same rounding as .to()).
            M: gl.constexpr = p.shape[0]
            p = p.reshape([M, BLOCK_N // 32, 2, 2, 4, 2]).permute(0, 1, 2, 4, 3, 5).reshape([M, BLOCK_N])
            p = gl.convert_layout(p, p_layout)
            if PACKED_P:
                # The four keys 4i..4i+3 of a 32-bit A register as four [M, BLOCK_N/4] tensors, packed
                # into one int32 tensor: what crosses the loop's back edge is then 16 registers
                # (an E4M3 tensor is one byte per register there, re-packed before the wgmma).
                pa, pb = gl.split(p.reshape([M, BLOCK_N // 4, 2, 2]))  # k = 4i + 2a + b: b = 0 | b = 1
                p0, p2 = gl.split(pa)
                p1, p3 = gl.split(pb)
                p8 = gl.inline_asm_elementwise(
                    "{ .reg .b16 lo, hi; cvt.rn.satfinite.e4m3x2.f32 lo, $2, $1; "
                    "cvt.rn.satfinite.e4m3x2.f32 hi, $4, $3; mov.b32 $0, {lo, hi}; }",
                    "=r,r,r,r,r", [p0, p1, p2, p3], dtype=gl.int32, is_pure=True, pack=1)
            else:
                p8 = gl.inline_asm_elementwise(
                    "{ .reg .b16 lo, hi; cvt.rn.satfinite.e4m3x2.f32 lo, $2, $1; "
                    "cvt.rn.satfinite.e4m3x2.f32 hi, $4, $3; mov.b32 $0, {lo, hi}; }",
                    "=r,r,r,r,r", [p], dtype=gl.float8e4nv, is_pure=True, pack=4)
        else:
            p8 = gl.convert_layout(p.to(gl.float8e4nv), p_layout)
        return p8, alpha, m_new, l_i

    @gluon.jit
    def _unpack_p(w, p_layout: gl.constexpr, BLOCK_N: gl.constexpr):
        """The int32 words of _softmax_tile(PACKED_P) as the E4M3 [M, BLOCK_N] A operand: each word
        repeated over its four keys (join, no copies) and handed through as one packed register."""
        M: gl.constexpr = w.shape[0]
        x = gl.join(gl.join(w, w), gl.join(w, w)).reshape([M, BLOCK_N])
        p8 = gl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r,r,r,r", [x], dtype=gl.float8e4nv, is_pure=True,
                                       pack=4)
        return gl.convert_layout(p8, p_layout)

    @gluon.jit
    def _issue_step(j, q_smem, k_smem, v_smem, k_bars, v_bars, p8, acc, s_layout: gl.constexpr,
                    o_layout: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                    STAGES: gl.constexpr, CHAINED: gl.constexpr, p_layout: gl.constexpr, PACKED_P: gl.constexpr):
        """Issue S_j = Q·K_jᵀ, then P_{j-1}·V_{j-1} (in that order: wgmma groups complete in issue
        order, so a later wait(1) means "S_j done, the P·V may still run"). CHAINED: the P·V
        accumulates into acc itself (acc must already be scaled to m_{j-1}); else into a fresh
        accumulator. Returns the two in-flight results."""
        s_cur = j % STAGES
        s_prev = (j - 1) % STAGES
        if PACKED_P:  # before the QKᵀ: an instruction that writes a wgmma's A registers between two
            p8 = _unpack_p(p8, p_layout, BLOCK_N)  # wgmmas of one stage serializes them (C7513)
        mbarrier.wait(k_bars.index(s_cur), (j // STAGES) & 1)
        qk = warpgroup_mma(q_smem, k_smem.index(s_cur).permute((1, 0)),
                           gl.zeros([BLOCK_M, BLOCK_N], gl.int32, s_layout), use_acc=False, is_async=True)
        mbarrier.wait(v_bars.index(s_prev), ((j - 1) // STAGES) & 1)
        if CHAINED:
            o = warpgroup_mma(p8, v_smem.index(s_prev).permute((1, 0)), acc, use_acc=True, is_async=True)
        else:
            o = warpgroup_mma(p8, v_smem.index(s_prev).permute((1, 0)),
                              gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout), use_acc=False, is_async=True)
        return qk, o

    @gluon.jit
    def _finish_step(j, qk, o, p_prev, acc, alpha, m_i, l_i, k_smem, v_smem, k_bars, v_bars, desc_k, desc_v, ks_ptr, qs,
                     k_row, v_row, n_tiles, S_K, s_layout: gl.constexpr, o_layout: gl.constexpr,
                     p_layout: gl.constexpr, BLOCK_N: gl.constexpr, QUANT_BLOCK: gl.constexpr,
                     STAGES: gl.constexpr, MASKED: gl.constexpr, FAST_I2F: gl.constexpr,
                     PERMUTED_K: gl.constexpr, CHAINED: gl.constexpr, PACKED_P: gl.constexpr):
        """With S_j and P_{j-1}·V_{j-1} in flight (_issue_step): wait for S_j, softmax_j while the P·V
        runs, wait for the P·V, update acc, refill the two freed stages.
        Fresh: acc = acc·α_{j-1} + O.  CHAINED: acc (= o, the P·V's own accumulator) *= α_j, which
        scales it to m_j for P_j·V_j — it cannot be scaled earlier, the wgmma writes it until wait(0)."""
        ks = gl.load(ks_ptr + (j * BLOCK_N) // QUANT_BLOCK)
        qk = warpgroup_mma_wait(num_outstanding=1, deps=[qk])  # S_j done; the P·V still in flight
        p8_new, alpha_new, m_i, l_i = _softmax_tile(qk, qs * ks, m_i, l_i, j * BLOCK_N, S_K, s_layout, p_layout,
                                                    BLOCK_N, MASKED, FAST_I2F, PERMUTED_K, PACKED_P)
        # (P_{j-1}'s registers are read until here: ptxas tracks a wgmma's register operands itself;
        # an 8-bit tensor cannot be a `deps` of the wait — its lowering takes 16/32-bit values only.)
        if PACKED_P:
            # P_{j-1}'s words are read by the P·V until here: made a `deps` of the wait, they stay
            # live, so P_j cannot be given their registers (it would be, and ptxas would then
            # serialize every wgmma: note C7513).
            o, p_prev = warpgroup_mma_wait(num_outstanding=0, deps=[o, p_prev])
        else:
            o = warpgroup_mma_wait(num_outstanding=0, deps=[o])
        # α is known long before the softmax ends; tied to l_j (+ l·0, not folded in IEEE
        # arithmetic) the acc update cannot start before the last exp2 — otherwise ptxas hoists the
        # wait above most of the softmax and the P·V overlaps nothing (tools/attention_gluon_sass.py,
        # column ex2||).
        if CHAINED:
            alpha_o = gl.convert_layout(alpha_new + l_i * 0.0, gl.SliceLayout(1, o_layout))
            acc = o * gl.expand_dims(alpha_o, 1)
        else:
            alpha_o = gl.convert_layout(alpha + l_i * 0.0, gl.SliceLayout(1, o_layout))
            acc = acc * gl.expand_dims(alpha_o, 1) + o
        # K stage j (read by S_j) and V stage j-1 (read by the P·V) are free in every warp.
        gl.thread_barrier()
        _load_k(desc_k, k_smem, k_bars, j + STAGES, k_row, n_tiles, BLOCK_N, STAGES, PERMUTED_K)
        _load_v(desc_v, v_smem, v_bars, j - 1 + STAGES, v_row, n_tiles, BLOCK_N, STAGES)
        return p8_new, alpha_new, m_i, l_i, acc

    @gluon.jit
    def _store_out(acc, l_i, row0, bh, b, h, VS, VOFF, Out, so_b, so_h, so_s, so_d, S_Q,
                   o_layout: gl.constexpr, ROWS: gl.constexpr, HEAD_DIM: gl.constexpr):
        """Epilogue: out = acc / l · vs + v_offset for ROWS query rows from row0, stored with the
        caller's strides (diffusers' [B, S, H, D] memory), rows past S_Q masked."""
        offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
        offs_m = row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, o_layout))
        vs = gl.load(VS + bh * HEAD_DIM + offs_d)
        v_offset = gl.load(VOFF + bh * HEAD_DIM + offs_d)
        inv_l = gl.convert_layout(1.0 / l_i, gl.SliceLayout(1, o_layout))
        out = acc * gl.expand_dims(inv_l, 1) * gl.expand_dims(vs, 0) + gl.expand_dims(v_offset, 0)
        base = Out + b.to(gl.int64) * so_b + h.to(gl.int64) * so_h
        o_ptrs = (base + gl.expand_dims(offs_m.to(gl.int64) * so_s, 1) + gl.expand_dims(offs_d * so_d, 0))
        gl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=gl.expand_dims(offs_m < S_Q, 1))

    @gluon.jit
    def _sage8_attn_fwd_gluon(
        desc_q, QS, desc_k, KS, desc_v, VS, VOFF, Out,
        so_b, so_h, so_s, so_d,
        H, S_Q, S_K, SQ_PAD, SK_PAD,
        HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, QUANT_BLOCK: gl.constexpr,
        STAGES: gl.constexpr, NUM_WARPS: gl.constexpr, FAST_I2F: gl.constexpr, PERMUTED_K: gl.constexpr,
        CHAINED: gl.constexpr, ROTATED: gl.constexpr, PACKED_P: gl.constexpr,
    ):
        gl.static_assert(BLOCK_M == 16 * NUM_WARPS)  # one warpgroup per 64 rows
        gl.static_assert(QUANT_BLOCK % BLOCK_M == 0)  # one Q scale per program
        gl.static_assert(QUANT_BLOCK % BLOCK_N == 0)  # one K scale per key tile
        # wgmma accumulator layouts: the scores (n = BLOCK_N, int8 k = 32) and the P·V output (n = D).
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                           instr_shape=[16, BLOCK_N, 32])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                           instr_shape=[16, HEAD_DIM, 32])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4)

        start_m = gl.program_id(0)
        bh = gl.program_id(1)
        b = bh // H
        h = bh % H
        k_row = bh * SK_PAD
        v_row = bh * HEAD_DIM
        n_tiles = gl.cdiv(S_K, BLOCK_N)

        q_smem = gl.allocate_shared_memory(gl.int8, [BLOCK_M, HEAD_DIM], desc_q.layout)
        k_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], gl.int8)
        k_smem = gl.allocate_shared_memory(gl.int8, [STAGES, BLOCK_N, HEAD_DIM], k_layout)
        v_smem = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, HEAD_DIM, BLOCK_N], desc_v.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        k_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_bar, count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(k_bars.index(i), count=1)
            mbarrier.init(v_bars.index(i), count=1)
        fence_async_shared()

        mbarrier.expect(q_bar, desc_q.block_type.nbytes)
        tma.async_copy_global_to_shared(desc_q, [bh * SQ_PAD + start_m * BLOCK_M, 0], q_bar, q_smem)
        for i in gl.static_range(STAGES):
            _load_k(desc_k, k_smem, k_bars, i, k_row, n_tiles, BLOCK_N, STAGES, PERMUTED_K)
            _load_v(desc_v, v_smem, v_bars, i, v_row, n_tiles, BLOCK_N, STAGES)

        qs = gl.load(QS + bh * (SQ_PAD // QUANT_BLOCK) + (start_m * BLOCK_M) // QUANT_BLOCK)
        ks_ptr = KS + bh * (SK_PAD // QUANT_BLOCK)
        m_i = gl.full([BLOCK_M], -float("inf"), gl.float32, gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([BLOCK_M], gl.float32, gl.SliceLayout(1, s_layout))
        acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)

        # Tile 0: its scores alone (masked: it is also the last tile when S_K <= BLOCK_N).
        mbarrier.wait(q_bar, 0)
        mbarrier.wait(k_bars.index(0), 0)
        qk = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), gl.zeros([BLOCK_M, BLOCK_N], gl.int32, s_layout),
                           use_acc=False, is_async=True)
        ks = gl.load(ks_ptr)
        qk = warpgroup_mma_wait(num_outstanding=0, deps=[qk])
        p8, alpha, m_i, l_i = _softmax_tile(qk, qs * ks, m_i, l_i, 0, S_K, s_layout, p_layout, BLOCK_N, True,
                                            FAST_I2F, PERMUTED_K, PACKED_P)
        gl.thread_barrier()
        _load_k(desc_k, k_smem, k_bars, STAGES, k_row, n_tiles, BLOCK_N, STAGES, PERMUTED_K)

        if ROTATED:
            # The loop body is "finish j, issue j+1": P_j is made and handed to its wgmma in the same
            # iteration, and only the in-flight accumulators (qk, o) cross the back edge. (Carried
            # across it, the E4M3 P is one byte per register — 64 registers — and re-packed before
            # every P·V: ~180 PRMT/LOP3 and the register peak.)
            if n_tiles > 1:
                qk_a, o_a = _issue_step(1, q_smem, k_smem, v_smem, k_bars, v_bars, p8, acc, s_layout, o_layout,
                                    BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CHAINED, p_layout, PACKED_P)
                for j in range(1, n_tiles - 1):
                    p8, alpha, m_i, l_i, acc = _finish_step(j, qk_a, o_a, p8, acc, alpha, m_i, l_i, k_smem, v_smem, k_bars,
                                                            v_bars, desc_k, desc_v, ks_ptr, qs, k_row, v_row,
                                                            n_tiles, S_K, s_layout, o_layout, p_layout, BLOCK_N,
                                                            QUANT_BLOCK, STAGES, False, FAST_I2F, PERMUTED_K,
                                                            CHAINED, PACKED_P)
                    qk_a, o_a = _issue_step(j + 1, q_smem, k_smem, v_smem, k_bars, v_bars, p8, acc, s_layout, o_layout,
                                        BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CHAINED, p_layout, PACKED_P)
                # the last tile, masked (a no-op when S_K is a multiple of BLOCK_N)
                p8, alpha, m_i, l_i, acc = _finish_step(n_tiles - 1, qk_a, o_a, p8, acc, alpha, m_i, l_i, k_smem, v_smem,
                                                        k_bars, v_bars, desc_k, desc_v, ks_ptr, qs, k_row, v_row,
                                                        n_tiles, S_K, s_layout, o_layout, p_layout, BLOCK_N,
                                                        QUANT_BLOCK, STAGES, True, FAST_I2F, PERMUTED_K, CHAINED, PACKED_P)
        else:  # the loop body is "issue j, finish j": P_{j-1} crosses the back edge
            for j in range(1, n_tiles - 1):
                qk_a, o_a = _issue_step(j, q_smem, k_smem, v_smem, k_bars, v_bars, p8, acc, s_layout, o_layout,
                                    BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CHAINED, p_layout, PACKED_P)
                p8, alpha, m_i, l_i, acc = _finish_step(j, qk_a, o_a, p8, acc, alpha, m_i, l_i, k_smem, v_smem, k_bars,
                                                        v_bars, desc_k, desc_v, ks_ptr, qs, k_row, v_row, n_tiles,
                                                        S_K, s_layout, o_layout, p_layout, BLOCK_N, QUANT_BLOCK,
                                                        STAGES, False, FAST_I2F, PERMUTED_K, CHAINED, PACKED_P)
            if n_tiles > 1:  # the last tile, masked (a no-op when S_K is a multiple of BLOCK_N)
                qk_a, o_a = _issue_step(n_tiles - 1, q_smem, k_smem, v_smem, k_bars, v_bars, p8, acc, s_layout,
                                    o_layout, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CHAINED, p_layout, PACKED_P)
                p8, alpha, m_i, l_i, acc = _finish_step(n_tiles - 1, qk_a, o_a, p8, acc, alpha, m_i, l_i, k_smem, v_smem,
                                                        k_bars, v_bars, desc_k, desc_v, ks_ptr, qs, k_row, v_row,
                                                        n_tiles, S_K, s_layout, o_layout, p_layout, BLOCK_N,
                                                        QUANT_BLOCK, STAGES, True, FAST_I2F, PERMUTED_K, CHAINED, PACKED_P)

        # The last tile's P·V.
        last = n_tiles - 1
        mbarrier.wait(v_bars.index(last % STAGES), (last // STAGES) & 1)
        if PACKED_P:
            p8 = _unpack_p(p8, p_layout, BLOCK_N)
        if CHAINED:  # acc is already scaled to the last m
            acc = warpgroup_mma(p8, v_smem.index(last % STAGES).permute((1, 0)), acc, use_acc=True, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
        else:
            o = warpgroup_mma(p8, v_smem.index(last % STAGES).permute((1, 0)),
                              gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout), use_acc=False, is_async=True)
            o = warpgroup_mma_wait(num_outstanding=0, deps=[o])
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1) + o

        mbarrier.invalidate(q_bar)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(k_bars.index(i))
            mbarrier.invalidate(v_bars.index(i))

        _store_out(acc, l_i, start_m * BLOCK_M, bh, b, h, VS, VOFF, Out, so_b, so_h, so_s, so_d, S_Q,
                   o_layout, BLOCK_M, HEAD_DIM)


    # ---- warp-specialized variant (FA3's structure): a 1-warp TMA producer, two consumer warpgroups ----

    @gluon.jit
    def _ws_producer(desc_q, desc_k, desc_v, q_smem, k_smem, v_smem, q_bars, k_full, v_full, k_empty, v_empty,
                     q_row, k_row, v_row, n_tiles, WG_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                     PERMUTED_K: gl.constexpr, CONSUMERS: gl.constexpr):
        """The producer partition (one warp, few registers): each consumer's Q tile, then K_t and V_t
        into stage t % STAGES once both consumers released it (empty barrier, count CONSUMERS; the
        first round passes on the fresh barriers: parity 1)."""
        for i in gl.static_range(CONSUMERS):
            mbarrier.expect(q_bars.index(i), desc_q.block_type.nbytes)
            tma.async_copy_global_to_shared(desc_q, [q_row + i * WG_M, 0], q_bars.index(i), q_smem.index(i))
        for t in range(n_tiles):
            s = t % STAGES
            phase = ((t // STAGES) & 1) ^ 1
            mbarrier.wait(k_empty.index(s), phase)
            _load_k(desc_k, k_smem, k_full, t, k_row, n_tiles, BLOCK_N, STAGES, PERMUTED_K)
            mbarrier.wait(v_empty.index(s), phase)
            _load_v(desc_v, v_smem, v_full, t, v_row, n_tiles, BLOCK_N, STAGES)

    @gluon.jit
    def _ws_turn_wait(turn_bars, n, WG: gl.constexpr, PINGPONG: gl.constexpr):
        """Ping-pong: before its n-th GEMM issue, warpgroup 0 waits for warpgroup 1's (n-1)-th turn pass
        and warpgroup 1 for warpgroup 0's n-th, so the issues alternate 0, 1, 0, 1, ... (turn_bars[WG]
        completes one phase per pass of the other warpgroup; WG 0's first wait, parity 1, passes on the
        fresh barrier)."""
        if PINGPONG:
            mbarrier.wait(turn_bars.index(WG), (n + 1 - WG) & 1)

    @gluon.jit
    def _ws_turn_pass(turn_bars, WG: gl.constexpr, PINGPONG: gl.constexpr):
        if PINGPONG:
            mbarrier.arrive(turn_bars.index(1 - WG))

    @gluon.jit
    def _ws_step(j, q_tile, k_smem, v_smem, k_full, v_full, k_empty, v_empty, turn_bars, p8, acc, alpha, m_i, l_i,
                 ks_ptr, qs, S_K, s_layout: gl.constexpr, o_layout: gl.constexpr, p_layout: gl.constexpr,
                 WG: gl.constexpr, WG_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                 QUANT_BLOCK: gl.constexpr, STAGES: gl.constexpr, MASKED: gl.constexpr, FAST_I2F: gl.constexpr,
                 PERMUTED_K: gl.constexpr, CHAINED: gl.constexpr, PINGPONG: gl.constexpr):
        """One pipelined step of a consumer warpgroup: issue S_j and P_{j-1}·V_{j-1} (_issue_step), wait
        for S_j → release K stage j, softmax_j under the P·V, wait for the P·V → release V stage j-1,
        update acc (as _finish_step, without its thread barrier and refills)."""
        _ws_turn_wait(turn_bars, j, WG, PINGPONG)
        qk_a, o_a = _issue_step(j, q_tile, k_smem, v_smem, k_full, v_full, p8, acc, s_layout, o_layout, WG_M,
                                BLOCK_N, HEAD_DIM, STAGES, CHAINED, p_layout, False)
        ks = gl.load(ks_ptr + (j * BLOCK_N) // QUANT_BLOCK)
        qk = warpgroup_mma_wait(num_outstanding=1, deps=[qk_a])  # S_j done; the P·V still in flight
        mbarrier.arrive(k_empty.index(j % STAGES))  # K stage j is read by S_j only: free
        _ws_turn_pass(turn_bars, WG, PINGPONG)
        p8_new, alpha_new, m_i, l_i = _softmax_tile(qk, qs * ks, m_i, l_i, j * BLOCK_N, S_K, s_layout, p_layout,
                                                    BLOCK_N, MASKED, FAST_I2F, PERMUTED_K)
        # l_j as a `deps` of the wait orders it after the softmax in the PTX; ptxas may still move the
        # WARPGROUP.DEPBAR up (it does in the BLOCK_N 64 loop body: column ex2|| of
        # tools/attention_gluon_sass.py --warp-specialized)
        o, l_i = warpgroup_mma_wait(num_outstanding=0, deps=[o_a, l_i])
        mbarrier.arrive(v_empty.index((j - 1) % STAGES))  # V stage j-1, read by the P·V: free
        # α tied to l_j as well (see _finish_step)
        if CHAINED:
            alpha_o = gl.convert_layout(alpha_new + l_i * 0.0, gl.SliceLayout(1, o_layout))
            acc = o * gl.expand_dims(alpha_o, 1)
        else:
            alpha_o = gl.convert_layout(alpha + l_i * 0.0, gl.SliceLayout(1, o_layout))
            acc = acc * gl.expand_dims(alpha_o, 1) + o
        return p8_new, alpha_new, m_i, l_i, acc

    @gluon.jit
    def _ws_consumer(q_smem, k_smem, v_smem, q_bars, k_full, v_full, k_empty, v_empty, turn_bars, QS, KS, VS, VOFF,
                     Out, so_b, so_h, so_s, so_d, H, S_Q, S_K, SQ_PAD, SK_PAD, WG: gl.constexpr, HEAD_DIM: gl.constexpr,
                     WG_M: gl.constexpr, BLOCK_N: gl.constexpr, QUANT_BLOCK: gl.constexpr, STAGES: gl.constexpr,
                     CONSUMERS: gl.constexpr, FAST_I2F: gl.constexpr, PERMUTED_K: gl.constexpr,
                     CHAINED: gl.constexpr, PINGPONG: gl.constexpr):
        """One consumer warpgroup (4 warps, rows WG·64.. of the CTA's 128): the intra-warpgroup
        pipeline of _sage8_attn_fwd_gluon (_issue_step / _softmax_tile), with the refills replaced by
        arrivals on the empty barriers — K stage j after the wait(1) that retires S_j, V stage j-1 after
        the wait(0) that retires P_{j-1}·V_{j-1} — and the output stored by the warpgroup itself."""
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BLOCK_N, 32])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, HEAD_DIM, 32])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4)
        start_m = gl.program_id(0)
        bh = gl.program_id(1)
        b = bh // H
        h = bh % H
        n_tiles = gl.cdiv(S_K, BLOCK_N)
        q_tile = q_smem.index(WG)
        qs = gl.load(QS + bh * (SQ_PAD // QUANT_BLOCK) + (start_m * WG_M * CONSUMERS) // QUANT_BLOCK)
        ks_ptr = KS + bh * (SK_PAD // QUANT_BLOCK)
        m_i = gl.full([WG_M], -float("inf"), gl.float32, gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([WG_M], gl.float32, gl.SliceLayout(1, s_layout))
        acc = gl.zeros([WG_M, HEAD_DIM], gl.float32, o_layout)

        # Tile 0: its scores alone (masked: also the last tile when S_K <= BLOCK_N).
        mbarrier.wait(q_bars.index(WG), 0)
        mbarrier.wait(k_full.index(0), 0)
        _ws_turn_wait(turn_bars, 0, WG, PINGPONG)
        qk = warpgroup_mma(q_tile, k_smem.index(0).permute((1, 0)), gl.zeros([WG_M, BLOCK_N], gl.int32, s_layout),
                           use_acc=False, is_async=True)
        _ws_turn_pass(turn_bars, WG, PINGPONG)
        ks = gl.load(ks_ptr)
        qk = warpgroup_mma_wait(num_outstanding=0, deps=[qk])
        mbarrier.arrive(k_empty.index(0))
        p8, alpha, m_i, l_i = _softmax_tile(qk, qs * ks, m_i, l_i, 0, S_K, s_layout, p_layout, BLOCK_N, True,
                                            FAST_I2F, PERMUTED_K)
        for j in range(1, n_tiles - 1):
            p8, alpha, m_i, l_i, acc = _ws_step(j, q_tile, k_smem, v_smem, k_full, v_full, k_empty, v_empty,
                                                turn_bars, p8, acc, alpha, m_i, l_i, ks_ptr, qs, S_K, s_layout,
                                                o_layout, p_layout, WG, WG_M, BLOCK_N, HEAD_DIM, QUANT_BLOCK, STAGES,
                                                False, FAST_I2F, PERMUTED_K, CHAINED, PINGPONG)
        if n_tiles > 1:  # the last tile, masked (a no-op when S_K is a multiple of BLOCK_N)
            p8, alpha, m_i, l_i, acc = _ws_step(n_tiles - 1, q_tile, k_smem, v_smem, k_full, v_full, k_empty,
                                                v_empty, turn_bars, p8, acc, alpha, m_i, l_i, ks_ptr, qs, S_K,
                                                s_layout, o_layout, p_layout, WG, WG_M, BLOCK_N, HEAD_DIM,
                                                QUANT_BLOCK, STAGES, True, FAST_I2F, PERMUTED_K, CHAINED, PINGPONG)

        # The last tile's P·V.
        last = n_tiles - 1
        mbarrier.wait(v_full.index(last % STAGES), (last // STAGES) & 1)
        _ws_turn_wait(turn_bars, n_tiles, WG, PINGPONG)
        if CHAINED:  # acc is already scaled to the last m
            acc = warpgroup_mma(p8, v_smem.index(last % STAGES).permute((1, 0)), acc, use_acc=True, is_async=True)
            _ws_turn_pass(turn_bars, WG, PINGPONG)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
        else:
            o = warpgroup_mma(p8, v_smem.index(last % STAGES).permute((1, 0)),
                              gl.zeros([WG_M, HEAD_DIM], gl.float32, o_layout), use_acc=False, is_async=True)
            _ws_turn_pass(turn_bars, WG, PINGPONG)
            o = warpgroup_mma_wait(num_outstanding=0, deps=[o])
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1) + o

        _store_out(acc, l_i, (start_m * CONSUMERS + WG) * WG_M, bh, b, h, VS, VOFF, Out, so_b, so_h, so_s, so_d,
                   S_Q, o_layout, WG_M, HEAD_DIM)

    @gluon.jit
    def _sage8_attn_fwd_gluon_ws(
        desc_q, QS, desc_k, KS, desc_v, VS, VOFF, Out,
        so_b, so_h, so_s, so_d,
        H, S_Q, S_K, SQ_PAD, SK_PAD,
        HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, QUANT_BLOCK: gl.constexpr,
        STAGES: gl.constexpr, FAST_I2F: gl.constexpr, PERMUTED_K: gl.constexpr, CHAINED: gl.constexpr,
        PINGPONG: gl.constexpr, PRODUCER_REGS: gl.constexpr, CONSUMER_REGS: gl.constexpr,
    ):
        """Warp-specialized: launched with num_warps = 4 (the default partition = consumer warpgroup 0);
        warp_specialize adds consumer warpgroup 1 (4 warps, CONSUMER_REGS) and the TMA producer (1 warp,
        PRODUCER_REGS). BLOCK_M = 128: 64 query rows per consumer warpgroup, Q tiles [64, D]."""
        WG_M: gl.constexpr = 64
        CONSUMERS: gl.constexpr = BLOCK_M // WG_M
        gl.static_assert(CONSUMERS == 2)
        gl.static_assert(QUANT_BLOCK % BLOCK_M == 0)  # one Q scale per program
        gl.static_assert(QUANT_BLOCK % BLOCK_N == 0)  # one K scale per key tile
        start_m = gl.program_id(0)
        bh = gl.program_id(1)
        n_tiles = gl.cdiv(S_K, BLOCK_N)

        q_smem = gl.allocate_shared_memory(gl.int8, [CONSUMERS, WG_M, HEAD_DIM], desc_q.layout)
        k_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], gl.int8)
        k_smem = gl.allocate_shared_memory(gl.int8, [STAGES, BLOCK_N, HEAD_DIM], k_layout)
        v_smem = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, HEAD_DIM, BLOCK_N], desc_v.layout)
        q_bars = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
        k_full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        turn_bars = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(CONSUMERS):
            mbarrier.init(q_bars.index(i), count=1)
            mbarrier.init(turn_bars.index(i), count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(k_full.index(i), count=1)
            mbarrier.init(v_full.index(i), count=1)
            mbarrier.init(k_empty.index(i), count=CONSUMERS)  # one arrival per consumer warpgroup
            mbarrier.init(v_empty.index(i), count=CONSUMERS)
        fence_async_shared()

        gl.warp_specialize([
            (_ws_consumer, (q_smem, k_smem, v_smem, q_bars, k_full, v_full, k_empty, v_empty, turn_bars, QS, KS, VS,
                            VOFF, Out, so_b, so_h, so_s, so_d, H, S_Q, S_K, SQ_PAD, SK_PAD, 0, HEAD_DIM, WG_M, BLOCK_N,
                            QUANT_BLOCK, STAGES, CONSUMERS, FAST_I2F, PERMUTED_K, CHAINED, PINGPONG)),
            (_ws_consumer, (q_smem, k_smem, v_smem, q_bars, k_full, v_full, k_empty, v_empty, turn_bars, QS, KS, VS,
                            VOFF, Out, so_b, so_h, so_s, so_d, H, S_Q, S_K, SQ_PAD, SK_PAD, 1, HEAD_DIM, WG_M, BLOCK_N,
                            QUANT_BLOCK, STAGES, CONSUMERS, FAST_I2F, PERMUTED_K, CHAINED, PINGPONG)),
            (_ws_producer, (desc_q, desc_k, desc_v, q_smem, k_smem, v_smem, q_bars, k_full, v_full, k_empty,
                            v_empty, bh * SQ_PAD + start_m * BLOCK_M, bh * SK_PAD, bh * HEAD_DIM, n_tiles, WG_M,
                            BLOCK_N, STAGES, PERMUTED_K, CONSUMERS)),
        ], worker_num_warps=[4, 1], worker_num_regs=[CONSUMER_REGS, PRODUCER_REGS])

def _layout_for(block_shape, torch_dtype):
    gdt = {torch.int8: gl.int8, torch.float8_e4m3fn: gl.float8e4nv}[torch_dtype]
    return gl.NVMMASharedLayout.get_default_for(block_shape, gdt)


def k_permuted_layout(block_n: int, d: int):
    """The shared layout of K's 5-D TMA box: the [BLOCK_N, D] tile's swizzle (a box lands row after
    row of D bytes, the swizzle is a function of the shared address), at rank 5."""
    base = gl.NVMMASharedLayout.get_default_for([block_n, d], gl.int8)
    return gl.NVMMASharedLayout(swizzle_byte_width=base.swizzle_byte_width, element_bitwidth=8, rank=5)


def make_descriptors(z: SageInputs, block_m: int, block_n: int, permuted_k: bool = True):
    """Gluon TMA descriptors over the pre-pass buffers: Q8 as [B·H·Sq_pad, D] (tiles [BLOCK_M, D]),
    V8ᵀ as [B·H·D, Sk_pad] (tiles [D, BLOCK_N], tokens contiguous), and K8 as [B·H·Sk_pad, D] (tiles
    [BLOCK_N, D]) or, permuted_k, as the 5-D view [rows/16, a=2, c=4, b=2, D] with strides
    [16D, 2D, 4D, D, 1] of key 16h + 4c + 2a + b: its [BLOCK_N/16, 2, 4, 2, D] box writes that key to
    shared row 16h + 8a + 2c + b, which puts each thread's QKᵀ accumulator entries in the order the
    P·V wgmma wants its A operand in registers (so P needs no shuffles, see _softmax_tile)."""
    d = z.q8.shape[-1]
    q2, k2, v2 = z.q8.view(-1, d), z.k8.view(-1, d), z.v8t.view(-1, z.v8t.shape[-1])
    if permuted_k:
        rows = k2.shape[0]  # a multiple of 128 (the pre-pass pads each head to the quant block)
        desc_k = TensorDescriptor(k2, [rows // 16, 2, 4, 2, d], [16 * d, 2 * d, 4 * d, d, 1],
                                  [block_n // 16, 2, 4, 2, d], k_permuted_layout(block_n, d))
    else:
        desc_k = TensorDescriptor.from_tensor(k2, [block_n, d], _layout_for([block_n, d], k2.dtype))
    return (TensorDescriptor.from_tensor(q2, [block_m, d], _layout_for([block_m, d], q2.dtype)), desc_k,
            TensorDescriptor.from_tensor(v2, [d, block_n], _layout_for([d, block_n], v2.dtype)))


def sage_attention_gluon(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, *,
                         quantized: SageInputs | None = None, block_m: int = DEFAULT_GLUON_CONFIG["block_m"],
                         block_n: int = DEFAULT_GLUON_CONFIG["block_n"],
                         num_warps: int = DEFAULT_GLUON_CONFIG["num_warps"],
                         num_stages: int = DEFAULT_GLUON_CONFIG["num_stages"], fast_i2f: bool = True,
                         permuted_k: bool = True, chained: bool = False, maxnreg: int | None = None,
                         packed_p: bool = False, rotated: bool = False, warp_specialized: bool = False,
                         pingpong: bool = False, consumer_regs: int | None = None, producer_regs: int | None = None,
                         quant_block: int = QUANT_BLOCK) -> torch.Tensor:
    """The pre-pass (`sage_quantize`, skipped when `quantized` is given) and the Gluon kernel.
    [B, H, S, D] tensors of any strides in, q's dtype and strides out. sm_90 GPUs only.
    `chained`: P·V accumulated into acc by the FP8 wgmma itself (see _attn_step); `maxnreg`: ptxas's
    register cap (168 at 64x128, 4 warps, D = 128, would be three CTAs an SM). `packed_p`, `rotated`:
    experiments that ptxas currently serializes (notes C7513 / C7514; see the kernel), off by default.
    `warp_specialized`: _sage8_attn_fwd_gluon_ws (block_m = 128, num_warps = 8 consumer warps = two
    consumer warpgroups, plus a 1-warp TMA producer; `pingpong`: the two warpgroups take turns issuing
    their wgmmas; `consumer_regs` / `producer_regs`: warp_specialize's worker_num_regs, default
    WS_CONSUMER_REGS / WS_PRODUCER_REGS). Not yet run on a GPU."""
    if triton is None:
        raise RuntimeError("sage_attention_gluon: triton is not installed")
    if q.dim() != 4 or k.shape[:2] != q.shape[:2] or v.shape[:3] != k.shape[:3]:
        raise ValueError("sage_attention_gluon: expects [B, H, S, D] q, k, v with matching batch/heads")
    b, h, s_q, d = q.shape
    if d not in HEAD_DIMS or k.shape[-1] != d or v.shape[-1] != d:
        raise ValueError(f"sage_attention_gluon: head dim {d} is not one of {HEAD_DIMS}")
    if not q.is_cuda or torch.cuda.get_device_capability(q.device)[0] != 9:
        raise RuntimeError("sage_attention_gluon: needs an sm_90 (Hopper) GPU; Gluon has no interpreter")
    if warp_specialized:
        if (block_m, num_warps) != (128, 8):
            raise ValueError(f"warp_specialized: block_m 128 and num_warps 8 (two consumer warpgroups), got "
                             f"{block_m}, {num_warps}")
        if packed_p or rotated or maxnreg is not None:
            raise ValueError("warp_specialized: packed_p, rotated and maxnreg are not options of the WS kernel")
    elif pingpong:
        raise ValueError("pingpong needs warp_specialized")
    if block_m != 16 * num_warps:
        raise ValueError(f"block_m must be 16·num_warps (one warpgroup per 64 rows), got {block_m}, {num_warps}")
    if packed_p and not permuted_k:
        raise ValueError("packed_p needs permuted_k (P packed straight from the permuted score columns)")
    s_k = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    z = quantized or sage_quantize(q, k, v, scale, quant_block)
    if z.quant_block % block_m or z.quant_block % block_n:
        raise ValueError(f"block_m {block_m} and block_n {block_n} must divide the quant block {z.quant_block}")
    out = torch.empty_like(q)  # keeps q's strides, as sage_attention_triton does
    grid = (triton.cdiv(s_q, block_m), b * h)
    if warp_specialized:  # Q in [64, D] tiles, one per consumer warpgroup
        desc_q, desc_k, desc_v = make_descriptors(z, 64, block_n, permuted_k)
        _sage8_attn_fwd_gluon_ws[grid](
            desc_q, z.qs, desc_k, z.ks, desc_v, z.vs, z.v_offset, out, *out.stride(),
            h, s_q, s_k, z.q8.shape[1], z.k8.shape[1],
            HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, QUANT_BLOCK=z.quant_block, STAGES=num_stages,
            FAST_I2F=fast_i2f, PERMUTED_K=permuted_k, CHAINED=chained, PINGPONG=pingpong,
            PRODUCER_REGS=producer_regs or WS_PRODUCER_REGS, CONSUMER_REGS=consumer_regs or WS_CONSUMER_REGS,
            num_warps=4)  # the default partition (consumer warpgroup 0); warp_specialize adds 4 + 1 warps
        return out
    desc_q, desc_k, desc_v = make_descriptors(z, block_m, block_n, permuted_k)
    _sage8_attn_fwd_gluon[grid](
        desc_q, z.qs, desc_k, z.ks, desc_v, z.vs, z.v_offset, out, *out.stride(),
        h, s_q, s_k, z.q8.shape[1], z.k8.shape[1],
        HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, QUANT_BLOCK=z.quant_block, STAGES=num_stages,
        NUM_WARPS=num_warps, FAST_I2F=fast_i2f, PERMUTED_K=permuted_k, CHAINED=chained, ROTATED=rotated, PACKED_P=packed_p,
        num_warps=num_warps,
        **({} if maxnreg is None else dict(maxnreg=maxnreg)))
    return out
