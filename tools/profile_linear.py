"""Where the time of one quantized linear goes on the GPU: torch.profiler's per-kernel CUDA time
for `dq::w4a4_linear` and `dq::w8a8_linear` at a model's linear shapes (a development probe).

    python -P tools/profile_linear.py --shapes wan-a14b-480p
    python -P tools/profile_linear.py --shapes ltx-video --only attn --no-w8a8 --host   # + host time

--host adds where the host's time goes, for shapes where it and not the GPU is the bound: the host
time per call (tools/profile_attention_op.py's `host_ms`: calls queued behind GPU work), the GPU
launches per call, and cProfile's functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import dq_kernels.linear_ops  # noqa: F401  (registers torch.ops.dq)
import dq_kernels.scaled_gemm as scaled_gemm
from dq_cli.kernel_bench import CUBE, RANK, SHAPES
from dq_kernels.formats import KERNEL_INT4_FORMATS, quantize_int4_format
from dq_kernels.int4 import pack_int4
from dq_kernels.int8 import quantize_int8_rowwise

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (python -P leaves it out)
from profile_attention_op import host_ms  # noqa: E402  (one host-time method for both probes)


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


def host_stages(x, packed, scales, smooth, down, up, bias, grid, cube, fmt) -> None:
    """The host time of dq::w4a4_linear's parts, each alone, and of its body called without the
    custom-op dispatch (`_init_fn`): where a host-bound call spends its time."""
    from dq_kernels.delta_quantize import delta_quantize
    from dq_kernels.expand_int4 import expand_int4, expand_int4_both
    from dq_kernels.linear_ops import w4a4_linear
    from dq_kernels.scaled_gemm import scaled_gemm

    args = (x, packed, scales, smooth, down, up, bias, 1, list(grid), cube, fmt)
    acts = delta_quantize(x, smooth, None, 1, tuple(grid), tuple(cube), fmt)
    w, w_scale = expand_int4(packed, scales)
    w16 = w.to(torch.bfloat16)
    stages = {
        "torch.ops.dq.w4a4_linear": lambda: torch.ops.dq.w4a4_linear(*args),
        "its body, no dispatch (_init_fn)": lambda: w4a4_linear._init_fn(*args),
        "delta_quantize": lambda: delta_quantize(x, smooth, None, 1, tuple(grid), tuple(cube), fmt),
        "expand_int4 (E4M3)": lambda: expand_int4(packed, scales),
        "expand_int4 (BF16)": lambda: expand_int4(packed, scales, torch.bfloat16),
        "expand_int4_both (E4M3 + BF16, one launch)": lambda: expand_int4_both(packed, scales),
        "scaled_gemm (delta only)": lambda: scaled_gemm(acts.delta, w, acts.scale, w_scale,
                                                        cube_of_row=acts.cube_of_row, row_token=acts.row_token,
                                                        bias=bias, out_dtype=x.dtype),
        "F.linear bf16 (the BF16 layer)": lambda: torch.nn.functional.linear(x, w16),
    }
    # The lent machine's host speed drifted 2x within one process (docs/performance.md, LTX-Video):
    # the stages are timed round-robin, 7 rounds, and each one's median is given with its ratio to
    # the BF16 layer's in the same rounds, which the drift moves much less.
    times = {name: [] for name in stages}
    for _ in range(7):
        for name, fn in stages.items():
            times[name].append(host_ms(fn))
    base = statistics.median(times["F.linear bf16 (the BF16 layer)"])
    for name, t in times.items():
        med = statistics.median(t)
        print(f"   host {med:7.3f} ms ({med / base:5.1f}x BF16; rounds {min(t):.3f}-{max(t):.3f})  {name}", flush=True)


def host_profile(fn, calls: int = 100, top: int = 22) -> None:
    """Host ms per call and launches per call, then cProfile's top functions by own time."""
    host = host_ms(fn)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    launches = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    print(f"   host {host:.3f} ms per call (queued behind GPU work), {launches} GPU kernels/memsets per call")
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls):
        fn()
    pr.disable()
    torch.cuda.synchronize()
    out = io.StringIO()
    pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(top)
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="wan-a14b-480p")
    ap.add_argument("--rank", type=int, default=RANK)
    ap.add_argument("--cube", default=",".join(map(str, CUBE)), help="t,h,w")
    ap.add_argument("--format", choices=KERNEL_INT4_FORMATS, default="int4_row", help="W4A4 weights and activations")
    ap.add_argument("--only", default=None, help="profile only this layer name")
    ap.add_argument("--no-w8a8", action="store_true")
    ap.add_argument("--host", action="store_true", help="also the host's time per call and its cProfile")
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
            if a.host:
                host_profile(fn)
                if name == "w4a4":
                    host_stages(x, packed, scales, smooth, down, up, bias, grid, cube, a.format)
        del x, w


if __name__ == "__main__":
    main()
