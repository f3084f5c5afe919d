"""Where the 8-bit attention op's time goes beyond the kernel: GPU time per CUDA kernel (torch.profiler)
and host time per call, at the LTX-Video shape (both CFG branches) and Wan A14B 480p.

    python -P tools/profile_attention_op.py            # CUDA only; prints two tables per shape

Host time: N calls queued without a sync behind a long GPU job (a matmul loop), so the GPU never waits
for the host and perf_counter measures Python and launch cost alone.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (python -P leaves it out)
from repo_kernels import import_dq_kernels  # noqa: E402

import_dq_kernels()
from dq_kernels import sage_attention as sa  # noqa: E402

SHAPES = {"ltx-cfg": (2, 32, 6144, 64), "d128-4k": (1, 40, 4096, 128), "wan480": (1, 40, 32760, 128)}


def inputs(b, h, s, d):
    g = torch.Generator(device="cuda").manual_seed(0)
    return [torch.randn(b, s, h, d, device="cuda", generator=g, dtype=torch.bfloat16).permute(0, 2, 1, 3)
            for _ in range(3)]


def host_ms(fn, n=20) -> float:
    """Host ms per call of fn (CUDA): one warm-up call (compilation, autotuning), then n calls queued
    behind ~n·4 large matmuls. n stays small: n calls' launches plus the matmuls must fit CUDA's launch
    queue (~1,000 entries), or the host waits for the GPU and the time is the GPU's."""
    fn()
    torch.cuda.synchronize()
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(n * 4):  # keep the GPU busy well past the host loop below
        a @ a
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t = (time.perf_counter() - t0) / n * 1e3
    torch.cuda.synchronize()
    return t


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("profile_attention_op: needs CUDA")
    for name, shape in SHAPES.items():
        q, k, v = inputs(*shape)
        scale = 1 / math.sqrt(shape[-1])
        op = lambda: sa.sage_attention(q, k, v, scale)  # noqa: E731
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)  # noqa: E731
        for _ in range(3):
            op(), sdpa()
        torch.cuda.synchronize()
        print(f"== {name} {shape}: host ms per call: sage8 op {host_ms(op):.3f}, sdpa {host_ms(sdpa):.3f}")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                op()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=60))
        del q, k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
