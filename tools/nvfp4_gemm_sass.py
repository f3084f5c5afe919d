"""Compile the NVFP4 GEMM (kernels/nvfp4_gemm.py) for Blackwell (sm_100a) without a GPU, and say what
its MMA lowered to, its registers and spills — the check CI can make of a kernel no lent GPU runs.

    python -P tools/nvfp4_gemm_sass.py            # every autotune config: one JSON line each

Each line: the config, the PTX's tcgen05.mma kinds (the native NVFP4 MMA is
`kind::mxf4nvf4.block_scale.scale_vec::4X`: E2M1 operands, an E4M3 scale per 16), registers, spill
bytes (cuobjdump) and shared memory. Run it without TRITON_INTERPRET (the interpreter replaces the
kernel). Uses the ptxas / cuobjdump that ship inside the triton wheel.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (python -P leaves it out)
from repo_kernels import import_dq_kernels  # noqa: E402

import_dq_kernels()
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import torch  # noqa: E402
from attention_sass import desc, usage_and_sass  # noqa: E402
from dq_kernels import nvfp4_gemm as ng  # noqa: E402

def signature(config: triton.Config) -> dict:
    bm, bn, bk = (config.kwargs[key] for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    return {"a_desc": desc(torch.uint8, [bm, bk // 2]), "as_ptr": "*fp8e4nv",
            "b_desc": desc(torch.uint8, [bn, bk // 2]), "bs_ptr": "*fp8e4nv", "c_ptr": "*bf16", "bias_ptr": "*bf16",
            "ts_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32", "stride_as": "i32", "stride_bs": "i32",
            "stride_c": "i32", "HAS_BIAS": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
            "BLOCK_K": "constexpr"}


def compile_config(config: triton.Config):
    src = ASTSource(fn=ng.nvfp4_gemm_kernel, signature=signature(config),
                    constexprs={"HAS_BIAS": True, **config.kwargs})
    return triton.compile(src, target=GPUTarget("cuda", 100, 32),
                          options={"num_warps": config.num_warps, "num_stages": config.num_stages})


def report(config: triton.Config) -> dict:
    row = dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    try:
        k = compile_config(config)
    except Exception as e:  # one config failing must not hide the others
        return dict(row, error=f"{type(e).__name__}: {e}"[-600:])
    kinds = sorted({m.group(1) for m in re.finditer(r"tcgen05\.mma\S*?(kind::\S+?)\s", k.asm["ptx"])})
    usage, _ = usage_and_sass(k)
    return dict(row, mma_kinds=kinds, mma_count=k.asm["ptx"].count("tcgen05.mma"),
                registers=int(re.search(r"REG:(\d+)", usage).group(1)),
                spill_bytes=int(re.search(r"STACK:(\d+)", usage).group(1)),
                shared_kb=round(k.metadata.shared / 1024, 1))


def main() -> None:
    for config in ng.NVFP4_CONFIGS:
        print(json.dumps(report(config)), flush=True)


if __name__ == "__main__":
    main()
