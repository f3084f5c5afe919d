"""6Bit-Diffusion's NVFP4-weight layers on exact BF16 carriers (dq_cli/quant/carrier_path.py) against
QuantLinear's reference math, on each activation route, with and without the Hadamard rotation,
smoothing and a low-rank branch. On the CPU the carriers are multiplied in fp32 (the same values a
BF16 GEMM with fp32 accumulation sees), so the two paths differ only in fp32 summation order."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dq_cli.quant.linear import QuantLinear
from dq_cli.quant.plan import LayerPlan
from dq_kernels.nvfp4 import fake_quantize_nvfp4, nvfp4_carrier, unpack_fp4, weight_carrier, dequantize_nvfp4


def nvfp4_layer(hadamard: int, low_rank: bool, k: int = 150, n: int = 40) -> QuantLinear:
    gen = torch.Generator().manual_seed(21)
    linear = nn.Linear(k, n)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(n, k, generator=gen) / k**0.5)
    plan = LayerPlan(method="svdquant" if low_rank else "rtn", weight="nvfp4", activation="nvfp4", group_size=16,
                     rank=4 if low_rank else 0, smoothing=None, cubes=None, core="fp8", hadamard=hadamard)
    extra = {}
    if low_rank:
        extra = dict(smooth=torch.rand(k, generator=gen) + 0.5, lora_up=torch.randn(n, 4, generator=gen) / 4,
                     lora_down=torch.randn(4, k, generator=gen) / 8)
    return QuantLinear.from_linear(linear, plan, "blocks.0.attn1.to_q", **extra)


def inputs(k: int = 150) -> torch.Tensor:
    gen = torch.Generator().manual_seed(22)
    x = torch.randn(2, 33, k, generator=gen) * torch.exp(torch.randn(k, generator=gen))  # outlier channels
    return x.to(torch.bfloat16)


def test_carriers_are_exact():
    """carrier · tensor scale = the fake-quantized values, and the carriers are BF16 numbers."""
    x = inputs().float().reshape(-1, 150)[:, :144]
    a, ts = nvfp4_carrier(x)
    torch.testing.assert_close(a * ts, fake_quantize_nvfp4(x), rtol=2**-23, atol=0)
    assert torch.equal(a.to(torch.bfloat16).float(), a)
    layer = nvfp4_layer(0, False)
    w = weight_carrier(unpack_fp4(layer.qweight), layer.block_scales)
    assert torch.equal(w.to(torch.bfloat16).float(), w)
    torch.testing.assert_close(w * layer.tensor_scale, dequantize_nvfp4(unpack_fp4(layer.qweight),
                                                                       layer.block_scales, layer.tensor_scale),
                               rtol=2**-23, atol=0)


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])]


@pytest.mark.parametrize("device", DEVICES)  # cuda: one BF16 cuBLAS GEMM with fp32 output
@pytest.mark.parametrize("route", ["nvfp4", "int8", "none"])
@pytest.mark.parametrize("hadamard", [0, 16])
@pytest.mark.parametrize("low_rank", [False, True])
@pytest.mark.parametrize("triton_carriers", [False, True])  # torch's carriers, or one Triton pass each
def test_carrier_path_matches_reference(route, hadamard, low_rank, device, triton_carriers, monkeypatch):
    monkeypatch.setattr("dq_cli.quant.carrier_path.TRITON_CARRIERS", triton_carriers)
    layer = nvfp4_layer(hadamard, low_rank).to(device)
    layer.route = route
    x = inputs().to(device)
    ref = layer.reference_forward(x.float())
    assert layer.last_route == route
    monkeypatch.setenv("DQ_KERNELS", "triton")
    import dq_cli.quant.carrier_path as carrier_path

    calls = []
    real = carrier_path.carrier_forward
    monkeypatch.setattr("dq_cli.quant.kernel_path.carrier_forward", lambda *a: calls.append(1) or real(*a))
    layer.last_route = None
    got = layer(x.float())
    assert calls and layer.last_route == route
    # for the 16-bit route also the lo half rounded to BF16, 2**-9 of a part itself under 2**-8 of x
    bound = sum_order_bound(layer, x.float(), ref, 2**-17 if route == "none" else 0.0) + 1e-7
    assert ((got - ref).abs() <= bound).all(), ((got - ref).abs() / bound).max()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("route", ["nvfp4", "int8"])
@pytest.mark.parametrize("low_rank", [False, True])  # with it, smoothing: X/λ is formed in fp32 first
def test_triton_path_on_bf16_input(route, low_rank, device, monkeypatch):
    """A model's BF16 activations go to the Triton kernels as they are (no fp32 copy) unless they are
    smoothed; the BF16 output is the fp32 reference's, rounded once."""
    import dq_cli.quant.carrier_path as carrier_path

    monkeypatch.setattr(carrier_path, "TRITON_CARRIERS", True)
    monkeypatch.setenv("DQ_KERNELS", "triton")
    layer = nvfp4_layer(0, low_rank).to(device)
    layer.route = route
    x = inputs().to(device)
    ref = layer.reference_forward(x.float())
    seen = []
    real = carrier_path._fused_forward
    monkeypatch.setattr(carrier_path, "_fused_forward", lambda lay, xs, *a: seen.append(xs.dtype) or real(lay, xs, *a))
    got = layer(x)
    assert got.dtype == torch.bfloat16 and seen == [torch.float32 if low_rank else torch.bfloat16]
    # the sum-order bound, then one rounding to BF16 (half an ulp: 2**-8 relative)
    bound = sum_order_bound(layer, x.float(), ref) + 2**-8 * ref.abs() + 1e-7
    assert ((got.float() - ref).abs() <= bound).all(), ((got.float() - ref).abs() / bound).max()


def sum_order_bound(layer: QuantLinear, x: torch.Tensor, ref: torch.Tensor, extra_rel: float = 0.0) -> torch.Tensor:
    """What two fp32 sums of the reference's products in different orders (the scales applied after
    the sum instead of before) may differ by: 2·K·2**-24·Σ|x̂_k·ŵ_k| per output, plus `extra_rel`·Σ."""
    xq = quantized_input(layer, x)
    w = layer.stored_weight()
    k = w.shape[1]
    return (xq[:, :k].abs() @ w.abs().T).reshape(ref.shape) * (2 * k * 2**-24 + extra_rel)


def quantized_input(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """The reference's rounded (and rotated) input to the 4-bit GEMM, [tokens, K padded]."""
    from dq_cli.quant.activations import quantize_input
    from dq_kernels.smoothing import apply_smooth

    xs = apply_smooth(x, layer.smooth)
    plan = layer.active_plan(xs)
    xq = quantize_input(layer.gemm_input(xs, plan)[1], plan, None, True)
    return xq.reshape(-1, xq.shape[-1])


class WholeSequenceMax:
    """A stand-in for one of two context-parallel processes (dq_cli.quant.sequence.SequenceShard):
    its max-reduction returns what the two processes' all-reduce would, the whole sequence's max."""
    size = 2

    def __init__(self, whole_amax: torch.Tensor):
        self.whole_amax = whole_amax

    def all_max(self, t: torch.Tensor) -> torch.Tensor:
        assert t.numel() == 1  # one scalar per layer call: the tensor scale's amax
        return torch.maximum(t, self.whole_amax.to(t))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("route", ["nvfp4", "int8"])
@pytest.mark.parametrize("hadamard", [0, 16])
@pytest.mark.parametrize("triton_carriers", [False, True])
def test_sequence_slices_match_one_process(route, hadamard, device, triton_carriers, monkeypatch):
    """Context parallelism: each half of the tokens, on its own with the whole sequence's NVFP4 tensor
    scale (INT8 scales are per token), gives that half of the one-process result."""
    from dq_cli.models.base import ForwardState
    from dq_kernels.smoothing import apply_smooth

    monkeypatch.setattr("dq_cli.quant.carrier_path.TRITON_CARRIERS", triton_carriers)
    monkeypatch.setenv("DQ_KERNELS", "triton")
    layer = nvfp4_layer(hadamard, True).to(device)
    layer.route = route
    x = inputs()[:, :32].float().to(device)
    ref = layer.reference_forward(x)
    xs = apply_smooth(x, layer.smooth)
    whole = layer.route_input(xs, layer.active_plan(xs)).abs().amax()
    layer.forward_state = ForwardState(num_steps=1, shard=WholeSequenceMax(whole))
    halves = [layer(x[:, :16]), layer(x[:, 16:])]
    bound = sum_order_bound(layer, x, ref) + 1e-6  # the reference's rounding of the whole sequence
    got = torch.cat(halves, dim=1)
    assert ((got - ref).abs() <= bound).all(), ((got - ref).abs() / bound).max()
    # Without the whole sequence's amax a half would round with its own scale: the test can tell.
    if route == "nvfp4":
        layer.forward_state = None
        alone = layer(x[:, :16])
        assert not torch.allclose(alone, ref[:, :16], rtol=0, atol=float(bound[:, :16].max()))


def test_cube_route_keeps_the_reference(monkeypatch):
    layer = nvfp4_layer(0, False)
    layer.route = "deltaquant"
    from dq_cli.quant import carrier_path

    assert carrier_path.carrier_forward(layer, inputs().float()) is None
