"""The Temporal Delta Cache's policy (6Bit-Diffusion): a block whose residual Δ = out − in changes
little from step to step is skipped and its cached Δ added to its input instead.

Per block, per CFG branch, per expert, one `BlockState`. Each computed step measures the rate of
change of Δ, r = ‖Δ(t) − Δ(t')‖₁/‖Δ(t')‖₁ / (t − t') against the last computed step t'. A step is
skipped while the change accumulated since the last computation (one r per skipped step) stays
under τ, at most `max_skips` in a row; the first step and the first after a reset are always
computed (two computed steps are needed for a rate). This module is pure bookkeeping, shared by
the runtime hook (dq_cli/quant/runtime.py) and the estimate on calibration trajectories.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TDCConfig:
    tau: float = 0.05
    max_skips: int = 2
    refresh_ratio: float | None = None  # on the step after a skip, layers above this max/mean run 16-bit


@dataclass
class BlockState:
    """One block's memory for one (expert, CFG branch) stream."""

    expert: str | None = None
    last_step: int = -1
    last_computed: int = -1
    delta: tuple | None = None      # cached residual(s): hidden states (and encoder states, CogVideoX)
    rate: float | None = None       # last measured relative change of Δ per step
    acc: float = 0.0                # change accumulated over the current run of skips
    skips: int = 0                  # skips in a row
    gamma: float | None = None      # Γ at the last step, None if that step was skipped (or none yet)

    def stale(self, step: int, expert: str) -> bool:
        """A new expert (Wan 2.2's switch) or a new sampling run (the step went back) starts over."""
        return expert != self.expert or step <= self.last_step


def should_skip(state: BlockState, cfg: TDCConfig | None) -> bool:
    if cfg is None or state.delta is None or state.rate is None or state.skips >= cfg.max_skips:
        return False
    return state.acc + state.rate < cfg.tau


def on_skip(state: BlockState, step: int) -> None:
    state.acc += state.rate
    state.skips += 1
    state.gamma = None  # no Γ at a skipped step: the next step takes the safe route
    state.last_step = step


def on_compute(state: BlockState, step: int, delta: tuple, change: float | None, gamma: float | None) -> None:
    """`change` = ‖Δ(t) − Δ_cached‖₁/‖Δ_cached‖₁ (None when nothing was cached)."""
    if change is not None and state.last_computed >= 0:
        state.rate = change / max(step - state.last_computed, 1)
    state.delta, state.gamma = delta, gamma
    state.acc, state.skips = 0.0, 0
    state.last_step = state.last_computed = step


def simulate(changes: torch.Tensor, cfg: TDCConfig) -> torch.Tensor:
    """Which steps TDC would skip on one block's calibration trajectory. `changes[t]` is the
    measured ‖Δ(t) − Δ(t−1)‖₁/‖Δ(t−1)‖₁ (NaN at t = 0). A skipped run's change against the last
    computed Δ is not in the data: it is estimated by the sum of the per-step changes over the gap."""
    state, skipped = BlockState(expert=""), torch.zeros(changes.numel(), dtype=torch.bool)
    for t in range(changes.numel()):
        if should_skip(state, cfg):
            on_skip(state, t)
            skipped[t] = True
            continue
        gap = changes[state.last_computed + 1: t + 1] if state.last_computed >= 0 else changes[:0]
        change = float(gap.sum()) if gap.numel() and torch.isfinite(gap).all() else None
        on_compute(state, t, (None,), change, None)
    return skipped
