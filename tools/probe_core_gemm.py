"""The core tokens' GEMM, and the rank-128 epilogue's chunk size, on the GPU (a development probe for
the W4A4 path; `dq bench kernels` is the user-facing measurement).

The core tokens' FP8 values with power-of-two scales as exact BF16 carriers, one cuBLAS BF16 GEMM
(`bf16`). Until commit 3534293 it timed them against `grouped`, E4M3 core tokens with a scale per 64
columns applied inside the Triton GEMM's K loop (0.53 against 0.27 ms at 2,048×5,120→5,120 on an H200,
docs/measurements/probe_core_gemm_h200.txt); that kernel variant has since been removed.

    python -P tools/probe_core_gemm.py
"""

from __future__ import annotations

import torch
import triton.testing

import dq_kernels.scaled_gemm as sg
from dq_kernels.bf16_terms import mm_fp32
from dq_kernels.delta_quantize import delta_quantize
from dq_kernels.expand_int4 import expand_int4
from dq_kernels.formats import pack_weight
from dq_kernels.fp8_quantize import fp8_group_carriers


def t(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


def core_gemms() -> None:
    for k, n in ((5120, 5120), (5120, 13824), (13824, 5120)):
        w = torch.randn(n, k, device="cuda") / k**0.5
        stored = pack_weight(w, "int4_row", 64)
        wq, ws = expand_int4(stored["qweight"], stored["scales"])
        for rows in (2048, 512):  # the core tokens of 4x1x4 and 4x2x8 cubes at Wan A14B 480p
            core = torch.randn(rows, k, device="cuda") * torch.rand(k, device="cuda") * 3

            def bf16():
                return mm_fp32(fp8_group_carriers(core, 64), expand_int4(stored["qweight"], stored["scales"],
                                                                         torch.bfloat16)[0]) * ws[None, :]

            print(f"core {rows}x{k}->{n}: bf16 {t(bf16):.3f} ms, "
                  f"carriers alone {t(lambda: fp8_group_carriers(core, 64)):.3f} ms")


def epilogue_chunks() -> None:
    m, k, n, rank = 32760, 5120, 5120, 128
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda") / k**0.5
    stored = pack_weight(w, "int4_row", 64)
    wq, ws = expand_int4(stored["qweight"], stored["scales"])
    up = (torch.randn(n, rank, device="cuda") / rank**0.5).bfloat16()
    down = (torch.randn(rank, k, device="cuda") / k**0.5).bfloat16()
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    for cube in ((4, 1, 4), (4, 2, 8)):
        acts = delta_quantize(x, None, down, 1, (21, 30, 52), cube, "int4_row")
        core = torch.zeros(acts.core.shape[0], n, device="cuda")
        for chunk in (32, 64, 128):
            sg.LORA_CHUNK = chunk
            ms = t(lambda: sg.scaled_gemm(acts.delta, wq, acts.scale, ws, core=core, cube_of_row=acts.cube_of_row,
                                          row_token=acts.row_token, down=acts.down, up=up, bias=bias))
            print(f"delta GEMM {m}x{k}->{n} rank {rank} cube {cube} lora chunk {chunk}: {ms:.3f} ms")
        sg.LORA_CHUNK = 32
        ms = t(lambda: sg.scaled_gemm(acts.delta, wq, acts.scale, ws, core=core, cube_of_row=acts.cube_of_row,
                                      row_token=acts.row_token, bias=bias))
        print(f"delta GEMM {m}x{k}->{n} no low-rank cube {cube}: {ms:.3f} ms")


if __name__ == "__main__":
    print(torch.cuda.get_device_name(), torch.__version__)
    core_gemms()
    epilogue_chunks()
