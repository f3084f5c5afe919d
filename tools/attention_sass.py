"""Compile the 8-bit attention kernel for Hopper (sm_90a) without a GPU and report what the
compiler made of each tile config: registers, spills (stack bytes), shared memory, and the counts
of the instructions that matter (IGMMA/QGMMA tensor-core ops, MUFU.EX2, conversions, local-memory
traffic). Uses the ptxas/cuobjdump/nvdisasm that ship inside the triton wheel.

    python -P tools/attention_sass.py                      # the autotune configs, D = 128 and 64
    python -P tools/attention_sass.py --dump /tmp/sass     # also write PTX and SASS per config
"""

from __future__ import annotations

import argparse
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
from repo_kernels import import_dq_kernels  # noqa: E402

import_dq_kernels()

from dq_kernels.sage_attention import AUTOTUNE_CONFIGS, QUANT_BLOCK, _sage8_attn_fwd  # noqa: E402

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
SASS_OPS = ("IGMMA", "QGMMA", "HGMMA", "MUFU.EX2", "I2F", "F2FP", "FFMA", "FMUL", "FADD", "VIADD", "LDL", "STL",
            "UTMALDG")


def desc(dtype, block):
    return mangle_type(TensorDescriptor.from_tensor(torch.empty(256, 256, dtype=dtype), block))


def compile_one(bm, bn, warps, stages, d, pv_acc=1, fast_i2f=True):
    sig = dict(desc_q=desc(torch.int8, [bm, d]), QS="*fp32", desc_k=desc(torch.int8, [bn, d]), KS="*fp32",
               desc_v=desc(torch.float8_e4m3fn, [d, bn]), VS="*fp32", VM="*fp32", Out="*bf16",
               so_b="i32", so_h="i32", so_s="i32", so_d="i32", H="i32", S_Q="i32", S_K="i32", SQ_PAD="i32",
               SK_PAD="i32", SK_BUCKET="i32")
    const = dict(HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, QUANT_BLOCK=QUANT_BLOCK, FAST_I2F=fast_i2f, PV_ACC=pv_acc,
                 INTERPRET=False)
    sig.update({k: "constexpr" for k in const})
    src = ASTSource(fn=_sage8_attn_fwd, signature=sig, constexprs=const)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--head-dims", default="128,64")
    p.add_argument("--pv-acc", type=int, default=1)
    p.add_argument("--plain-i2f", action="store_true")
    p.add_argument("--dump", type=Path, default=None, help="folder for .ptx and .sass per config")
    args = p.parse_args()
    print(f"{'D':>3} {'BM':>4} {'BN':>4} {'warps':>5} {'stages':>6} {'regs':>5} {'stack':>5} {'smem KB':>7}  "
          + " ".join(f"{o:>8}" for o in SASS_OPS))
    for d in (int(x) for x in args.head_dims.split(",")):
        for c in AUTOTUNE_CONFIGS:
            bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
            k = compile_one(bm, bn, c.num_warps, c.num_stages, d, args.pv_acc, not args.plain_i2f)
            with tempfile.TemporaryDirectory() as tmp:
                cubin = Path(tmp) / "k.cubin"
                cubin.write_bytes(k.asm["cubin"])
                usage = subprocess.run([BIN / "cuobjdump", "--dump-resource-usage", cubin], capture_output=True,
                                       text=True).stdout
                sass = subprocess.run([BIN / "nvdisasm", "-c", cubin], capture_output=True, text=True).stdout
            regs = re.search(r"REG:(\d+)", usage).group(1)
            stack = re.search(r"STACK:(\d+)", usage).group(1)
            counts = [len(re.findall(rf"\b{re.escape(o)}\b", sass)) for o in SASS_OPS]
            print(f"{d:>3} {bm:>4} {bn:>4} {c.num_warps:>5} {c.num_stages:>6} {regs:>5} {stack:>5} "
                  f"{k.metadata.shared / 1024:>7.1f}  " + " ".join(f"{n:>8}" for n in counts))
            if args.dump:
                args.dump.mkdir(parents=True, exist_ok=True)
                stem = f"sage8_d{d}_m{bm}_n{bn}_w{c.num_warps}_s{c.num_stages}"
                (args.dump / f"{stem}.ptx").write_text(k.asm["ptx"])
                (args.dump / f"{stem}.sass").write_text(sass)


if __name__ == "__main__":
    main()
