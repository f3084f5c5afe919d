"""Bytes of one full-size Wan 2.2 A14B block (dim 5120, ffn 13824), BF16 vs quantized, built on the
CPU with random weights: the per-layer arithmetic behind the checkpoint-size claim.

    .venv/bin/python -P tools/size_report.py [--rank 32] [--kv-int8]

Every linear of the block is packed exactly as `dq quantize` packs it (QuantLinear buffers: packed
codes, scales, low-rank factors, smoothing vector, bias); norms and modulation stay 16-bit.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import WanTransformer3DModel

from dq_calib.weights import low_rank
from dq_cli.models.base import role_of
from dq_cli.quant.linear import QuantLinear
from dq_cli.quant.plan import LayerPlan

WAN_A14B = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=1, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--kv-int8", action="store_true", help="cross-attention K/V at INT8 (the wan22 recipe)")
    args = ap.parse_args()
    torch.manual_seed(0)
    block = WanTransformer3DModel(**WAN_A14B).blocks[0].to(torch.bfloat16)
    total_bf16 = sum(t.numel() * 2 for t in block.state_dict().values())
    total_q = 0
    print(f"{'layer':<22}{'shape':>14}{'BF16 MiB':>11}{'W4 MiB':>10}{'ratio':>7}")
    for name, linear in block.named_modules():
        if not isinstance(linear, torch.nn.Linear):
            continue
        role = role_of(name)
        int8 = args.kv_int8 and role in ("cross_attn.k", "cross_attn.v")
        plan = LayerPlan(method="rtn" if int8 else "svdquant", weight="int8" if int8 else "int4",
                         activation="int8" if int8 else "int4", group_size=64, rank=0 if int8 else args.rank,
                         smoothing=None, cubes=None, core="fp8")
        kwargs = {}
        if not int8 and args.rank:
            w = linear.weight.detach().float()
            up, down, _ = low_rank(w, args.rank, "int4", 64, iters=0)
            kwargs = dict(lora_up=up, lora_down=down, smooth=torch.ones(w.shape[1]))
        q = QuantLinear.from_linear(linear, plan, name, **kwargs)
        q_bytes = sum(t.numel() * t.element_size() for t in q.state_dict().values())
        b_bytes = sum(t.numel() * 2 for t in linear.state_dict().values())
        total_q += q_bytes
        print(f"{name:<22}{str(tuple(linear.weight.shape)):>14}{b_bytes / 2**20:>11.2f}{q_bytes / 2**20:>10.2f}"
              f"{b_bytes / q_bytes:>7.2f}")
    linear_bf16 = sum(m.weight.numel() * 2 + (m.bias.numel() * 2 if m.bias is not None else 0)
                      for m in block.modules() if isinstance(m, torch.nn.Linear))
    rest = total_bf16 - linear_bf16
    print(f"non-linear tensors (norms, modulation), kept 16-bit: {rest / 2**20:.2f} MiB")
    print(f"block: BF16 {total_bf16 / 2**20:.1f} MiB, quantized {(total_q + rest) / 2**20:.1f} MiB, "
          f"{total_bf16 / (total_q + rest):.2f}x smaller")


if __name__ == "__main__":
    main()
