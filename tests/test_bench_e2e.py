"""`dq bench e2e` and `dq bench --smoke`: the end-to-end mode on the CPU with tiny configurations of
every family, the random-weight build against diffusers' own loader, the full-size configurations
(shapes, token counts, parameter counts) on the meta device, sizes, the per-step breakdown, and the
same run on a GPU (`-m gpu`)."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
import time

import pytest
import torch
from torch import nn

from conftest import run_dq

PNG = b"\x89PNG\r\n\x1a\n"


# ---- the smoke run CI does -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "smoke"
    t0 = time.perf_counter()
    result = run_dq("bench", "--smoke", "-o", out, "--json")
    return json.loads(result.stdout), out, time.perf_counter() - t0


def test_smoke_writes_a_versioned_report_with_where_it_ran(smoke):
    doc, out, seconds = smoke
    assert seconds < 120  # seconds on an idle 2-core CPU; generous for a loaded one
    assert (doc["schema"], doc["report_version"], doc["kind"]) == ("dq-bench", 2, "e2e")
    env = doc["environment"]
    assert env["device"] == "cpu" and env["driver"] is None and env["cpu_threads"] >= 1
    assert set(env["versions"]) >= {"dq", "torch", "triton", "diffusers", "torchao", "python"}
    assert env["versions"]["torch"] == torch.__version__
    assert env["git_commit"] is None or len(env["git_commit"]) == 40
    assert env["command"].startswith("dq bench --smoke --out ")
    assert json.loads(out.with_suffix(".json").read_text()) == doc
    st = doc["settings"]
    assert st["smoke"] and st["model"] == "dq-tiny" and st["steps"] == 2 and st["warmup_steps"] == 2


def test_smoke_rows_measure_real_things(smoke):
    doc, _, _ = smoke
    rows = {r["config"]: r for r in doc["rows"]}
    assert list(rows) == ["bf16", "w4a4", "w8a8", "6bit", "torchao-int8"]
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert {r["config"] for r in ok} >= {"bf16", "w4a4", "w8a8", "6bit"}
    for r in ok:
        assert r["random_weights"] is False  # dq-tiny's trained weights
        assert r["tokens"] == 4 * 8 * 8      # 4 frames of 16x16 pixels, patch (1, 2, 2)
        assert r["steps"] == 2 and r["forwards"] == {"transformer": 4} and r["forward_batch"] == 1  # CFG: 2 calls a step
        assert len(r["forward_ms_all"]) == 4
        assert r["forward_ms"] == pytest.approx(statistics.median(r["forward_ms_all"]), rel=1e-3)
        assert 0 < r["forward_ms"] < r["e2e_s"] * 1000 and r["step_ms"] > 0
        assert r["peak_memory_gib"] is None  # no GPU
        b = r["breakdown"]
        assert b["linear_modules"] == 66 and b["attention_modules"] == 12  # 6 blocks x (10 + 1), embeddings; attn1/attn2
        assert b["linears_ms"] > 0 and b["attention_ms"] > 0
        assert b["linears_ms"] + b["attention_ms"] + b["other_ms"] == pytest.approx(b["total_ms"], rel=1e-6)
    # quality against the BF16 video of the same seed; 8 bits beat 4 bits
    assert rows["bf16"]["psnr_db"] is None
    assert 10 < rows["w4a4"]["psnr_db"] < rows["w8a8"]["psnr_db"] < math.inf
    assert 0 < rows["w4a4"]["ssim"] < rows["w8a8"]["ssim"] <= 1
    assert rows["w8a8"]["vs_bf16"] == pytest.approx(rows["bf16"]["forward_ms"] / rows["w8a8"]["forward_ms"])
    # sizes against fp32 (the CPU's dtype); at dq-tiny's width (128) the rank-32 low-rank branch of W4A4
    # weighs more than its packed 4-bit weights, and the embeddings and head stay unquantized
    bf16 = rows["bf16"]["checkpoint_bytes"]
    assert rows["w8a8"]["checkpoint_bytes"] < 0.4 * bf16 and rows["w4a4"]["checkpoint_bytes"] < 0.45 * bf16
    assert rows["bf16"]["weights_bytes"] >= bf16 * 0.99
    # 6Bit: routed activations between NVFP4 (4.5 bits) and INT8 (8)
    rt = rows["6bit"]["runtime"]
    assert 4.5 < rt["average_bits"] < 8 and set(rt["route_mix"]) <= {"nvfp4", "int8"}
    torchao = rows["torchao-int8"]
    if torchao["status"] == "ok":
        assert torchao["checkpoint_bytes"] < 0.6 * bf16
    else:
        assert torchao["status"] == "skipped" and "torchao" in torchao["reason"]


def test_smoke_writes_markdown_and_plots(smoke):
    doc, out, _ = smoke
    md = out.with_suffix(".md").read_text()
    assert "### dq-tiny @ 4x16x16 — 256 tokens, 2 steps with CFG" in md
    assert "| w4a4 | sdpa | off |" in md and "Command: `dq bench --smoke" in md
    for suffix in (".breakdown.png", ".speed_quality.png"):
        png = out.with_name(out.name + suffix).read_bytes()
        assert png.startswith(PNG) and len(png) > 10_000


def test_a_crowded_scatter_names_configs_in_a_legend_not_on_every_point(monkeypatch, tmp_path):
    """A whole table (~20 rows) labelled point by point overprinted itself into an unreadable plot (the
    H200 table of 2026-12-01); past MAX_ANNOTATED points a legend names the configurations instead.
    A small report keeps its labels."""
    import matplotlib.pyplot as plt

    from dq_cli import bench_plots

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figures to look at them

    def rows(configs):
        return [dict(model="m", resolution="r", config=c, attention=a, compile=on, vs_bf16=1.0 + i / 10,
                     checkpoint_bytes=2**30 * (i + 1)) for i, (c, a, on) in enumerate(
                         (c, a, on) for c in configs for a in ("sdpa", "sage8") for on in (False, True))]
    doc = {"environment": {"gpu": "X"}, "rows": []}
    bench_plots._scatter(rows(["bf16", "w4a4", "w8a8"]), "checkpoint_bytes", "GiB", False, tmp_path / "a.png", doc)
    bench_plots._scatter(rows(["bf16"]), "checkpoint_bytes", "GiB", False, tmp_path / "b.png", doc)
    crowded, small = (f.axes[0] for f in figures)
    assert len(crowded.texts) == 0 and [t.get_text() for t in crowded.get_legend().get_texts()][:3] == [
        "bf16", "w4a4", "w8a8"]
    assert len(small.texts) == 4 and small.get_legend() is None
    assert (tmp_path / "a.png").read_bytes().startswith(PNG)


# ---- every family on its tiny random configuration ----------------------------------------------------------
TOKENS = {"wan": 3 * 2 * 2, "wan-ti2v": 3 * 1 * 1, "ltx": 3 * 8 * 8, "cogvideox": 3 * 2 * 2 + 16}
CALLS = {"wan": ({"transformer": 2, "transformer_2": 2}, 1), "wan-ti2v": ({"transformer": 4}, 1),
         "ltx": ({"transformer": 2}, 2), "cogvideox": ({"transformer": 2}, 2)}


def test_cuda_graph_mode_starts_a_new_graph_step_per_transformer_forward(family_dir, monkeypatch):
    """With `--compile-mode reduce-overhead`, each transformer call first marks a new CUDA-graph step:
    without it, a block's replay overwrote buffers a later access read (measured on an H200 with
    LTX-Video). The hooks go away with the compiled blocks."""
    from dq_cli.compile import RegionalCompile
    from dq_cli.models import load_model

    adapter = load_model("wan", str(family_dir("wan")), device="cpu")
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    models = adapter.transformers()
    before = {name: set(m._forward_pre_hooks) for name, m in models.items()}
    with RegionalCompile(adapter, "inductor", "reduce-overhead"):
        for name, model in models.items():
            added = [model._forward_pre_hooks[k] for k in set(model._forward_pre_hooks) - before[name]]
            assert len(added) == 1
            added[0](model, ())
    assert len(marks) == len(models)
    assert {name: set(m._forward_pre_hooks) for name, m in models.items()} == before
    with RegionalCompile(adapter, "inductor"):  # the default mode adds no hook
        assert {name: set(m._forward_pre_hooks) for name, m in models.items()} == before


@pytest.mark.parametrize("family", ["ltx", "cogvideox"])
def test_6bit_compiled_gives_the_eager_output_on_batched_cfg_families(family, family_dir):
    """LTX-Video and CogVideoX batch both CFG branches in one forward (one 6Bit stream), and
    CogVideoX's joint blocks return the text stream too (TDC caches both): compiled beneath the
    block hook, with the routed linears eager between the pieces, the output is the eager one."""
    from dq_cli import bench_configs as configs
    from dq_cli import bench_e2e as e2e
    from dq_cli.quant.runtime import block_hook, transformer_blocks
    from dq_cli.quant.tdc import TDCConfig

    p = e2e.plan(model=str(family_dir(family)), resolution="9x32x32", configs="6bit", attention=["sdpa"],
                 compile_="off,on", dtype="auto", recipe_overrides=[], num_layers=None, frames=None, height=None,
                 width=None, prompt=e2e.DEFAULT_PROMPT, device="cpu",
                 options=e2e.Options(steps=4, breakdown=False, compile_backend="aot_eager"))
    w = p.make()
    configs.apply_config(w, "6bit")
    # Every block stable enough (a skip at step 3), and the step after it refreshes its
    # outlier-heavy layers in 16 bits: the routes that the hook and the layers decide while compiled.
    for model in w.adapter.transformers().values():
        for _, block in transformer_blocks(model):
            block_hook(block).tdc = TDCConfig(tau=1e9, max_skips=1, refresh_ratio=2.0)
    outputs, rows = [], []
    for compiled in (False, True):
        row = e2e.Row(key="k", model=family, resolution="r", config="6bit", attention="sdpa", compile=compiled)
        outputs.append(e2e.measure(w, row, p.options, print))
        rows.append(row)
    assert torch.equal(outputs[0], outputs[1])
    assert rows[0].runtime["route_calls"] == rows[1].runtime["route_calls"]
    assert rows[0].runtime["block_skips"] == rows[1].runtime["block_skips"] > 0
    assert set(rows[1].runtime["route_calls"]) == {"int8", "nvfp4", "none"}
    assert any("graph breaks" in n and "0 graph breaks" not in n for n in rows[1].notes)


@pytest.mark.parametrize("family", ["wan", "wan-ti2v", "ltx", "cogvideox"])
def test_e2e_on_each_family_from_its_folder(family, family_dir, tmp_path):
    """The folder's configs only (random weights, the VAE's compression read from its config), the
    pipeline's own CFG (Wan: two calls a step and two experts; LTX/CogVideoX: one batched call)."""
    configs = "bf16,w4a4" if family == "wan" else "bf16,w8a8"
    extra = ["--attention", "sdpa,sage8", "--compile", "off,on", "--compile-backend", "aot_eager"] if family == "wan" else []
    doc = json.loads(run_dq("bench", "e2e", "--model", family_dir(family), "--resolution", "9x32x32", "--configs",
                            configs, "--steps", "2", "--device", "cpu", *extra, "--json", "-q").stdout)
    assert doc["settings"]["random_weights"] is True and doc["notes"][0].startswith("RANDOM WEIGHTS")
    rows = doc["rows"]
    assert len(rows) == (8 if family == "wan" else 2)
    calls, batch = CALLS[family]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["tokens"] == TOKENS[family] and r["forwards"] == calls and r["forward_batch"] == batch
        assert r["psnr_db"] is None  # random weights: no quality columns
        if r["compile"]:
            assert r["breakdown"] is None and any(n.startswith("torch.compile (aot_eager)") for n in r["notes"])
        else:
            assert r["breakdown"]["linears_ms"] > 0
    quantized = [r for r in rows if r["config"] != "bf16"]
    assert all(r["checkpoint_bytes"] < rows[0]["checkpoint_bytes"] for r in quantized)
    if family == "wan":
        keys = {r["key"] for r in rows}
        assert f"{family_dir(family).name}@9x32x32/w4a4/sage8/compile" in keys  # every config x attention x compile
        sage = [r for r in rows if r["attention"] == "sage8"]
        # head dim 12 is not the kernel's: counted and left on SDPA, and said
        assert all(r["attention_stats"]["fallback"] for r in sage)
        # BF16 blocks, with SDPA or routed to the 8-bit attention, compile whole (the W4A4 rows here run
        # the CPU's reference path, which is not for tracing; its kernel path is held to no breaks in
        # tests/test_kernels_w4a4.py)
        for attention in ("sdpa", "sage8"):
            row = next(r for r in rows if r["config"] == "bf16" and r["compile"] and r["attention"] == attention)
            # one graph for all blocks: no recompiles per block or per call (a per-module attention
            # hook and a routed-call counter read while tracing each caused them)
            assert "blocks compiled, 1 graphs, 0 graph breaks" in " ".join(row["notes"]), row["notes"]
        # speed-ups against bf16 with SDPA in the same compile mode, whatever the row's attention
        base = {r["compile"]: r["forward_ms"] for r in rows if r["config"] == "bf16" and r["attention"] == "sdpa"}
        for r in rows:
            assert r["vs_bf16"] == pytest.approx(base[r["compile"]] / r["forward_ms"])


def test_torchao_without_torchao_or_a_gpu_is_skipped_and_6bit_compiles(monkeypatch):
    from dq_cli import bench_configs as configs
    from dq_cli import bench_e2e as e2e

    w = e2e.tiny_workload("cpu", "auto", 0, e2e.DEFAULT_PROMPT, 2, 16, 16)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "torchao", None)
        m.setitem(sys.modules, "torchao.quantization", None)
        with pytest.raises(configs.Skip, match="torchao is not importable"):
            configs.apply_config(w, "torchao-int8")
    if importlib.util.find_spec("torchao") is not None:
        with pytest.raises(configs.Skip, match="needs a CUDA GPU"):
            configs.apply_config(w, "torchao-fp8")
    notes = configs.apply_config(w, "6bit")
    assert any("synthetic 6Bit predictor" in n for n in notes) and w.adapter.runtime is not None
    row = e2e.Row(key="k", model="m", resolution="r", config="6bit", attention="sdpa", compile=True)
    e2e.measure(w, row, e2e.Options(steps=1, breakdown=False, compile_backend="aot_eager"), print)
    assert row.forward_ms > 0 and any("graph breaks" in n and "0 graph breaks" not in n for n in row.notes)


def test_synthetic_predictor_meets_the_recipe_target():
    from dq_calib.predictor import ROUTE_BITS
    from dq_cli import recipe as recipes
    from dq_cli.bench_configs import synthetic_predictor

    recipe = recipes.parse(recipes.resolve("wan22_6bit.yaml")[1])
    names = {f"transformer.blocks.{b}.{l}": k for b in range(40)
             for l, k in (("attn1.to_q", 5120), ("attn1.to_k", 5120), ("ffn.net.0.proj", 5120), ("ffn.net.2", 13824))}
    p = synthetic_predictor(recipe, dict.fromkeys(names), names)
    safe = sum(k for n, k in names.items() if p.route(n, 0.1) == "int8")
    bits = (safe * ROUTE_BITS["int8"] + (sum(names.values()) - safe) * ROUTE_BITS["nvfp4"]) / sum(names.values())
    assert bits == pytest.approx(6.0, abs=0.1)
    assert all(p.route(n, None) == "int8" for n in names)  # no Γ on the first step: the safe route


# ---- building models ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["wan", "ltx", "cogvideox"])
def test_random_build_matches_what_diffusers_loads(family, family_dir):
    """Same parameter and buffer names, shapes and dtypes as from_pretrained(torch_dtype=bf16) — the
    fp32-kept modules included — all real (no meta tensor left), deterministic by seed."""
    import diffusers

    from dq_cli.bench_e2e import build_transformer

    folder = family_dir(family) / "transformer"
    config = json.loads((folder / "config.json").read_text())
    ref = getattr(diffusers, config["_class_name"]).from_pretrained(folder, torch_dtype=torch.bfloat16)
    got = build_transformer(config, "cpu", torch.bfloat16, seed=0)
    want = {n: (t.shape, t.dtype) for n, t in list(ref.named_parameters()) + list(ref.named_buffers())}
    have = {n: (t.shape, t.dtype) for n, t in list(got.named_parameters()) + list(got.named_buffers())}
    assert have == want
    assert all(t.device.type == "cpu" for t in got.state_dict().values())
    if family == "wan":
        assert got.scale_shift_table.dtype == torch.float32  # one of Wan's _keep_in_fp32_modules
    again, other = build_transformer(config, "cpu", torch.bfloat16, 0), build_transformer(config, "cpu", torch.bfloat16, 1)
    w = dict(got.named_parameters())
    assert all(torch.equal(p, w[n]) for n, p in again.named_parameters())
    assert not all(torch.equal(p, w[n]) for n, p in other.named_parameters())


@pytest.mark.parametrize("name, tokens, experts, gib, linears", [
    ("wan2.2-a14b", 21 * 30 * 52, 2, 26.6, 400),   # FACTS.md: 32,760 tokens at 480p, weights 26.6 GiB per expert
    ("wan2.2-ti2v-5b", 31 * 22 * 40, 1, 9.3, 300),
    ("ltx-video", 16 * 16 * 24, 1, 3.5, 280),
    ("cogvideox-5b", 13 * 30 * 45, 1, 10.4, 252),
])
def test_full_size_configs_on_the_meta_device(name, tokens, experts, gib, linears):
    """The full-size models as `dq bench e2e` builds them, on the meta device: weight bytes, block linears
    and the token count the pipeline makes at the default resolution (the VAE factors)."""
    from dq_cli import bench_e2e as e2e
    from dq_cli import bench_models
    from dq_cli import bench_report as br
    from dq_cli.bench_configs import BLOCK_ROLES
    from dq_cli.models import ADAPTERS

    spec = bench_models.BUILTIN[name]
    pipe = e2e.build_pipeline(spec, "meta", torch.bfloat16, 0)
    adapter = ADAPTERS[spec.family](pipe, name)
    models = adapter.transformers()
    assert len(models) == experts
    per_expert = br.module_bytes(models["transformer"]) / 2**30
    assert per_expert == pytest.approx(gib, rel=0.03)
    block = [i for i in adapter.linears() if i.component == "transformer" and i.role in BLOCK_ROLES]
    assert len(block) == linears
    _, (f, h, w) = spec.resolution(None)
    gen = torch.Generator().manual_seed(0)
    if spec.family == "ltx":
        latents = pipe.prepare_latents(1, 128, h, w, f, torch.float32, "cpu", gen)
        assert latents.shape[1] == tokens  # packed [B, tokens, C]
        return
    if spec.family == "cogvideox":
        latents = pipe.prepare_latents(1, 16, f, h, w, torch.float32, "cpu", gen)  # [B, F, C, H, W]
        t, hh, ww = latents.shape[1], latents.shape[3] // 2, latents.shape[4] // 2
    else:
        latents = pipe.prepare_latents(1, models["transformer"].config.in_channels, h, w, f, torch.float32, "cpu", gen)
        t, hh, ww = latents.shape[2], latents.shape[3] // 2, latents.shape[4] // 2
    assert t * hh * ww == tokens


def test_num_layers_keeps_the_width_and_renames_the_rows():
    from dq_cli import bench_models

    spec = bench_models.BUILTIN["wan2.2-a14b"].with_layers(2)
    assert spec.name == "wan2.2-a14b-2L" and spec.transformers["transformer_2"]["num_layers"] == 2
    assert spec.transformers["transformer"]["ffn_dim"] == 13824 and "first 2 of 40 blocks" in spec.source


# ---- sizes and the breakdown arithmetic -----------------------------------------------------------------------
def test_safetensors_size_is_exact_and_torchao_counts_its_packed_data(tmp_path):
    from safetensors.torch import save_file

    from dq_cli import bench_report as br

    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64, bias=False)).to(torch.bfloat16)
    tensors = {f"t.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors["t.codes"] = torch.zeros(7, 3, dtype=torch.uint8)
    tensors["t.scale"] = torch.ones(5, dtype=torch.float8_e4m3fn)
    save_file(tensors, tmp_path / "m.safetensors")
    assert br.safetensors_bytes(tensors) == (tmp_path / "m.safetensors").stat().st_size
    assert br.module_bytes(model) == sum(t.numel() * 2 for t in model.state_dict().values())
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except Exception:  # noqa: BLE001
        pytest.skip("torchao not importable")
    before = br.module_bytes(model)
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    after = br.module_bytes(model)
    assert 0.45 * before < after < 0.62 * before  # INT8 weights + scales, bf16 biases


def test_breakdown_separates_linears_attention_and_the_rest():
    """Nested marks: the attention module's own time excludes the linears inside it."""
    from dq_cli.bench_timing import Breakdown, Clock

    class Slow(nn.Module):
        def __init__(self, seconds, inner=None):
            super().__init__()
            self.seconds, self.inner = seconds, inner

        def forward(self, x):
            time.sleep(self.seconds)
            return self.inner(x) if self.inner is not None else x

    class Lin(nn.Linear):
        def forward(self, x):
            time.sleep(0.05)
            return x

    class Attn(nn.Module):
        processor = object()

        def __init__(self):
            super().__init__()
            self.to_q = Lin(1, 1)

        def forward(self, x):
            time.sleep(0.03)
            return self.to_q(x)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn1, self.norm = Attn(), Slow(0.02)

        def forward(self, x):
            return self.norm(self.attn1(x))

    class FakeAdapter:
        def __init__(self):
            self.model = Block()

        def transformers(self):
            return {"transformer": self.model}

    adapter = FakeAdapter()
    with Breakdown(adapter, Clock(torch.device("cpu"))) as b:
        adapter.model(torch.zeros(1))
    linears, attention = b.totals_ms()
    assert (b.linears, b.attentions) == (1, 1)
    assert 50 <= linears < 70 and 30 <= attention < 50


def test_e2e_refuses_bad_choices_without_a_traceback(tmp_path):
    cases = [
        (("--configs", "bf16,fp4"), "--configs fp4: unknown"),
        (("--compile", "maybe"), "--compile maybe: expected off, on or off,on"),
        (("--model", "wan2.2-a14b", "--resolution", "1080p"), "--resolution 1080p: expected one of 480p, 720p"),
        (("--model", str(tmp_path / "nowhere")), "not a built-in bench model"),
        (("--recipe", "w4a4=nope.yaml"), "nope.yaml"),
        (("--recipe", "bf16=tiny_w4a4.yaml"), "expected CONFIG=RECIPE"),
        (("--model", "ltx-video", "--steps", "1"), "needs at least 2 steps"),
        (("--num-layers", "2"), "for the random-weight models only"),
        (("--attention", "flash"), "--attention flash"),
        (("--compile-mode", "fast"), "--compile-mode fast: expected one of default, reduce-overhead"),
    ]
    for args, message in cases:
        result = run_dq("bench", "e2e", *args, "--device", "cpu", code=2)
        assert message in result.output and "Traceback" not in result.output, (args, result.output)
    result = run_dq("bench", "e2ee", code=2)
    assert "expected one of 'model', 'kernels', 'e2e', 'compare', 'merge'" in result.output


# ---- on a GPU -----------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_e2e_on_the_gpu(tmp_path):
    """Wan 2.2 A14B at its real width and 480p token count (32,760), two blocks per expert: every
    configuration and both attention backends eagerly, then torch.compile on bf16 and w4a4 — the path
    the full-size run takes, in a few minutes."""
    common = ["bench", "e2e", "--model", "wan2.2-a14b", "--num-layers", "2", "--resolution", "480p", "--steps", "2",
              "--attention", "sdpa,sage8", "--json", "-q"]
    eager = json.loads(run_dq(*common, "--configs", "bf16,w4a4,w8a8,6bit,torchao-fp8,torchao-int8",
                              "-o", tmp_path / "eager").stdout)
    compiled = json.loads(run_dq(*common, "--configs", "bf16,w4a4", "--compile", "on", "-o", tmp_path / "compiled").stdout)
    assert eager["environment"]["gpu"] and eager["environment"]["driver"]
    rows = {r["key"]: r for r in eager["rows"] + compiled["rows"]}
    assert len(rows) == 16
    for r in rows.values():
        if r["config"].startswith("torchao") and r["status"] == "skipped":
            assert "torchao" in r["reason"]
            continue
        assert r["status"] == "ok", r
        assert r["tokens"] == 21 * 30 * 52
        assert r["peak_memory_gib"] > 0 and 0 < r["peak_one_expert_gib"] < r["peak_memory_gib"]
        assert r["forwards"] == {"transformer": 2, "transformer_2": 2}
        assert not any("NaN" in n for n in r["notes"]), r["notes"]
        if r["compile"]:
            assert r["breakdown"] is None
        else:
            b = r["breakdown"]
            assert b["linears_ms"] > 0 and b["attention_ms"] > 0 and b["other_ms"] > -0.05 * b["total_ms"]
        if r["attention"] == "sage8":
            assert r["attention_stats"]["routed"] > 0, r["attention_stats"]
    key = "wan2.2-a14b-2L@480p/{}/sdpa/eager"
    bf16 = rows[key.format("bf16")]
    for config in ("w4a4", "w8a8", "6bit"):
        assert rows[key.format(config)]["checkpoint_bytes"] < 0.7 * bf16["checkpoint_bytes"]


def test_a_warmup_shorter_than_the_run_is_said_in_the_report():
    """--warmup-steps below --steps leaves late first-time compilations (Wan's second cube size at step
    2) inside the timings: the report must say so, and only then."""
    from dq_cli.bench_e2e import report

    env = {"device": "cpu"}
    short = report([], env, {"steps": 2, "warmup_steps": 1})["notes"]
    assert any("warm-up run is shorter than the measured run (1 of 2 steps)" in n for n in short)
    for warmup in (2, 3):
        notes = report([], env, {"steps": 2, "warmup_steps": warmup})["notes"]
        assert not any("shorter than the measured run" in n for n in notes)
