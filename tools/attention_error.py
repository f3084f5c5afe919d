"""Relative error of dq's 8-bit attention on real activations: the q, k, v that reach the
self-attention of a model while it samples a video (default: the built-in dq-tiny).

    python -P tools/attention_error.py                       # dq-tiny on the CPU (reference path)
    python -P tools/attention_error.py --device cuda --out $OUT/attn_error.json

Every `--every`-th step, every self-attention call (all blocks, both CFG branches) is captured and
run through `torch.ops.dq.sage8_attention` (the Triton kernel on CUDA, its PyTorch reference on
the CPU), through SDPA in the model's dtype, and through float64 attention. Prints the pooled
relative L2 errors ‖out − ref‖/‖ref‖ per block and overall.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="dq-tiny")
    p.add_argument("--prompt", default="a red circle moving right on a blue background")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--every", type=int, default=5, help="capture every N-th step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = p.parse_args()

    from dq_cli.attention import SELF_ATTENTION
    from dq_cli.models import load_model
    from dq_kernels.sage_attention import last_path, sage_attention

    adapter = load_model(args.model, device=args.device)
    steps = args.steps or adapter.defaults.steps
    sums: dict[str, list[float]] = {}  # block -> [err² sage vs f64, err² sdpa vs f64, err² sage vs sdpa, |f64|², |sdpa|²]

    class Capture(torch.overrides.TorchFunctionMode):
        def __init__(self, block):
            super().__init__()
            self.block = block

        def __torch_function__(self, func, types, a=(), kw=None):
            kw = kw or {}
            out = func(*a, **kw)
            if func is F.scaled_dot_product_attention and adapter.state.step % args.every == 0:
                q, k, v = (kw.get(n, a[i] if i < len(a) else None) for i, n in enumerate(("query", "key", "value")))
                scale = kw.get("scale")
                ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=scale)
                sage = sage_attention(q, k, v, scale).double()
                sdpa = out.double()
                acc = sums.setdefault(self.block, [0.0] * 5)
                for i, x in enumerate(((sage - ref).pow(2).sum(), (sdpa - ref).pow(2).sum(),
                                       (sage - sdpa).pow(2).sum(), ref.pow(2).sum(), sdpa.pow(2).sum())):
                    acc[i] += x.item()
            return out

    handles = []
    for model in adapter.transformers().values():
        for name, module in model.named_modules():
            if SELF_ATTENTION.search(name):
                def pre(m, a, kw, name=name):
                    m._dq_capture = Capture(name)
                    m._dq_capture.__enter__()

                def post(m, a, kw, out):
                    m._dq_capture.__exit__(None, None, None)

                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(module.register_forward_hook(post, with_kwargs=True))
    adapter.generate(args.prompt, steps=steps, guidance=adapter.defaults.guidance, seed=args.seed,
                     frames=adapter.defaults.frames, height=adapter.defaults.height, width=adapter.defaults.width)
    for h in handles:
        h.remove()

    def err(i, j, rows):
        return math.sqrt(sum(r[i] for r in rows) / sum(r[j] for r in rows))

    doc = {"model": args.model, "device": args.device, "path": last_path(), "steps": steps, "every": args.every,
           "dtype": str(next(iter(adapter.transformers().values())).dtype),
           "blocks": {b: {"sage8_vs_exact": err(0, 3, [r]), "sdpa_vs_exact": err(1, 3, [r]),
                          "sage8_vs_sdpa": err(2, 4, [r])} for b, r in sums.items()}}
    rows = list(sums.values())
    doc["all"] = {"sage8_vs_exact": err(0, 3, rows), "sdpa_vs_exact": err(1, 3, rows), "sage8_vs_sdpa": err(2, 4, rows)}
    print(f"{'block':24s} {'sage8 vs f64':>13s} {'sdpa vs f64':>12s} {'sage8 vs sdpa':>14s}")
    for b, r in list(doc["blocks"].items()) + [("all", doc["all"])]:
        print(f"{b:24s} {r['sage8_vs_exact']:13.4f} {r['sdpa_vs_exact']:12.2e} {r['sage8_vs_sdpa']:14.4f}")
    print(f"path: {doc['path']['path']}; model dtype {doc['dtype']}; steps {steps}, every {args.every}-th captured")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
