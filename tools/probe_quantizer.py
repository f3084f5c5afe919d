"""The DeltaQuant quantizer's step width and warps at Wan A14B 480p (a development probe for
`dq_kernels.delta_quantize`): `int4_row` codes do not depend on how many columns a program loads per
step, so wider steps only change how many bytes each one-warp program keeps in flight.

    python -P tools/probe_quantizer.py
"""

from __future__ import annotations

import torch
import triton.testing

import dq_kernels.delta_quantize as dqz


def main() -> None:
    m, grid = 32760, (21, 30, 52)
    for k in (5120, 13824):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        smooth = torch.rand(k, device="cuda") + 0.5
        floor = 2 * x.numel() * 2 + x.numel()  # X read twice (bf16), the E4M3 deltas written once
        for cube in ((4, 1, 4), (4, 2, 8)):
            for chunk in (64, 128, 256):
                for warps in (1, 2, 4):
                    dqz.ROW_CHUNK_K, dqz.NUM_WARPS = chunk, warps  # a fixed width overrides ROW_STEP_ELEMENTS
                    ms = triton.testing.do_bench(lambda: dqz.delta_quantize(x, smooth, None, 1, grid, cube, "int4_row"),
                                                 warmup=5, rep=30, return_mode="median")
                    print(f"{m}x{k} cube {cube} {chunk} columns per step, {warps} warps: {ms:.3f} ms "
                          f"({floor / ms / 1e6:.0f} GB/s of the two-pass traffic)", flush=True)


if __name__ == "__main__":
    main()
