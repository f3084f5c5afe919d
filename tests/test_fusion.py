"""`quantization.fuse_qkv`: self-attention Q/K/V as one linear (dq_cli/models/fusion.py).

Fusing is exact up to the GEMM's summation order (one [3N, K] weight instead of three [N, K]); a
quantized fused layer is fitted from the statistics of its shared input, even when the artifact was
calibrated unfused; a fused checkpoint rebuilds the fused model and loads back bit for bit; the
quality bench compares a fused layer with its three unfused parts; families whose diffusers
attention has no fused path are refused with a message naming the recipe key."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import recipe_data, run_dq, tm, write_recipe
from dq_cli import recipe as recipes
from dq_cli.errors import DQError

FAMILY = "wan"  # two experts, each with self- and cross-attention
PROMPT = "a cat dancing in the rain"


def _generate(adapter, steps=2):
    g = tm.GEN_KWARGS[FAMILY]
    return adapter.generate(PROMPT, negative_prompt="", steps=steps, guidance=g["guidance_scale"], seed=0,
                            frames=g["num_frames"], height=g["height"], width=g["width"])


def _run_settings():
    g = tm.GEN_KWARGS[FAMILY]
    return SimpleNamespace(negative_prompt="", steps=2, guidance=g["guidance_scale"], seed=0,
                           frames=g["num_frames"], height=g["height"], width=g["width"])


def _load(folder, dtype="float32"):
    from dq_cli.models import load_model

    return load_model(FAMILY, str(folder), device="cpu", dtype=dtype)


def test_fusing_keeps_the_output_and_drops_the_parts(family_dir):
    folder = family_dir(FAMILY)
    adapter = _load(folder)
    before = _generate(adapter)
    roles = [info.role for info in adapter.linears()]
    blocks = roles.count("self_attn.q")
    assert blocks > 0 and "self_attn.qkv" not in roles
    assert adapter.fuse_qkv() == blocks
    infos = adapter.linears()
    roles = [info.role for info in infos]
    assert roles.count("self_attn.qkv") == blocks
    assert not {"self_attn.q", "self_attn.k", "self_attn.v"} & set(roles)  # the parts are gone, not duplicated
    assert {"cross_attn.k", "cross_attn.v"} <= set(roles)  # cross-attention stays unfused
    fused = next(i for i in infos if i.role == "self_attn.qkv")
    assert fused.out_features == 3 * fused.in_features
    assert not any(".attn1.to_q." in k for m in adapter.transformers().values() for k in m.state_dict())
    # fp32 on the CPU: the same products, summed in another blocking at most (measured: bit-identical)
    torch.testing.assert_close(_generate(adapter), before, rtol=1e-5, atol=1e-5)
    assert adapter.fuse_qkv() == 0  # idempotent


def test_fuse_qkv_is_refused_without_a_fused_path(family_dir):
    from dq_cli.models import load_model

    adapter = load_model("ltx", str(family_dir("ltx")), device="cpu")
    with pytest.raises(DQError, match="quantization.fuse_qkv"):
        adapter.fuse_qkv()


def test_fused_layer_is_fitted_from_its_parts_statistics(family_dir):
    """An artifact calibrated unfused holds `to_q`'s input, which is the fused layer's: the fit is
    the one `fit_layer` gives on those statistics."""
    from dq_calib.artifact import Calibration, LayerCalibration
    from dq_calib.weights import fit_layer
    from dq_cli.quant import plan_layers, quantize_model
    from dq_cli.quant.plan import LayerPlan

    adapter = _load(family_dir(FAMILY))
    adapter.fuse_qkv()
    spec = recipes.parse("version: 1\nname: t\nquantization:\n  fuse_qkv: true\n  default: {method: svdquant, "
                         "weight: int4, activation: int4, rank: 4, smoothing: {alpha: 0.5}}\n", "test")
    infos = [i for i in adapter.linears() if i.role == "self_attn.qkv"][:1]
    plans = plan_layers(spec.quantization, infos, "test")
    name = infos[0].name
    gen = torch.Generator().manual_seed(0)
    k = infos[0].in_features
    stats = LayerCalibration(absmax=torch.rand(1, k, generator=gen) + 0.5, tokens=torch.randn(64, k, generator=gen),
                             token_meta=torch.zeros(64, 5))
    part = name.replace("to_qkv", "to_q")
    weight = adapter.module(infos[0]).weight.detach().float().clone()
    fits = {}
    assert quantize_model(adapter, plans, Calibration({}, {part: stats}),
                          on_layer=lambda n, fit: fits.setdefault(n, fit)) == 1
    plan: LayerPlan = plans[name]
    expected = fit_layer(weight, stats.tokens, stats.absmax.amax(dim=0), fmt=plan.weight, act_fmt=plan.activation,
                         group_size=plan.group_size, rank=plan.rank, alphas=(0.5,))
    assert torch.equal(fits[name].smooth, expected.smooth) and torch.equal(fits[name].lora_down, expected.lora_down)
    with pytest.raises(DQError, match="needs calibration statistics"):  # neither name: the usual error
        quantize_model(_fused(family_dir), plans, Calibration({}, {}))


def _fused(family_dir):
    adapter = _load(family_dir(FAMILY))
    adapter.fuse_qkv()
    return adapter


def test_fused_checkpoint_round_trip(family_dir, tmp_path):
    """`dq quantize` with fuse_qkv writes one to_qkv per self-attention; loading rebuilds the fused
    model from its config and gives the in-memory quantized model's buffers and frames bit for bit."""
    from dq_cli.quant import plan_layers, quantize_model
    from dq_cli.session import load_quantized

    folder = family_dir(FAMILY)
    recipe = write_recipe(tmp_path / "fused.yaml", recipe_data(FAMILY, folder, quantization={
        "fuse_qkv": True, "default": {"method": "rtn", "weight": "int8", "activation": "int8"}}))
    path = tmp_path / "fused.safetensors"
    run_dq("quantize", "-r", recipe, "-o", path, "-q")
    loaded, info = load_quantized(path, "cpu")
    assert any(n.endswith("attn1.to_qkv") for n in info.layers)
    assert not any(n.endswith(("attn1.to_q", "attn1.to_k", "attn1.to_v")) for n in info.layers)
    spec = recipes.load(str(recipe))
    in_memory = _load(folder, dtype=spec.model.dtype)
    in_memory.fuse_qkv()
    plans = plan_layers(spec.quantization, in_memory.linears(), str(recipe))
    quantize_model(in_memory, plans)
    assert info.layers == plans
    for component, model in in_memory.transformers().items():
        a, b = model.state_dict(), loaded.transformers()[component].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), component
    assert torch.equal(_generate(in_memory), _generate(loaded))


def test_quality_probe_compares_a_fused_layer_with_its_parts(family_dir):
    """The layer-error probe hooks the baseline's to_q/to_k/to_v and compares their concatenated
    outputs with the fused variant layer: an unquantized fused copy is off by summation order only."""
    from dq_cli.quality_bench import layer_errors, quantized_layers
    from dq_cli.quant import plan_layers, quantize_model

    baseline = _load(family_dir(FAMILY))
    variant = _fused(family_dir)
    spec = recipes.parse("version: 1\nname: t\nquantization:\n  fuse_qkv: true\n  default: {method: rtn, "
                         "weight: int8, activation: none}\n", "test")
    plans = plan_layers(spec.quantization, [i for i in variant.linears() if i.role == "self_attn.qkv"], "test")
    quantize_model(variant, plans)
    run = _run_settings()
    errors = layer_errors(baseline, {"int8": quantized_layers(variant)}, PROMPT, run, probe_every=1)["int8"]
    assert set(errors) == set(plans)
    # weight-only INT8 per channel: ~0.3% of a layer's output; a wrong concatenation order would be ~140%
    assert all(0 < e < 0.02 for e in errors.values()), errors


def test_parts_roles_select_the_fused_layer():
    """A recipe listing self_attn.q/k/v in `roles` (as dq-tiny's do) quantizes the fused layer too,
    rather than leaving it in 16 bits without a word."""
    from dq_cli.models.base import LinearInfo
    from dq_cli.quant import plan_layers

    infos = [LinearInfo("transformer", "blocks.0.attn1.to_qkv", "self_attn.qkv", 64, 192),
             LinearInfo("transformer", "blocks.0.ffn.net.2", "ffn.down", 128, 64)]
    text = ("version: 1\nname: t\nquantization:\n  fuse_qkv: true\n  roles: [{roles}]\n"
            "  default: {{method: rtn, weight: int8, activation: none}}\n")
    assert set(plan_layers(recipes.parse(text.format(roles="self_attn.k"), "t").quantization, infos, "t")) == \
        {"transformer.blocks.0.attn1.to_qkv"}
    assert set(plan_layers(recipes.parse(text.format(roles="ffn.down"), "t").quantization, infos, "t")) == \
        {"transformer.blocks.0.ffn.net.2"}
