"""Self-attention Q, K and V as one linear layer (`quantization.fuse_qkv` in a recipe).

The three projections read the same tokens. Fused — diffusers' own `fuse_projections`, whose
attention processors then call `to_qkv` and split its output — a quantized model quantizes those
tokens once and runs one GEMM of three times the width with one low-rank branch, as SVDQuant's
Nunchaku does: on an H200 at Wan A14B 480p that took a block's W4A4 linears from 22.59 to 21.56 ms
(4×2×8 cubes) and 23.93 to 23.35 ms (4×1×4) (`dq bench kernels --shapes wan-a14b-480p-fused-qkv`,
README). In BF16 fusing changes nothing but the GEMM's shape. The separate `to_q/to_k/to_v` are
removed, so the model holds and a checkpoint stores the weights once.

Only self-attention is fused (cross-attention K/V read the text, not the tokens Q reads), and only
where diffusers' processor has the fused path: Wan (and dq-tiny, a Wan network).
"""

from __future__ import annotations

import torch

FUSED_NAME = "to_qkv"
PARTS = ("to_q", "to_k", "to_v")


def fusable(module: torch.nn.Module) -> bool:
    """A diffusers attention module whose processor reads `to_qkv` once fused (WanAttention)."""
    return (type(module).__name__ == "WanAttention" and not module.is_cross_attention
            and all(hasattr(module, p) for p in PARTS))


def fuse_qkv(model: torch.nn.Module) -> int:
    """Fuse every self-attention's Q/K/V of `model` in place (meta tensors too); returns how many.
    Idempotent: an attention fused already is left alone."""
    count = 0
    for module in list(model.modules()):
        if fusable(module):
            module.fuse_projections()  # builds to_qkv from the concatenated weights and biases
            for part in PARTS:
                delattr(module, part)
            count += 1
    return count


def is_fused_name(module_name: str) -> bool:
    return module_name.rsplit(".", 1)[-1] == FUSED_NAME


def part_names(name: str) -> list[str]:
    """`...attn1.to_qkv` → the unfused layers whose outputs it concatenates (`to_q`, `to_k`, `to_v`);
    any other name → itself."""
    if not is_fused_name(name):
        return [name]
    prefix = name.rsplit(".", 1)[0]
    return [f"{prefix}.{p}" for p in PARTS]
