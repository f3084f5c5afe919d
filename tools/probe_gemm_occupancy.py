"""Does a second CTA an SM pay for the W4A4 GEMM's epilogue? (a development probe, H100/H200)

The delta GEMM's tiles (128×256 or 256×128, 8 warps, 3–4 stages) take most of an SM's shared memory,
so one CTA runs an SM and nothing overlaps its epilogue (core term, low-rank branch, bias, row
scatter) with the next tile's main loop. A 128×128 tile in 2 stages needs 64 KB; capped at 128
registers a thread (ptxas: 16 bytes of spill with the split rank-128 epilogue, tools/gemm_sass.py)
two CTAs fit. This times the GEMM with its whole epilogue, as `dq::w4a4_linear` launches it at the
Wan recipe's rank 128, one config at a time, at Wan A14B 480p.

    python -P tools/probe_gemm_occupancy.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton
import triton.testing

import dq_kernels.scaled_gemm as sg
from dq_kernels.delta_quantize import delta_quantize

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (python -P leaves it out)
from probe_epilogue_parts import wan_linear_inputs  # noqa: E402

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, maxnreg)
CONFIGS = [
    (128, 256, 128, 8, 4, None), (256, 128, 128, 8, 3, None), (128, 128, 128, 8, 4, None),
    (256, 128, 64, 8, 4, None),
    (128, 128, 128, 8, 2, 128), (128, 128, 64, 8, 3, 128), (128, 128, 64, 8, 4, 128), (128, 128, 128, 8, 2, None),
]


def timed(cfg, fn) -> float:
    bm, bn, bk, w, s, r = cfg
    tuner = sg.scaled_gemm_kernel
    saved = tuner.configs
    tuner.configs = [triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, PREFETCH=False),
                                   num_warps=w, num_stages=s, maxnreg=r)]
    tuner.cache.clear()
    try:
        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    finally:
        tuner.configs = saved
        tuner.cache.clear()


def main() -> None:
    m, grid, rank = 32760, (21, 30, 52), 128
    for k, n in ((5120, 5120), (5120, 13824), (13824, 5120)):
        x, smooth, _, wq, ws, up, down_w, bias = wan_linear_inputs(m, k, n, rank)
        for cube in ((4, 1, 4), (4, 2, 8)):
            acts = delta_quantize(x, smooth, down_w, 1, grid, cube, "int4_row")
            core = torch.randn(acts.core.shape[0], n, device="cuda")
            kw = dict(core=core, cube_of_row=acts.cube_of_row, row_token=acts.row_token, down=acts.down, up=up,
                      bias=bias)
            for cfg in CONFIGS:
                try:
                    ms = timed(cfg, lambda: sg.scaled_gemm(acts.delta, wq, acts.scale, ws, **kw))
                    msg = f"{ms:.3f} ms"
                except Exception as e:  # noqa: BLE001 — out of resources: say so and go on
                    msg = f"{type(e).__name__}: {str(e)[:80]}"
                print(f"{m}x{k}->{n} cube {cube} config {cfg}: {msg}", flush=True)
            del acts, core
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
