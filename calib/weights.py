"""Weight-side methods learned from calibration data: SmoothQuant smoothing and SVDQuant's
low-rank branch, searched together per layer as SVDQuant does.

For a layer Y = X Wᵀ with smoothing λ ∈ R^K:  X Wᵀ = (X/λ)(W·λ)ᵀ, and W·λ = L₁L₂ + R with the
16-bit low-rank L₁ [N, r], L₂ [r, K] and the residual R quantized to 4 bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dq_kernels.formats import fake_quant, k_multiple, pack_weight, pad_k, unpack_weight

SEARCH_TOKENS = 1024        # calibration tokens used to score a candidate
REFINE_ITERS = 8            # L ← SVD_r(W − Q(W − L)) at most this often
REFINE_TOLERANCE = 1e-3     # stop when the quantization error improves by less than this (relative)


@dataclass
class WeightFit:
    smooth: torch.Tensor | None       # λ [K] fp32, or None (no smoothing)
    lora_up: torch.Tensor | None      # L₁ [N, r] bf16
    lora_down: torch.Tensor | None    # L₂ [r, K] bf16
    alpha: float | None
    error: float                      # relative output error on the calibration tokens
    refine_steps: int = 0


def smoothing_vector(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant: λ_j = max|X_j|^α / max|W_j|^(1−α), migrating outliers from X into W."""
    w_absmax = weight.float().abs().amax(dim=0)
    lam = act_absmax.float().clamp_min(1e-5).pow(alpha) / w_absmax.clamp_min(1e-5).pow(1 - alpha)
    return lam.clamp(1e-4, 1e4)


def quantize_residual(w: torch.Tensor, fmt: str, group_size: int) -> torch.Tensor:
    """Q(w) in fp32 for a weight [N, K] (K padded here as the format needs)."""
    k = w.shape[1]
    padded = pad_k(w, k_multiple(fmt, group_size))
    return unpack_weight(pack_weight(padded, fmt, group_size), fmt, group_size)[:, :k]


def low_rank(w: torch.Tensor, rank: int, fmt: str, group_size: int, iters: int = REFINE_ITERS,
             generator_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """SVDQuant's branch: a randomized SVD of w, refined by L ← SVD_r(w − Q(w − L)) while the
    quantization error ‖w − L − Q(w − L)‖ keeps improving. Factors come back in bf16 (the error
    is measured with the rounded factors, as they will be used)."""

    def svd_r(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generator_seed)
            u, s, v = torch.svd_lowrank(m, q=min(rank + 8, min(m.shape)), niter=4)
        up = (u[:, :rank] * s[:rank].sqrt()).to(torch.bfloat16)
        down = (v[:, :rank] * s[:rank].sqrt()).T.contiguous().to(torch.bfloat16)
        return up, down

    def error(up, down) -> float:
        resid = w - up.float() @ down.float()
        return (resid - quantize_residual(resid, fmt, group_size)).norm().item()

    up, down = svd_r(w)
    best, steps = error(up, down), 0
    for _ in range(iters):
        resid = w - up.float() @ down.float()
        cand_up, cand_down = svd_r(w - quantize_residual(resid, fmt, group_size))
        err = error(cand_up, cand_down)
        if err > best * (1 - REFINE_TOLERANCE):
            break
        up, down, best, steps = cand_up, cand_down, err, steps + 1
    return up, down, steps


def output_error(tokens: torch.Tensor, weight: torch.Tensor, fit_smooth, up, down, fmt: str, act_fmt: str,
                 group_size: int) -> float:
    """‖Ŷ − Y‖ / ‖Y‖ on calibration tokens, activations rounded per token/group (RTN): the
    reservoir holds scattered tokens, not whole cubes, so DeltaQuant layers are scored this way too."""
    x = tokens.float()
    y = x @ weight.float().T
    xs = x / fit_smooth if fit_smooth is not None else x
    ws = weight.float() * fit_smooth if fit_smooth is not None else weight.float()
    y_hat = torch.zeros_like(y)
    if up is not None:
        y_hat += (xs @ down.float().T) @ up.float().T
        ws = ws - up.float() @ down.float()
    xq = fake_quant(pad_k(xs, k_multiple(act_fmt, group_size)), act_fmt, group_size)[:, : x.shape[1]]
    y_hat += xq @ quantize_residual(ws, fmt, group_size).T
    return ((y_hat - y).norm() / y.norm().clamp_min(1e-12)).item()


def fit_layer(weight: torch.Tensor, tokens: torch.Tensor, act_absmax: torch.Tensor | None, *, fmt: str,
              act_fmt: str, group_size: int, rank: int, alphas: tuple[float, ...] | None) -> WeightFit:
    """Search the migration strength (with the low-rank branch inside the search) and fit the
    final branch. `alphas` None: no smoothing."""
    w = weight.float()
    tokens = tokens[:SEARCH_TOKENS].float()
    candidates = alphas if alphas else (None,)
    best: WeightFit | None = None
    for alpha in candidates:
        lam = smoothing_vector(act_absmax, w, alpha) if alpha is not None else None
        ws = w * lam if lam is not None else w
        up = down = None
        steps = 0
        if rank > 0:
            up, down, steps = low_rank(ws, rank, fmt, group_size, iters=2 if len(candidates) > 1 else REFINE_ITERS)
        err = output_error(tokens, w, lam, up, down, fmt, act_fmt, group_size)
        if best is None or err < best.error:
            best = WeightFit(lam, up, down, alpha, err, steps)
    if rank > 0 and len(candidates) > 1:  # the search used short refinements: finish the winner
        ws = w * best.smooth if best.smooth is not None else w
        best.lora_up, best.lora_down, best.refine_steps = low_rank(ws, rank, fmt, group_size)
        best.error = output_error(tokens, w, best.smooth, best.lora_up, best.lora_down, fmt, act_fmt, group_size)
    return best
