"""The PNGs of `dq predictor-fit` (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import torch

from dq_calib.predictor import Decisions, LayerPredictor
from dq_calib.trajectories import Trajectories, shifted_pairs


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scatter_fits(path: Path, traj: Trajectories, layers: dict[str, LayerPredictor], route: str, n: int = 3) -> list[str]:
    """Γ(t−1) vs E_rel(t) with the fitted line, for the `n` best- and `n` worst-predicted layers
    (by R²). Returns the layers drawn."""
    plt = _pyplot()
    ranked = sorted((name for name in layers if layers[name].r2 == layers[name].r2), key=lambda k: -layers[k].r2)
    chosen = list(dict.fromkeys(ranked[:n] + ranked[-n:]))
    r = traj.routes.index(route)
    cols = max(1, min(3, len(chosen)))
    rows = max(1, (len(chosen) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(chosen):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, chosen):
        i = traj.linears.index(name)
        x, y = shifted_pairs(traj, i, r)
        p = layers[name]
        ax.scatter(x.numpy(), y.numpy(), s=6, alpha=0.5)
        if x.numel():
            xs = torch.linspace(float(x.min()), float(x.max()), 2)
            ax.plot(xs.numpy(), (p.alpha * xs + p.beta).numpy(), color="C3")
        tag = "best" if name in ranked[:n] else "worst"
        ax.set_title(f"{tag}: {name.split('.', 1)[1]}\nR²={p.r2:.2f} α={p.alpha:.3g} β={p.beta:.3g}", fontsize=8)
        ax.set_xlabel("Γ(t−1)", fontsize=8)
        ax.set_ylabel(f"E_rel(t), {route}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return chosen


def bit_map(path: Path, traj: Trajectories, d: Decisions, threshold: float, low_bits: float, safe_bits: float) -> None:
    """Average activation bits per layer (rows) and step (columns) on the calibration set."""
    plt = _pyplot()
    safe = (d.predicted > threshold).double()
    bits = safe * safe_bits + (1 - safe) * low_bits
    grid = torch.zeros(len(traj.linears), traj.steps, dtype=torch.float64)
    count = torch.zeros_like(grid)
    grid.index_put_((d.layer, d.step), bits, accumulate=True)
    count.index_put_((d.layer, d.step), torch.ones_like(bits), accumulate=True)
    grid = grid / count.clamp_min(1)
    fig, ax = plt.subplots(figsize=(max(4, 0.3 * traj.steps + 2), max(3, 0.12 * len(traj.linears) + 1)))
    im = ax.imshow(grid.numpy(), aspect="auto", cmap="viridis", vmin=low_bits, vmax=safe_bits, interpolation="nearest")
    ax.set_xlabel("step")
    ax.set_ylabel("layer")
    step = max(1, len(traj.linears) // 40)
    ax.set_yticks(range(0, len(traj.linears), step))
    ax.set_yticklabels([n.split(".", 1)[1] for n in traj.linears[::step]], fontsize=5)
    ax.set_title("activation bits per layer and step (calibration set)", fontsize=9)
    fig.colorbar(im, ax=ax, label="bits")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def delta_similarity(path: Path, traj: Trajectories) -> None:
    """Cosine similarity of Δ(t) and Δ(t−1) per block (rows) and step, mean over prompts and branches."""
    plt = _pyplot()
    cos = traj.delta_cos.double()
    ok = torch.isfinite(cos)
    mean = torch.where(ok, cos, 0).sum((0, 2)) / ok.sum((0, 2)).clamp_min(1)     # [S, B]
    mean = torch.where(ok.any(2).any(0), mean, float("nan")).T
    fig, ax = plt.subplots(figsize=(max(4, 0.3 * traj.steps + 2), max(2.5, 0.25 * len(traj.blocks) + 1)))
    im = ax.imshow(mean.numpy(), aspect="auto", cmap="magma", vmin=float(torch.nan_to_num(mean, 1.0).min()),
                   vmax=1.0, interpolation="nearest")
    ax.set_xlabel("step")
    ax.set_ylabel("block")
    ax.set_yticks(range(len(traj.blocks)))
    ax.set_yticklabels(traj.blocks, fontsize=6)
    ax.set_title("cos(Δ(t), Δ(t−1)) per block and step", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
