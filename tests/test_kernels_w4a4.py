"""The Hopper W4A4 / W8A8 Triton kernels against their PyTorch references (under TRITON_INTERPRET=1
on the CPU; on CUDA with `pytest -m gpu`), at small shapes with ragged grids and K, N that are
not multiples of 128.

Tolerances: the E4M3 and INT8 products are exact in fp32, so the GEMMs differ from a float64
reference only by fp32 summation: |error| <= K·2**-24·Σ|terms| (the bound used below, with a
factor 2 of slack for the epilogue's few extra roundings). The quantizer is bit-exact with the
reference in the interpreter (same fp32 operations); on a GPU its division by λ and its mean are
rounded differently (a delta may cross a rounding boundary), hence the mismatch budget there.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import dq_kernels.delta_quantize as delta_quantize_module
from dq_kernels.delta_quantize import delta_quantize, delta_quantize_reference
from dq_kernels.expand_int4 import expand_int4, expand_int4_both, expand_int4_reference
from dq_kernels.fp8 import quantize_fp8
from dq_kernels.int4 import dequantize_int4, pack_int4, quantize_int4
from dq_kernels.int8 import quantize_int8_rowwise
from dq_kernels.scaled_gemm import scaled_gemm, scaled_gemm_reference
import dq_kernels.scaled_gemm as scaled_gemm_module
from dq_kernels.smoothing import apply_smooth

# The CPU runs the kernels in Triton's interpreter (conftest sets TRITON_INTERPRET=1 without CUDA);
# a CUDA machine runs them compiled (`pytest -m gpu`).
DEVICES = [pytest.param("cuda", marks=pytest.mark.gpu)] if torch.cuda.is_available() else ["cpu"]


def pow2_weight(n: int, k: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * torch.exp(2 * torch.randn(n, k // 64, 1, generator=gen)).repeat(1, 1, 64
                                                                                                          ).reshape(n, k)
    codes, scales = quantize_int4(w, 64, pow2_scales=True)
    return codes, scales


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["int4_pow2", "int4_row"])
def test_expand_int4_is_exact(device, fmt):
    if fmt == "int4_pow2":
        codes, scales = pow2_weight(40, 192, seed=1)
    else:  # K not a multiple of 64: int4_row has no groups
        codes, scales = quantize_int4(torch.randn(40, 150, generator=torch.Generator().manual_seed(1)), 150)
    codes[3], scales[3] = 0, 0  # an all-zero output channel: carriers 0, row scale 0, no NaN
    packed = pack_int4(codes)
    carrier, row = expand_int4(packed.to(device), scales.to(device))
    ref_carrier, ref_row = expand_int4_reference(packed, scales)
    assert torch.equal(carrier.cpu().float(), ref_carrier.float()) and torch.equal(row.cpu(), ref_row)
    # carrier · row scale is the INT4 weight itself: nothing lost on the way to the tensor cores.
    group = codes.shape[1] // scales.shape[1]
    assert torch.equal(carrier.cpu().float() * ref_row[:, None], dequantize_int4(codes, scales, group))
    # The BF16 copy (the core tokens' GEMM operand) holds the same values.
    carrier16, row16 = expand_int4(packed.to(device), scales.to(device), torch.bfloat16)
    assert carrier16.dtype == torch.bfloat16 and torch.equal(row16.cpu(), ref_row)
    assert torch.equal(carrier16.cpu().float(), ref_carrier.float())
    # Both from one launch (what a DeltaQuant layer with cubes takes): the same tensors.
    both8, both16, both_row = expand_int4_both(packed.to(device), scales.to(device))
    assert torch.equal(both8.view(torch.uint8), carrier.view(torch.uint8)) and torch.equal(both16, carrier16)
    assert torch.equal(both_row, row)


def activations(m: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    smooth_field = torch.randn(m // 4 + 1, k, generator=gen).repeat_interleave(4, 0)[:m]  # local structure
    return smooth_field * 3 + torch.randn(m, k, generator=gen) * torch.exp(torch.randn(k, generator=gen))


@pytest.mark.parametrize("device", DEVICES)
# int4_row with 128-column steps over one 1,024-column slice (one full step, one ragged): its codes do
# not depend on the step width; the others run the 64-column steps the small problem falls back to.
@pytest.mark.parametrize("fmt, wide", [("int4_pow2", False), ("int4_row", False), ("int4_row", True)])
@pytest.mark.parametrize("cube", [(2, 2, 4), (4, 1, 4), None])
def test_delta_quantize_matches_reference(device, cube, fmt, wide, monkeypatch):
    if wide:
        monkeypatch.setattr(delta_quantize_module, "ROW_CHUNK_K", 128)
        monkeypatch.setattr(delta_quantize_module, "MIN_PROGRAMS", 1)  # one slice of 1,024 columns
    batch, grid, k, rank = 2, (3, 5, 7), 192, 8  # ragged cubes, K not a multiple of 128, rank padded to 16
    x = activations(batch * 105, k, seed=2)
    gen = torch.Generator().manual_seed(3)
    smooth, down_w = torch.rand(k, generator=gen) + 0.5, torch.randn(rank, k, generator=gen) / 8
    got = delta_quantize(x.to(device), smooth.to(device), down_w.to(device), batch, grid, cube, fmt)
    ref = delta_quantize_reference(x, smooth, down_w, batch, grid, cube, fmt)
    exact = device == "cpu"  # the interpreter runs the reference's fp32 operations
    if cube is not None:
        torch.testing.assert_close(got.core.cpu(), ref.core, rtol=0 if exact else 1e-6, atol=0 if exact else 1e-6)
        assert torch.equal(got.cube_of_row.cpu(), ref.cube_of_row) and torch.equal(got.row_token.cpu(), ref.row_token)
        assert (ref.cube_of_row.diff() >= 0).all()  # cube order: what the GEMM's one-hot core term relies on
        assert sorted(ref.row_token.tolist()) == list(range(x.shape[0]))
    deq = got.delta.cpu().float() * got.scale.cpu()[:, None]
    ref_deq = ref.delta.float() * ref.scale[:, None]
    mismatch = deq != ref_deq
    assert mismatch.float().mean() <= (0 if exact else 1e-3)
    # one rounding step: a group scale is at most the token's largest (int4_pow2: 2**6 · s_tok)
    step = ref.scale[:, None].expand_as(deq) * (2**6 if fmt == "int4_pow2" else 1)
    assert ((deq - ref_deq).abs() <= step).all()
    torch.testing.assert_close(got.down.cpu(), ref.down, rtol=1e-5, atol=1e-5)


def fp32_sum_bound(a, b, a_scale, b_scale, device="cpu"):
    """fp32 summation of K exact products; on a GPU, Hopper's FP8 MMA also accumulates each BLOCK_K
    step with a narrower accumulator (before promotion to fp32): allow 2**-10 of Σ|terms| there."""
    k = a.shape[1]
    rel = 2 * k * 2.0**-24 if device == "cpu" or a.dtype == torch.int8 else 2.0**-10
    return rel * (a.float().abs() @ b.float().abs().T) * a_scale[:, None].abs() * b_scale[None, :].abs()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["fp8", "int8"])
@pytest.mark.parametrize("rank", [8, 32, 64])  # 32: one joined MMA; 64: the split epilogue in two chunks
@pytest.mark.parametrize("cubes", [40, 3])
@pytest.mark.parametrize("epilogue", ["joined", "split"])  # "auto" picks one of them by rank
# A and B through tensor descriptors or pointer loads; one program a tile, or persistent programs
# (three in the interpreter) walking the tiles
@pytest.mark.parametrize("tma,persistent", [(True, False), (False, False), (True, True)])
def test_scaled_gemm_matches_reference(device, dtype, rank, cubes, epilogue, tma, persistent, monkeypatch):
    monkeypatch.setattr(scaled_gemm_module, "EPILOGUE", epilogue)
    monkeypatch.setattr(scaled_gemm_module, "GEMM_TMA", tma)
    monkeypatch.setattr(scaled_gemm_module, "GEMM_PERSISTENT", persistent)
    m, n, k = 70, 48, 208  # ragged in every dimension (K: 3¼ steps of the interpreter's BLOCK_K = 64)
    gen = torch.Generator().manual_seed(5)
    xa, xb = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    if dtype == "fp8":
        (a, sa), (b, sb) = quantize_fp8(xa), quantize_fp8(xb)
    else:
        (a, sa), (b, sb) = quantize_int8_rowwise(xa), quantize_int8_rowwise(xb)
    sa, sb = sa.reshape(-1), sb.reshape(-1)
    # 40 cubes of 1-3 rows: a 32-row tile spans more than the 16 cubes of one one-hot step;
    # 3 cubes of ~23 rows: a tile spans one or two.
    core = torch.randn(cubes, n, generator=gen)
    index = torch.sort(torch.randint(0, cubes, (m,), generator=gen)).values.to(torch.int32)
    row_token = torch.randperm(m, generator=gen).to(torch.int32)
    down, up, bias = torch.randn(m, rank, generator=gen), torch.randn(n, rank, generator=gen), torch.randn(n, generator=gen)
    extra = dict(core=core, cube_of_row=index, row_token=row_token, down=down, up=up, bias=bias, out_dtype=torch.float32)
    got = scaled_gemm(*(t.to(device) for t in (a, b, sa, sb)),
                      **{key: v.to(device) if torch.is_tensor(v) else v for key, v in extra.items()})
    ref = scaled_gemm_reference(a, b, sa, sb, **extra)
    tol = fp32_sum_bound(a, b, sa, sb, device)[torch.argsort(row_token.long())] + 1e-4 * (1 + ref.abs())  # + the small dots, adds
    assert ((got.cpu() - ref).abs() <= tol).all()


# ---- QuantLinear on the kernels (dq::w4a4_linear, dq::w8a8_linear) against its reference forward ----
def quant_layer(method: str, fmt: str, k: int = 150, n: int = 72, rank: int = 8, act: str | None = None,
                factor_dtype: torch.dtype = torch.float32):
    from torch import nn

    from dq_cli.quant.linear import QuantLinear
    from dq_cli.quant.plan import LayerPlan

    gen = torch.Generator().manual_seed(8)
    linear = nn.Linear(k, n)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(n, k, generator=gen) / k**0.5)
    plan = LayerPlan(method=method, weight=fmt, activation=act or fmt, group_size=64, rank=rank if method != "rtn" else 0,
                     smoothing=None, cubes=((0.5, (4, 1, 4)), (1.0, (2, 2, 4))), core="fp8")
    smooth = torch.rand(k, generator=gen) + 0.5 if method != "rtn" else None
    up = down = None
    if plan.rank:  # fp32 factors by default: with bf16 ones the two paths round the low-rank input differently
        up, down = torch.randn(n, rank, generator=gen) / 4, torch.randn(rank, k, generator=gen) / 8
        up, down = up.to(factor_dtype), down.to(factor_dtype)
    return QuantLinear.from_linear(linear, plan, "blocks.0.ffn", smooth=smooth, lora_up=up, lora_down=down)


def both_paths(layer, x, monkeypatch):
    ref = layer.reference_forward(x)
    monkeypatch.setenv("DQ_KERNELS", "triton")  # on the CPU too, in the interpreter
    import dq_cli.quant.linear as linear_module

    taken = []

    def kernel_forward(*args):
        y = real(*args)
        taken.append(y is not None)
        return y

    real = linear_module.kernel_forward
    monkeypatch.setattr(linear_module, "kernel_forward", kernel_forward)
    got = layer(x)
    assert taken and all(taken), "the kernel path was not taken"
    return got, ref


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["deltaquant", "svdquant", "rtn"])
@pytest.mark.parametrize("progress_step", [0, 3])  # the two cube stages: 4x1x4, then 2x2x4
@pytest.mark.parametrize("formats", [("int4_pow2", "int4_pow2"), ("int4_row", "int4_row"),
                                     ("int4_pow2", "int4_row")])  # weight, activation
def test_quant_linear_w4a4_kernel_matches_reference(method, progress_step, formats, device, monkeypatch):
    from dq_cli.models.base import ForwardState

    layer = quant_layer(method, formats[0], act=formats[1]).to(device)
    layer.forward_state = ForwardState(step=progress_step, num_steps=4, grid=(3, 5, 7), in_forward=True)
    x = activations(2 * 105, 150, seed=9).reshape(2, 105, 150).to(device)
    got, ref = both_paths(layer, x, monkeypatch)
    # Same quantized operands (bit-exact quantizer in the interpreter; on a GPU a few deltas may
    # round the other way, each by one step of its group) and fp32 sums in another order.
    tol = 1e-4 if device == "cpu" else 2e-2
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * ref.abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("text_tokens,after", [(9, 0), (0, 6), (9, 6)])
def test_quant_linear_w4a4_kernel_joint_text_and_video_sequence(text_tokens, after, device, monkeypatch):
    """CogVideoX feeds its linears text tokens and then the video: the kernel path quantizes the
    video through the cubes and the rest per token (one call each), as the reference does."""
    from dq_cli.models.base import ForwardState

    layer = quant_layer("deltaquant", "int4_row").to(device)
    layer.forward_state = ForwardState(step=0, num_steps=4, grid=(3, 5, 7), text_tokens=text_tokens,
                                       in_forward=True)
    x = activations(2 * (text_tokens + 105 + after), 150, seed=23).reshape(2, -1, 150).to(device)
    got, ref = both_paths(layer, x, monkeypatch)
    tol = 1e-4 if device == "cpu" else 2e-2
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * ref.abs().max().item())
    # the cubes matter: quantizing every token alone (the text path) gives another result
    layer.forward_state = None
    alone = layer.reference_forward(x)
    assert (alone - ref).abs().max() > 10 * tol * ref.abs().max()


@pytest.mark.parametrize("device", DEVICES)
def test_quant_linear_w4a4_kernel_with_bf16_factors_is_within_their_rounding(device, monkeypatch):
    """BF16 low-rank factors (what checkpoints hold): the reference rounds X/λ and then (X/λ)·L₂ᵀ to
    BF16, the kernel path rounds L₂/λ instead and keeps (X/λ)·L₂ᵀ in fp32 (dq_kernels.linear_ops).
    Each BF16 rounding is 1–2·10**-3 rms relative, three of them ~3·10**-3 of the branch, which here is
    about the output's size (0.41% measured on the CPU); 2**-7 of the output's norm bounds that. On a
    GPU a few deltas may also round the other way (one step each): 2e-2, as in the tests above."""
    from dq_cli.models.base import ForwardState

    layer = quant_layer("deltaquant", "int4_row", factor_dtype=torch.bfloat16).to(device)
    layer.forward_state = ForwardState(step=3, num_steps=4, grid=(3, 5, 7), in_forward=True)
    x = activations(2 * 105, 150, seed=21).reshape(2, 105, 150).to(device)
    got, ref = both_paths(layer, x, monkeypatch)
    tol = 2**-7 if device == "cpu" else 2e-2
    assert ((got.float() - ref.float()).norm() / ref.float().norm()).item() < tol


@pytest.mark.parametrize("device", DEVICES)
def test_quant_linear_w8a8_kernel_matches_reference(device, monkeypatch):
    layer = quant_layer("rtn", "int8").to(device)
    x = activations(90, 150, seed=10).reshape(1, 90, 150).to(device)
    got, ref = both_paths(layer, x, monkeypatch)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())  # int32 sums are exact


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["int4", "int4_pow2", "int4_row"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lead, chunk_rows", [((1, 90), None), ((1, 90), 7), ((1,), None)])
def test_quant_linear_w4a16_kernel_matches_reference(fmt, dtype, lead, chunk_rows, device, monkeypatch):
    """Weight-only 4-bit (16-bit activations). Each product x·w is formed from BF16 terms that sum to
    x and w within 2**-17 relative (exact for a BF16 x and for the carriers), so
    |y - y_ref| <= 2**-15·Σ|x||w| (with slack for fp32 summation). A BF16 output adds one ulp, up to
    2**-7·|y|: two fp32 sums a hair apart (MKL's order varies from run to run) may round to
    neighbouring BF16 numbers. Inputs: video tokens, in one chunk and in seven rows at a time (the
    op's row chunks, made small), and one row of a 2-D input (Wan's time_proj)."""
    import dq_kernels.linear_ops as linear_ops

    rows_per_product = []
    real_mm = linear_ops.mm_fp32
    monkeypatch.setattr(linear_ops, "mm_fp32", lambda a, b: rows_per_product.append(len(a)) or real_mm(a, b))
    layer = quant_layer("rtn", fmt, act="none").to(device)
    if chunk_rows:
        monkeypatch.setattr(linear_ops, "W4A16_CHUNK_ELEMENTS", chunk_rows * layer.out_features)
    x = activations(lead[-1], 150, seed=15).reshape(*lead, 150).to(device, dtype)
    got, ref = both_paths(layer, x, monkeypatch)
    assert max(rows_per_product) == (chunk_rows or lead[-1])
    assert got.shape == (*lead, layer.out_features)
    w = layer.stored_weight()[:, :150]
    bound = 2**-15 * (x.float().abs() @ w.abs().T) + 1e-30
    if dtype == torch.bfloat16:
        bound = bound + 2**-7 * ref.float().abs()
    assert ((got.float() - ref.float()).abs() <= bound).all()


def test_formats_without_a_kernel_keep_the_reference(monkeypatch):
    from dq_cli.quant.kernel_path import kernel_forward

    layer = quant_layer("svdquant", "int4")  # free bf16 group scales: no exact Hopper kernel
    assert kernel_forward(layer, torch.zeros(1, 4, 150)) is None


@pytest.mark.parametrize("device", DEVICES)
def test_w4a4_custom_op_passes_opcheck(device):
    """The op's schema, fake (meta) kernel and autograd registration are what torch.compile needs."""
    layer = quant_layer("deltaquant", "int4_pow2", k=128, n=32).to(device)
    x = activations(2 * 32, 128, seed=11).to(device)
    args = (x, layer.qweight, layer.scales, layer.smooth, layer.lora_down, layer.lora_up, layer.bias, 2, [2, 4, 4],
            [2, 2, 4])
    torch.library.opcheck(torch.ops.dq.w4a4_linear.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_block_with_a_deltaquant_layer_has_no_graph_breaks(device, monkeypatch):
    """A block holding a QuantLinear on the kernel path compiles whole: the op is a custom op, the
    cube is a resolved attribute, and the finite check (a host sync) is left out while tracing. It
    recompiles once, when the cube schedule moves on, and gives the eager kernel path's output."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from dq_cli.models.base import ForwardState

    monkeypatch.setenv("DQ_KERNELS", "triton")
    monkeypatch.setenv("DQ_CHECK_FINITE", "1")  # on even on a GPU: compiled code must skip it, not break
    layer = quant_layer("deltaquant", "int4_row", k=64, n=32, act="int4_row").to(device)
    state = ForwardState(step=0, num_steps=4, grid=(2, 3, 5), in_forward=True)
    layer.forward_state = state
    block = torch.nn.Sequential(torch.nn.LayerNorm(64), layer).to(device)
    x = activations(30, 64, seed=14).reshape(1, 30, 64).to(device)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(block, backend="aot_eager")
    with torch.no_grad():
        for step in range(4):  # cubes 4x1x4, 4x1x4, then 2x2x4, 2x2x4
            state.step = step
            layer.resolve_cube(state.progress)
            got, want = compiled(x), block(x)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 2
    torch._dynamo.reset()


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_deltaquant_reference_path_has_no_graph_breaks(device, monkeypatch):
    """The reference path (the CPU, and formats no kernel runs) compiles whole too, through inductor:
    the cube sizes come from the grid's arithmetic — bincount's data-dependent output shape broke the
    graph once per DeltaQuant layer (27 breaks in a tiny Wan 2.2 W4A4 checkpoint's `dq generate
    --compile on` on the CPU), and counting with a scatter made inductor's CPU code generation fail.
    Under dq's compile settings (`exact_casts`, which `dq generate --compile` uses) the output is the
    eager one: inductor's default drops the BF16 rounding of the group scales."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from dq_cli.models.base import ForwardState

    monkeypatch.setenv("DQ_KERNELS", "reference")
    layer = quant_layer("deltaquant", "int4", k=64, n=32).to(device)  # free group scales: reference only
    state = ForwardState(step=0, num_steps=4, grid=(3, 4, 16), in_forward=True)  # ragged: cubes 4x1x4
    layer.forward_state = state
    layer.resolve_cube(state.progress)
    x = activations(192, 64, seed=15).reshape(1, 192, 64).to(device)
    torch._dynamo.reset()
    counters.clear()
    from dq_cli.compile import exact_casts

    compiled = torch.compile(layer, backend="inductor")
    with torch.no_grad(), exact_casts(SimpleNamespace(transformers=lambda: {"transformer": layer})):
        got, want = compiled(x), layer(x)
    # one flipped 4-bit code would move an output by ~1/16 of the range: 1e-5 admits only fp32 order
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    from contextlib import nullcontext  # nothing to emulate without reference layers (all on the kernels)

    assert isinstance(exact_casts(SimpleNamespace(transformers=lambda: {"transformer": torch.nn.Identity()})),
                      nullcontext)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    torch._dynamo.reset()


@pytest.mark.parametrize("method, weight, activation, core, on_kernels", [
    ("rtn", "int8", "int8", "fp8", True), ("smoothquant", "int8", "int8", "fp8", True),
    ("svdquant", "int8", "int8", "fp8", False), ("rtn", "int4", "none", "fp8", True),
    ("svdquant", "int4_row", "none", "fp8", False), ("rtn", "int4_row", "int4_row", "fp8", True),
    ("rtn", "int4", "int4", "fp8", False), ("deltaquant", "int4_row", "int4_row", "fp8", True),
    ("deltaquant", "int4_pow2", "int4_pow2", "bf16", False)])
def test_plan_on_kernels_says_what_kernel_forward_does(method, weight, activation, core, on_kernels, monkeypatch):
    """`plan_on_kernels` (which decides whether dq's compile must emulate 16-bit casts) agrees with
    the dispatch itself for a layer seeing the forward's video."""
    from dataclasses import replace

    from dq_cli.models.base import ForwardState
    from dq_cli.quant.kernel_path import kernel_forward, plan_on_kernels

    monkeypatch.setenv("DQ_KERNELS", "triton")
    layer = quant_layer(method, weight, k=64, n=32, act=activation)
    layer.plan = replace(layer.plan, core=core)
    layer.sees_video = True
    state = ForwardState(step=0, num_steps=4, grid=(2, 3, 5), in_forward=True)
    layer.forward_state = state
    layer.resolve_cube(state.progress)
    assert plan_on_kernels(layer.plan) == on_kernels
    assert (kernel_forward(layer, activations(30, 64, seed=16).reshape(1, 30, 64)) is not None) == on_kernels


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("codes_dtype", [torch.int8, torch.bfloat16])  # bf16: 6Bit's carrier GEMM operand
def test_int8_token_quantizer_is_bit_exact(device, codes_dtype):
    from dq_kernels.int8_quantize import quantize_int8_tokens

    x = activations(40, 1100, seed=12)  # K spans two 1024-column steps
    x[3] = 0.0
    x[5, :10] = torch.tensor([127.0, 63.5, -63.5, 0.5, 1.5, -2.5, 0, 0, 0, 0])  # scale 1: ties round to even
    x[5, 10:] = 0.0
    smooth = torch.rand(1100, generator=torch.Generator().manual_seed(1)) + 0.5
    for lam in (None, smooth):
        q, s = quantize_int8_tokens(x.to(device), None if lam is None else lam.to(device), codes_dtype=codes_dtype)
        ref_q, ref_s = quantize_int8_rowwise(apply_smooth(x, lam))
        assert q.dtype == codes_dtype
        assert torch.equal(q.cpu(), ref_q.to(codes_dtype)) and torch.equal(s.cpu(), ref_s.reshape(-1))


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_group_carriers_are_bit_exact(device):
    """DeltaQuant's core tokens: the kernel's BF16 carriers equal quantize_fp8's E4M3 values times its
    power-of-two scales exactly."""
    from dq_kernels.fp8 import dequantize_fp8
    from dq_kernels.fp8_quantize import fp8_group_carriers

    gen = torch.Generator().manual_seed(13)
    # 37 rows (not a multiple of the 32-row block), groups spanning 12 binades of scale.
    x = torch.randn(37, 192, generator=gen) * torch.exp2(torch.randint(-6, 6, (37, 3, 1), generator=gen)
                                                          ).repeat(1, 1, 64).reshape(37, 192)
    x[4, 64:128] = 0.0                                   # an all-zero group: scale 0, values 0
    x[6, :64] = torch.arange(64) * 7.0 + 0.5             # amax 441.5: quotients just off E4M3 ties
    x[7, :64] = torch.linspace(-448.0, 448.0, 64)        # scale 1: values on and between the grid
    x[8, :64] = torch.linspace(-1e-3, 1e-3, 64)          # E4M3's subnormal range after scaling
    x[8, 0] = 448.0
    for dtype in (torch.float32, torch.bfloat16):
        ref_q, ref_s = quantize_fp8(x.to(dtype), 64, pow2_scales=True)
        assert (torch.frexp(ref_s[ref_s > 0])[0] == 0.5).all()  # powers of two
        carriers = fp8_group_carriers(x.to(dtype).to(device), 64)
        assert carriers.dtype == torch.bfloat16
        assert torch.equal(carriers.cpu().float(), dequantize_fp8(ref_q, ref_s, 64))


def test_routed_or_rotated_layers_keep_the_reference():
    """6Bit-Diffusion's per-step route (and a Hadamard-rotated plan) must not reach kernels that
    know neither."""
    from dataclasses import replace

    from dq_cli.quant.kernel_path import kernel_forward

    layer = quant_layer("rtn", "int8")
    x = torch.zeros(1, 4, 150)
    layer.route = "nvfp4"
    assert kernel_forward(layer, x) is None
    layer.route = None
    layer.plan = replace(layer.plan, hadamard=128)
    assert kernel_forward(layer, x) is None
