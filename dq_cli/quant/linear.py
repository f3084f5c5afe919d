"""`QuantLinear`: one module type for every quantized linear layer.

It holds the packed weight tensors of its format (and, for the methods that use them, a smoothing
vector and low-rank factors) as buffers, so `state_dict()` is exactly what the checkpoint stores
and its size is the real size. The forward is the PyTorch reference math.
"""

from __future__ import annotations

import torch
from torch import nn

from dq_cli.quant.formats import fake_quant, k_multiple, pack_weight, pad_k, unpack_weight
from dq_cli.quant.plan import LayerPlan
from dq_kernels.checks import check_finite


class QuantLinear(nn.Module):
    is_quant_linear = True  # lets adapters list it beside nn.Linear without importing it
    def __init__(self, in_features: int, out_features: int, plan: LayerPlan, name: str,
                 tensors: dict[str, torch.Tensor], bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.plan, self.name = plan, name
        self.k_padded = in_features + (-in_features % k_multiple_of(plan))
        self.tensor_names = tuple(tensors)
        for key, value in tensors.items():
            self.register_buffer(key, value)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, plan: LayerPlan, name: str) -> "QuantLinear":
        weight = linear.weight.detach()
        check_finite(weight, name, "weight")
        padded = pad_k(weight.float(), k_multiple_of(plan))
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(linear.in_features, linear.out_features, plan, name,
                   pack_weight(padded, plan.weight, plan.group_size), bias)

    @classmethod
    def empty_like(cls, linear: nn.Linear, plan: LayerPlan, name: str) -> "QuantLinear":
        """The same buffers, shaped and typed, on the meta device: to be filled by a checkpoint.
        Shapes come from packing one row (every format is row-wise, bar 0-dim tensor scales)."""
        row = pack_weight(torch.ones(1, linear.in_features + (-linear.in_features % k_multiple_of(plan))),
                          plan.weight, plan.group_size)
        tensors = {k: torch.empty((linear.out_features, *v.shape[1:]) if v.dim() else (), dtype=v.dtype,
                                  device="meta") for k, v in row.items()}
        bias = None if linear.bias is None else torch.empty(linear.out_features, dtype=linear.bias.dtype,
                                                               device="meta")
        return cls(linear.in_features, linear.out_features, plan, name, tensors, bias)

    def dequantized_weight(self) -> torch.Tensor:
        """fp32 [N, K] (padding dropped): what the layer multiplies by."""
        tensors = {k: getattr(self, k) for k in self.tensor_names}
        return unpack_weight(tensors, self.plan.weight, self.plan.group_size)[:, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_finite(x, self.name)
        shape = x.shape
        x2 = pad_k(x.reshape(-1, self.in_features).float(), k_multiple_of(self.plan))
        xq = fake_quant(x2, self.plan.activation, self.plan.group_size)[:, : self.in_features]
        y = xq @ self.dequantized_weight().T
        if self.bias is not None:
            y = y + self.bias.float()
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        p = self.plan
        return (f"{self.in_features}→{self.out_features}, method={p.method}, W={p.weight}, A={p.activation}, "
                f"group={p.group_size}")


def k_multiple_of(plan: LayerPlan) -> int:
    """Pad K to serve both the weight's and the activation's grouping."""
    import math

    return math.lcm(k_multiple(plan.weight, plan.group_size), k_multiple(plan.activation, plan.group_size))
