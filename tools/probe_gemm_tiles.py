"""Time `scaled_gemm` (the W4A4 and W8A8 GEMM with its epilogue) at one Wan A14B shape for each
candidate tile, with A and B loaded through TMA descriptors and through pointers, and persistent
(one program an SM, DQ_GEMM_PERSISTENT) with TMA, to choose the autotune list
(`dq_kernels.scaled_gemm._tiles`) and whether persistence wins. Each tile runs alone: the autotuner is handed one
config at a time, so the launch is the library's own (rank padding, descriptors, pre-hook).

    python -P tools/probe_gemm_tiles.py [--m 32760 --k 5120 --n 5120 --rank 128]   # CUDA
    python -P tools/probe_gemm_tiles.py --tiles occupancy --modes TMA   # two CTAs an SM (below)
    TRITON_INTERPRET=1 python -P tools/probe_gemm_tiles.py --check   # CPU: small shapes, each tile
                                                                    # against the reference
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (python -P leaves it out)
from repo_kernels import import_dq_kernels  # noqa: E402

import_dq_kernels()
import triton  # noqa: E402

import dq_kernels.scaled_gemm as sg  # noqa: E402
from dq_kernels.bf16_terms import mm_fp32  # noqa: E402
from dq_kernels.delta_quantize import delta_quantize  # noqa: E402
from dq_kernels.expand_int4 import expand_int4_both  # noqa: E402
from dq_kernels.fp8_quantize import fp8_group_carriers  # noqa: E402
from dq_kernels.int4 import pack_int4, quantize_int4  # noqa: E402
from dq_kernels.int8_quantize import quantize_int8_tokens  # noqa: E402

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages): the autotune list's tiles and their neighbours
TILES = [(128, 256, 128, 8, 4), (256, 128, 128, 8, 3), (128, 128, 128, 8, 4), (256, 128, 64, 8, 4),
         (128, 256, 64, 8, 5), (256, 128, 64, 8, 5), (128, 128, 128, 4, 5), (128, 256, 128, 8, 3)]
# Tiles that let two CTAs share an SM, so that one's epilogue can run under the other's K loop (what
# lifted the 8-bit attention from two CTAs an SM to three). The tiles above take one CTA an SM: 128x256
# accumulators over 8 warps, or 128-160 KB of shared memory. Compiled for sm_90a (tools/gemm_sass.py
# --tiles occupancy): W4A4 with the rank-128 split epilogue takes 255 registers at 4 warps (no spill:
# 2 x 128 threads x 256 fit the SM's 64K) and 157 at 8 warps, capped at 128 (a 6th field, maxnreg) for
# two CTAs at 24 bytes of spill; the bare INT8 GEMM takes 110 at 8 warps and 165 at 4. Shared memory:
# 32 KB a stage at BLOCK_K 128, 16 at 64. Timed on an H200 (docs/measurements/gemm_occupancy_tiles_h200.log):
# W4A4 is not faster on any of them; the W8A8 GEMM alone is 1-6% faster, which did not show in a block's
# linears or end to end (w8a8_occupancy_tiles_h200.log), so the autotune list does not take them.
# (tools/probe_gemm_occupancy.py asked the same of W4A4 with capped 8-warp tiles in the ninth session.)
OCCUPANCY_TILES = [(128, 128, 128, 4, 3), (128, 128, 64, 4, 4), (128, 128, 64, 4, 5), (128, 128, 128, 8, 3),
                   (128, 128, 64, 8, 4), (128, 128, 128, 8, 3, 128), (128, 128, 64, 8, 4, 128)]
CHECK_TILES = [(32, 32, 64, 4, 2), (64, 32, 32, 4, 2)]


def workloads(m: int, k: int, n: int, rank: int, device: str) -> dict:
    """The GEMM's arguments as the W4A4 op (int4_row, 4x2x8 cubes, rank `rank`) and the W8A8 op hand
    them over, from random BF16 activations and weights."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g).to(device, torch.bfloat16)
    w = torch.randn(n, k, generator=g).to(device)
    bias = torch.randn(n, generator=g).to(device, torch.bfloat16)
    grid = next(((t, h, m // (t * h)) for t, h in ((21, 30), (4, 4), (2, 4)) if m % (t * h) == 0), None)
    codes, scales = quantize_int4(w, k, reciprocal=True)  # one scale per row: int4_row
    packed = pack_int4(codes)
    acts = delta_quantize(x, None, None, 1, grid, (4, 2, 8) if grid else None, "int4_row")
    wq, w16, w_scale = expand_int4_both(packed, scales)
    core = mm_fp32(fp8_group_carriers(acts.core, 64), w16) if acts.core is not None else None
    up = (torch.randn(n, rank, generator=g) / 8).to(device, torch.bfloat16)
    down = torch.randn(m, rank, generator=g).to(device)
    q, s = quantize_int8_tokens(x)
    w8 = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8).to(device)
    ws8 = (torch.rand(n, generator=g) / 64).to(device)
    return {
        "w4a4": ((acts.delta, wq, acts.scale, w_scale),
                 dict(core=core, cube_of_row=acts.cube_of_row, row_token=acts.row_token, down=down, up=up,
                      bias=bias)),
        "w8a8": ((q, w8, s, ws8), dict(bias=bias)),
    }


def tile_config(bm, bn, bk, warps, stages, maxnreg=None) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=warps,
                         num_stages=stages, maxnreg=maxnreg, pre_hook=sg._set_block_shapes)


# (label, TMA loads, persistent)
MODES = [("TMA", True, False), ("TMA persistent", True, True), ("ptr", False, False)]


def run_tile(tile, tma: bool, persistent: bool, args, kwargs, out_dtype=torch.bfloat16) -> torch.Tensor:
    sg.GEMM_TMA, sg.GEMM_PERSISTENT = tma, persistent
    tuner = sg.scaled_gemm_kernel
    tuner.configs, tuner.cache = [tile_config(*tile)], {}
    return sg.scaled_gemm(*args, **kwargs, out_dtype=out_dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=32760)
    ap.add_argument("--k", type=int, default=5120)
    ap.add_argument("--n", type=int, default=5120)
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--tiles", choices=("probe", "occupancy"), default="probe",
                    help="the autotune list's neighbours (TILES) or the two-CTAs-an-SM tiles (OCCUPANCY_TILES)")
    ap.add_argument("--modes", default=",".join(label for label, *_ in MODES),
                    help="which of the loads / launches to time, comma-separated")
    ap.add_argument("--only", choices=("w4a4", "w8a8"), help="one of the two GEMMs")
    ap.add_argument("--check", action="store_true", help="CPU interpreter: small shapes, results only")
    a = ap.parse_args()
    if a.check:
        check()
        return
    from triton.testing import do_bench

    m, k, n = a.m, a.k, a.n
    tflop = 2 * m * n * k / 1e9
    tiles = OCCUPANCY_TILES if a.tiles == "occupancy" else TILES
    modes = [mode for mode in MODES if mode[0] in a.modes.split(",")]
    for name, (args, kwargs) in workloads(m, k, n, a.rank, "cuda").items():
        if a.only and name != a.only:
            continue
        for tile in tiles:
            cells = []
            for label, tma, persistent in modes:
                try:
                    ms = do_bench(lambda: run_tile(tile, tma, persistent, args, kwargs), warmup=10, rep=40,
                                  return_mode="median")
                    cells.append(f"{label} {ms:.3f} ms ({tflop / ms:.0f} TFLOP/s)")
                except Exception as e:  # noqa: BLE001 - a tile that does not fit (shared memory, registers)
                    cells.append(f"{label} failed: {type(e).__name__}: {str(e)[:60]}")
            print(f"{name} {m}x{k}->{n} tile {tile}: " + ", ".join(cells), flush=True)


def check() -> None:
    """Every check tile, both loads, against the float64 reference (the tool's wiring, not speed)."""
    m, k, n = 64, 128, 48
    for name, (args, kwargs) in workloads(m, k, n, 8, "cpu").items():
        ref = sg.scaled_gemm_reference(*args, **kwargs, out_dtype=torch.float32)
        for tile in CHECK_TILES:
            for label, tma, persistent in MODES:
                start = time.perf_counter()
                got = run_tile(tile, tma, persistent, args, kwargs, out_dtype=torch.float32)
                err = ((got - ref).abs().max() / ref.abs().max()).item()
                print(f"{name} tile {tile} {label}: max rel. diff {err:.1e} ({time.perf_counter() - start:.1f} s)")
                assert err < 1e-3, (name, tile, label, err)


if __name__ == "__main__":
    main()
