"""Where the 8-bit attention's error against BF16 SDPA comes from at a bench shape (`tools/bench_attention.py`'s
inputs, seed 7): every candidate against float64 attention, on the first `--queries` queries of the first
`--heads` heads (all keys), so that float64 stays cheap at 32k-75k keys:
- sdpa-bf16:   what the bench takes as the truth
- kernel:      `sage_attention_triton` autotuned, and each of the bench's variants, and the interpreter's tile
- reference:   `sage_attention_reference` (plain torch on the same device) on the kernel's own pre-pass
               output and on the reference pre-pass, with key tiles of 64 and 128
and the kernel against the reference on the same quantized inputs (what only the GPU can add).

    python -P tools/attention_error_at_shape.py --shapes wan480 wan720 [--heads 2] [--queries 512]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (python -P leaves it out)
import bench_attention  # noqa: E402
from bench_attention import SHAPES, VARIANTS, make_inputs  # noqa: E402

import dq_kernels.sage_attention as sa  # noqa: E402
from dq_kernels.sage_quant import SageInputs, sage_quantize, sage_quantize_reference  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).norm() / b.norm()).item()


def exact_attention(q, k, v, scale: float) -> torch.Tensor:
    out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
    for h in range(q.shape[1]):  # one head at a time: [Sq, Sk] in float64
        s = (q[0, h].double() @ k[0, h].double().T) * scale
        out[0, h] = torch.softmax(s, dim=-1) @ v[0, h].double()
    return out


def head_slice(z: SageInputs, heads: int, queries: int) -> SageInputs:
    """The pre-pass output of the first `heads` heads (batch 1) and query blocks."""
    qb = z.quant_block
    return z._replace(q8=z.q8[:heads, :queries], qs=z.qs[:heads, :queries // qb], k8=z.k8[:heads], ks=z.ks[:heads],
                      v8t=z.v8t[:heads], vs=z.vs[:heads], v_offset=z.v_offset[:heads], s_q=queries)


def report(name: str, shape, heads: int, queries: int, kinds) -> None:
    b, h, s, d = shape
    scale = 1.0 / math.sqrt(d)
    for kind, bias in kinds:
        q, k, v = make_inputs(shape, seed=7, bias=bias)
        sub = (slice(None), slice(0, heads))
        qs_, ks_, vs_ = q[sub][:, :, :queries], k[sub], v[sub]
        exact = exact_attention(qs_, ks_, vs_, scale)
        rows = {"sdpa-bf16 (whole shape)": torch.nn.functional.scaled_dot_product_attention(q, k, v)[sub][:, :, :queries]}
        for variant, kw in VARIANTS.items():
            rows[f"kernel {variant} (whole shape)"] = sa.sage_attention_triton(q, k, v, scale, **kw)[sub][:, :, :queries]
        rows["kernel default tile"] = sa.sage_attention_triton(qs_, ks_, vs_, scale, config=sa.DEFAULT_CONFIG)
        z_gpu = head_slice(sage_quantize(q, k, v, scale), heads, queries)
        z_ref = sage_quantize_reference(qs_, ks_, vs_, scale)
        for bn in (64, 128):
            rows[f"reference bn{bn}, kernel's pre-pass"] = sa.sage_attention_reference(
                qs_, ks_, vs_, scale, block_n=bn, quantized=z_gpu)
            rows[f"reference bn{bn}, reference pre-pass"] = sa.sage_attention_reference(
                qs_, ks_, vs_, scale, block_n=bn, quantized=z_ref)
        codes_differ = {f: (getattr(z_gpu, f).float() != getattr(z_ref, f).float()).float().mean().item()
                        for f in ("q8", "k8", "v8t")}
        scales_differ = {f: rel(getattr(z_gpu, f), getattr(z_ref, f).double()) for f in ("qs", "ks", "vs", "v_offset")}
        print(f"== {name} {kind}: heads 0-{heads - 1}, queries 0-{queries - 1}, {s} keys; |out| rms "
              f"{exact.pow(2).mean().sqrt().item():.4g}", flush=True)
        print(f"   pre-pass codes differing (kernel vs reference): {codes_differ}; scales rel. diff {scales_differ}")
        for label, out in rows.items():
            print(f"   {label:42s} vs float64 {rel(out, exact):.4f}   vs sdpa-bf16 "
                  f"{rel(out, rows['sdpa-bf16 (whole shape)'].double()):.4f}", flush=True)
        ref = rows["reference bn64, kernel's pre-pass"].double()
        print(f"   kernel default tile vs reference bn64 on the same pre-pass: {rel(rows['kernel default tile'], ref):.4f}")
        del q, k, v
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["wan480"], choices=sorted(SHAPES))
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--queries", type=int, default=512, help="a multiple of 128 (the Q quantization block)")
    ap.add_argument("--tokens", type=int, help="override the shape's token count (a CPU smoke run)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        bench_attention.DEVICE = "cpu"  # TRITON_INTERPRET=1 smoke runs
    for name in args.shapes:
        b, h, s, d = SHAPES[name]
        report(name, (b, h, args.tokens or s, d), args.heads, args.queries, (("randn", 0.0), ("biased", 1.0)))


if __name__ == "__main__":
    main()
