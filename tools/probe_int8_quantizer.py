"""Time the W8A8 route's per-token INT8 quantizer (`dq_kernels.int8_quantize`, one program a token,
the row read twice) at each step width and warp count, at 32,760 tokens and the K of Wan's and
TI2V's linears, with smoothing. Every variant's codes and scales must be bit-identical to the
library's launch.

Tried and dropped (fourteenth session, H200, docs/measurements/int8_quantizer_one_pass_h200.log):
the row loaded once and kept in registers between its maximum and its codes. With a whole row per
program (8,192–16,384 registers' worth) few programs fit an SM and the loads stop overlapping: 0.39–
0.50 ms at K = 5,120 and 0.81–1.49 ms at 13,824 against 0.20 and 0.59 for two passes.

    python -P tools/probe_int8_quantizer.py [--m 32760 --k 5120 13824 3072 14336]   # CUDA
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (python -P leaves it out)
from repo_kernels import import_dq_kernels  # noqa: E402

import_dq_kernels()
from dq_kernels.int8_quantize import int8_tokens_kernel, quantize_int8_tokens  # noqa: E402
from dq_kernels.smoothing import inverse_smooth  # noqa: E402


# (BLOCK_K, num_warps): the library's (1,024, 4) and its neighbours, 4 to 32 columns a thread
VARIANTS = [(256, 1), (512, 1), (512, 2), (1024, 1), (1024, 2), (1024, 4), (2048, 2), (2048, 4), (2048, 8),
            (4096, 4), (4096, 8)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=32760)
    ap.add_argument("--k", type=int, nargs="+", default=[5120, 13824, 3072, 14336])
    a = ap.parse_args()
    from triton.testing import do_bench

    g = torch.Generator().manual_seed(0)
    for k in a.k:
        x = torch.randn(a.m, k, generator=g).to("cuda", torch.bfloat16)
        smooth = (torch.rand(k, generator=g) + 0.5).cuda()
        inv = inverse_smooth(smooth)
        want_q, want_s = quantize_int8_tokens(x, smooth)
        gbytes = a.m * k * 3 / 1e9  # BF16 in, INT8 out: what a single pass would move
        ms = do_bench(lambda: quantize_int8_tokens(x, smooth), warmup=10, rep=50, return_mode="median")
        print(f"K={k}: library launch {ms:.3f} ms ({gbytes / ms:.2f} TB/s of one pass's bytes)", flush=True)
        for block, warps in VARIANTS:
            label, params = f"{block} columns a step, {warps} warps", dict(BLOCK_K=block, num_warps=warps)
            q = torch.empty_like(want_q)
            s = torch.empty_like(want_s)

            def launch():
                int8_tokens_kernel[(a.m,)](x, inv, q, s, k, x.stride(0), HAS_SMOOTH=True, **params)
            try:
                ms = do_bench(launch, warmup=10, rep=50, return_mode="median")
            except Exception as e:  # noqa: BLE001 - a variant that does not compile (registers)
                print(f"  {label}: failed: {type(e).__name__}: {str(e)[:80]}", flush=True)
                continue
            same = torch.equal(q, want_q) and torch.equal(s, want_s)
            print(f"  {label}: {ms:.3f} ms ({gbytes / ms:.2f} TB/s), bit-identical: {same}", flush=True)


if __name__ == "__main__":
    main()
