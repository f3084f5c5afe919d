"""The 8-bit attention pre-pass's smoothing statistics (K's mean, V's mean and range over the tokens):
torch's three reductions (`sage_quant.smoothing_stats`, what the op runs) against a one-pass Triton
candidate, at Wan A14B 480p, LTX-Video (both CFG branches) and a 4,096-token shape.

Why: `tools/profile_attention_op.py` (H200, 2026-12-01) put torch's reductions at ≈0.32 ms of a 27.5 ms
call at Wan 480p and ≈0.10 ms of ≈1.3 ms at LTX-Video; one pass over K and V could take two thirds of
that. A first Triton version that reduced every 32-row tile across warps was 3x slower than torch
(0.89 ms; `docs/measurements/profile_attention_op_statskernel_h200.log`). The candidate below
accumulates per element over [ROWS, D] tiles and reduces across rows once per chunk. It is kept here,
not in `dq_kernels`, until a GPU run says it wins.

    python -P tools/probe_attention_stats.py             # CUDA: times, and the largest difference
    TRITON_INTERPRET=1 python -P tools/probe_attention_stats.py --check   # CPU: correctness only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (python -P leaves it out)
from repo_kernels import import_dq_kernels  # noqa: E402

import_dq_kernels()
from dq_kernels.sage_quant import smoothing_stats  # noqa: E402

SHAPES = {"wan480": (1, 40, 32760, 128), "ltx-cfg": (2, 32, 6144, 64), "d128-4k": (1, 40, 4096, 128)}
CHECK_SHAPES = {"partial-chunk": (1, 2, 1300, 64), "two-batches": (2, 3, 777, 128), "tiny": (1, 1, 17, 32)}


@triton.jit
def _stats_chunk(K, V, PART, sk_b, sk_h, sk_s, sk_d, sv_b, sv_h, sv_s, sv_d, H, S_K, N_CHUNKS,
                 HEAD_DIM: tl.constexpr, CHUNK: tl.constexpr, ROWS: tl.constexpr):
    """One chunk of CHUNK tokens of one (batch, head) → Σk, Σv, max v, min v per channel in PART
    [4, B*H, n_chunks, D]; accumulated per element, reduced across rows once."""
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
def _stats_finish(PART, STATS, S_K, N_CHUNKS, BH, HEAD_DIM: tl.constexpr, CHUNKS: tl.constexpr):
    """One (batch, head): the chunks added in a fixed order, then smoothing_stats' arithmetic with
    torch's rounding (x / 448 correctly rounded; 448 / x as 448 · (1 / x), Tensor.__rtruediv__)."""
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
    tl.store(STATS + 2 * BH * HEAD_DIM + out, tl.math.div_rn(v_amax, tl.full([HEAD_DIM], 448.0, tl.float32)))
    recip = tl.math.div_rn(tl.full([HEAD_DIM], 1.0, tl.float32), tl.where(v_amax > 0, v_amax, 1.0))
    tl.store(STATS + 3 * BH * HEAD_DIM + out, tl.where(v_amax > 0, recip * 448.0, 0.0))


def stats_triton(k, v, chunk=512, rows=16, warps=4):
    b, h, s_k, d = k.shape
    n_chunks = triton.cdiv(s_k, chunk)
    part = torch.empty(4, b * h, n_chunks, d, dtype=torch.float32, device=k.device)
    stats = torch.empty(4, b * h, d, dtype=torch.float32, device=k.device)
    _stats_chunk[(n_chunks, b * h)](k, v, part, *k.stride(), *v.stride(), h, s_k, n_chunks,
                                    HEAD_DIM=d, CHUNK=chunk, ROWS=rows, num_warps=warps)
    _stats_finish[(b * h,)](part, stats, s_k, n_chunks, b * h, HEAD_DIM=d, CHUNKS=16, num_warps=4)
    return tuple(stats.unbind(0))


def inputs(b, h, s, d, device):
    """bf16 K and V in diffusers' [B, S, H, D] memory, seen as [B, H, S, D], with channel offsets."""
    g = torch.Generator().manual_seed(s)
    make = lambda off: ((torch.randn(b, s, h, d, generator=g) + off * torch.randn(d, generator=g))  # noqa: E731
                        .to(device, torch.bfloat16).permute(0, 2, 1, 3))
    return make(3.0), make(1.0)


def max_differences(k, v, **kw) -> dict:
    """Against torch: the means to fp32 rounding (another summation order); vs and vinv exactly
    torch's arithmetic given the kernel's vm (V's min and max are exact)."""
    km, vm, vs, vinv = stats_triton(k, v, **kw)
    ref = smoothing_stats(k, v)
    b, h, _, d = k.shape
    vmin, vmax = (t.float().reshape(b * h, d) for t in torch.aminmax(v, dim=2))
    v_amax = torch.maximum(vmax - vm, vm - vmin)
    exact = (torch.equal(vs, v_amax / 448.0)
             and torch.equal(vinv, torch.where(v_amax > 0, 448.0 / v_amax, torch.zeros_like(v_amax))))
    return dict(km=(km - ref[0]).abs().max().item(), vm=(vm - ref[1]).abs().max().item(), range_exact=exact)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="correctness at small shapes only (the CPU interpreter)")
    args = p.parse_args()
    if args.check:
        for name, shape in CHECK_SHAPES.items():
            print(name, shape, max_differences(*inputs(*shape, "cpu")))
        return
    if not torch.cuda.is_available():
        raise SystemExit("probe_attention_stats: needs CUDA (or --check under TRITON_INTERPRET=1)")
    for name, shape in SHAPES.items():
        k, v = inputs(*shape, "cuda")
        t_torch = triton.testing.do_bench(lambda: smoothing_stats(k, v), warmup=25, rep=200)
        print(f"{name} {shape}: torch {t_torch * 1e3:.1f} us", flush=True)
        for chunk, rows, warps in ((512, 16, 4), (512, 32, 4), (256, 16, 4), (1024, 32, 8), (512, 64, 8)):
            kw = dict(chunk=chunk, rows=rows, warps=warps)
            t = triton.testing.do_bench(lambda: stats_triton(k, v, **kw), warmup=25, rep=200)
            print(f"  triton chunk {chunk}, {rows} rows, {warps} warps: {t * 1e3:.1f} us "
                  f"({t_torch / t:.2f}x torch) {max_differences(k, v, **kw)}", flush=True)
        del k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
