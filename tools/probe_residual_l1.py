"""Time 6Bit's per-block residual statistics (Γ, TDC's Δ and its change) at Wan A14B 480p: the torch
reference (a subtraction and fp32 copies) against dq_kernels.residual_l1's one pass, with and
without a cached Δ; checks that Δ is bit-identical. `python -P tools/probe_residual_l1.py` on a GPU."""

from __future__ import annotations

import argparse

import torch
import triton.testing

from dq_kernels.residual_l1 import residual_l1, residual_l1_reference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=32_760)
    ap.add_argument("--dim", type=int, default=5_120)
    args = ap.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    shape = (1, args.tokens, args.dim)
    out, inp, cached = (torch.randn(shape, generator=gen, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    gib = out.numel() * out.element_size() / 2**30
    for label, c in (("no cache", None), ("cached Δ", cached)):
        d_ref, s_ref = residual_l1_reference(out, inp, c)
        d, s = residual_l1(out, inp, c)
        exact = torch.equal(d, d_ref)
        rel = ((s - s_ref).abs() / s_ref.abs().clamp_min(1e-30)).max().item()
        t_ref = triton.testing.do_bench(lambda: residual_l1_reference(out, inp, c), warmup=5, rep=50)
        t = triton.testing.do_bench(lambda: residual_l1(out, inp, c), warmup=5, rep=50)
        moved = gib * (4 if c is not None else 3)  # reads and the Δ written, in GiB
        print(f"{label:9s} {shape}: torch {t_ref:.3f} ms, kernel {t:.3f} ms ({moved / (t / 1e3):.0f} GiB/s), "
              f"Δ exact {exact}, sums max rel diff {rel:.1e}")


if __name__ == "__main__":
    main()
