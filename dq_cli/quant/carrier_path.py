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
On a GPU the NVFP4 and INT8 routes take `_fused_forward` (one Triton pass per operand and a BF16
GEMM with the scales, low-rank branch and bias in its epilogue); the 16-bit route, and torch's
carriers (DQ_TRITON_CARRIERS=0), the plain torch operations below. Under context parallelism
(`forward_state.shard`) the NVFP4 tensor scale comes from the whole sequence's amax, as the
reference's; the INT8 scales are per token. DeltaQuant's cube route keeps the reference path.
"""

from __future__ import annotations

import os

import torch

from dq_cli.quant.sequence import sequence_amax
from dq_kernels.bf16_terms import bf16_terms, mm_fp32
from dq_kernels.int8 import quantize_int8_rowwise
from dq_kernels.interpreter import interpreting
from dq_kernels.nvfp4 import nvfp4_carrier, unpack_fp4, weight_carrier
from dq_kernels.smoothing import apply_smooth

# The Triton path (`_fused_forward`): the carriers from one pass each (dq_kernels.nvfp4_quantize,
# int8_quantize, expand_nvfp4) instead of ~15 torch passes over X and 5 over W, and one BF16 GEMM
# whose epilogue applies the scales, low-rank branch and bias (dq_kernels.carrier_gemm). On an H200
# (tools/probe_carriers.py, docs/measurements/carriers_tma_gemm_gpu_h200.log) one 5,120→5,120 layer
# at 32,760 tokens took 3.2 ms against torch's 14.4 (NVFP4 route; INT8 2.9 against 9.7; BF16
# nn.Linear 2.4), and 8 Wan A14B blocks with 6bit 697 ms against 1,150 (BF16 651).
# DQ_TRITON_CARRIERS=0 keeps torch's carriers (the reference's operations on the GPU: for
# comparison and bisection); the tests run both.
TRITON_CARRIERS = os.environ.get("DQ_TRITON_CARRIERS", "1") == "1"


def _triton_carriers(x: torch.Tensor) -> bool:
    if not TRITON_CARRIERS:  # switched off: nothing more to look up on every layer call
        return False
    from dq_kernels.nvfp4_quantize import triton

    return triton is not None and (x.is_cuda or interpreting())


def carrier_forward(layer, x: torch.Tensor) -> torch.Tensor | None:
    """y [B, S, N] for an NVFP4-weight layer on its current route (fp32; x's dtype from the Triton
    path), or None (reference)."""
    fused = _triton_carriers(x)
    # The kernels read X in its own dtype and convert it exactly; smoothing and the rotation are
    # computed in fp32 first, as the reference does.
    xs = x if fused and layer.smooth is None and not layer.plan.hadamard else apply_smooth(x.float(), layer.smooth)
    plan = layer.active_plan(xs)
    if plan.activation not in ("nvfp4", "int8", "none") or plan.method == "deltaquant":
        return None
    if fused and plan.activation != "none":
        return _fused_forward(layer, xs, plan, x.dtype)
    y, xin = layer.gemm_input(xs, plan)
    xin = xin.reshape(-1, xin.shape[-1])
    w = _expand_weight(layer) if fused else weight_carrier(unpack_fp4(layer.qweight), layer.block_scales)
    k = w.shape[1]  # the route's padding may exceed the weight's: scales see it, the GEMM does not
    if plan.activation == "nvfp4":
        a, a_scale = nvfp4_carrier(xin, amax=_sequence_amax(layer, xin))
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


def _fused_forward(layer, xs: torch.Tensor, plan, out_dtype: torch.dtype) -> torch.Tensor:
    """The NVFP4 and INT8 routes as one Triton pass per operand and one BF16 GEMM (`carrier_gemm`)
    whose epilogue applies the scales, adds the low-rank branch and the bias and writes `out_dtype`:
    torch's path instead writes an fp32 product and makes four elementwise passes over it."""
    from dq_kernels.carrier_gemm import carrier_gemm
    from dq_kernels.int8_quantize import quantize_int8_tokens
    from dq_kernels.nvfp4_quantize import nvfp4_carrier_triton

    xin = layer.route_input(xs, plan)
    xin = xin.reshape(-1, xin.shape[-1])
    w = _expand_weight(layer)
    n, k = w.shape  # the route's padding may exceed the weight's: scales see it, the GEMM does not
    if plan.activation == "nvfp4":
        a, ts = nvfp4_carrier_triton(xin, _sequence_amax(layer, xin))
        a_scale, col_scale = None, ts * layer.tensor_scale.float()
    else:
        a, a_scale = quantize_int8_tokens(xin, codes_dtype=torch.bfloat16)
        col_scale = layer.tensor_scale.float()
    down = layer.low_rank_down(xs.reshape(-1, xs.shape[-1])) if layer.lora_up is not None else None
    y = carrier_gemm(a[:, :k], w, a_scale, col_scale.reshape(1).expand(n).contiguous(), down=down,
                    up=layer.lora_up, bias=layer.bias, out_dtype=out_dtype)
    return y.reshape(*xs.shape[:-1], n)


def _expand_weight(layer) -> torch.Tensor:
    """The packed NVFP4 weight's BF16 carrier, in one Triton pass."""
    from dq_kernels.expand_nvfp4 import expand_nvfp4

    return expand_nvfp4(layer.qweight, layer.block_scales)


def _sequence_amax(layer, xin: torch.Tensor) -> torch.Tensor | None:
    """`sequence_amax` under the layer's context-parallel shard, if any."""
    state = layer.forward_state
    return sequence_amax(xin, state.shard if state is not None else None)
