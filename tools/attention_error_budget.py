"""Where the 8-bit attention's error comes from on zero-mean random inputs (the worst case for FP8
P·V: flat attention averages many independent roundings): the reference numerics against float64
attention, and each FP8 rounding alone — V in E4M3 per channel (around its mean), P in E4M3 against
the row's maximum — over a growing number of keys. `--kernel` adds the Triton kernel (on CUDA, or
on the CPU under TRITON_INTERPRET=1) against the reference and against float64, with the kernel's
default tile (128 queries × 64 keys, quantization blocks of 128).

    python -P tools/attention_error_budget.py [--queries 512] [--keys 2048 8192 32768] [--kernel]
"""

from __future__ import annotations

import argparse
import math

import torch

import dq_kernels.sage_attention as sa
from dq_kernels.sage_quant import sage_quantize_reference


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).norm() / b.norm()).item()


def budget(queries: int, keys: int, d: int = 128, seed: int = 0, kernel: bool = False) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 1, n, d, generator=g) for n in (queries, keys, keys))
    exact = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
    kernel_errors = _kernel_errors(q, k, v, exact) if kernel else {}
    z = sage_quantize_reference(q, k, v, 1 / math.sqrt(d), sa.QUANT_BLOCK)
    v_fp8 = (z.v8t.float().transpose(1, 2)[:, :keys] * z.vs[:, None, :] + z.v_offset[:, None, :]).reshape(v.shape)
    s = q.double() @ k.double().transpose(-1, -2) / math.sqrt(d)
    p = torch.exp(s - s.amax(-1, keepdim=True)) * 448.0
    p_fp8 = p.float().to(torch.float8_e4m3fn).double()
    return {
        "reference": rel(sa.sage_attention_reference(q, k, v), exact),
        "V in FP8 alone": rel(torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(),
                                                                                v_fp8.double()), exact),
        "P in FP8 alone": rel(p_fp8 @ v.double() / p.sum(-1, keepdim=True), exact),
    } | kernel_errors


def _kernel_errors(q, k, v, exact) -> dict[str, float]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tile = sa.DEFAULT_CONFIG["BLOCK_N"]
    out = sa.sage_attention_triton(q.to(device), k.to(device), v.to(device), config=sa.DEFAULT_CONFIG,
                                   quant_block=sa.QUANT_BLOCK).cpu()
    ref = sa.sage_attention_reference(q, k, v, quant_block=sa.QUANT_BLOCK, block_n=tile)
    return {"kernel vs reference": rel(out, ref.double()), "kernel": rel(out, exact)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=512)
    ap.add_argument("--keys", type=int, nargs="+", default=[2048, 8192, 32768])
    ap.add_argument("--kernel", action="store_true", help="also the Triton kernel (CUDA, or TRITON_INTERPRET=1)")
    args = ap.parse_args()
    for keys in args.keys:
        parts = budget(args.queries, keys, kernel=args.kernel)
        print(f"{keys} keys: " + ", ".join(f"{name} {err:.4f}" for name, err in parts.items()), flush=True)


if __name__ == "__main__":
    main()
