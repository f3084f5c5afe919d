"""Would INT8 P and V (instead of FP8 E4M3) make 8-bit attention more exact? A CPU study in plain torch.

The 8-bit attention (`dq_kernels.sage_attention`) computes P·V on the FP8 tensor cores: P = exp2(s - m + log2 448)
in [0, 448] and V per channel around its mean scaled to ±448, both rounded to E4M3. On zero-mean random inputs its
relative error against float64 is ~3.5-3.9%, about half from P's rounding and half from V's. Hopper's INT8 tensor
cores run at the FP8 rate, so INT8 P·V would cost no speed; this tool measures what it would do to the error.

The kernel's online softmax over key tiles (block_n 64, as `sage_attention_reference`, on the same INT8 Q/K from
`sage_quantize_reference`) runs every variant at once: the scores s, the running max m per tile and the rescaling are
shared; each variant rounds P (against the running max, as the kernel) and V its own way and keeps its own
accumulator and row sum l. The loop is vectorized over the tiles (see `all_variants`); its e4m3 variant is checked
against `sage_attention_reference` itself on the first 256 measured queries of every input (relative difference
~2e-7, asserted < 1e-5).

    P schemes   fp32   exp2(s - m + log2 448), not rounded
                e4m3   the same, rounded to E4M3 (the kernel today)
                int8   exp2(s - m + log2 127) in [0, 127], rounded to the nearest integer (ties to even): a uniform
                       grid, so weights under 0.5/127 of the running max become 0
                uint8  exp2(s - m + log2 255) in [0, 255], rounded likewise (an extra: PTX's integer wgmma takes
                       u8 × s8; whether Triton's tl.dot does was not checked)
                fp16   exp2(s - m + log2 448) rounded to FP16 (an extra: a 16-bit P·V, at the FP16 tensor-core rate)
    V schemes   fp32   v - mean, not rounded, mean added back after the division by l (as the kernel's v_offset)
                fp32-raw  v itself, not centered: shows what centering does when P's small weights round to 0
                fp16   v - mean rounded to FP16, mean added back (INT8 V codes are exact in FP16: p_fp16 v_int8 is
                       an FP16 P·V reading 8-bit V)
                e4m3   `sage_quantize_reference`'s v8t/vs/v_offset (the kernel today)
                int8   (v - mean) · 127/amax per channel, amax = max |v - mean| over the keys, rounded to the nearest
                       integer (ties to even); v_offset = mean + amax/127 · mean over the keys of the rounding error,
                       the same correction the E4M3 V carries (kernels/sage_quant.py)
    l           "l raw":     Σ unrounded p, as the kernel and reference do
                "l rounded": Σ rounded p (the normalization consistent with the weights actually used)

The named variants of the study: e4m3 (= `sage_attention_reference`, asserted to ~1e-6 on every case), p_int8,
v_int8, pv_int8, p_fp32_v_fp32 (only Q/K quantized: the floor); "alone" rows isolate one rounding (on top of the
INT8 Q/K that every row has); the last rows are other 8/16-bit choices.

Why "l raw" matters with INT8 P: V is centered, so P's weights that round to 0 leave the numerator while l (from the
unrounded p) keeps their mass: that mass is in effect given V's per-channel mean (v_offset), which is close to the
V average of a diffuse tail. With "l rounded" the lost mass goes to the weights that survive (the peak) instead.

Error: ‖out - exact‖_F / ‖exact‖_F over all heads and measured queries, exact = float64
`scaled_dot_product_attention` of the same inputs (pooled over inputs for dq-tiny). Cases (fixed seeds):
    a. randn            zero-mean Gaussian q, k, v (the worst case for rounding P and V: flat attention)
    b. dit-bias         k = randn + 3·randn(D) per channel, v = randn + 1·randn(D) (the shared channel bias of DiT
                        keys and values; the error's denominator then includes V's mean, see |exact - vmean| printed)
    c. peaked           q·4, q·8 (sharp softmax); "spike f": every query i gets one key perm[i] whose logit is raised
                        by log(f/(1-f) · Σ_j exp(logit_j)) so the spike carries ~f of the row's mass and the rest is a
                        long random tail; "spike 6q": k[perm[i]] += 6·q[i] (the spike takes everything); "local":
                        a positional bump on the logits (peak +12, decaying over a few to hundreds of tokens) and
                        smooth V, so the small weights sit on keys whose values resemble the peak's
    d. bf16             q, k, v made in fp32, rounded to BF16 and handed over as BF16 (the GPU bench's inputs); the
                        outputs here stay fp32 (the kernel would round them to BF16: ~0.1% rms more)
    e. dq-tiny          the q, k, v of every self-attention call (6 blocks × 2 CFG branches; 4 heads × 4,096 tokens,
                        D 32) at two steps of an 8-step sampling of dq-tiny on the CPU (fp32 model; the GPU runs it
                        in BF16); --no-tiny skips it
Per case it also prints: |exact| rms and |exact - V's mean| rms, the mean over rows of the largest softmax weight,
and the mean / max over rows of the fraction of the softmax mass whose P rounded to 0 (per P scheme).

    python -P tools/attention_int8_pv_error.py [--out docs/measurements/attention_int8_pv_error_cpu.txt]
    python -P tools/attention_int8_pv_error.py --quick          # small shapes, a smoke run (~10 s)
    python -P tools/attention_int8_pv_error.py --cases randn-8192-d128 spike-0.5 --no-tiny   # a subset (--list)

Sizes are chosen for under ~10 minutes on 2 CPU cores (torch.set_num_threads(2)). Some cases measure every n-th
block of 128 queries against all keys (Q is quantized whole first; the error is a per-row statistic, so a subset of
rows estimates it without bias): the case line says how many queries.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (python -P leaves it out)
from repo_kernels import import_dq_kernels  # noqa: E402

import_dq_kernels()

import dq_kernels.sage_attention as sa  # noqa: E402
from dq_kernels.sage_attention import round_to_e4m3  # noqa: E402
from dq_kernels.sage_quant import sage_quantize_reference  # noqa: E402

QB = sa.QUANT_BLOCK
BLOCK_N = 64
P_MAX = {"fp32": 448.0, "e4m3": 448.0, "fp16": 448.0, "int8": 127.0, "uint8": 255.0}  # fp32 first: e4m3 reuses p
_MAGIC_RINT = 12582912.0  # 1.5 · 2**23, as kernels/sage_quant.py rounds to INT8

# name: (P scheme, V scheme, l mode)
VARIANTS: dict[str, tuple[str, str, str]] = {
    "e4m3": ("e4m3", "e4m3", "raw"),
    "e4m3, l rounded": ("e4m3", "e4m3", "rounded"),
    "p_int8": ("int8", "e4m3", "raw"),
    "p_int8, l rounded": ("int8", "e4m3", "rounded"),
    "v_int8": ("e4m3", "int8", "raw"),
    "pv_int8": ("int8", "int8", "raw"),
    "pv_int8, l rounded": ("int8", "int8", "rounded"),
    "p_fp32_v_fp32 (floor)": ("fp32", "fp32", "raw"),
    # one rounding alone
    "P e4m3 alone (V fp32)": ("e4m3", "fp32", "raw"),
    "P int8 alone (V fp32)": ("int8", "fp32", "raw"),
    "P int8 alone, l rounded": ("int8", "fp32", "rounded"),
    "P int8, V fp32 not centered": ("int8", "fp32-raw", "raw"),
    "P int8, V not centered, l rounded": ("int8", "fp32-raw", "rounded"),
    "V e4m3 alone (P fp32)": ("fp32", "e4m3", "raw"),
    "V int8 alone (P fp32)": ("fp32", "int8", "raw"),
    # other 8/16-bit options
    "p_uint8 v_int8": ("uint8", "int8", "raw"),
    "p_uint8 v_int8, l rounded": ("uint8", "int8", "rounded"),
    "p_fp16 v_int8": ("fp16", "int8", "raw"),
    "p_fp16 v_fp16": ("fp16", "fp16", "raw"),
}


# ---- the variants ------------------------------------------------------------------------------
def quantize_v_int8(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """v [B, H, S, D] → (codes as fp32 [BH, S, D], scale amax/127 [BH, D], v_offset [BH, D]): per channel around
    the mean, amax = max |v - mean| (the range `smoothing_stats` takes), v_offset = mean + scale · mean(error)."""
    b, h, s, d = v.shape
    vm = v.mean(dim=2, dtype=torch.float32).reshape(b * h, d)
    vmin, vmax = torch.aminmax(v, dim=2)
    vamax = torch.maximum(vmax.float().reshape(b * h, d) - vm, vm - vmin.float().reshape(b * h, d))
    vinv = torch.where(vamax > 0, 127.0 / vamax, torch.zeros_like(vamax))
    vf = (v.float().reshape(b * h, s, d) - vm[:, None, :]) * vinv[:, None, :]
    codes = ((vf.clamp(-127.0, 127.0) + _MAGIC_RINT) - _MAGIC_RINT)
    vs = vamax / 127.0
    return codes, vs, vm + vs * ((vf - codes).sum(dim=1) / s)


def round_p(p: torch.Tensor, scheme: str) -> torch.Tensor:
    if scheme == "fp32":
        return p
    if scheme == "e4m3":
        return round_to_e4m3(p.clamp(max=448.0))
    if scheme == "fp16":
        return p.half().float()
    return torch.round(p.clamp(max=P_MAX[scheme]))  # torch.round: half to even


def all_variants(q, k, v, scale: float, block_n: int = BLOCK_N, chunk: int = 512, q_stride: int = 1,
                 check_queries: int = 256) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """Every variant of VARIANTS on the same INT8 Q/K: [B, H, rows, D] fp32 outputs, per-row diagnostics and the
    query rows measured (every `q_stride`-th block of 128 queries: Q is quantized whole, as the kernel does, and
    only those blocks' rows are computed — the error is a per-row statistic).

    The kernel's online softmax, vectorized over the key tiles (the CPU runs a few large ops much faster than
    thousands of small ones): tile t's P is quantized against the running max m_t = max(tile maxima ≤ t) (a cummax),
    exactly as in the loop, and its contribution to acc and l is weighted by exp2(m_t - m_final), the product of the
    loop's rescale factors α; only the fp32 rounding of those products differs from the loop (~1e-7)."""
    b, h, _, d = q.shape
    z = sage_quantize_reference(q, k, v, scale, QB)
    blocks = torch.arange(0, z.qs.shape[1], q_stride)
    rows = (blocks[:, None] * QB + torch.arange(QB)).flatten()
    rows = rows[rows < z.s_q]
    z = z._replace(q8=z.q8[:, rows], qs=z.qs[:, blocks], s_q=len(rows))
    s_q, s_k = z.s_q, z.s_k
    bh = b * h
    n_tiles = -(-s_k // block_n)
    v_i8, vs_i8, voff_i8 = quantize_v_int8(v)
    vm = v.mean(dim=2, dtype=torch.float32).reshape(bh, d)
    vc = v.float().reshape(bh, s_k, d) - vm[:, None, :]
    ones = torch.ones(bh, d)
    vsrc = {"fp32": (vc, ones, vm), "fp32-raw": (v.float().reshape(bh, s_k, d), ones, torch.zeros(bh, d)),
            "fp16": (vc.half().float(), ones, vm),
            "e4m3": (z.v8t.float().transpose(1, 2)[:, :s_k], z.vs, z.v_offset),
            "int8": (v_i8, vs_i8, voff_i8)}
    pairs = sorted({(ps, vsch) for ps, vsch, _ in VARIANTS.values()})
    p_schemes = [ps for ps in P_MAX if any(ps == pair[0] for pair in pairs)]
    qs = z.qs.repeat_interleave(QB, dim=1)[:, :s_q]  # [BH, Sq]
    ks = z.ks.repeat_interleave(QB, dim=1)[:, :s_k]  # [BH, Sk]
    acc = {pair: torch.zeros(bh, s_q, d) for pair in pairs}
    l_raw = {ps: torch.zeros(bh, s_q) for ps in p_schemes}
    l_rnd = {ps: torch.zeros(bh, s_q) for ps in p_schemes}
    lost = {ps: torch.zeros(bh, s_q) for ps in p_schemes if ps != "fp32"}  # Σ unrounded p where rounded p == 0
    pad = n_tiles * block_n - s_k

    def tile_sum(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # Σ_t w_t Σ_(keys of tile t) x
        x = torch.nn.functional.pad(x, (0, pad)) if pad else x
        return (x.view(x.shape[0], n_tiles, block_n).sum(-1) * w).sum(-1)

    for i in range(bh):
        k8 = z.k8[i, :s_k].float()
        for r0 in range(0, s_q, chunk):
            r1 = min(r0 + chunk, s_q)
            # the scores as the loop makes them: exact int8 products, times one fp32 product qs·ks per element
            s = (z.q8[i, r0:r1].float() @ k8.T).mul_(qs[i, r0:r1, None] * ks[i, None, :])
            sp = torch.nn.functional.pad(s, (0, pad), value=-math.inf) if pad else s
            m_t = torch.cummax(sp.view(r1 - r0, n_tiles, block_n).amax(-1), dim=-1).values  # running max per tile
            w = torch.exp2(m_t - m_t[:, -1:])  # [rows, tiles]: the product of the α that follow tile t
            m_key = m_t.repeat_interleave(block_n, dim=1)[:, :s_k]
            w_key = w.repeat_interleave(block_n, dim=1)[:, :s_k]
            p_round = {}
            for ps in p_schemes:
                if ps in ("e4m3", "fp16") and "fp32" in p_round:
                    p = p_round["fp32"]  # the same exp2 values
                else:
                    p = (s - (m_key - math.log2(P_MAX[ps]))).exp2_()  # as the loop: s - (m_new - log2 P_MAX)
                l_raw[ps][i, r0:r1] = tile_sum(p, w)
                pr = round_p(p, ps)
                if ps != "fp32":
                    l_rnd[ps][i, r0:r1] = tile_sum(pr, w)
                    lost[ps][i, r0:r1] = tile_sum(torch.where(pr == 0, p, 0.0), w)
                else:
                    l_rnd[ps][i, r0:r1] = l_raw[ps][i, r0:r1]
                p_round[ps] = pr
            for ps, vsch in pairs:
                acc[(ps, vsch)][i, r0:r1] = (p_round[ps] * w_key) @ vsrc[vsch][0][i]
            del s, sp, p_round
    outs = {}
    for name, (ps, vsch, lmode) in VARIANTS.items():
        l_ = l_raw[ps] if lmode == "raw" else l_rnd[ps]
        _, vs, voff = vsrc[vsch]
        out = acc[(ps, vsch)] * (1.0 / l_)[..., None] * vs[:, None, :] + voff[:, None, :]
        outs[name] = out.reshape(b, h, s_q, d)
    diag = {"max weight": 448.0 / l_raw["fp32" if "fp32" in l_raw else "e4m3"]}
    for ps in lost:
        diag[f"lost {ps}"] = lost[ps] / l_raw[ps]
    # the check: the e4m3 variant is sage_attention_reference (the loop) on the same pre-pass, on the first
    # `check_queries` queries (the loop's many small ops are slow on a CPU)
    nq = min(s_q, check_queries)
    zq = z._replace(q8=z.q8[:, :nq], qs=z.qs[:, :-(-nq // QB)], s_q=nq)
    ref = sa.sage_attention_reference(q[:, :, :nq].float(), k.float(), v.float(), scale, block_n=block_n,
                                      quantized=zq)
    diag["e4m3 vs reference"] = torch.tensor(rel(outs["e4m3"][:, :, :nq], ref.double()))
    return outs, diag, rows


# ---- inputs ------------------------------------------------------------------------------------
def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).norm() / b.norm()).item()


def exact_attention(q, k, v, scale: float, chunk: int = 1024) -> torch.Tensor:
    """float64 SDPA, a chunk of queries at a time (32k keys × all queries in float64 would not fit)."""
    out = torch.empty(q.shape, dtype=torch.float64)
    kd, vd = k.double(), v.double()
    for i in range(0, q.shape[2], chunk):
        out[:, :, i:i + chunk] = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, i:i + chunk].double(), kd, vd, scale=scale)
    return out


def _local_inputs(g, h: int, s: int, d: int, scale: float, peak: float = 12.0, n_freq: int = 16):
    """Local attention over a 1-D sequence with smooth values: the first 2·n_freq channels of q and k carry
    (cos, sin)(ω_f · position) with periods from 4 to s/2 tokens, so q_i·k_j·scale gets a bump of `peak` at i = j
    that decays over a few to a few hundred tokens; the other channels are randn. v is a moving average over 64
    tokens of randn (unit variance) plus 0.3·randn: neighbours' values are alike, unlike randn's."""
    pos = torch.arange(s, dtype=torch.float64)
    omega = 2 * math.pi / torch.logspace(math.log10(4.0), math.log10(s / 2), n_freq, dtype=torch.float64)
    phase = pos[:, None] * omega[None, :]
    feat = torch.cat([phase.cos(), phase.sin()], dim=-1).float() * math.sqrt(peak / (scale * n_freq))
    q, k = (torch.randn(1, h, s, d, generator=g) for _ in range(2))
    q[..., :2 * n_freq] = feat
    k[..., :2 * n_freq] = feat
    w = 64
    raw = torch.randn(1, h, s + w - 1, d, generator=g)
    smooth = raw.unfold(2, w, 1).mean(-1) * math.sqrt(w)
    v = smooth + 0.3 * torch.randn(1, h, s, d, generator=g)
    return q, k, v


def make_case(kind: str, seed: int, h: int, s: int, d: int, bf16: bool = False):
    """q, k, v [1, H, S, D] for one case (fp32, or BF16 with bf16=True) and the softmax scale."""
    g = torch.Generator().manual_seed(seed)
    scale = 1.0 / math.sqrt(d)
    if kind == "local":
        q, k, v = _local_inputs(g, h, s, d, scale)
    else:
        q, k, v = (torch.randn(1, h, s, d, generator=g) for _ in range(3))
    if kind == "dit-bias":
        k += 3.0 * torch.randn(1, h, 1, d, generator=g)
        v += 1.0 * torch.randn(1, h, 1, d, generator=g)
    elif kind.startswith("q*"):
        q *= float(kind[2:])
    elif kind == "spike-6q":
        perm = torch.randperm(s, generator=g)
        k[:, :, perm] += 6.0 * q
    elif kind.startswith("spike-"):
        f = float(kind[6:])
        perm = torch.randperm(s, generator=g)
        logits = (q.double() @ k.double().transpose(-1, -2)) * scale  # [1, H, S, S]
        lse = torch.logsumexp(logits, dim=-1)
        base = torch.gather(logits, -1, perm.view(1, 1, s, 1).expand(1, h, s, 1))[..., 0]
        bonus = (lse + math.log(f / (1.0 - f)) - base).clamp(min=0.0)  # spike weight / the rest ≈ f / (1 - f)
        qn2 = (q.double() ** 2).sum(-1)
        k[:, :, perm] += (bonus / (scale * qn2))[..., None].float() * q  # raises logit (i, perm[i]) by bonus
        del logits
    elif kind not in ("randn", "local"):
        raise ValueError(kind)
    if bf16:
        q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    return q, k, v, scale


# name: (group, kind, seed, heads, keys, head dim, bf16, query-block stride: every n-th block of 128 queries)
CASES: dict[str, tuple] = {
    "randn-2048-d128": ("a", "randn", 1, 2, 2048, 128, False, 1),
    "randn-2048-d64": ("a", "randn", 2, 2, 2048, 64, False, 1),
    "randn-8192-d128": ("a", "randn", 3, 2, 8192, 128, False, 1),
    "randn-8192-d64": ("a", "randn", 4, 2, 8192, 64, False, 2),
    "randn-32760-d128-h1": ("a", "randn", 5, 1, 32760, 128, False, 8),
    "dit-bias-2048-d128": ("b", "dit-bias", 11, 2, 2048, 128, False, 1),
    "dit-bias-8192-d128": ("b", "dit-bias", 12, 2, 8192, 128, False, 2),
    "dit-bias-8192-d64": ("b", "dit-bias", 13, 2, 8192, 64, False, 2),
    "q*4-8192-d128": ("c", "q*4", 21, 2, 8192, 128, False, 2),
    "q*8-8192-d128": ("c", "q*8", 22, 2, 8192, 128, False, 2),
    "q*4-8192-d64": ("c", "q*4", 23, 2, 8192, 64, False, 2),
    "spike-0.1": ("c", "spike-0.1", 24, 2, 4096, 128, False, 1),
    "spike-0.5": ("c", "spike-0.5", 25, 2, 4096, 128, False, 1),
    "spike-0.9": ("c", "spike-0.9", 26, 2, 4096, 128, False, 1),
    "spike-6q": ("c", "spike-6q", 27, 2, 4096, 128, False, 1),
    "local-4096": ("c", "local", 28, 2, 4096, 128, False, 1),
    "bf16-randn-8192-d128": ("d", "randn", 31, 2, 8192, 128, True, 2),
    "bf16-dit-bias-8192-d128": ("d", "dit-bias", 32, 2, 8192, 128, True, 2),
    "bf16-q*4-8192-d128": ("d", "q*4", 33, 2, 8192, 128, True, 2),
}
QUICK = {  # --quick: the same kinds, small
    "randn-1024-d128": ("a", "randn", 1, 1, 1024, 128, False, 1),
    "randn-1000-d64": ("a", "randn", 2, 1, 1000, 64, False, 2),
    "dit-bias-1024-d128": ("b", "dit-bias", 11, 1, 1024, 128, False, 1),
    "q*8-1024-d128": ("c", "q*8", 22, 1, 1024, 128, False, 1),
    "spike-0.5-1024": ("c", "spike-0.5", 25, 1, 1024, 128, False, 1),
    "local-1024": ("c", "local", 28, 1, 1024, 128, False, 1),
    "bf16-randn-1024-d128": ("d", "randn", 31, 1, 1024, 128, True, 1),
}
GROUPS = {"a": "a. zero-mean random Gaussian", "b": "b. DiT-like: per-channel bias on K (3·randn(D)) and V (1·randn(D))",
          "c": "c. peaked: q scaled up; one spike per query plus a long random tail; local attention, smooth V",
          "d": "d. BF16 inputs (made in fp32, rounded to BF16)",
          "e": "e. dq-tiny's self-attention activations (fp32 on the CPU; pooled over blocks and CFG branches)"}


# ---- the run -----------------------------------------------------------------------------------
class Tally:
    """Squared errors and squared norms summed over one case's inputs (several for dq-tiny), and diagnostics."""

    def __init__(self) -> None:
        self.err2: dict[str, float] = {}
        self.ref2 = 0.0
        self.dev2 = 0.0  # |exact - V's mean|²
        self.n = 0  # output elements
        self.rows: dict[str, list[torch.Tensor]] = {}
        self.check = 0.0
        self.shapes: list[str] = []

    def add(self, q, k, v, scale: float, q_stride: int = 1) -> None:
        outs, diag, rows = all_variants(q, k, v, scale, q_stride=q_stride)
        exact = exact_attention(q[:, :, rows], k, v, scale)
        for name, out in outs.items():
            self.err2[name] = self.err2.get(name, 0.0) + (out.double() - exact).pow(2).sum().item()
        self.ref2 += exact.pow(2).sum().item()
        self.dev2 += (exact - v.double().mean(dim=2, keepdim=True)).pow(2).sum().item()
        self.n += exact.numel()
        for key, x in diag.items():
            if key != "e4m3 vs reference":
                self.rows.setdefault(key, []).append(x.flatten())
        self.check = max(self.check, diag["e4m3 vs reference"].item())
        self.shapes.append(f"{q.shape[0]}×{q.shape[1]}×{len(rows)} of {q.shape[2]} queries × {k.shape[2]} keys, "
                           f"D {q.shape[3]}, {str(q.dtype)[6:]}")

    def errors(self) -> dict[str, float]:
        return {name: math.sqrt(e / self.ref2) for name, e in self.err2.items()}

    def summary(self) -> str:
        rows = {key: torch.cat(x) for key, x in self.rows.items()}
        lost = ", ".join(f"{key[5:]} {x.mean().item():.3g} / {x.max().item():.3g}" for key, x in rows.items()
                         if key.startswith("lost"))
        shapes = self.shapes[0] if len(set(self.shapes)) == 1 else "; ".join(sorted(set(self.shapes)))
        n_in = f"{len(self.shapes)} inputs of " if len(self.shapes) > 1 else ""
        return (f"{n_in}{shapes}; |exact| rms {math.sqrt(self.ref2 / self.n):.4g}, |exact - vmean| rms "
                f"{math.sqrt(self.dev2 / self.n):.4g}; mean max weight {rows['max weight'].mean().item():.3g}; "
                f"P mass rounded to 0, mean / max over rows: {lost}; e4m3 vs sage_attention_reference "
                f"{self.check:.2g}")


def run_case(name: str, spec: tuple, say: Callable[[str], None]) -> dict[str, float]:
    _, kind, seed, h, s, d, bf16, q_stride = spec
    t0 = time.perf_counter()
    q, k, v, scale = make_case(kind, seed, h, s, d, bf16)
    tally = Tally()
    tally.add(q, k, v, scale, q_stride)
    assert tally.check < 1e-5, f"{name}: the e4m3 variant differs from sage_attention_reference by {tally.check:.3g}"
    say(f"{name} (seed {seed}): {tally.summary()}; {time.perf_counter() - t0:.0f} s")
    return tally.errors()


class _Enough(Exception):
    pass


def run_tiny(steps: int, capture: tuple[int, ...], q_stride: int, say: Callable[[str], None]) -> dict[str, dict]:
    """Sample dq-tiny on the CPU for `steps` steps (stopped after the last captured step), capture the q, k, v of
    every self-attention call (all blocks, both CFG branches) at the `capture` steps, and run every variant."""
    import torch.nn.functional as F

    from dq_cli.models import load_model

    t0 = time.perf_counter()
    adapter = load_model("dq-tiny", device="cpu")
    d = adapter.defaults
    caught: dict[int, list] = {i: [] for i in capture}

    class Capture(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, a=(), kw=None):
            kw = kw or {}
            if func is F.scaled_dot_product_attention:
                step = adapter.state.step
                if step > max(capture):
                    raise _Enough
                q, k, v = (kw.get(n, a[i] if i < len(a) else None) for i, n in enumerate(("query", "key", "value")))
                if step in caught and k.shape[2] == q.shape[2]:  # self-attention (cross-attention: 16 text keys)
                    assert kw.get("attn_mask") is None and not kw.get("is_causal")
                    caught[step].append((q.clone(), k.clone(), v.clone(), kw.get("scale")))
            return func(*a, **kw)

    try:
        with Capture():
            adapter.generate("a red circle moving right on a blue background", steps=steps, guidance=d.guidance,
                             seed=0, frames=d.frames, height=d.height, width=d.width)
    except _Enough:
        pass
    say(f"dq-tiny: {steps}-step schedule, self-attention captured at steps {capture} "
        f"({', '.join(str(len(x)) for x in caught.values())} calls); {time.perf_counter() - t0:.0f} s")
    results = {}
    for step, calls in caught.items():
        t0 = time.perf_counter()
        tally = Tally()
        for q, k, v, scale in calls:
            tally.add(q, k, v, 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale, q_stride)
        name = f"dq-tiny step {step}/{steps}"
        assert tally.check < 1e-5, f"{name}: the e4m3 variant differs from sage_attention_reference by {tally.check:.3g}"
        say(f"{name}: {tally.summary()}; {time.perf_counter() - t0:.0f} s")
        results[name] = tally.errors()
    return results


def table(cases: list[str], results: dict[str, dict[str, float]]) -> list[str]:
    w = max(10, max(len(c) for c in cases) + 2)
    lw = max(len(v) for v in VARIANTS)
    lines = [f"{'variant':{lw}s}" + "".join(f"{c:>{w}s}" for c in cases)]
    for vname in VARIANTS:
        lines.append(f"{vname:{lw}s}" + "".join(f"{100 * results[c][vname]:>#{w}.4g}" for c in cases))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="also write the output to this file")
    ap.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    ap.add_argument("--cases", nargs="+", help="a subset of the synthetic cases (see --list)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--no-tiny", action="store_true", help="skip dq-tiny's activations (group e)")
    ap.add_argument("--tiny-steps", type=int, default=8, help="dq-tiny's schedule length")
    ap.add_argument("--tiny-capture", type=int, nargs="+", default=[0, 4], help="dq-tiny steps to capture")
    ap.add_argument("--tiny-stride", type=int, default=4, help="every n-th block of 128 queries of dq-tiny's calls")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    catalog = QUICK if args.quick else CASES
    if args.list:
        for name, spec in catalog.items():
            print(name, spec)
        return
    names = args.cases or list(catalog)
    unknown = [n for n in names if n not in catalog]
    if unknown:
        ap.error(f"unknown cases {unknown}; --list shows them")
    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    say(f"# python -P tools/attention_int8_pv_error.py {' '.join(sys.argv[1:])}".rstrip())
    say(f"# {datetime.datetime.now().isoformat(timespec='seconds')}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; block_n {BLOCK_N}, "
        f"quant block {QB}; tables: relative Frobenius error against float64 SDPA, in %")
    t0 = time.perf_counter()
    results: dict[str, dict[str, float]] = {}
    groups = {n: catalog[n][0] for n in names}
    with torch.inference_mode():
        for name in names:
            results[name] = run_case(name, catalog[name], say)
        if not args.no_tiny and not args.quick:
            tiny = run_tiny(args.tiny_steps, tuple(args.tiny_capture), args.tiny_stride, say)
            results |= tiny
            groups |= {n: "e" for n in tiny}
    for group, title in GROUPS.items():
        cols = [n for n in groups if groups[n] == group]
        if cols:
            say()
            say(f"## {title}")
            for line in table(cols, results):
                say(line)
    say()
    say(f"# total {time.perf_counter() - t0:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
