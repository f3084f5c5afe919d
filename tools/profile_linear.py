"""Where the time of one quantized linear goes on the GPU: torch.profiler's per-kernel CUDA time
for `dq::w4a4_linear` and `dq::w8a8_linear` at a model's linear shapes (a development probe).

    python -P tools/profile_linear.py --shapes wan-a14b-480p
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

import dq_kernels.linear_ops  # noqa: F401  (registers torch.ops.dq)
import dq_kernels.scaled_gemm as scaled_gemm
from dq_cli.kernel_bench import CUBE, RANK, SHAPES
from dq_kernels.formats import KERNEL_INT4_FORMATS, quantize_int4_format
from dq_kernels.int4 import pack_int4
from dq_kernels.int8 import quantize_int8_rowwise


def kernel_times(fn, reps: int = 5) -> dict[str, float]:
    """Mean CUDA ms per call of each kernel `fn` launches."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    times = defaultdict(float)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            times[e.name[:70]] += e.device_time / 1e3 / reps
    return dict(sorted(times.items(), key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="wan-a14b-480p")
    ap.add_argument("--rank", type=int, default=RANK)
    ap.add_argument("--cube", default=",".join(map(str, CUBE)), help="t,h,w")
    ap.add_argument("--format", choices=KERNEL_INT4_FORMATS, default="int4_row", help="W4A4 weights and activations")
    ap.add_argument("--only", default=None, help="profile only this layer name")
    ap.add_argument("--no-w8a8", action="store_true")
    ap.add_argument("--epilogue", choices=["joined", "split", "auto"], default=None,
                    help="the GEMM epilogue (dq_kernels.scaled_gemm.EPILOGUE); default: the module's")
    a = ap.parse_args()
    if a.epilogue:
        scaled_gemm.EPILOGUE = a.epilogue
    rank, cube = a.rank, [int(v) for v in a.cube.split(",")]
    m, grid, layers = SHAPES[a.shapes]
    layers = [entry for entry in layers if a.only is None or entry[0] == a.only]
    seen = set()
    for layer, k, n, _ in layers:
        if (k, n) in seen:
            continue
        seen.add((k, n))
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        smooth = torch.rand(k, device="cuda") + 0.5
        down = (torch.randn(rank, k, device="cuda") / k**0.5).bfloat16()
        up = (torch.randn(n, rank, device="cuda") / rank**0.5).bfloat16()
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        codes, scales = quantize_int4_format(w.float() * smooth, a.format, 64)
        packed = pack_int4(codes)
        wi8, swi = quantize_int8_rowwise(w)
        for name, fn in (
                ("w4a4", lambda: torch.ops.dq.w4a4_linear(x, packed, scales, smooth, down, up, bias, 1, list(grid),
                                                         cube, a.format)),
                ("w8a8", lambda: torch.ops.dq.w8a8_linear(x, wi8, swi, smooth, bias))):
            if name == "w8a8" and a.no_w8a8:
                continue
            times = kernel_times(fn)
            import triton.testing
            wall = triton.testing.do_bench(fn, warmup=5, rep=30, return_mode="median")
            print(f"== {a.shapes} {layer} {m}x{k}->{n} {name} rank {rank} cube {cube} "
                  f"{a.format} epilogue {scaled_gemm.EPILOGUE}: "
                  f"{sum(times.values()):.3f} ms in kernels, {wall:.3f} ms per call", flush=True)
            for kname, ms in list(times.items())[:14]:
                print(f"   {ms:8.3f} ms  {kname}")
        del x, w


if __name__ == "__main__":
    main()
