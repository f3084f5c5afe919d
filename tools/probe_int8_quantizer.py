"""Time the W8A8 route's per-token INT8 quantizer (`dq_kernels.int8_quantize`) in each launch form —
the row read twice in 1,024- or 2,048-column steps, or once and kept in registers with 4, 8 or 16
warps — at 32,760 tokens and the K of Wan's and TI2V's linears, with smoothing, against a plain
BF16 → INT8 cast (one read, one write: the memory floor). Every variant's codes and scales must be
bit-identical to the library's default launch.

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
import triton  # noqa: E402

from dq_kernels.int8_quantize import int8_tokens_kernel, launch_params, quantize_int8_tokens  # noqa: E402
from dq_kernels.smoothing import inverse_smooth  # noqa: E402


def variants(k: int) -> list[tuple[str, dict]]:
    two = [(f"two passes, {b} columns a step, {w} warps", dict(BLOCK_K=b, ONE_PASS=False, num_warps=w))
           for b, w in ((1024, 4), (2048, 8))]
    block = triton.next_power_of_2(k)
    one = [(f"one pass, {w} warps", dict(BLOCK_K=block, ONE_PASS=True, num_warps=w)) for w in (4, 8, 16)]
    return two + one


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
        gbytes = a.m * k * 3 / 1e9  # BF16 in, INT8 out
        floor = do_bench(lambda: x.to(torch.int8), warmup=10, rep=50, return_mode="median")
        print(f"K={k}: library default {launch_params(k)}; BF16->INT8 cast {floor:.3f} ms "
              f"({gbytes / floor:.2f} TB/s)", flush=True)
        for label, params in variants(k):
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
