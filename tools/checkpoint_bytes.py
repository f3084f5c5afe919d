"""State-dict bytes of one full-size Wan 2.2 A14B expert, BF16 against recipes, counted without
weights: the model is built on the meta device and every planned layer replaced by
`QuantLinear.empty_like` in the format `dq bench e2e` runs (`kernel_format`). No GPU, no memory.

    .venv/bin/python -P tools/checkpoint_bytes.py wan22_w4a4.yaml [other recipes ...]
"""

from __future__ import annotations

import sys

import torch
from diffusers import WanTransformer3DModel

from dq_cli import recipe as recipes
from dq_cli.bench_configs import kernel_format
from dq_cli.bench_models import _WAN_A14B_EXPERT
from dq_cli.models.base import LinearInfo, role_of
from dq_cli.quant.linear import QuantLinear
from dq_cli.models.fusion import fuse_qkv
from dq_cli.quant.plan import plan_layers


def nbytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def main() -> None:
    config = {k: v for k, v in _WAN_A14B_EXPERT.items() if not k.startswith("_")}
    for name in sys.argv[1:] or ["wan22_w4a4.yaml"]:
        source, text = recipes.resolve(name)
        spec = recipes.parse(text, source).quantization
        with torch.device("meta"):
            model = WanTransformer3DModel(**config).to(torch.bfloat16)
        bf16 = nbytes(model)
        if spec.fuse_qkv:
            fuse_qkv(model)
        infos = [LinearInfo("transformer", n, role_of(n), m.in_features, m.out_features)
                 for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        plans = plan_layers(spec, infos, source)
        total = bf16
        for info in infos:
            if info.name in plans:
                linear = model.get_submodule(info.module_name)
                layer = QuantLinear.empty_like(linear, kernel_format(plans[info.name]), info.name, info.sees_video)
                total += nbytes(layer) - nbytes(linear)
        print(f"{name}: BF16 {bf16 / 2**30:.3f} GiB, quantized {total / 2**30:.3f} GiB, {bf16 / total:.3f}x smaller")


if __name__ == "__main__":
    main()
