"""`QuantLinear`: one module type for every quantized linear layer.

It holds the packed weight tensors of its format and, for the methods that use them, the
smoothing vector λ and the 16-bit low-rank factors, all as buffers: `state_dict()` is exactly what
the checkpoint stores, so its size is the real size. The forward is the reference math:

    Y = (X/λ)·L₂ᵀL₁ᵀ + Q_act(X/λ)·Q(W·λ − L₁L₂)ᵀ + b

where Q_act is round-to-nearest or DeltaQuant's cube split (dq_cli/quant/activations.py).
On CUDA, the formats the Triton kernels implement run there instead (dq_cli/quant/kernel_path.py).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from dq_cli.models.base import ForwardState
from dq_cli.quant.activations import CORE_GROUP, cube_at, quantize_input
from dq_cli.quant.kernel_path import kernel_forward, wants_kernels
from dq_cli.quant.plan import LayerPlan
from dq_cli.quant.sequence import outlier_ratio
from dq_kernels.checks import check_finite, finite_checks_on
from dq_kernels.formats import k_multiple, pack_weight, pad_k, unpack_weight
from dq_kernels.hadamard import block_hadamard
from dq_kernels.smoothing import apply_smooth


class QuantLinear(nn.Module):
    is_quant_linear = True  # lets adapters list it beside nn.Linear without importing it

    def __init__(self, in_features: int, out_features: int, plan: LayerPlan, name: str,
                 tensors: dict[str, torch.Tensor], bias: torch.Tensor | None = None,
                 smooth: torch.Tensor | None = None, lora_up: torch.Tensor | None = None,
                 lora_down: torch.Tensor | None = None, sees_video: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.plan, self.name, self.sees_video = plan, name, sees_video
        self.tensor_names = tuple(tensors)
        for key, value in tensors.items():
            self.register_buffer(key, value)
        self.register_buffer("bias", bias)
        self.register_buffer("smooth", smooth)
        self.register_buffer("lora_up", lora_up)
        self.register_buffer("lora_down", lora_down)
        # Set by the model adapter: where sampling is (grid, step) for DeltaQuant's cubes.
        self.forward_state: ForwardState | None = None
        # Set per step by 6Bit-Diffusion's block hook (dq_cli/quant/runtime.py): the activation route
        # ("nvfp4", "int8", "deltaquant"; None = the plan's), and on a TDC refresh the max/mean ratio
        # above which the input stays unquantized. `last_route` says what the last call took.
        self.route: str | None = None
        self.refresh_ratio: float | None = None
        self.last_route: str | None = None
        # Set by that hook's install: the route and refresh change from step to step, so a compiled
        # block runs this layer eagerly (a graph break) rather than recompiling for each route mix.
        self.stepwise = False
        # DeltaQuant's cube (t, h, w) for the current forward, resolved by the model's forward tracker
        # before the forward (`resolve_cube`), outside any compiled region: torch.compile then guards
        # on the cube, which changes once or twice a run, not on the step, which changes every step.
        self.cube: tuple[int, int, int] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, plan: LayerPlan, name: str, sees_video: bool = True,
                    smooth: torch.Tensor | None = None, lora_up: torch.Tensor | None = None,
                    lora_down: torch.Tensor | None = None) -> "QuantLinear":
        weight = linear.weight.detach().float()
        check_finite(weight, name, "weight")
        if smooth is not None:
            weight = weight * smooth.float()
        if lora_up is not None:
            weight = weight - lora_up.float() @ lora_down.float()
        weight = pad_k(weight, k_multiple_of(plan))
        if plan.hadamard:  # stored rotated: the input is rotated by the same H_b on the fly
            weight = block_hadamard(weight, plan.hadamard)
        tensors = pack_weight(weight, plan.weight, plan.group_size)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(linear.in_features, linear.out_features, plan, name, tensors, bias, smooth, lora_up, lora_down,
                   sees_video)

    @classmethod
    def empty_like(cls, linear: nn.Linear, plan: LayerPlan, name: str, sees_video: bool = True) -> "QuantLinear":
        """The same buffers, shaped and typed, on the meta device: to be filled by a checkpoint.
        Shapes come from packing one row (every format is row-wise, bar 0-dim tensor scales)."""
        k, n = linear.in_features, linear.out_features
        row = pack_weight(torch.ones(1, k + (-k % k_multiple_of(plan))), plan.weight, plan.group_size)
        meta = lambda shape, dtype: torch.empty(shape, dtype=dtype, device="meta")  # noqa: E731
        tensors = {name_: meta((n, *v.shape[1:]) if v.dim() else (), v.dtype) for name_, v in row.items()}
        bias = None if linear.bias is None else meta((n,), linear.bias.dtype)
        smooth = meta((k,), torch.float32) if uses_smoothing(plan) else None
        up = meta((n, plan.rank), torch.bfloat16) if uses_low_rank(plan) else None
        down = meta((plan.rank, k), torch.bfloat16) if uses_low_rank(plan) else None
        return cls(k, n, plan, name, tensors, bias, smooth, up, down, sees_video)

    def stored_weight(self) -> torch.Tensor:
        """fp32 [N, K padded]: the dequantized stored tensors (rotated when the plan says so)."""
        tensors = {k: getattr(self, k) for k in self.tensor_names}
        return unpack_weight(tensors, self.plan.weight, self.plan.group_size)

    def residual_weight(self) -> torch.Tensor:
        """fp32 [N, K]: the dequantized 4/8-bit part, Q(W·λ − L₁L₂) (padding dropped)."""
        w = self.stored_weight()
        if self.plan.hadamard:
            w = block_hadamard(w, self.plan.hadamard)  # H_b is its own inverse
        return w[:, : self.in_features]

    def effective_weight(self) -> torch.Tensor:
        """fp32 [N, K] that the layer multiplies unquantized inputs by: (Q(R) + L₁L₂) / λ."""
        w = self.residual_weight()
        if self.lora_up is not None:
            w = w + self.lora_up.float() @ self.lora_down.float()
        return w / self.smooth.float() if self.smooth is not None else w

    def resolve_cube(self, progress: float | None) -> None:
        """Fix this forward's cube from the progress through sampling (None: unset)."""
        self.cube = cube_at(self.plan, progress) if progress is not None else None

    def current_cube(self) -> tuple[int, int, int]:
        """The cube size for this forward: as resolved by the tracker, else from the forward state."""
        return self.cube if self.cube is not None else cube_at(self.plan, self.forward_state.progress)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stepwise and torch.compiler.is_compiling():
            return _eager_forward(self, x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        # The check reads a flag back to the host: not traced (a graph break) under torch.compile.
        if not torch.compiler.is_compiling() and finite_checks_on(x):
            check_finite(x, self.name)
        shape = x.shape
        if wants_kernels(x):
            y = kernel_forward(self, x.reshape(-1, shape[-2] if x.dim() > 2 else shape[0], self.in_features))
            if y is not None:
                return y.reshape(*shape[:-1], self.out_features).to(x.dtype)
        return self.reference_forward(x)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The PyTorch reference math, whatever the device (the kernels' oracle)."""
        shape = x.shape
        xs = x.reshape(-1, shape[-2] if x.dim() > 2 else shape[0], self.in_features).float()
        xs = apply_smooth(xs, self.smooth)  # X·(1/λ), as the kernels (dq_kernels.smoothing)
        plan = self.active_plan(xs)
        y, xin = self.gemm_input(xs, plan)
        w = self.stored_weight()
        # The weight is the same packed tensors whatever the route: the INT8 route multiplies 8-bit
        # activations by the 4-bit weight unpacked on the fly (no second copy of the weight).
        cube = self.current_cube() if self.forward_state is not None else None
        xq = quantize_input(xin, plan, self.forward_state, self.sees_video, cube)
        y += xq[..., : w.shape[1]] @ w.T
        if self.bias is not None:
            y += self.bias.float()
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def gemm_input(self, xs: torch.Tensor, plan: LayerPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """From the smoothed input xs [B, S, K] (fp32) and the step's plan: (y [B, S, N] fp32 holding
        the 16-bit low-rank branch, the 4/8-bit GEMM's input padded for the route and rotated, not
        yet rounded). Shared by the reference and dq_cli/quant/carrier_path.py."""
        y = torch.zeros(*xs.shape[:-1], self.out_features, dtype=torch.float32, device=xs.device)
        if self.lora_up is not None:  # the 16-bit branch sees the unquantized (smoothed) input
            y += self.low_rank_down(xs).float() @ self.lora_up.float().T
        return y, self.route_input(xs, plan)

    def low_rank_down(self, xs: torch.Tensor) -> torch.Tensor:
        """The low-rank branch's first product, xs·L₂ᵀ [..., R], in the factors' dtype."""
        return xs.to(self.lora_down.dtype) @ self.lora_down.T

    def route_input(self, xs: torch.Tensor, plan: LayerPlan) -> torch.Tensor:
        """The 4/8-bit GEMM's input: xs padded for the route and rotated, not yet rounded."""
        xin = pad_k(xs, k_multiple_of(self.plan))
        if self.plan.hadamard:
            xin = block_hadamard(xin, self.plan.hadamard)
        return pad_k(xin, k_multiple_of(plan))

    def active_plan(self, xs: torch.Tensor) -> LayerPlan:
        route = self.route
        shard = self.forward_state.shard if self.forward_state is not None else None
        if self.refresh_ratio is not None and outlier_ratio(xs, shard) > self.refresh_ratio:
            route = "none"
        self.last_route = route or self.plan.activation
        return self.plan if route is None else route_plan(self.plan, route)

    def extra_repr(self) -> str:
        p = self.plan
        extra = f", rank={p.rank}" if self.lora_up is not None else ""
        return (f"{self.in_features}→{self.out_features}, method={p.method}, W={p.weight}, A={p.activation}, "
                f"group={p.group_size}{extra}")


@torch.compiler.disable
def _eager_forward(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    return layer._forward(x)


def route_plan(plan: LayerPlan, route: str) -> LayerPlan:
    """The plan of one activation route: plain round-to-nearest NVFP4 / INT8 per token, DeltaQuant's
    cube split with NVFP4 deltas, or "none" (16 bits). Weights are untouched by the route."""
    if route == "deltaquant":
        return replace(plan, method="deltaquant", activation="nvfp4")
    if route in ("nvfp4", "int8", "none"):
        return replace(plan, method="rtn" if plan.method == "deltaquant" else plan.method, activation=route)
    raise ValueError(f"unknown activation route {route!r}")


def uses_smoothing(plan: LayerPlan) -> bool:
    return plan.method in ("smoothquant", "svdquant", "deltaquant")


def uses_low_rank(plan: LayerPlan) -> bool:
    return plan.method in ("svdquant", "deltaquant") and plan.rank > 0


def k_multiple_of(plan: LayerPlan) -> int:
    """Pad K to serve the weight's, the activation's and the core tokens' grouping."""
    core = CORE_GROUP if plan.method == "deltaquant" else 1
    return math.lcm(k_multiple(plan.weight, plan.group_size), k_multiple(plan.activation, plan.group_size), core,
                    plan.hadamard or 1)
