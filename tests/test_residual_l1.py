"""dq_kernels.residual_l1 (a block's residual Δ and its L1 sums in one pass, 6Bit's Γ and TDC):
the reference against float64 math, the kernel against the reference on random inputs (rows
longer than one program's chunk and not a multiple of it, with and without a cached Δ, BF16 with
rounding ties and fp32), and the 6Bit runtime's use of it on a tiny model."""

from __future__ import annotations

import pytest
import torch

from dq_kernels.residual_l1 import kernel_applies, residual_l1, residual_l1_reference

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])]
U = 2.0**-24  # fp32 unit roundoff
# 1 − 2⁻⁹ ties 1 − 2⁻⁸ and 1 (even); 1 + 3·2⁻⁸ ties 1 + 2⁻⁷ and 1 + 2⁻⁶ (even)
TIES = [1.0, -1.0, 1 + 2**-6, -1 - 2**-6]


def _inputs(shape, dtype, seed, with_ties=True):
    gen = torch.Generator().manual_seed(seed)
    out = torch.randn(shape, generator=gen)
    inp = out + 0.3 * torch.randn(shape, generator=gen)  # a block changes its input a little
    cached = (out - inp) * (1 + 0.1 * torch.randn(shape, generator=gen))
    out, inp, cached = out.to(dtype), inp.to(dtype), cached.to(dtype)
    if with_ties:  # differences halfway between two bf16 numbers (TIES): truncation would miss both
        flat_o, flat_i = out.view(-1), inp.view(-1)
        flat_o[:4] = torch.tensor([1.0, -1.0, 1 + 2**-6, -1 - 2**-6])
        flat_i[:4] = torch.tensor([2.0**-9, -2.0**-9, 2.0**-8, -2.0**-8])
    return out, inp, cached


def _l1_bound(*terms: torch.Tensor) -> torch.Tensor:
    """Two fp32 sums of n terms (each formed with one fp32 rounding) in different orders differ by
    at most 2·(n + 1)·u·Σ|term| per row (the recursive-summation bound, twice)."""
    n = terms[0][0].numel()
    return sum(t.double().abs().reshape(t.shape[0], -1).sum(1) for t in terms) * 2 * (n + 1) * U


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_reference_matches_float64(dtype):
    out, inp, cached = _inputs((2, 37, 19), dtype, seed=1)
    delta, sums = residual_l1_reference(out, inp, cached)
    o, i, c = out.double(), inp.double(), cached.double()
    # Δ is the exact difference rounded once to the model's dtype (bf16 inputs: exact in float64)
    assert torch.equal(delta, (o - i).to(dtype))
    if dtype == torch.bfloat16:
        assert delta.view(-1)[:4].tolist() == TIES
    d = delta.double()
    want = torch.stack([(o - i).abs().flatten(1).sum(1), i.abs().flatten(1).sum(1),
                        (d - c).abs().flatten(1).sum(1), c.abs().flatten(1).sum(1)], 1)
    bound = torch.stack([_l1_bound(o - i), _l1_bound(i), _l1_bound(d - c), _l1_bound(c)], 1)
    assert ((sums.double() - want).abs() <= bound).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("with_cached", [True, False])
@pytest.mark.parametrize("shape", [(2, 70_001), (1, 3, 11, 7)])  # 70,001: two interpreter chunks, ragged
def test_kernel_matches_reference(device, dtype, with_cached, shape):
    out, inp, cached = _inputs(shape, dtype, seed=len(shape) + int(with_cached))
    cached = cached if with_cached else None
    move = lambda t: t.to(device) if t is not None else None  # noqa: E731
    assert kernel_applies(move(out), move(inp), move(cached))
    delta, sums = residual_l1(move(out), move(inp), move(cached))
    ref_delta, ref_sums = residual_l1_reference(out, inp, cached)
    assert torch.equal(delta.cpu(), ref_delta)  # the same rounding of the same fp32 difference
    if dtype == torch.bfloat16:
        assert delta.view(-1)[:4].tolist() == TIES
    d = ref_delta.double()
    bound = torch.stack([_l1_bound(out.double() - inp.double()), _l1_bound(inp)]
                        + ([_l1_bound(d - cached.double()), _l1_bound(cached)] if with_cached
                           else [torch.zeros(shape[0], dtype=torch.float64)] * 2), 1)
    assert ((sums.cpu().double() - ref_sums.double()).abs() <= bound).all()
    if not with_cached:
        assert (sums[:, 2:] == 0).all()


def test_kernel_without_delta_and_fallbacks():
    out, inp, cached = _inputs((2, 300), torch.bfloat16, seed=3)
    delta, sums = residual_l1(out, inp, cached, write_delta=False)
    assert delta is None
    _, ref_sums = residual_l1_reference(out, inp, cached)
    assert torch.allclose(sums, ref_sums, rtol=1e-5, atol=0)
    # what the kernel does not take goes to the reference, with the same results
    assert not kernel_applies(out.half(), inp.half(), None)
    assert not kernel_applies(out.t(), inp.t(), None)  # not contiguous
    d16, s16 = residual_l1(out.half(), inp.half())
    assert torch.equal(d16, out.half() - inp.half()) and torch.allclose(s16[:, :2], ref_sums[:, :2], rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_runtime_statistics_are_the_calibration_metrics(dtype):
    """The predictor is fitted on calibration's Γ and TDC's threshold on its rel. L1 change
    (dq_calib.trajectories): the runtime's one-pass sums must give the same ratios."""
    from dq_calib.trajectories import gamma, rel_l1_change

    out, inp, cached = _inputs((2, 40, 24), dtype, seed=7)
    delta, sums = residual_l1(out, inp, cached)
    # two sums of positive terms in other orders, each within (n + 1)·u relative, then one division
    rtol = 4 * (out[0].numel() + 1) * U
    torch.testing.assert_close(sums[:, 0] / sums[:, 1], gamma(inp, out), rtol=rtol, atol=0)
    torch.testing.assert_close(sums[:, 2] / sums[:, 3], rel_l1_change(delta, cached), rtol=rtol, atol=0)
