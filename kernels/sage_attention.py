"""8-bit attention for Hopper, SageAttention style: INT8 QKᵀ, FP8 (E4M3) PV, FP32 accumulation.

    out = softmax(scale · q kᵀ) v          q, k, v [B, H, S, D] (any strides), D in 32/64/128,
                                           non-causal, no mask; q and k lengths may differ

The pipeline (see `sage_quant.py` for the pre-pass and its layouts):
1. `sage_quantize`: one Triton launch turns Q and K into INT8 per block of `quant_block` (128)
   tokens — K smoothed by its mean first — and V into FP8 per channel (smoothed by its mean too).
   The softmax scale and log2(e) are folded into Q's block scale.
2. `_sage8_attn_fwd` (below): a flash-attention forward. Per tile of BLOCK_M queries it walks the
   keys in tiles of BLOCK_N: s = (q8·k8ᵀ) · qs · ks on the INT8 tensor cores (exact int32
   accumulation), an online softmax in log2 units with exp2, P = exp2(s - m + log2 448) in
   [0, 448] cast to E4M3 (448 is E4M3's largest value, so P uses the whole range; the same 448
   scales the row sum l and cancels in acc / l), then acc += P8 · V8 on the FP8 tensor cores.
   Epilogue: out = acc / l · vs + v_offset (V's mean and its rounding error's mean, see sage_quant.py).

Choices, and why:
- Hopper's FP8 wgmma accumulates in reduced precision (about 22 bits, truncating). A running
  accumulator fed through it over a 32k-token loop drifts, so each tile's P·V goes into a fresh
  accumulator that is added to acc in FP32: PV_ACC=0 (default) writes that as `acc·α + dot(p, v)`.
  PV_ACC=1 asks Triton for the same promotion (`max_num_imprecise_acc=BLOCK_N`), but its code reads
  the accumulator before the wgmma wait and ptxas then serializes every wgmma in the kernel (note
  C7514, `tools/attention_sass.py` column `serial`): 31.5 against 29.5 ms at Wan 480p on an H200,
  the same output error. PV_ACC=2 chains acc through the wgmma (no faster, least exact).
  Also measured there and dropped: half the exponentials by a polynomial on the FMA pipe (FA4's
  trick; 33.1 ms) and a hand-pipelined loop issuing the next tile's QKᵀ or the previous tile's P·V
  around the softmax (FA3's overlap; 31.8 / 35.9 ms) — Triton 3.6 waits on each wgmma right after
  issuing it (tools/bench_attention_notes.md).
- int32 → fp32 conversion runs at a quarter of the FP32 rate on Hopper and costs one instruction
  per score. FAST_I2F adds 0x4B400000 to the int32 (|qk| ≤ 127²·128 < 2²² holds for D ≤ 128),
  which is the bit pattern of 1.5·2²³ + qk as a float; the constant is folded into the one FMA
  that scales and shifts the scores: s' = f·sc - (1.5·2²³·sc + m'). Its rounding moves s by
  under one unit of qk·sc, far below the INT8 quantization error.
- The row max is taken on the int32 scores (one conversion per row, not per score).
- Q8, K8 and V8ᵀ are read through TMA tensor descriptors from the padded pre-pass buffers: no
  masks and no per-element pointer tensors (a [D, BLOCK_N] tile of 64-bit pointers costs 64
  registers a thread, which made every config spill), and Triton pipelines the loads over
  `num_stages` buffers. Only the last key tile is masked (a separate instantiation of the loop).

Off CUDA, the Triton kernel runs under the CPU interpreter (TRITON_INTERPRET=1); otherwise
`sage_attention` falls back, explicitly, to `sage_attention_reference`: the same quantization and
the same blockwise online softmax in plain torch.
"""

from __future__ import annotations

import logging
import math
import os

import torch

from .interpreter import interpreting
from .sage_quant import (SageInputs, sage_quantize, sage_quantize_reference,
                         triton)

if triton is not None:
    from triton.tools.tensor_descriptor import TensorDescriptor

    from .interpreter import round_to_e4m3 as round_to_e4m3_tl

if triton is not None:
    import triton.language as tl

__all__ = ["sage_attention", "sage_attention_reference", "sage_attention_triton", "sage8_attention_op",
           "HEAD_DIMS", "QUANT_BLOCK", "DEFAULT_CONFIG", "last_path", "supports"]

log = logging.getLogger(__name__)

HEAD_DIMS = (32, 64, 128)  # INT8 wgmma needs K = D >= 32
QUANT_BLOCK = 128
LOG2_E4M3_MAX = math.log2(448.0)
# Interpreter and explicit calls without a config: one fixed tile (the autotuner would time every
# config on the CPU interpreter).
DEFAULT_CONFIG = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}


# ---- the PyTorch reference ---------------------------------------------------------------------
def sage_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                             *, quant_block: int = QUANT_BLOCK, block_n: int = 64,
                             quantized: SageInputs | None = None) -> torch.Tensor:
    """The kernel's arithmetic in plain torch, on any device: the same quantized tensors and the
    same online softmax over key tiles of `block_n` (P is quantized against the running row max,
    so the tile size is part of the numerics). [B, H, S, D] in, q's dtype out."""
    b, h, s_q, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    z = quantized or sage_quantize_reference(q, k, v, scale, quant_block)
    qb = z.quant_block
    if qb % block_n:
        raise ValueError(f"block_n {block_n} must divide the quantization block {qb}")
    s_k = z.s_k
    qc = z.q8[:, :s_q].float()  # [BH, Sq, D]; int8 products summed in fp32 are exact (< 2**24)
    qs = z.qs.repeat_interleave(qb, dim=1)[:, :s_q]  # [BH, Sq]
    m = torch.full((b * h, s_q), -math.inf, device=q.device)
    l_ = torch.zeros(b * h, s_q, device=q.device)
    acc = torch.zeros(b * h, s_q, d, device=q.device)
    for n0 in range(0, s_k, block_n):
        n1 = min(n0 + block_n, s_k)
        sc = qs * z.ks[:, n0 // qb, None]  # qs·ks: one product per (query block, key block)
        s = torch.bmm(qc, z.k8[:, n0:n1].float().transpose(1, 2)).mul_(sc[..., None])
        m_new = torch.maximum(m, s.amax(dim=-1))
        p = s.sub_((m_new - LOG2_E4M3_MAX)[..., None]).exp2_()  # P in [0, 448]
        alpha = torch.exp2(m - m_new)
        l_ = l_ * alpha + p.sum(dim=-1)
        p8 = round_to_e4m3(p.clamp_(max=448.0))  # = p.to(float8_e4m3fn).float(), 3x faster on a CPU
        acc = acc * alpha[..., None] + torch.bmm(p8, z.v8t[:, :, n0:n1].float().transpose(1, 2))
        m = m_new
    out = acc * (1.0 / l_)[..., None] * z.vs[:, None, :] + z.v_offset[:, None, :]
    return out.reshape(b, h, s_q, d).to(q.dtype)


def round_to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """fp32 x (|x| <= 448) → the nearest E4M3 value (ties to even), in fp32: the same values as
    `x.to(torch.float8_e4m3fn).float()`, with integer ops (what `interpreter.round_to_e4m3` does in Triton, imported here as `round_to_e4m3_tl`)."""
    bits = x.view(torch.int32)
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576).view(torch.float32)
    ax = x.abs()
    sub = (ax + 16384.0) - 16384.0
    return torch.where(ax < 0.015625, torch.where(x < 0, -sub, sub), normal)


# ---- the Triton kernel -------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _softmax_tile(qk, sc, m_i, l_i, start_n, S_K, offs_n, MASKED: tl.constexpr, FAST_I2F: tl.constexpr,
                      INTERPRET: tl.constexpr):
        """Online-softmax step on one tile of int32 scores (sc: log2 units per unit of qk):
        P8 = E4M3(exp2(s - m_new + log2 448)), the rescale α of the old state, the new m and l."""
        if MASKED:
            valid = (start_n + offs_n)[None, :] < S_K
            qk_max = tl.max(tl.where(valid, qk, -2147483647), 1)
        else:
            qk_max = tl.max(qk, 1)
        m_new = tl.maximum(m_i, qk_max.to(tl.float32) * sc)
        shift = m_new - 8.807354922057604  # log2(448): P lands in [0, 448]
        if FAST_I2F:
            f = (qk + 0x4B400000).to(tl.float32, bitcast=True)  # = 1.5·2**23 + qk exactly
            s = f * sc - (12582912.0 * sc + shift)[:, None]
        else:
            s = qk.to(tl.float32) * sc - shift[:, None]
        if MASKED:
            s = tl.where(valid, s, -float("inf"))
        p = tl.math.exp2(s)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)  # the same p that becomes P8
        if INTERPRET:
            p = round_to_e4m3_tl(p)
        return p.to(tl.float8e4nv), alpha, m_new, l_i

    @triton.jit
    def _pv_tile(acc, alpha, p8, desc_v, v_row, start_n, BLOCK_N: tl.constexpr, PV_ACC: tl.constexpr):
        v = desc_v.load([v_row, start_n]).T  # fp8 [BLOCK_N, D], tokens contiguous in shared memory
        if PV_ACC == 0:
            acc = acc * alpha[:, None] + tl.dot(p8, v)
        elif PV_ACC == 1:
            acc = tl.dot(p8, v, acc * alpha[:, None], max_num_imprecise_acc=BLOCK_N)
        else:
            acc = tl.dot(p8, v, acc * alpha[:, None])
        return acc

    @triton.jit
    def _sage8_attn_inner(acc, l_i, m_i, q, qs, desc_k, desc_v, KS, k_row, v_row, start, stop, S_K,
                          offs_n, BLOCK_N: tl.constexpr, QUANT_BLOCK: tl.constexpr, MASKED: tl.constexpr,
                          FAST_I2F: tl.constexpr, PV_ACC: tl.constexpr, INTERPRET: tl.constexpr):
        for start_n in range(start, stop, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            k = desc_k.load([k_row + start_n, 0]).T  # int8 [D, BLOCK_N]
            ks = tl.load(KS + start_n // QUANT_BLOCK)
            qk = tl.dot(q, k)  # int32 [BLOCK_M, BLOCK_N], exact
            p8, alpha, m_i, l_i = _softmax_tile(qk, qs * ks, m_i, l_i, start_n, S_K, offs_n, MASKED, FAST_I2F,
                                                INTERPRET)
            acc = _pv_tile(acc, alpha, p8, desc_v, v_row, start_n, BLOCK_N, PV_ACC)
        return acc, l_i, m_i

    @triton.jit
    def _sage8_attn_fwd(
        desc_q, QS, desc_k, KS, desc_v, VS, VOFF, Out,
        so_b, so_h, so_s, so_d,
        H, S_Q, S_K, SQ_PAD, SK_PAD, SK_BUCKET,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        QUANT_BLOCK: tl.constexpr, FAST_I2F: tl.constexpr, PV_ACC: tl.constexpr, INTERPRET: tl.constexpr,
    ):
        # Q8/K8 are [B·H·S_pad, D] int8 and V8ᵀ is [B·H·D, Sk_pad] fp8, read through TMA tensor
        # descriptors: no per-element pointers in registers, and the loads pipeline (num_stages).
        tl.static_assert(QUANT_BLOCK % BLOCK_M == 0)  # one Q scale per program
        tl.static_assert(QUANT_BLOCK % BLOCK_N == 0)  # one K scale per key tile
        start_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)

        q = desc_q.load([bh * SQ_PAD + start_m * BLOCK_M, 0])  # int8 [BLOCK_M, D]
        qs = tl.load(QS + bh * (SQ_PAD // QUANT_BLOCK) + (start_m * BLOCK_M) // QUANT_BLOCK)
        ks_ptr = KS + bh * (SK_PAD // QUANT_BLOCK)
        k_row = bh * SK_PAD
        v_row = bh * HEAD_DIM

        m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        n_full = (S_K // BLOCK_N) * BLOCK_N
        acc, l_i, m_i = _sage8_attn_inner(acc, l_i, m_i, q, qs, desc_k, desc_v, ks_ptr, k_row, v_row, 0, n_full,
                                          S_K, offs_n, BLOCK_N, QUANT_BLOCK, False, FAST_I2F, PV_ACC, INTERPRET)
        if n_full < S_K:  # the last, partial key tile (its padded keys hold zeros)
            acc, l_i, m_i = _sage8_attn_inner(acc, l_i, m_i, q, qs, desc_k, desc_v, ks_ptr, k_row, v_row, n_full,
                                              n_full + BLOCK_N, S_K, offs_n, BLOCK_N, QUANT_BLOCK, True, FAST_I2F,
                                              PV_ACC, INTERPRET)

        vs = tl.load(VS + bh * HEAD_DIM + offs_d)
        v_offset = tl.load(VOFF + bh * HEAD_DIM + offs_d)
        out = acc * (1.0 / l_i)[:, None] * vs[None, :] + v_offset[None, :]
        # The output keeps the caller's strides ([B, S, H, D] memory from diffusers): a plain masked
        # store, once per program.
        o_ptrs = (Out + b.to(tl.int64) * so_b + h.to(tl.int64) * so_h + offs_m[:, None].to(tl.int64) * so_s
                  + offs_d[None, :] * so_d)
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=offs_m[:, None] < S_Q)

    def _set_block_shapes(nargs):
        """Autotune pre-hook: the descriptors' tile shapes follow the config being tried."""
        bm, bn, d = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["HEAD_DIM"]
        nargs["desc_q"].block_shape = [bm, d]
        nargs["desc_k"].block_shape = [bn, d]
        nargs["desc_v"].block_shape = [d, bn]

    # Hopper (checked by compiling for sm_90a, tools/attention_sass.py; timed on an H200 with
    # tools/attention_configs.py, docs/measurements/attention_configs_h200.md). What decides the speed is
    # how many independent CTAs share an SM: a CTA's softmax (MUFU, conversions) and its MMAs do not
    # overlap within a warpgroup, but the SM interleaves different CTAs'. A 128-row tile at 8 warps
    # (177–199 registers, one CTA an SM) runs its two warpgroups in lock-step: 33.6 ms at Wan 480p. A
    # 64-row tile at 4 warps takes 183 registers with D = 128 — two CTAs an SM (27.8 ms) — and fits 168
    # without spilling: capped there (`maxnreg`) with 2 stages (73 KB of shared memory) three CTAs fit,
    # 26.4 ms. With D = 64 the same tile takes 145 registers and 127 when capped at 128, no spill: four
    # CTAs. The caps spill at larger head dims, so each config says which head dims it is for.
    _CONFIG_TABLE = [  # BLOCK_M, BLOCK_N, warps, stages, maxnreg, head dims
        (64, 128, 4, 2, 168, (128,)),
        (64, 128, 4, 2, 128, (32, 64)),
        (64, 128, 4, 2, None, HEAD_DIMS),
        (64, 128, 4, 3, None, HEAD_DIMS),
        (64, 64, 4, 2, None, HEAD_DIMS),
        (64, 64, 4, 3, None, HEAD_DIMS),
        (128, 128, 8, 3, None, HEAD_DIMS),
    ]
    AUTOTUNE_CONFIGS = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s, maxnreg=r, pre_hook=_set_block_shapes)
        for bm, bn, w, s, r, _ in _CONFIG_TABLE
    ]
    _CONFIG_HEAD_DIMS = {id(c): dims for c, (*_, dims) in zip(AUTOTUNE_CONFIGS, _CONFIG_TABLE)}

    def prune_configs(configs, named_args, **kwargs):
        """The autotuner's early prune: only the configs meant for this head dim."""
        d = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))
        return [c for c in configs if d in _CONFIG_HEAD_DIMS.get(id(c), HEAD_DIMS)]

    def _time_config(kernel_call, quantiles):
        # Triton's default (100 ms of repetitions) is three calls at Wan 480p, where configs 5% apart
        # then swap places from run to run; half a second is ~18 calls there, once per process and shape.
        return triton.testing.do_bench(kernel_call, warmup=100, rep=500, quantiles=quantiles)

    _sage8_attn_fwd_tuned = triton.autotune(AUTOTUNE_CONFIGS, key=["HEAD_DIM", "SK_BUCKET", "FAST_I2F", "PV_ACC"],
                                            prune_configs_by={"early_config_prune": prune_configs},
                                            do_bench=_time_config)(_sage8_attn_fwd)


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """None if the kernel takes these inputs, else why not (for the fallback's message)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "expects 4-D [B, H, S, D] tensors"
    if q.shape[-1] not in HEAD_DIMS:
        return f"head dim {q.shape[-1]} is not one of {HEAD_DIMS}"
    if k.shape[-1] != q.shape[-1] or v.shape[-1] != q.shape[-1]:
        return "q, k and v must share the head dim"
    if k.shape[:2] != q.shape[:2] or v.shape[:3] != k.shape[:3]:
        return "q, k, v batch/heads (and k, v lengths) must match (no GQA)"
    if not (q.dtype == k.dtype == v.dtype) or not q.dtype.is_floating_point:
        return f"q, k, v must share one float dtype (got {q.dtype}, {k.dtype}, {v.dtype})"
    if q.shape[2] == 0 or k.shape[2] == 0:
        return "empty sequence"
    return None


def sage_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, *,
                          config: dict | None = None, quant_block: int = QUANT_BLOCK, fast_i2f: bool = True,
                          pv_acc: int = 0, quantized: SageInputs | None = None) -> torch.Tensor:
    """Launch the pre-pass and the attention kernel. `config` (BLOCK_M, BLOCK_N, num_warps,
    num_stages) pins a tile; without one CUDA autotunes and the interpreter takes DEFAULT_CONFIG."""
    if triton is None:
        raise RuntimeError("sage_attention_triton: triton is not installed")
    reason = supports(q, k, v)
    if reason:
        raise ValueError(f"sage_attention: {reason}")
    b, h, s_q, d = q.shape
    s_k = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    z = quantized or sage_quantize(q, k, v, scale, quant_block)
    out = torch.empty_like(q)  # keeps q's strides: a [B, S, H, D] caller gets [B, S, H, D] memory back
    interp = interpreting()
    if config is None and interp:
        config = dict(DEFAULT_CONFIG, BLOCK_M=min(DEFAULT_CONFIG["BLOCK_M"], z.quant_block),
                      BLOCK_N=min(DEFAULT_CONFIG["BLOCK_N"], z.quant_block))
    bm, bn = (config["BLOCK_M"], config["BLOCK_N"]) if config else (QUANT_BLOCK, QUANT_BLOCK)  # autotune resets
    desc_q = TensorDescriptor.from_tensor(z.q8.view(-1, d), [bm, d])
    desc_k = TensorDescriptor.from_tensor(z.k8.view(-1, d), [bn, d])
    desc_v = TensorDescriptor.from_tensor(z.v8t.view(-1, z.v8t.shape[-1]), [d, bn])
    args = (desc_q, z.qs, desc_k, z.ks, desc_v, z.vs, z.v_offset, out, *out.stride(),
            h, s_q, s_k, z.q8.shape[1], z.k8.shape[1], 1 << max(s_k - 1, 1).bit_length())
    meta = dict(HEAD_DIM=d, QUANT_BLOCK=z.quant_block, FAST_I2F=fast_i2f, PV_ACC=pv_acc, INTERPRET=interp)
    if config is None:
        if quant_block % 128:
            raise ValueError("autotuning needs quant_block to be a multiple of 128; pass a config")
        grid = lambda c: (triton.cdiv(s_q, c["BLOCK_M"]), b * h)  # noqa: E731
        _sage8_attn_fwd_tuned[grid](*args, **meta)
    else:
        c = dict(config)
        bm, bn = c.pop("BLOCK_M"), c.pop("BLOCK_N")
        _sage8_attn_fwd[(triton.cdiv(s_q, bm), b * h)](*args, **meta, BLOCK_M=bm, BLOCK_N=bn, **c)
    return out


# ---- dispatch and the custom op ----------------------------------------------------------------
_last_path = {"path": None, "reason": None}
_warned: set[str] = set()
_op_calls = [0]  # executions of dq::sage8_attention (counted in the op: in compiled graphs too)


def op_calls() -> int:
    """How many times `dq::sage8_attention` has run in this process, eager or inside a compiled graph
    (CUDA graph replays run no Python: under them it counts the recorded calls only)."""
    return _op_calls[0]


def last_path() -> dict:
    """Which implementation the last `sage_attention` call ran ('triton' or 'reference'), and why."""
    return dict(_last_path)


def _pick_path(q: torch.Tensor) -> tuple[str, str | None]:
    if os.environ.get("DQ_SAGE_IMPL") == "reference":
        return "reference", "DQ_SAGE_IMPL=reference"
    if triton is None:
        return "reference", "triton is not installed"
    if q.is_cuda:
        return "triton", None
    if interpreting():
        return "triton", None
    return "reference", (f"no Triton kernel for device '{q.device.type}' (CUDA needed, or TRITON_INTERPRET=1 "
                         "on the CPU): running the PyTorch reference — the same INT8/FP8 quantization and "
                         "blockwise softmax, not faster than SDPA")


def _run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    path, reason = _pick_path(q)
    _last_path.update(path=path, reason=reason)
    if path == "triton":
        return sage_attention_triton(q, k, v, scale)
    if reason not in _warned:
        _warned.add(reason)
        log.warning("sage8 attention: %s", reason)
    return torch.empty_like(q).copy_(sage_attention_reference(q, k, v, scale))  # q's layout, as the kernel


@torch.library.custom_op("dq::sage8_attention", mutates_args=())
def sage8_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale · q kᵀ) v with 8-bit Q/K (INT8) and P/V (FP8); [B, H, S, D], q's dtype out, laid out
    like `torch.empty_like(q)` (the fake below promises that layout to torch.compile). For diffusers' q,
    a [B, H, S, D] view of [B, S, H, D] memory, that is [B, S, H, D] memory too, as SDPA returns it: the
    caller's transpose back and flatten are then views. (A contiguous out cost two copies of the output
    per call: one here, one in the caller's flatten.)"""
    _op_calls[0] += 1
    return _run(q, k, v, scale)


@sage8_attention_op.register_fake
def _(q, k, v, scale):
    return torch.empty_like(q)


def sage_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """8-bit attention through the custom op `torch.ops.dq.sage8_attention` (so torch.compile
    treats it as one opaque node). [B, H, S, D] tensors of any strides; no mask, not causal."""
    reason = supports(q, k, v)
    if reason:
        raise ValueError(f"sage_attention: {reason}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return sage8_attention_op(q, k, v, scale)
