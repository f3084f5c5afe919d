"""What each part of the W4A4 GEMM's epilogue costs at Wan A14B 480p (a development probe; `dq bench
kernels` is the user-facing measurement): the delta GEMM bare, then with the row scatter, the bias,
the core term, the rank-128 low-rank branch (its input in bf16, as `dq::w4a4_linear` passed it until the
seventh session, and in fp32, as it does now), all of them (`--all-only`: that case alone; ranks per MMA of the split
epilogue: tools/probe_core_gemm.py); a bare GEMM over a longer K (the cost of carrying the
low-rank branch as extra K columns instead); cuBLAS FP8 for scale; and the whole op.

    python -P tools/probe_epilogue_parts.py
"""

from __future__ import annotations

import torch
import triton.testing

import dq_kernels.linear_ops  # noqa: F401  (registers torch.ops.dq)
import dq_kernels.scaled_gemm as sg
from dq_kernels.delta_quantize import delta_quantize
from dq_kernels.expand_int4 import expand_int4
from dq_kernels.formats import pack_weight


def t(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


def best_config(key_part: str) -> str:
    return "; ".join(f"{c}" for k, c in sg.scaled_gemm_kernel.cache.items() if key_part in str(k))


def wan_linear_inputs(m: int, k: int, n: int, rank: int):
    """Random inputs of one Wan-shaped W4A4 linear on CUDA: x [m, k] bf16, smoothing λ, the stored
    int4_row weight and its expansion (wq, ws), the low-rank factors (up, down_w) and the bias."""
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda") / k**0.5
    smooth = torch.rand(k, device="cuda") + 0.5
    stored = pack_weight(w * smooth, "int4_row", 64)
    wq, ws = expand_int4(stored["qweight"], stored["scales"])
    up = (torch.randn(n, rank, device="cuda") / rank**0.5).bfloat16()
    down_w = (torch.randn(rank, k, device="cuda") / k**0.5).bfloat16()
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    return x, smooth, stored, wq, ws, up, down_w, bias


def main() -> None:
    m, grid, rank = 32760, (21, 30, 52), 128
    import sys
    only_all = "--all-only" in sys.argv  # only the whole epilogue (and its variants) and the op
    for k, n in ((5120, 5120), (5120, 13824), (13824, 5120)):
        x, smooth, stored, wq, ws, up, down_w, bias = wan_linear_inputs(m, k, n, rank)
        a_fp8 = torch.randn(m, k, device="cuda").to(torch.float8_e4m3fn)
        sa = torch.rand(m, 1, device="cuda")
        fp8 = t(lambda: torch._scaled_mm(a_fp8, wq.T, scale_a=sa, scale_b=ws[None, :], out_dtype=torch.bfloat16))
        print(f"== {m}x{k}->{n}: cuBLAS FP8 rowwise {fp8:.3f} ms", flush=True)
        for cube in ((4, 1, 4), (4, 2, 8)):
            acts = delta_quantize(x, smooth, down_w, 1, grid, cube, "int4_row")
            core = torch.randn(acts.core.shape[0], n, device="cuda")
            d32 = acts.down
            d16 = acts.down.bfloat16()
            g = dict(cube_of_row=acts.cube_of_row)
            cases = {
                "bare": dict(),
                "rowmap": dict(row_token=acts.row_token),
                "bias": dict(bias=bias),
                "core": dict(core=core, **g),
                "lora bf16": dict(down=d16, up=up),
                "lora fp32": dict(down=d32, up=up),
                "all, down bf16": dict(core=core, row_token=acts.row_token, down=d16, up=up, bias=bias, **g),
                "all, down fp32": dict(core=core, row_token=acts.row_token, down=d32, up=up, bias=bias, **g),
            }
            if only_all:
                cases = {"all, down fp32": cases["all, down fp32"]}
            elif cube == (4, 2, 8):
                cases = {c: cases[c] for c in ("core", "all, down bf16")}
            for name, kw in cases.items():
                ms = t(lambda: sg.scaled_gemm(acts.delta, wq, acts.scale, ws, **kw))
                print(f"cube {cube} {name:16s} {ms:.3f} ms", flush=True)
            args = (x, stored["qweight"], stored["scales"], smooth, down_w, up, bias, 1, list(grid), list(cube), "int4_row")
            print(f"cube {cube} whole op         {t(lambda: torch.ops.dq.w4a4_linear(*args)):.3f} ms", flush=True)
        for extra in (() if only_all else (384, 768)):
            a2 = torch.zeros(m, k + extra, device="cuda").to(torch.float8_e4m3fn)
            b2 = torch.zeros(n, k + extra, device="cuda").to(torch.float8_e4m3fn)
            ms = t(lambda: sg.scaled_gemm(a2, b2, acts.scale, ws))
            print(f"bare K+{extra}: {ms:.3f} ms", flush=True)
        c16 = t(lambda: d16 @ up.T)
        c32 = t(lambda: torch.mm(d16, up.T, out_dtype=torch.float32))
        print(f"cuBLAS low-rank term alone: bf16 out {c16:.3f} ms, fp32 out {c32:.3f} ms", flush=True)
        print(f"configs N={n} K={k}: {best_config(str(n))}", flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
