"""Time the pieces of the W4A4 path on the GPU at one Wan A14B shape, every GEMM config apart, to
choose the autotune list and see where the time goes (a development probe; `dq bench kernels`
is the user-facing measurement).

    python -P tools/kernel_probe.py --m 32760 --k 5120 --n 5120 [--sweep-quantizer]
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.testing

import dq_kernels.linear_ops  # noqa: F401
from dq_kernels.delta_quantize import delta_quantize
from dq_kernels.expand_int4 import expand_int4
from dq_kernels.int4 import pack_int4, quantize_int4
from dq_kernels.int8_quantize import quantize_int8_tokens
from dq_kernels.smoothing import inverse_smooth
from dq_kernels.scaled_gemm import _configs, _scaled_gemm_body


def t(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=32760)
    ap.add_argument("--k", type=int, default=5120)
    ap.add_argument("--n", type=int, default=5120)
    ap.add_argument("--sweep-quantizer", action="store_true",
                    help="also time delta_quantize at each columns-per-program × warps setting")
    a = ap.parse_args()
    m, k, n = a.m, a.k, a.n
    flop = 2 * m * n * k / 1e9
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    print(f"shape {m}x{k}->{n}")
    print(f"bf16 matmul {t(lambda: x @ w.T):.3f} ms  ({flop / t(lambda: x @ w.T):.0f} TFLOP/s)")
    smooth, down = torch.rand(k, device="cuda") + 0.5, torch.randn(32, k, device="cuda").bfloat16()
    up, bias = torch.randn(n, 32, device="cuda").bfloat16(), torch.randn(n, device="cuda").bfloat16()
    grid = (21, 30, 52) if m == 32760 else None
    cube = (4, 2, 8) if grid else None
    print(f"delta_quantize {t(lambda: delta_quantize(x, smooth, down, 1, grid, cube)):.3f} ms")
    print(f"delta_quantize without L2 {t(lambda: delta_quantize(x, smooth, None, 1, grid, cube)):.3f} ms")
    print(f"delta_quantize no cubes {t(lambda: delta_quantize(x, smooth, down, 1, None, None)):.3f} ms")
    factor = (down.float() * inverse_smooth(smooth)).bfloat16()
    print(f"low-rank input by cuBLAS {t(lambda: x @ factor.T):.3f} ms")
    print(f"int8 tokens {t(lambda: quantize_int8_tokens(x, smooth)):.3f} ms")
    codes, scales = quantize_int4(w.float(), 64, pow2_scales=True)
    packed = pack_int4(codes)
    print(f"w4a4 op total {t(lambda: torch.ops.dq.w4a4_linear(x, packed, scales, smooth, down, up, bias, 1, list(grid), list(cube))):.3f} ms" if grid else "")
    print(f"expand weights {t(lambda: expand_int4(packed, scales)):.3f} ms")
    acts = delta_quantize(x, smooth, down, 1, grid, cube)
    wq, ws = expand_int4(packed, scales)
    core = torch.zeros(acts.core.shape[0] if acts.core is not None else 1, n, device="cuda")
    c = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    a8 = torch.randint(-100, 100, (m, k), device="cuda", dtype=torch.int8)
    b8 = torch.randint(-100, 100, (n, k), device="cuda", dtype=torch.int8)
    off = dict(HAS_CORE=False, HAS_LORA=False, HAS_BIAS=False, ROW_MAP=False)
    variants = [("fp8 plain", off, (acts.delta, wq)),
                ("fp8 +core", dict(off, HAS_CORE=cube is not None), (acts.delta, wq)),
                ("fp8 +lora", dict(off, HAS_LORA=True), (acts.delta, wq)),
                ("fp8 +rowmap", dict(off, ROW_MAP=cube is not None), (acts.delta, wq)),
                ("fp8 full unfused", dict(HAS_CORE=cube is not None, HAS_LORA=True, HAS_BIAS=True,
                                          ROW_MAP=cube is not None), (acts.delta, wq)),
                ("fp8 full", dict(HAS_CORE=cube is not None, HAS_LORA=True, HAS_BIAS=True, ROW_MAP=cube is not None,
                                  FUSE=cube is not None), (acts.delta, wq)),
                ("fp8 full pf", dict(HAS_CORE=cube is not None, HAS_LORA=True, HAS_BIAS=True, ROW_MAP=cube is not None,
                                     FUSE=cube is not None, PREFETCH=True), (acts.delta, wq)),
                ("int8 plain", off, (a8, b8))]
    for i, cfg in enumerate(_configs()[::2][:3]):
        kw = dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        kw.pop("PREFETCH", None)
        g = (triton.cdiv(m, kw["BLOCK_M"]) * triton.cdiv(n, kw["BLOCK_N"]),)
        for label, extra, (aa, bb) in (variants if i == 0 else variants[4:-1]):
            def run():
                _scaled_gemm_body[g](aa, bb, c, acts.scale, ws, core, acts.cube_of_row if cube else acts.scale,
                                     acts.row_token if cube else acts.scale, acts.down, up, bias, m, n, k, k, k, n,
                                     HAS_A_SCALE=True, NC=16, R=32, IEEE_DOTS=False,
                                     ACC_INT=aa.dtype == torch.int8, PROMOTE=False, **extra, **kw)
            try:
                ms = t(run)
                print(f"{label:12s} {kw} {ms:.3f} ms {flop / ms:.0f} TFLOP/s", flush=True)
            except Exception as e:  # a config that does not fit (shared memory, registers)
                print(f"{label:12s} {kw} failed: {type(e).__name__}: {str(e)[:80]}", flush=True)
    if a.sweep_quantizer:
        sweep_quantizer(x, smooth, grid, cube)


def sweep_quantizer(x, smooth, grid, cube) -> None:
    import dq_kernels.delta_quantize as dq

    saved = dq.SPLIT_K, dq.NUM_WARPS, dq.MIN_PROGRAMS
    dq.MIN_PROGRAMS = 0  # time each split as set, not as the adaptive rule would change it
    for split_k in (1024, 2048, 4096):
        for warps in (1, 2, 4):
            dq.SPLIT_K, dq.NUM_WARPS = split_k, warps
            ms = t(lambda: delta_quantize(x, smooth, None, 1, grid, cube))
            print(f"delta_quantize split {split_k} warps {warps}: {ms:.3f} ms", flush=True)
    dq.SPLIT_K, dq.NUM_WARPS, dq.MIN_PROGRAMS = saved


if __name__ == "__main__":
    main()
