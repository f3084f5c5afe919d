"""6Bit-Diffusion's layers on a GPU without NVFP4 tensor cores (Hopper): the reference math, with
each operand written as an exact BF16 *carrier* times scales that factor out of the product, so a
BF16 GEMM with fp32 accumulation replaces the reference's fp32 GEMM (which runs without tensor
cores) and the result is the reference's up to fp32 summation order.

    NVFP4 weight      ŵ = e2m1 · s8[block] · ts   carrier e2m1·s8 (2-bit × 4-bit significands:
                                                  exact in BF16), scale ts after the GEMM
    NVFP4 activation  x̂ = e2m1 · s8[block] · ts   the same
    INT8 activation   x̂ = q · s[token]            carrier q (|q| ≤ 127: exact), s per row after
    none (16 bits)    x (fp32 after λ, rotation)  bf16 hi + lo: two GEMMs, ~2**-17 relative

The weight carrier is formed from the packed codes on every call (memory stays 4-bit at rest).
DeltaQuant's cube route and sharded sequences (context parallelism) keep the reference path.
"""

from __future__ import annotations

import os

import torch

from dq_kernels.bf16_terms import bf16_terms, mm_fp32
from dq_kernels.int8 import quantize_int8_rowwise
from dq_kernels.interpreter import interpreting
from dq_kernels.nvfp4 import nvfp4_carrier, unpack_fp4, weight_carrier
from dq_kernels.smoothing import apply_smooth

# The carriers from one Triton pass each (dq_kernels.nvfp4_quantize, dq_kernels.expand_nvfp4) instead
# of ~15 torch passes over X and 5 over W: bit-exact with them in the interpreter and compiled for
# sm_90, but not yet run on a GPU — off until `pytest -m gpu tests/test_carrier_path.py
# tests/test_formats_nvfp4.py` has passed on one (the tests run this path both ways).
# DQ_TRITON_CARRIERS=1 turns it on, to check and time it (`PART=carriers bash tools/gpu_w4a4.sh`).
TRITON_CARRIERS = os.environ.get("DQ_TRITON_CARRIERS", "0") == "1"


def _triton_carriers(x: torch.Tensor) -> bool:
    if not TRITON_CARRIERS:  # the default: nothing more to look up on every layer call
        return False
    from dq_kernels.nvfp4_quantize import triton

    return triton is not None and (x.is_cuda or interpreting())


def carrier_forward(layer, x: torch.Tensor) -> torch.Tensor | None:
    """y [B, S, N] fp32 for an NVFP4-weight layer on its current route, or None (reference)."""
    state = layer.forward_state
    if state is not None and state.shard is not None:
        return None
    xs = apply_smooth(x.float(), layer.smooth)
    plan = layer.active_plan(xs)
    if plan.activation not in ("nvfp4", "int8", "none") or plan.method == "deltaquant":
        return None
    y, xin = layer.gemm_input(xs, plan)
    xin = xin.reshape(-1, xin.shape[-1])
    fused = _triton_carriers(xin)
    if fused:
        from dq_kernels.expand_nvfp4 import expand_nvfp4
        from dq_kernels.nvfp4_quantize import nvfp4_carrier_triton

        w = expand_nvfp4(layer.qweight, layer.block_scales)
    else:
        w = weight_carrier(unpack_fp4(layer.qweight), layer.block_scales)
    k = w.shape[1]  # the route's padding may exceed the weight's: scales see it, the GEMM does not
    if plan.activation == "nvfp4":
        a, a_scale = nvfp4_carrier_triton(xin) if fused else nvfp4_carrier(xin)
        out = mm_fp32(a[:, :k], w) * a_scale
    elif plan.activation == "int8":
        q, a_scale = quantize_int8_rowwise(xin)
        out = mm_fp32(q[:, :k], w) * a_scale
    else:
        out = sum(mm_fp32(term, w) for term in bf16_terms(xin[:, :k]))
    y += (out * layer.tensor_scale).reshape(y.shape)
    if layer.bias is not None:
        y += layer.bias.float()
    return y

