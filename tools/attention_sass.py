"""Compile the 8-bit attention kernel for Hopper (sm_90a) without a GPU and report what the
compiler made of each tile config: registers, spills (stack bytes), shared memory, and the counts
of the instructions that matter (IGMMA/QGMMA tensor-core ops, MUFU.EX2, conversions, local-memory
traffic). Uses the ptxas/cuobjdump/nvdisasm that ship inside the triton wheel.

    python -P tools/attention_sass.py                      # the autotune configs, D = 128 and 64
    python -P tools/attention_sass.py --variant all        # each kernel variant of bench_attention.py
    python -P tools/attention_sass.py --dump /tmp/sass     # also write PTX and SASS per config
    python -P tools/attention_sass.py --check-caps         # the register-capped configs: ptxas's own
                                                           # registers and spill bytes, one JSON line each;
                                                           # exit 1 if any spills (tests/test_attention.py)

Besides the counts: `cvt` is the number of ttg.convert_layout ops left in the TTGIR (each one may
move a tile through shared memory), `DEPBAR` the WARPGROUP.DEPBAR (wgmma waits) in the SASS, and
`serial` says whether ptxas serialized the wgmmas (its C7514 note: a wait after every wgmma, so
none overlaps anything — what reading an accumulator before its wait costs).
"""

from __future__ import annotations

import argparse
import json
import sys
import os
import re
import subprocess
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile the real kernel, not the interpreter's

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import mangle_type  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402


sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (python -P leaves it out)
from bench_attention import VARIANTS  # noqa: E402  (it imports dq_kernels)

from dq_kernels.sage_attention import (AUTOTUNE_CONFIGS, HEAD_DIMS, QUANT_BLOCK, _sage8_attn_fwd,  # noqa: E402
                                      prune_configs)

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
SASS_OPS = ("IGMMA", "QGMMA", "HGMMA", "WARPGROUP.DEPBAR", "MUFU.EX2", "I2F", "F2FP", "FFMA", "FMUL", "FADD",
            "VIADD", "LDL", "STL", "UTMALDG")
# sage_attention_triton's keyword → the kernel's constexpr
SWITCHES = dict(pv_acc="PV_ACC", fast_i2f="FAST_I2F")


def desc(dtype, block):
    return mangle_type(TensorDescriptor.from_tensor(torch.empty(256, 256, dtype=dtype), block))


def compile_one(bm, bn, warps, stages, d, maxnreg=None, **switches):
    sig = dict(desc_q=desc(torch.int8, [bm, d]), QS="*fp32", desc_k=desc(torch.int8, [bn, d]), KS="*fp32",
               desc_v=desc(torch.float8_e4m3fn, [d, bn]), VS="*fp32", VOFF="*fp32", Out="*bf16",
               so_b="i32", so_h="i32", so_s="i32", so_d="i32", H="i32", S_Q="i32", S_K="i32", SQ_PAD="i32",
               SK_PAD="i32", SK_BUCKET="i32")
    const = dict(HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, QUANT_BLOCK=QUANT_BLOCK, FAST_I2F=True, PV_ACC=0,
                 INTERPRET=False)
    const.update({SWITCHES[k]: v for k, v in switches.items()})
    sig.update({k: "constexpr" for k in const})
    src = ASTSource(fn=_sage8_attn_fwd, signature=sig, constexprs=const)
    options = dict(num_warps=warps, num_stages=stages)
    if maxnreg:
        options["maxnreg"] = maxnreg
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def ptxas_verbose(ptx: str) -> str:
    """ptxas -v's report on the PTX (Triton's own ptxas call keeps it quiet)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.ptx").write_text(ptx)
        out = subprocess.run([BIN / "ptxas", "-arch=sm_90a", "-v", "k.ptx", "-o", "k.cubin"], cwd=tmp,
                             capture_output=True, text=True)
    return out.stdout + out.stderr


def ptxas_serialized(ptx: str) -> bool:
    """Whether ptxas serializes the wgmmas (note C7514)."""
    return "C7514" in ptxas_verbose(ptx)


def check_caps() -> int:
    """Compile every register-capped autotune config for the head dims it is kept for; 1 if any spills."""
    failed = 0
    for d in HEAD_DIMS:
        for c in prune_configs(AUTOTUNE_CONFIGS, {}, HEAD_DIM=d):
            if not c.maxnreg:
                continue
            bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
            text = ptxas_verbose(compile_one(bm, bn, c.num_warps, c.num_stages, d, c.maxnreg).asm["ptx"])
            regs = int(re.search(r"Used (\d+) registers", text).group(1))
            spill = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", text))
            failed |= spill > 0 or regs > c.maxnreg
            print(json.dumps(dict(head_dim=d, BLOCK_M=bm, BLOCK_N=bn, num_warps=c.num_warps,
                                  num_stages=c.num_stages, maxnreg=c.maxnreg, registers=regs, spill_bytes=spill)))
    return int(failed)


def usage_and_sass(k) -> tuple[str, str]:
    """A compiled kernel's resource usage (cuobjdump) and SASS (nvdisasm), as text."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(k.asm["cubin"])
        usage = subprocess.run([BIN / "cuobjdump", "--dump-resource-usage", cubin], capture_output=True,
                               text=True).stdout
        sass = subprocess.run([BIN / "nvdisasm", "-c", cubin], capture_output=True, text=True).stdout
    return usage, sass


def report(k, d, bm, bn, warps, stages, variant, dump: Path | None) -> None:
    usage, sass = usage_and_sass(k)
    regs = re.search(r"REG:(\d+)", usage).group(1)
    stack = re.search(r"STACK:(\d+)", usage).group(1)
    cvt = k.asm["ttgir"].count("ttg.convert_layout")
    serial = "yes" if ptxas_serialized(k.asm["ptx"]) else "no"
    counts = [len(re.findall(rf"\b{re.escape(o)}\b", sass)) for o in SASS_OPS]
    print(f"{variant:>22} {d:>3} {bm:>4} {bn:>4} {warps:>5} {stages:>6} {regs:>5} {stack:>5} "
          f"{k.metadata.shared / 1024:>7.1f} {cvt:>4} {serial:>6}  " + " ".join(f"{n:>8}" for n in counts), flush=True)
    if dump:
        dump.mkdir(parents=True, exist_ok=True)
        stem = f"sage8_{variant}_d{d}_m{bm}_n{bn}_w{warps}_s{stages}"
        (dump / f"{stem}.ptx").write_text(k.asm["ptx"])
        (dump / f"{stem}.ttgir").write_text(k.asm["ttgir"])
        (dump / f"{stem}.sass").write_text(sass)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--head-dims", default="128,64")
    p.add_argument("--variant", default="default",
                   help=f"comma-separated, or 'all': bench_attention.py's variants ({', '.join(VARIANTS)})")
    p.add_argument("--configs", default=None, help="only these tiles, e.g. '128x128,128x64' (BLOCK_M x BLOCK_N)")
    p.add_argument("--dump", type=Path, default=None, help="folder for .ptx, .ttgir and .sass per config")
    p.add_argument("--check-caps", action="store_true", help="only check that the register-capped configs "
                   "do not spill (JSON lines; exit 1 if one does)")
    args = p.parse_args()
    if args.check_caps:
        raise SystemExit(check_caps())
    variants = list(VARIANTS) if args.variant == "all" else [v.strip() for v in args.variant.split(",")]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    tiles = None if args.configs is None else {tuple(int(x) for x in t.split("x")) for t in args.configs.split(",")}
    print(f"{'variant':>22} {'D':>3} {'BM':>4} {'BN':>4} {'warps':>5} {'stages':>6} {'regs':>5} {'stack':>5} "
          f"{'smem KB':>7} {'cvt':>4} {'serial':>6}  " + " ".join(f"{o.split('.')[-1]:>8}" for o in SASS_OPS))
    for variant in variants:
        for d in (int(x) for x in args.head_dims.split(",")):
            for c in AUTOTUNE_CONFIGS:
                bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
                if tiles is not None and (bm, bn) not in tiles:
                    continue
                k = compile_one(bm, bn, c.num_warps, c.num_stages, d, c.maxnreg, **VARIANTS[variant])
                report(k, d, bm, bn, c.num_warps, c.num_stages, variant, args.dump)


if __name__ == "__main__":
    main()
