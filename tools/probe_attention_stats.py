"""The 8-bit attention pre-pass's smoothing statistics (K's mean, V's mean and range over the tokens):
torch's reductions (`sage_stats.smoothing_stats`, the reference) against the Triton kernel the op runs
(`sage_stats.smoothing_stats_triton`) at several tiles, at Wan A14B 480p, LTX-Video (both CFG
branches) and a 4,096-token shape.

History: `tools/profile_attention_op.py` (H200, 2026-12-01) put torch's reductions at ≈0.32 ms of a
27.5 ms call at Wan 480p and ≈0.10 ms of ≈1.3 ms at LTX-Video. A first Triton version that reduced
every 32-row tile across warps was 3x slower than torch (0.89 ms;
`docs/measurements/profile_attention_op_statskernel_h200.log`); the per-element version timed here
won (`attention_overhead_stats_probe_h200.log`) and went into `dq_kernels.sage_stats`.

    python -P tools/probe_attention_stats.py             # CUDA: times, and the largest difference
    TRITON_INTERPRET=1 python -P tools/probe_attention_stats.py --check   # CPU: correctness only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (python -P leaves it out)
from repo_kernels import import_dq_kernels  # noqa: E402

import_dq_kernels()
from dq_kernels.sage_stats import smoothing_stats, smoothing_stats_triton  # noqa: E402

SHAPES = {"wan480": (1, 40, 32760, 128), "ltx-cfg": (2, 32, 6144, 64), "d128-4k": (1, 40, 4096, 128)}
CHECK_SHAPES = {"partial-chunk": (1, 2, 1300, 64), "two-batches": (2, 3, 777, 128), "tiny": (1, 1, 17, 32)}


def inputs(b, h, s, d, device):
    """bf16 K and V in diffusers' [B, S, H, D] memory, seen as [B, H, S, D], with channel offsets."""
    g = torch.Generator().manual_seed(s)
    make = lambda off: ((torch.randn(b, s, h, d, generator=g) + off * torch.randn(d, generator=g))  # noqa: E731
                        .to(device, torch.bfloat16).permute(0, 2, 1, 3))
    return make(3.0), make(1.0)


def max_differences(k, v, **kw) -> dict:
    """Against torch: the means to fp32 rounding (another summation order); vs and vinv exactly
    torch's arithmetic given the kernel's vm (V's min and max are exact)."""
    km, vm, vs, vinv = smoothing_stats_triton(k, v, **kw)
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
            kw = dict(chunk=chunk, rows=rows, num_warps=warps)
            t = triton.testing.do_bench(lambda: smoothing_stats_triton(k, v, **kw), warmup=25, rep=200)
            print(f"  triton chunk {chunk}, {rows} rows, {warps} warps: {t * 1e3:.1f} us "
                  f"({t_torch / t:.2f}x torch) {max_differences(k, v, **kw)}", flush=True)
        del k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
