"""The smoothing statistics of 8-bit attention's pre-pass: K's mean, V's mean and V's per-channel range
over the tokens, per (batch, head) — reductions over the whole sequence that every block of the
pre-pass (`sage_quant.py`) needs before it can quantize.

`smoothing_stats` is the reference (torch: a mean over K, a mean and an aminmax over V). The Triton
version reads K and V once in two small launches: `_kv_stats_chunk` accumulates Σk, Σv, max v and
min v per element of a [ROWS, D] tile over a chunk of tokens and reduces across the rows once at the
end (reducing every tile across warps, tried first, was 3x slower than torch); `_kv_stats_finish` adds
the chunks in a fixed order (deterministic) and does `smoothing_stats`' arithmetic.

Why a kernel for ~0.1 ms: the pre-pass is a fixed cost per call, and below ~6,000 tokens it decides
whether 8-bit attention beats SDPA. On an H200 (`tools/probe_attention_stats.py`,
docs/measurements/attention_overhead_stats_probe_h200.log) torch's reductions took 126 us at
LTX-Video's shape (2 × 32 heads × 6,144 × 64) and 112 us at 40 × 4,096 × 128; this kernel 61 us at
both (chunk 512 and 256), and 324 against 344 us at Wan 480p.

Numerics: the means are fp32 sums in another order than torch's (they agree to fp32 rounding of a sum
of S_k terms); min and max are exact; vs = amax / 448 and vinv = 448 · (1 / amax) correctly rounded
given the means (torch's CPU arithmetic; torch on CUDA divides by a scalar through its reciprocal,
so vs can differ there by an ulp).
"""

from __future__ import annotations

import torch

try:  # Triton is optional: the reference below runs anywhere.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs without triton
    triton = None

__all__ = ["smoothing_stats", "smoothing_stats_triton"]

E4M3_MAX = 448.0


def smoothing_stats(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """K's mean, V's mean and V's per-channel scale/reciprocal over the tokens, fp32 [B*H, D].

    `aminmax` and `mean(dtype=fp32)` read K and V once each without a converted copy. V's range
    around its mean is max(vmax - vm, vm - vmin): the same fp32 subtraction the quantizer makes,
    so |v - vm| · 448/amax never exceeds 448 by more than an ulp (clamped anyway)."""
    b, h, _, d = k.shape
    km = k.mean(dim=2, dtype=torch.float32).reshape(b * h, d)
    vm = v.mean(dim=2, dtype=torch.float32).reshape(b * h, d)
    vmin, vmax = torch.aminmax(v, dim=2)
    vmin, vmax = vmin.float().reshape(b * h, d), vmax.float().reshape(b * h, d)
    vamax = torch.maximum(vmax - vm, vm - vmin)
    vs = vamax / E4M3_MAX
    vinv = torch.where(vamax > 0, E4M3_MAX / vamax, torch.zeros_like(vamax))
    return km.contiguous(), vm.contiguous(), vs.contiguous(), vinv.contiguous()


if triton is not None:

    @triton.jit
    def _kv_stats_chunk(K, V, PART, sk_b, sk_h, sk_s, sk_d, sv_b, sv_h, sv_s, sv_d, H, S_K, N_CHUNKS,
                        HEAD_DIM: tl.constexpr, CHUNK: tl.constexpr, ROWS: tl.constexpr):
        """CHUNK tokens of one (batch, head) → Σk, Σv, max v, min v per channel, in the four planes of
        PART [4, B*H, N_CHUNKS, D]."""
        chunk, bh = tl.program_id(0), tl.program_id(1)
        b, h = bh // H, bh % H
        d = tl.arange(0, HEAD_DIM)
        k_sum = tl.zeros([ROWS, HEAD_DIM], dtype=tl.float32)
        v_sum = tl.zeros([ROWS, HEAD_DIM], dtype=tl.float32)
        v_max = tl.full([ROWS, HEAD_DIM], -float("inf"), dtype=tl.float32)
        v_min = tl.full([ROWS, HEAD_DIM], float("inf"), dtype=tl.float32)
        k_base = K + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h
        v_base = V + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h
        for r0 in range(chunk * CHUNK, (chunk + 1) * CHUNK, ROWS):
            rows = r0 + tl.arange(0, ROWS)
            valid = (rows < S_K)[:, None]
            k = tl.load(k_base + rows[:, None].to(tl.int64) * sk_s + d[None, :] * sk_d, mask=valid, other=0.0)
            v = tl.load(v_base + rows[:, None].to(tl.int64) * sv_s + d[None, :] * sv_d, mask=valid, other=0.0)
            v = v.to(tl.float32)
            k_sum += k.to(tl.float32)
            v_sum += v
            v_max = tl.maximum(v_max, tl.where(valid, v, -float("inf")))
            v_min = tl.minimum(v_min, tl.where(valid, v, float("inf")))
        at = (bh.to(tl.int64) * N_CHUNKS + chunk) * HEAD_DIM + d
        plane = tl.num_programs(1).to(tl.int64) * N_CHUNKS * HEAD_DIM
        tl.store(PART + at, tl.sum(k_sum, axis=0))
        tl.store(PART + plane + at, tl.sum(v_sum, axis=0))
        tl.store(PART + 2 * plane + at, tl.max(v_max, axis=0))
        tl.store(PART + 3 * plane + at, tl.min(v_min, axis=0))

    @triton.jit
    def _kv_stats_finish(PART, STATS, S_K, N_CHUNKS, BH, HEAD_DIM: tl.constexpr, CHUNKS: tl.constexpr):
        """One (batch, head): the chunks' partials combined, then km, vm, vs, vinv into the four planes
        of STATS [4, B*H, D]."""
        bh = tl.program_id(0)
        d = tl.arange(0, HEAD_DIM)
        plane = BH.to(tl.int64) * N_CHUNKS * HEAD_DIM
        k_sum = tl.zeros([HEAD_DIM], dtype=tl.float32)
        v_sum = tl.zeros([HEAD_DIM], dtype=tl.float32)
        v_max = tl.full([HEAD_DIM], -float("inf"), dtype=tl.float32)
        v_min = tl.full([HEAD_DIM], float("inf"), dtype=tl.float32)
        for c0 in range(0, N_CHUNKS, CHUNKS):
            c = c0 + tl.arange(0, CHUNKS)
            ok = (c < N_CHUNKS)[:, None]
            at = (bh.to(tl.int64) * N_CHUNKS + c[:, None]) * HEAD_DIM + d[None, :]
            k_sum += tl.sum(tl.load(PART + at, mask=ok, other=0.0), axis=0)
            v_sum += tl.sum(tl.load(PART + plane + at, mask=ok, other=0.0), axis=0)
            v_max = tl.maximum(v_max, tl.max(tl.load(PART + 2 * plane + at, mask=ok, other=-float("inf")), axis=0))
            v_min = tl.minimum(v_min, tl.min(tl.load(PART + 3 * plane + at, mask=ok, other=float("inf")), axis=0))
        vm = v_sum / S_K
        v_amax = tl.maximum(v_max - vm, vm - v_min)
        out = bh * HEAD_DIM + d
        tl.store(STATS + out, k_sum / S_K)
        tl.store(STATS + BH * HEAD_DIM + out, vm)
        # div_rn: correctly rounded, as torch's `/` (the plain `/` may lower to an approximate divide)
        tl.store(STATS + 2 * BH * HEAD_DIM + out, tl.math.div_rn(v_amax, tl.full([HEAD_DIM], 448.0, tl.float32)))
        recip = tl.math.div_rn(tl.full([HEAD_DIM], 1.0, tl.float32), tl.where(v_amax > 0, v_amax, 1.0))
        tl.store(STATS + 3 * BH * HEAD_DIM + out, tl.where(v_amax > 0, recip * 448.0, 0.0))


def _chunk(bh: int, s_k: int) -> int:
    """Tokens per program: 512 where that still gives ≥ 4 programs per SM of an H100/H200 (132 SMs),
    256 below (measured: 40 × 4,096 × 128 took 61 us at 256 against 83 at 512; LTX-Video's 64 × 6,144
    and Wan's 40 × 32,760 were fastest at 512)."""
    return 512 if bh * triton.cdiv(s_k, 512) >= 4 * 132 else 256


def smoothing_stats_triton(k: torch.Tensor, v: torch.Tensor, chunk: int | None = None, rows: int = 16,
                           num_warps: int = 4) -> tuple[torch.Tensor, ...]:
    """`smoothing_stats` in two Triton launches (CUDA, or the CPU under TRITON_INTERPRET=1); k and v
    [B, H, S, D] of any strides, D a power of two. chunk (tokens per program; a multiple of rows),
    rows and num_warps are the tile (tools/probe_attention_stats.py times the alternatives)."""
    b, h, s_k, d = k.shape
    chunk = chunk or _chunk(b * h, s_k)
    n_chunks = triton.cdiv(s_k, chunk)
    part = torch.empty(4, b * h, n_chunks, d, dtype=torch.float32, device=k.device)
    stats = torch.empty(4, b * h, d, dtype=torch.float32, device=k.device)
    _kv_stats_chunk[(n_chunks, b * h)](k, v, part, *k.stride(), *v.stride(), h, s_k, n_chunks,
                                       HEAD_DIM=d, CHUNK=chunk, ROWS=rows, num_warps=num_warps)
    _kv_stats_finish[(b * h,)](part, stats, s_k, n_chunks, b * h, HEAD_DIM=d, CHUNKS=16, num_warps=4)
    return tuple(stats.unbind(0))
