"""The pre-pass of 8-bit attention (`sage_attention.py`): Q, K and V quantized in one Triton launch.

Inputs are [B, H, S, D] tensors of any strides (diffusers hands attention [B, S, H, D] memory seen
through a permute); outputs are dense, padded to a multiple of `quant_block` tokens with zeros, in
the layouts the attention kernel loads without masks:

- q8   int8     [B*H, Sq_pad, D]      per block of `quant_block` query rows, symmetric, 127 levels
- qs   float32  [B*H, Sq_pad // QB]   amax/127 · softmax scale · log2(e): the logits come out in
                                      log2 units, so the kernel uses exp2 and never multiplies by
                                      the softmax scale
- k8   int8     [B*H, Sk_pad, D]      K smoothed first: K - mean over tokens (per batch, head and
                                      channel). Softmax is invariant to adding one vector to all
                                      keys (q·(k-m) = q·k - q·m, the same shift for every key of a
                                      row), while the shared channel bias that DiT keys carry would
                                      otherwise eat most of the int8 range.
- ks   float32  [B*H, Sk_pad // QB]   amax/127 per block of K rows
- v8t  float8_e4m3fn [B*H, D, Sk_pad] (V - mean) · 448/amax per channel, stored transposed (tokens
                                      contiguous): Hopper's FP8 wgmma wants the reduction dim (the
                                      tokens, for P·V) contiguous in both operands.
- vs, v_offset float32 [B*H, D]       V's per-channel scale amax/448, and what the epilogue adds back:
                                      out = P·v8 · vs + v_offset. v_offset is V's mean (exact, since
                                      softmax rows sum to 1) plus the mean over the keys of V's E4M3
                                      rounding error (below).

Why the rounding error's mean: the output error that V's rounding causes is Σ p_i ε_i / Σ p_i. Its
common part, the mean of ε over the keys, reaches the output whole, while the rest is averaged down
like the output itself. Where attention is flat (zero-mean random data: the output shrinks as
1/√keys) that common part is about a third of the error's energy and, with BF16 inputs, more (their
grid makes the E4M3 rounding slightly biased): on an H200 at Wan 480p / 720p shapes the kernel's
error against float64 was 4.4% / 5.9% with V's mean alone, growing with the keys, and 3.6% flat
with the correction (`tools/attention_error_at_shape.py`). Restoring a constant per channel is exact
for any attention weights, so peaked (real) attention loses nothing: its error moves by at most
that constant, a fraction of one E4M3 step divided by √keys.

The means and channel ranges (`sage_stats.py`) are reductions over all tokens, done before the
launch (two small Triton launches that read K and V once; torch's reductions in the reference);
every block of the launch needs them.

Numerics shared bit for bit by `sage_quantize_reference` and the kernel (checked under
TRITON_INTERPRET=1; on a GPU a code can differ by one where the kernel's reciprocal differs by an
ulp):
    int8:  s = fp32(amax / 127); inv = fp32(127 / amax) (0 where amax == 0)
           code = round_half_even(fp32(x · inv))          |x·inv| <= 127 by construction
    fp8:   e4m3(clamp(fp32((v - vm) · vinv), ±448))       round to nearest even, vinv = 448/amax
    v_offset = vm + vs · Σ_keys(fp32((v - vm) · vinv) - e4m3(...)) / S_k   (the sum in another order: to fp32 rounding)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .interpreter import interpreting
from .sage_stats import smoothing_stats, smoothing_stats_triton

try:  # Triton is optional: the reference below runs anywhere.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs without triton
    triton = None

__all__ = ["SageInputs", "sage_quantize", "sage_quantize_reference", "smoothing_stats", "LOG2E"]

LOG2E = 1.4426950408889634
E4M3_MAX = 448.0
INT8_MAX = 127.0
_MAGIC_RINT = 12582912.0  # 1.5 · 2**23: (x + M) - M rounds |x| < 2**22 to an integer, ties to even


class SageInputs(NamedTuple):
    q8: torch.Tensor
    qs: torch.Tensor
    k8: torch.Tensor
    ks: torch.Tensor
    v8t: torch.Tensor
    vs: torch.Tensor
    v_offset: torch.Tensor
    s_q: int
    s_k: int
    quant_block: int


def _padded(n: int, block: int) -> int:
    return -(-n // block) * block


# ---- the PyTorch reference ---------------------------------------------------------------------
def _int8_blocks(x: torch.Tensor, quant_block: int, mult: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, S_pad, D] fp32 (zeros past S) → int8 codes and per-block scales (times `mult`)."""
    n, s_pad, d = x.shape
    blocks = x.reshape(n, s_pad // quant_block, quant_block * d)
    amax = blocks.abs().amax(dim=-1)
    inv = torch.where(amax > 0, INT8_MAX / amax, torch.zeros_like(amax))
    q = blocks * inv[..., None]
    codes = ((q + _MAGIC_RINT) - _MAGIC_RINT).to(torch.int8).reshape(n, s_pad, d)
    scale = amax / INT8_MAX
    if mult != 1.0:
        scale = scale * mult
    return codes, scale


def _e4m3(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def _flat_padded(x: torch.Tensor, s_pad: int) -> torch.Tensor:
    b, h, s, d = x.shape
    out = x.float().reshape(b * h, s, d)
    return torch.nn.functional.pad(out, (0, 0, 0, s_pad - s)) if s_pad != s else out


def sage_quantize_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                            quant_block: int = 128) -> SageInputs:
    """What `sage_quantize` computes, in plain torch (any device)."""
    s_q, s_k = q.shape[2], k.shape[2]
    sq_pad, sk_pad = _padded(s_q, quant_block), _padded(s_k, quant_block)
    km, vm, vs, vinv = smoothing_stats(k, v)
    q8, qs = _int8_blocks(_flat_padded(q, sq_pad), quant_block, scale * LOG2E)
    kf = k.float().reshape(km.shape[0], s_k, -1) - km[:, None, :]
    k8, ks = _int8_blocks(torch.nn.functional.pad(kf, (0, 0, 0, sk_pad - s_k)), quant_block)
    vf = (v.float().reshape(vm.shape[0], s_k, -1) - vm[:, None, :]) * vinv[:, None, :]
    v8 = _e4m3(torch.nn.functional.pad(vf, (0, 0, 0, sk_pad - s_k)))
    v_offset = vm + vs * ((vf - v8[:, :s_k].float()).sum(dim=1) / s_k)
    return SageInputs(q8, qs, k8, ks, v8.transpose(1, 2).contiguous(), vs, v_offset, s_q, s_k, quant_block)


# ---- the Triton kernel -------------------------------------------------------------------------
if triton is not None:
    from .interpreter import round_to_e4m3

    @triton.jit
    def _int8_block(x):
        """x [QB, D] fp32 → (int8 codes, fp32 amax/127); padding rows must already be 0."""
        amax = tl.max(tl.max(tl.abs(x), axis=1), axis=0)
        inv = tl.where(amax > 0, 127.0 / amax, 0.0)
        codes = ((x * inv + 12582912.0) - 12582912.0).to(tl.int8)
        return codes, amax / 127.0

    @triton.jit
    def _sage_quant_prepass(
        Q, K, V, KM, VM, VINV,  # inputs: q/k/v [B, H, S, D] strided; km/vm/vinv [B*H, D] fp32
        Q8, QS, K8, KS, V8T, VERR,  # outputs (dense, padded); VERR [B*H, SK_PAD // QB, D] fp32
        sq_b, sq_h, sq_s, sq_d, sk_b, sk_h, sk_s, sk_d, sv_b, sv_h, sv_s, sv_d,
        H, S_Q, S_K, SQ_PAD, SK_PAD, q_mult,
        HEAD_DIM: tl.constexpr, QUANT_BLOCK: tl.constexpr, INTERPRET: tl.constexpr,
    ):
        # One program quantizes one block of QUANT_BLOCK tokens of one (batch, head) of one tensor:
        # axis 2 picks Q (0), K (1) or V (2), so one launch covers all three.
        blk = tl.program_id(0)
        bh = tl.program_id(1)
        role = tl.program_id(2)
        b = bh // H
        h = bh % H
        rows = blk * QUANT_BLOCK + tl.arange(0, QUANT_BLOCK)
        d = tl.arange(0, HEAD_DIM)
        bh64 = bh.to(tl.int64)
        if role == 0:
            if blk * QUANT_BLOCK < S_Q:
                valid = rows < S_Q
                ptr = Q + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h + rows[:, None].to(tl.int64) * sq_s + d[None, :] * sq_d
                x = tl.load(ptr, mask=valid[:, None], other=0.0).to(tl.float32)
                codes, s = _int8_block(x)
                tl.store(Q8 + bh64 * SQ_PAD * HEAD_DIM + rows[:, None] * HEAD_DIM + d[None, :], codes)
                tl.store(QS + bh * (SQ_PAD // QUANT_BLOCK) + blk, s * q_mult)
        elif role == 1:
            if blk * QUANT_BLOCK < S_K:
                valid = rows < S_K
                ptr = K + b.to(tl.int64) * sk_b + h.to(tl.int64) * sk_h + rows[:, None].to(tl.int64) * sk_s + d[None, :] * sk_d
                x = tl.load(ptr, mask=valid[:, None], other=0.0).to(tl.float32)
                km = tl.load(KM + bh * HEAD_DIM + d)
                x = tl.where(valid[:, None], x - km[None, :], 0.0)  # padded keys stay exactly 0
                codes, s = _int8_block(x)
                tl.store(K8 + bh64 * SK_PAD * HEAD_DIM + rows[:, None] * HEAD_DIM + d[None, :], codes)
                tl.store(KS + bh * (SK_PAD // QUANT_BLOCK) + blk, s)
        else:
            if blk * QUANT_BLOCK < S_K:
                valid = rows < S_K
                ptr = V + b.to(tl.int64) * sv_b + h.to(tl.int64) * sv_h + rows[:, None].to(tl.int64) * sv_s + d[None, :] * sv_d
                x = tl.load(ptr, mask=valid[:, None], other=0.0).to(tl.float32)
                vm = tl.load(VM + bh * HEAD_DIM + d)
                vinv = tl.load(VINV + bh * HEAD_DIM + d)
                x = tl.where(valid[:, None], (x - vm[None, :]) * vinv[None, :], 0.0)
                xc = tl.minimum(tl.maximum(x, -448.0), 448.0)
                if INTERPRET:
                    x8 = round_to_e4m3(xc)
                else:
                    x8 = xc.to(tl.float8e4nv).to(tl.float32)
                # this block's share of the rounding error's mean (padded tokens add 0)
                tl.store(VERR + (bh64 * (SK_PAD // QUANT_BLOCK) + blk) * HEAD_DIM + d, tl.sum(x - x8, axis=0))
                v8 = tl.trans(x8.to(tl.float8e4nv))  # [D, QB]: tokens contiguous in memory; exact
                tl.store(V8T + bh64 * HEAD_DIM * SK_PAD + d[:, None] * SK_PAD + rows[None, :], v8)


def sage_quantize(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                  quant_block: int = 128, stats: tuple[torch.Tensor, ...] | None = None) -> SageInputs:
    """Quantize q, k, v [B, H, S, D] for `sage_attention` with the Triton pre-pass (CUDA, or the
    CPU under TRITON_INTERPRET=1). `stats` (km, vm, vs, vinv as `smoothing_stats` returns them)
    replaces the statistics kernel: the tests pass torch's to compare the pre-pass bit for bit."""
    if triton is None:
        raise RuntimeError("sage_quantize: triton is not installed")
    b, h, s_q, d = q.shape
    s_k = k.shape[2]
    sq_pad, sk_pad = _padded(s_q, quant_block), _padded(s_k, quant_block)
    km, vm, vs, vinv = stats if stats is not None else smoothing_stats_triton(k, v)
    dev = q.device
    # Padding rows are written by the kernel (zeros) for Q/K codes; V's padded tokens too: every
    # block that holds a valid token is written whole, and there are no blocks without one.
    q8 = torch.empty(b * h, sq_pad, d, dtype=torch.int8, device=dev)
    k8 = torch.empty(b * h, sk_pad, d, dtype=torch.int8, device=dev)
    v8t = torch.empty(b * h, d, sk_pad, dtype=torch.float8_e4m3fn, device=dev)
    qs = torch.empty(b * h, sq_pad // quant_block, dtype=torch.float32, device=dev)
    ks = torch.empty(b * h, sk_pad // quant_block, dtype=torch.float32, device=dev)
    verr = torch.empty(b * h, sk_pad // quant_block, d, dtype=torch.float32, device=dev)
    grid = (max(sq_pad, sk_pad) // quant_block, b * h, 3)
    _sage_quant_prepass[grid](
        q, k, v, km, vm, vinv, q8, qs, k8, ks, v8t, verr,
        *q.stride(), *k.stride(), *v.stride(),
        h, s_q, s_k, sq_pad, sk_pad, float(scale) * LOG2E,
        HEAD_DIM=d, QUANT_BLOCK=quant_block, INTERPRET=interpreting(),
        num_warps=4 if quant_block * d <= 64 * 128 else 8,
    )
    v_offset = vm + vs * (verr.sum(dim=1) / s_k)  # partial sums, then a fixed order: deterministic
    return SageInputs(q8, qs, k8, ks, v8t, vs, v_offset, s_q, s_k, quant_block)


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
