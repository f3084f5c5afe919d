"""Compile the W4A4 GEMM (`dq_kernels.scaled_gemm._scaled_gemm_body`) for Hopper (sm_90a) without a
GPU and report, per tile config and epilogue, the registers, spills (stack bytes) and shared memory —
a rank-128 epilogue that spills shows here before it costs a GPU run.

    python -P tools/gemm_sass.py                       # both epilogues, rank 32 and 128
    python -P tools/gemm_sass.py --ranks 128 --epilogues split
    python -P tools/gemm_sass.py --ranks 128 --epilogues split --tma --persistent --tiles probe
    python -P tools/gemm_sass.py --int8 --epilogues none --tma --tiles probe   # the W8A8 GEMM

--tma compiles the K loop on tensor descriptors (the default launch since 2026-12-01), --persistent
the opt-in persistent launch (DQ_GEMM_PERSISTENT), --tiles probe the candidates of
tools/probe_gemm_tiles.py instead of the autotune list.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile the real kernel, not the interpreter's

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (python -P leaves it out)
from repo_kernels import import_dq_kernels  # noqa: E402

import_dq_kernels()

from dq_kernels.scaled_gemm import _configs, _scaled_gemm_body  # noqa: E402

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
POINTERS = dict(a_ptr="*fp8e4nv", b_ptr="*fp8e4nv", c_ptr="*bf16", a_scale_ptr="*fp32", b_scale_ptr="*fp32",
                core_ptr="*fp32", cube_of_row_ptr="*i32", row_token_ptr="*i32", down_ptr="*bf16", up_ptr="*bf16",
                bias_ptr="*bf16")
INTS = ("M", "N", "K", "stride_am", "stride_bn", "stride_cm")


def compile_one(config: triton.Config, epilogue: str, rank: int, int8: bool = False, tma: bool = False,
                persistent: bool = False):
    extras = epilogue != "none"
    const = dict(HAS_A_SCALE=True, HAS_CORE=extras, ROW_MAP=extras, HAS_LORA=extras, HAS_BIAS=extras,
                 R=rank, IEEE_DOTS=False, ACC_INT=int8, PROMOTE=False, FUSE=epilogue == "joined",
                 SPLIT=epilogue == "split", NC=rank // 2 if epilogue == "joined" else 16, RC=min(32, rank),
                 TMA=tma, PERSISTENT=persistent, NUM_SMS=132, **config.kwargs)
    dtype = "i8" if int8 else "fp8e4nv"
    operands = dict(a_ptr=f"*{dtype}", b_ptr=f"*{dtype}")
    if tma:  # host-side tensor descriptors with the config's tile shapes
        bm, bn, bk = (config.kwargs[key] for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
        operands = dict(a_ptr=f"tensordesc<{dtype}[{bm}, {bk}]>", b_ptr=f"tensordesc<{dtype}[{bn}, {bk}]>")
    pointers = dict(POINTERS, **operands)
    sig = dict(pointers, **{name: "i32" for name in INTS}, **{k: "constexpr" for k in const})
    # What the launcher would specialize at Wan shapes: 16-byte aligned pointers, K and strides
    # multiples of 16 (M = 32,760 is not); without it the loads would not vectorize.
    aligned = [name for name, ty in pointers.items() if not ty.startswith("tensordesc")]
    aligned += ["K", "N", "stride_am", "stride_bn", "stride_cm"]
    attrs = {(_scaled_gemm_body.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    src = ASTSource(fn=_scaled_gemm_body, signature=sig, constexprs=const, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=config.num_warps, num_stages=config.num_stages,
                                       **({"maxnreg": config.maxnreg} if config.maxnreg else {})))


def usage(kernel) -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        text = subprocess.run([BIN / "cuobjdump", "--dump-resource-usage", cubin], capture_output=True,
                              text=True).stdout
    return re.search(r"REG:(\d+)", text).group(1), re.search(r"STACK:(\d+)", text).group(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", default="32,128")
    p.add_argument("--epilogues", default="joined,split", help="joined, split, or none (the bare GEMM)")
    p.add_argument("--int8", action="store_true", help="INT8 operands (the W8A8 GEMM) instead of E4M3")
    p.add_argument("--tma", action="store_true", help="A and B through tensor descriptors")
    p.add_argument("--persistent", action="store_true", help="the persistent launch (implies nothing about --tma)")
    p.add_argument("--tiles", choices=("autotune", "probe", "occupancy"), default="autotune",
                   help="the autotune list, or the candidates of tools/probe_gemm_tiles.py (TILES or OCCUPANCY_TILES)")
    args = p.parse_args()
    configs = _configs()
    if args.tiles != "autotune":
        from probe_gemm_tiles import OCCUPANCY_TILES, TILES, tile_config

        configs = [tile_config(*tile) for tile in (TILES if args.tiles == "probe" else OCCUPANCY_TILES)]
    print(f"{'epilogue':>8} {'rank':>4} {'tile':>14} {'warps':>5} {'stages':>6} {'pf':>3} {'cap':>4} {'regs':>5} {'stack':>6} "
          f"{'smem KB':>7}  wgmma shapes")
    for epilogue in args.epilogues.split(","):
        for rank in (int(r) for r in args.ranks.split(",")):
            for c in configs:
                if epilogue == "split" and c.kwargs.get("PREFETCH"):
                    continue  # the split epilogue loads after the K loop
                tile = f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}x{c.kwargs['BLOCK_K']}"
                try:
                    k = compile_one(c, epilogue, rank, args.int8, args.tma, args.persistent)
                    regs, stack = usage(k)
                    smem = f"{k.metadata.shared / 1024:.1f}"
                    shapes = " ".join(sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)",
                                                            k.asm["ptx"]))))
                except Exception as e:  # noqa: BLE001 — out of shared memory, say so and go on
                    regs, stack, smem, shapes = "-", "-", type(e).__name__, ""
                print(f"{epilogue:>8} {rank:>4} {tile:>14} {c.num_warps:>5} {c.num_stages:>6} "
                      f"{int(bool(c.kwargs.get('PREFETCH'))):>3} {c.maxnreg or '-':>4} {regs:>5} {stack:>6} {smem:>7}  {shapes}", flush=True)


if __name__ == "__main__":
    main()
