"""`dq bench kernels`: dq's quantized linears against cuBLAS at the real models' linear shapes,
measured in one run on the GPU at hand, with random weights and activations.

Per shape (K → N at M tokens), medians of `triton.testing.do_bench`:
- cuBLAS BF16 `torch.matmul`, FP8 `torch._scaled_mm` (rowwise scales) and INT8 `torch._int_mm`
  on operands quantized beforehand (their GEMM alone: the peers' floor);
- dq W4A4 (DeltaQuant: smoothing, cubes, FP8 core tokens, a low-rank branch; `int4_row`, rank 32 and
  4×2×8 cubes unless `--w4a4-format` / `--rank` / `--cube` say otherwise — the Wan recipe's 128 and early 4×1×4 cost more): the whole
  `dq::w4a4_linear` (quantizer, weight expansion, core GEMM, GEMM with its epilogue) and the delta
  GEMM alone;
- dq W8A8 (the INT8 route): `dq::w8a8_linear` whole and its GEMM alone.
TFLOP/s count the main GEMM's 2·M·N·K for every column, so columns compare as speed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


# (model, tokens, grid, [(layer, K, N, count per block)]) — shapes from the diffusers configs (FACTS.md).
WAN_A14B = [("self_attn.q/k/v/out", 5120, 5120, 4), ("cross_attn.q/out", 5120, 5120, 2),
            ("ffn.up", 5120, 13824, 1), ("ffn.down", 13824, 5120, 1)]
# Self-attention Q/K/V as one linear (diffusers' `fuse_projections`, what SVDQuant's Nunchaku runs): one
# activation quantization and one low-rank input for the three. Not built into dq's models yet: this
# shape set measures what it would gain.
WAN_A14B_FUSED_QKV = [("self_attn.qkv (fused)", 5120, 15360, 1), ("self_attn.out", 5120, 5120, 1),
                      *WAN_A14B[1:]]
SHAPES = {
    "wan-a14b-480p": (32760, (21, 30, 52), WAN_A14B),
    "wan-a14b-480p-fused-qkv": (32760, (21, 30, 52), WAN_A14B_FUSED_QKV),
    "wan-a14b-720p": (75600, (21, 45, 80), WAN_A14B),
    "wan-ti2v-5b": (27280, (31, 22, 40), [("attn", 3072, 3072, 6), ("ffn.up", 3072, 14336, 1),
                                           ("ffn.down", 14336, 3072, 1)]),
    "ltx-video": (6144, (16, 16, 24), [("attn", 2048, 2048, 6), ("ffn.up", 2048, 8192, 1),
                                        ("ffn.down", 8192, 2048, 1)]),
    "cogvideox-5b": (17550, (13, 30, 45), [("attn", 3072, 3072, 4), ("ffn.up", 3072, 12288, 1),
                                            ("ffn.down", 12288, 3072, 1)]),
}
CUBE = (4, 2, 8)  # DeltaQuant's late-step cube (the steps that dominate)
RANK = 32
FORMAT = "int4_row"  # INT4 weights and activations: one scale per channel / token, or int4_pow2


@dataclass
class KernelRow:
    model: str
    layer: str
    m: int
    k: int
    n: int
    count: int                 # linears of this shape per block
    bf16_ms: float
    fp8_cublas_ms: float
    int8_cublas_ms: float
    w4a4_ms: float             # dq::w4a4_linear, quantizer and weight expansion included
    w4a4_gemm_ms: float        # its delta GEMM alone
    w8a8_ms: float
    w8a8_gemm_ms: float
    w4a4_rel_error: float      # ‖Y_dq − Y_ref‖/‖Y_ref‖ against QuantLinear's reference math

    def tflops(self, ms: float) -> float:
        return 2 * self.m * self.n * self.k / ms / 1e9


def _time(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def bench_shape(model: str, layer: str, m: int, k: int, n: int, count: int, grid, rank: int = RANK,
                cube: tuple[int, int, int] = CUBE, fmt: str = FORMAT) -> KernelRow:
    import dq_kernels.linear_ops  # noqa: F401  (registers torch.ops.dq)
    from dq_kernels.delta_quantize import delta_quantize
    from dq_kernels.expand_int4 import expand_int4
    from dq_kernels.fp8 import quantize_fp8
    from dq_kernels.formats import pack_weight
    from dq_kernels.int8 import quantize_int8_rowwise
    from dq_kernels.scaled_gemm import scaled_gemm

    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(m, k, device=dev, generator=gen, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=dev, generator=gen, dtype=torch.bfloat16) / k**0.5
    smooth = torch.rand(k, device=dev, generator=gen) + 0.5
    down = (torch.randn(rank, k, device=dev, generator=gen) / k**0.5).bfloat16()
    up = (torch.randn(n, rank, device=dev, generator=gen) / rank**0.5).bfloat16()
    bias = torch.randn(n, device=dev, generator=gen, dtype=torch.bfloat16)

    bf16_ms = _time(lambda: x @ w.T)
    xf8, sx = quantize_fp8(x)
    wf8, sw = quantize_fp8(w)
    wf8_t = wf8.T  # column-major B, as _scaled_mm wants
    fp8_ms = _time(lambda: torch._scaled_mm(xf8, wf8_t, scale_a=sx, scale_b=sw.T, out_dtype=torch.bfloat16))
    xi8, sxi = quantize_int8_rowwise(x)
    wi8, swi = quantize_int8_rowwise(w)
    wi8_t = wi8.T
    int8_ms = _time(lambda: torch._int_mm(xi8, wi8_t))

    stored = pack_weight(w.float() * smooth, fmt, 64)
    packed, scales = stored["qweight"], stored["scales"]
    args = (x, packed, scales, smooth, down, up, bias, 1, list(grid), list(cube), fmt)
    w4a4_ms = _time(lambda: torch.ops.dq.w4a4_linear(*args))
    acts = delta_quantize(x, smooth, down, 1, grid, cube, fmt)
    wq, wscale = expand_int4(packed, scales)
    core = torch.zeros(acts.core.shape[0], n, device=dev)
    gemm_ms = _time(lambda: scaled_gemm(acts.delta, wq, acts.scale, wscale, core=core, cube_of_row=acts.cube_of_row,
                                        row_token=acts.row_token, down=acts.down, up=up, bias=bias))
    w8a8_ms = _time(lambda: torch.ops.dq.w8a8_linear(x, wi8, swi, None, bias))
    w8a8_gemm_ms = _time(lambda: scaled_gemm(xi8, wi8, sxi.reshape(-1), swi.reshape(-1), bias=bias))
    return KernelRow(model, layer, m, k, n, count, bf16_ms, fp8_ms, int8_ms, w4a4_ms, gemm_ms, w8a8_ms, w8a8_gemm_ms,
                     _w4a4_error(x, packed, scales, smooth, down, up, bias, grid, n, cube, fmt))


def _w4a4_error(x, packed, scales, smooth, down, up, bias, grid, n, cube, fmt) -> float:
    """The kernel against QuantLinear's reference math on a slice of the tokens (whole cubes)."""
    from dq_cli.models.base import ForwardState
    from dq_cli.quant.linear import QuantLinear
    from dq_cli.quant.plan import LayerPlan

    t, h, w = grid
    frames = min(t, 4)
    xs = x[: frames * h * w]
    plan = LayerPlan(method="deltaquant", weight=fmt, activation=fmt, group_size=64, rank=down.shape[0],
                     smoothing=None, cubes=((1.0, tuple(cube)),), core="fp8")
    layer = QuantLinear(x.shape[1], n, plan, "bench", {"qweight": packed, "scales": scales}, bias, smooth, up, down)
    layer.forward_state = ForwardState(step=1, num_steps=2, grid=(frames, h, w), in_forward=True)
    got = torch.ops.dq.w4a4_linear(xs, packed, scales, smooth, down, up, bias, 1, [frames, h, w], list(cube),
                                   fmt).float()
    ref = layer.reference_forward(xs[None].float())[0]
    return ((got - ref).norm() / ref.norm()).item()


def run(models: list[str], on_shape=None, rank: int = RANK, cube: tuple[int, int, int] = CUBE,
        fmt: str = FORMAT) -> list[KernelRow]:
    rows = []
    for model in models:
        m, grid, layers = SHAPES[model]
        for layer, k, n, count in layers:
            rows.append(bench_shape(model, layer, m, k, n, count, grid, rank, cube, fmt))
            torch.cuda.empty_cache()
            if on_shape:
                on_shape(rows[-1])
    return rows


def summary(rows: list[KernelRow]) -> dict[str, dict[str, float]]:
    """Per model: one block's linears (count-weighted) — total ms per configuration and the speedups."""
    out = {}
    for model in dict.fromkeys(r.model for r in rows):
        sel = [r for r in rows if r.model == model]
        total = {c: sum(getattr(r, c) * r.count for r in sel) for c in
                 ("bf16_ms", "fp8_cublas_ms", "int8_cublas_ms", "w4a4_ms", "w4a4_gemm_ms", "w8a8_ms", "w8a8_gemm_ms")}
        total["w4a4_speedup"] = total["bf16_ms"] / total["w4a4_ms"]
        total["w4a4_min_shape_speedup"] = min(r.bf16_ms / r.w4a4_ms for r in sel)
        total["w8a8_speedup"] = total["bf16_ms"] / total["w8a8_ms"]
        out[model] = total
    return out


def report(rows: list[KernelRow], env: dict, rank: int = RANK, cube: tuple[int, int, int] = CUBE,
           fmt: str = FORMAT) -> dict:
    from dq_cli.bench_report import new_report

    timed = ("bf16_ms", "fp8_cublas_ms", "w4a4_ms", "w4a4_gemm_ms", "w8a8_ms")
    rows_out = [asdict(r) | {"tflops": {c: r.tflops(getattr(r, c)) for c in timed}} for r in rows]
    return new_report("kernels", env, {"rank": rank, "cube": list(cube), "format": fmt}, rows_out,
                      summary=summary(rows))


def markdown(doc: dict) -> str:
    lines = ["| model | layer | M×K→N | BF16 ms | FP8 cuBLAS ms | INT8 cuBLAS ms | dq W4A4 ms (all) | W4A4 GEMM ms | "
             "dq W8A8 ms (all) | W8A8 GEMM ms | W4A4 vs BF16 | W4A4 rel. err |", "|" + "---|" * 12]
    for r in doc["rows"]:
        lines.append(f"| {r['model']} | {r['layer']} | {r['m']}×{r['k']}→{r['n']} | {r['bf16_ms']:.3f} | "
                     f"{r['fp8_cublas_ms']:.3f} | {r['int8_cublas_ms']:.3f} | {r['w4a4_ms']:.3f} | {r['w4a4_gemm_ms']:.3f} | "
                     f"{r['w8a8_ms']:.3f} | {r['w8a8_gemm_ms']:.3f} | {r['bf16_ms'] / r['w4a4_ms']:.2f}× | "
                     f"{r['w4a4_rel_error']:.4f} |")
    lines += ["", "| model | one block's linears: BF16 ms | dq W4A4 ms | speedup | slowest shape | dq W8A8 ms | speedup |",
              "|---|---|---|---|---|---|---|"]
    for model, s in doc["summary"].items():
        lines.append(f"| {model} | {s['bf16_ms']:.2f} | {s['w4a4_ms']:.2f} | {s['w4a4_speedup']:.2f}× | "
                     f"{s['w4a4_min_shape_speedup']:.2f}× | {s['w8a8_ms']:.2f} | {s['w8a8_speedup']:.2f}× |")
    env, settings = doc["environment"], doc.get("settings", {})
    lines += ["", f"Device: {env.get('gpu', env['device'])}; torch {env['torch']}; triton {env.get('triton')}; "
              f"random weights and activations; W4A4 in {settings.get('format', 'int4_pow2')}, low-rank rank "
              f"{settings.get('rank', RANK)}, cubes "
              f"{'×'.join(map(str, settings.get('cube', CUBE)))} tokens; medians of triton.testing.do_bench."]
    from dq_cli.bench_report import switches_line

    if switches := switches_line(env):
        lines.append(switches)
    return "\n".join(lines) + "\n"
