"""What 6Bit-Diffusion learns from a sampling run: per block and step its input/output distance Γ,
per quantized linear and step the relative error E_rel of each candidate activation route, and per
block the step-to-step change of its residual Δ = out − in (what the Temporal Delta Cache uses).

The metrics are small pure functions (their L1 sums are `dq_kernels.residual_l1.l1_parts`, the
reference of the one-pass kernel with which the runtime takes Γ and the Δ change);
`Trajectories` holds them in dense arrays indexed [prompt, step, branch, block(, linear, route)],
NaN where nothing ran (another expert's blocks, a branch without CFG), so that time-shifted pairs
are plain array slices and a missing step can never pair by accident.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dq_kernels.residual_l1 import l1_parts

BRANCHES = ("cond", "uncond")
EPS = 1e-12


# ---- metrics (per batch row: a batched CFG forward holds both branches) ---------------------------
def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().reshape(x.shape[0], -1)


def gamma(block_in: torch.Tensor, block_out: torch.Tensor) -> torch.Tensor:
    """Γ = ‖out − in‖₁ / ‖in‖₁ per batch row: how much a block changes its input."""
    num, den = l1_parts(block_out, block_in)
    return num / den.clamp_min(EPS)


def rel_l1_change(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """‖new − old‖₁ / ‖old‖₁ per batch row (TDC's change of the residual between two steps)."""
    num, den = l1_parts(new, old)
    return num / den.clamp_min(EPS)


def cosine(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(_rows(new), _rows(old), dim=1, eps=EPS)


def rel_error(y_q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """E_rel = ‖Y_q − Y‖₂ / ‖Y‖₂ per batch row."""
    a, b = _rows(y_q), _rows(y)
    return (a - b).norm(dim=1) / b.norm(dim=1).clamp_min(EPS)


def outlier_ratio(x: torch.Tensor) -> float:
    """max|X| / mean|X|: the paper refreshes layers above 25 in 16 bits."""
    a = x.detach().float().abs()
    return float(a.max() / a.mean().clamp_min(EPS))


# ---- storage ---------------------------------------------------------------------------------------
@dataclass
class Trajectories:
    """Dense trajectories of one calibration run. `blocks` are named `<component>.<blocks path>.<i>`
    (one list across Wan 2.2's experts: an expert's blocks are NaN on the other's steps)."""

    blocks: list[str]
    linears: list[str]            # the quantized linears inside blocks
    linear_block: list[int]       # index into `blocks` of each linear
    routes: list[str]
    prompts: int
    steps: int
    branches: tuple[str, ...] = BRANCHES
    gamma: torch.Tensor = field(init=False)        # [P, S, Br, B]
    delta_rel_l1: torch.Tensor = field(init=False)  # [P, S, Br, B]: Δ(t) vs Δ(t−1)
    delta_cos: torch.Tensor = field(init=False)     # [P, S, Br, B]
    erel: torch.Tensor = field(init=False)          # [P, S, Br, L, R]

    def __post_init__(self):
        nan = lambda *s: torch.full(s, float("nan"))  # noqa: E731
        shape = (self.prompts, self.steps, len(self.branches), len(self.blocks))
        self.gamma, self.delta_rel_l1, self.delta_cos = nan(*shape), nan(*shape), nan(*shape)
        self.erel = nan(self.prompts, self.steps, len(self.branches), len(self.linears), len(self.routes))

    def branch_index(self, branch: str) -> int:
        return self.branches.index(branch) if branch in self.branches else 0

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"traj.gamma": self.gamma, "traj.delta_rel_l1": self.delta_rel_l1,
                "traj.delta_cos": self.delta_cos, "traj.erel": self.erel}

    def describe(self) -> dict:
        """The JSON side: what each axis of the tensors means."""
        return {"blocks": self.blocks, "linears": self.linears, "linear_block": self.linear_block,
                "routes": self.routes, "prompts": self.prompts, "steps": self.steps,
                "branches": list(self.branches),
                "axes": {"gamma": "prompt, step, branch, block", "delta_rel_l1": "prompt, step, branch, block",
                         "delta_cos": "prompt, step, branch, block", "erel": "prompt, step, branch, linear, route"}}

    @classmethod
    def from_artifact(cls, doc: dict, tensors: dict[str, torch.Tensor]) -> "Trajectories":
        t = cls(doc["blocks"], doc["linears"], doc["linear_block"], doc["routes"], doc["prompts"], doc["steps"],
                tuple(doc["branches"]))
        t.gamma, t.delta_rel_l1 = tensors["traj.gamma"], tensors["traj.delta_rel_l1"]
        t.delta_cos, t.erel = tensors["traj.delta_cos"], tensors["traj.erel"]
        return t


def shifted_pairs(traj: Trajectories, linear: int, route: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Γ(t−1), E_rel(t)) of one linear over every prompt, branch and step where both exist: the
    block's Γ at the previous step of the same prompt, branch and expert."""
    block = traj.linear_block[linear]
    x = traj.gamma[:, :-1, :, block]
    y = traj.erel[:, 1:, :, linear, route]
    ok = torch.isfinite(x) & torch.isfinite(y)
    return x[ok].double(), y[ok].double()
