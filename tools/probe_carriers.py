"""The 6Bit carrier path on a GPU at Wan A14B 480p shapes. Its operands: torch's passes
(`nvfp4_carrier`, `weight_carrier` of `unpack_fp4`; the reference) against the one-pass Triton
kernels (`nvfp4_carrier_triton`, `expand_nvfp4`), bit-exactness and time. Then one NVFP4-weight
layer on each route, torch's carriers against the Triton path (`DQ_TRITON_CARRIERS`: the kernels
and one BF16 GEMM with the scales, low-rank branch and bias in its epilogue), beside nn.Linear.

    python -P tools/probe_carriers.py            # CUDA
    TRITON_INTERPRET=1 python -P tools/probe_carriers.py --check   # CPU: small shapes, exactness only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ (python -P leaves it out)
from repo_kernels import import_dq_kernels  # noqa: E402

import_dq_kernels()
from dq_kernels.expand_nvfp4 import expand_nvfp4  # noqa: E402
from dq_kernels.nvfp4 import nvfp4_carrier, pack_fp4, quantize_nvfp4, unpack_fp4, weight_carrier  # noqa: E402
from dq_kernels.nvfp4_quantize import nvfp4_carrier_triton  # noqa: E402

# (activation rows, K) and (weight N, K): the video tokens at 480p through q/k/v/o and the FFN.
SHAPES = {"attn 5120→5120": (32760, 5120, 5120), "ffn up 5120→13824": (32760, 5120, 13824),
          "ffn down 13824→5120": (32760, 13824, 5120)}
CHECK_SHAPES = {"small": (100, 64, 48), "ragged rows": (37, 128, 16)}


def operands(m, k, n, device):
    g = torch.Generator().manual_seed(m + k + n)
    x = (torch.randn(m, k, generator=g) * torch.rand(k, generator=g).mul(4).exp()).to(device)  # channel spread
    codes, s8, _ = quantize_nvfp4(torch.randn(n, k, generator=g).to(device))
    return x, pack_fp4(codes), s8


def compare(m, k, n, device) -> dict:
    x, packed, s8 = operands(m, k, n, device)
    a, ts = nvfp4_carrier_triton(x)
    a_ref, ts_ref = nvfp4_carrier(x)
    w = expand_nvfp4(packed, s8)
    w_ref = weight_carrier(unpack_fp4(packed), s8)
    return dict(activation_exact=torch.equal(a.float(), a_ref.float()) and torch.equal(ts, ts_ref),
                weight_exact=torch.equal(w.float(), w_ref.float()),
                x=x, packed=packed, s8=s8)


CARRIER_TILES = [(32, 64, 4), (32, 128, 4), (64, 64, 4), (64, 128, 8), (16, 256, 4), (128, 64, 8), (32, 256, 8)]


def carrier_tiles(x: torch.Tensor) -> str:
    """ms of the activation carrier kernel alone (tensor scale given) at each (BLOCK_M, BLOCK_K, warps)."""
    import triton
    from triton.testing import do_bench

    from dq_kernels import nvfp4_quantize as nq

    m, k = x.shape
    ts = nq.nvfp4_tensor_scale(x).reshape(1)
    out = torch.empty(m, k, dtype=torch.bfloat16, device=x.device)
    times = []
    for bm, bk, warps in CARRIER_TILES:
        launch = lambda: nq.nvfp4_carrier_kernel[(triton.cdiv(m, bm), triton.cdiv(k, bk))](  # noqa: E731
            x, out, ts, m, k, x.stride(0), out.stride(0), BLOCK_M=bm, BLOCK_K=bk, INTERPRET=False, num_warps=warps)
        times.append(f"{bm}x{bk}/{warps}w {do_bench(launch):.3f}")
    return ", ".join(times)


def gemm_times(m: int, k: int, n: int) -> str:
    """ms of the BF16 carrier GEMM alone: torch.mm (cuBLAS, BF16 out) against `carrier_gemm` (TMA
    loads; what the Triton path runs) with a column scale and BF16 out, and its autotuned tile.
    (scaled_gemm's pointer-loaded kernel on the same operands: --gemm-sweep.)"""
    from triton.testing import do_bench

    import dq_kernels.carrier_gemm as cg

    a, w = torch.randn(m, k, device="cuda").bfloat16(), torch.randn(n, k, device="cuda").bfloat16()
    col = torch.rand(n, device="cuda")
    times = (f"cublas {do_bench(lambda: torch.mm(a, w.T)):.3f}, "
             f"carrier_gemm {do_bench(lambda: cg.carrier_gemm(a, w, None, col)):.3f}")
    tuned = [str(v) for key, v in cg.carrier_gemm_tuned.cache.items() if key[:3] == (m, n, k)]
    return f"{times} (carrier_gemm tile: {tuned})"


# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) tried for the BF16 carrier GEMM (--gemm-sweep)
GEMM_TILES = [(128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (256, 128, 64, 8, 3), (256, 128, 64, 8, 4),
              (128, 128, 64, 4, 4), (128, 128, 64, 8, 4), (64, 256, 64, 4, 4), (128, 256, 32, 8, 5),
              (128, 128, 32, 4, 5), (128, 64, 64, 4, 4)]


def gemm_sweep(m: int, k: int, n: int) -> None:
    """scaled_gemm's pointer-loaded kernel body on BF16 operands with a column scale and a bias (the
    6bit recipe's rtn layers) at each tile, beside cuBLAS with fp32 out and torch's scale-and-bias
    passes after it: why the carrier path has its own TMA-fed GEMM (dq_kernels.carrier_gemm;
    docs/measurements/carriers_gemm_sweep_h200.log)."""
    import triton
    from triton.testing import do_bench

    import dq_kernels.scaled_gemm as sg

    a, w = torch.randn(m, k, device="cuda").bfloat16(), torch.randn(n, k, device="cuda").bfloat16()
    col, bias = torch.rand(n, device="cuda"), torch.randn(n, device="cuda").bfloat16()
    c = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    tflop = 2 * m * n * k / 1e9
    for bm, bn, bk, warps, stages in GEMM_TILES:
        grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
        run = lambda: sg._scaled_gemm_body[grid](  # noqa: E731
            a, w, c, col, col, col, col, col, col, col, bias, m, n, k, k, k, n, HAS_A_SCALE=False, HAS_CORE=False,
            ROW_MAP=False, NC=16, HAS_LORA=False, HAS_BIAS=True, R=16, IEEE_DOTS=False, ACC_INT=False,
            PROMOTE=False, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=warps, num_stages=stages)
        try:
            ms = do_bench(run)
            print(f"  {bm}x{bn}x{bk} {warps}w {stages}st: {ms:.3f} ms, {tflop / ms:.0f} TFLOP/s", flush=True)
        except Exception as e:  # a tile that does not fit (shared memory, registers)
            print(f"  {bm}x{bn}x{bk} {warps}w {stages}st: failed, {type(e).__name__}", flush=True)
    ms = do_bench(lambda: torch.mm(a, w.T, out_dtype=torch.float32))
    ms2 = do_bench(lambda: torch.mm(a, w.T, out_dtype=torch.float32).mul_(col).add_(bias).bfloat16())
    print(f"  cublas fp32 out {ms:.3f} ms; + torch scale, bias, cast {ms2:.3f} ms", flush=True)


def layer_times(k: int, n: int, m: int = 32760) -> str:
    """ms per call of one NVFP4-weight layer (rank 32 low-rank branch, bias) on the NVFP4 and INT8
    routes, torch's carriers against the Triton path, and the largest difference between them
    relative to the output's scale; nn.Linear in BF16 beside them."""
    from torch import nn
    from triton.testing import do_bench

    import dq_cli.quant.carrier_path as carrier_path
    from dq_cli.quant.linear import QuantLinear
    from dq_cli.quant.plan import LayerPlan

    g = torch.Generator().manual_seed(k + n)
    linear = nn.Linear(k, n).cuda().to(torch.bfloat16)
    plan = LayerPlan(method="svdquant", weight="nvfp4", activation="nvfp4", group_size=16, rank=32,
                     smoothing=None, cubes=None, core="fp8", hadamard=0)
    extra = dict(lora_up=(torch.randn(n, 32, generator=g) / 32).cuda().bfloat16(),
                 lora_down=(torch.randn(32, k, generator=g) / k**0.5).cuda().bfloat16())
    layer = QuantLinear.from_linear(linear, plan, "blocks.0.ffn", **extra).cuda()
    x = torch.randn(1, m, k, generator=g).cuda().bfloat16()
    parts = [f"bf16 {do_bench(lambda: linear(x)):.3f}"]
    for route in ("nvfp4", "int8"):
        layer.route = route
        out = {}
        for fused in (False, True):
            carrier_path.TRITON_CARRIERS = fused
            out[fused] = layer(x).float()
            parts.append(f"{route} {'triton' if fused else 'torch'} {do_bench(lambda: layer(x)):.3f}")
        diff = ((out[True] - out[False]).abs().max() / out[False].abs().max()).item()
        parts.append(f"{route} max diff {diff:.1e}")
    return ", ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="correctness at small shapes only (the CPU interpreter)")
    p.add_argument("--gemm-sweep", action="store_true", help="also time the BF16 GEMM at each of GEMM_TILES")
    args = p.parse_args()
    device = "cpu" if args.check else "cuda"
    shapes = CHECK_SHAPES if args.check else SHAPES
    bad = 0
    for name, (m, k, n) in shapes.items():
        r = compare(m, k, n, device)
        line = f"{name:22s} M={m} K={k} N={n}  activation exact {r['activation_exact']}  weight exact {r['weight_exact']}"
        bad += not (r["activation_exact"] and r["weight_exact"])
        if not args.check:
            from triton.testing import do_bench

            x, packed, s8 = r["x"], r["packed"], r["s8"]
            t = dict(act_torch=do_bench(lambda: nvfp4_carrier(x)), act_triton=do_bench(lambda: nvfp4_carrier_triton(x)),
                     w_torch=do_bench(lambda: weight_carrier(unpack_fp4(packed), s8)),
                     w_triton=do_bench(lambda: expand_nvfp4(packed, s8)))
            line += ("  ms: activation torch {act_torch:.3f} triton {act_triton:.3f}"
                     "  weight torch {w_torch:.3f} triton {w_triton:.3f}").format(**t)
        print(line, flush=True)
        if not args.check:
            print(f"{'':22s} carrier tiles ms (BF16 X): {carrier_tiles(r['x'].bfloat16())}", flush=True)
            print(f"{'':22s} gemm ms: {gemm_times(m, k, n)}", flush=True)
            print(f"{'':22s} layer ms: {layer_times(k, n)}", flush=True)
            if args.gemm_sweep:
                gemm_sweep(m, k, n)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
