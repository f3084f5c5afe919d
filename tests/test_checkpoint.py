"""Checkpoint I/O: the weight-only INT8 path is exactly x @ dequantized_weight.T + b, save → load is
bit-identical (buffers and generated frames), a BF16 passthrough changes nothing, and a checkpoint
for another model, a truncated file or another format version is refused with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import recipe_data, run_dq, tm, write_recipe
from dq_cli import checkpoint as ckpt
from dq_cli import recipe as recipes
from dq_cli.errors import CheckpointError

FAMILY = "wan"  # two experts: one file holds both
PROMPT = "a cat dancing in the rain"


def _generate(adapter, steps=2, seed=0):
    g = tm.GEN_KWARGS[FAMILY]
    return adapter.generate(PROMPT, negative_prompt="", steps=steps, guidance=g["guidance_scale"], seed=seed,
                            frames=g["num_frames"], height=g["height"], width=g["width"])


def _tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _quant_layers(adapter) -> dict[str, torch.nn.Module]:
    return {f"{c}.{n}": m for c, model in adapter.transformers().items() for n, m in model.named_modules()
            if getattr(m, "is_quant_linear", False)}


@pytest.fixture(scope="module")
def int8(family_dir, tmp_path_factory):
    """A weight-only INT8 checkpoint of the tiny Wan 2.2 A14B, written by `dq quantize`."""
    folder, tmp = family_dir(FAMILY), tmp_path_factory.mktemp("ckpt_int8")
    recipe = write_recipe(tmp / "int8.yaml", recipe_data(FAMILY, folder, quantization={
        "default": {"method": "rtn", "weight": "int8", "activation": "none"}}))
    path = tmp / "int8.safetensors"
    run_dq("quantize", "-r", recipe, "-o", path, "--device", "cpu", "-q")  # compared with CPU loads below
    return folder, recipe, path


def test_int8_layer_is_x_times_its_dequantized_weight(int8):
    from dq_cli.models import load_model
    from dq_cli.session import load_quantized

    folder, _, path = int8
    adapter, info = load_quantized(path, "cpu")
    reference = load_model(FAMILY, str(folder), device="cpu")
    layers = _quant_layers(adapter)
    assert set(layers) == set(info.layers) and len(layers) > 0
    gen = torch.Generator().manual_seed(0)
    for name, layer in layers.items():
        original = reference.transformers()[name.split(".")[0]].get_submodule(name.split(".", 1)[1])
        q, scales = layer.qweight, layer.scales
        assert q.dtype == torch.int8 and q.shape == original.weight.shape and int(q.abs().max()) <= 127
        assert scales.dtype == torch.float32 and scales.shape == (original.out_features, 1)
        w = q.float() * scales  # dequantized here, independently of dq's code
        # round to nearest: within half a step of the original weight, the row's max on the grid
        assert ((w - original.weight).abs() <= scales / 2 * (1 + 1e-6)).all(), name
        assert torch.equal(q.abs().amax(dim=1), torch.full((q.shape[0],), 127, dtype=torch.int8)), name
        x = torch.randn(2, 5, layer.in_features, generator=gen)
        expected = x @ w.T + (0 if original.bias is None else original.bias)
        torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)
    # layers the recipe leaves out are the folder's own, untouched
    quantized = set(info.layers)
    for info_ in reference.linears():
        if info_.name not in quantized:
            assert torch.equal(adapter.module(info_).weight, reference.module(info_).weight)


def test_save_load_is_bit_identical(int8, tmp_path):
    """Quantizing in memory and loading the checkpoint give the same buffers, bit for bit, and the
    same frames; saving the loaded model again writes the same tensors."""
    from dq_cli.models import load_model
    from dq_cli.quant import plan_layers, quantize_model
    from dq_cli.session import load_quantized

    folder, recipe, path = int8
    spec = recipes.load(str(recipe))
    in_memory = load_model(FAMILY, str(folder), device="cpu")
    plans = plan_layers(spec.quantization, in_memory.linears(), str(recipe))
    assert quantize_model(in_memory, plans) == len(plans)
    loaded, info = load_quantized(path, "cpu")
    assert info.layers == plans
    for component, model in in_memory.transformers().items():
        a, b = model.state_dict(), loaded.transformers()[component].state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), f"{component}.{key}"
    assert torch.equal(_generate(in_memory), _generate(loaded))
    again = tmp_path / "again.safetensors"
    ckpt.save(again, loaded.transformers(), info.layers, info.recipe, info.model)
    first, second = _tensors(path), _tensors(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) and first[k].dtype == second[k].dtype for k in first)


def test_generate_from_the_checkpoint_is_deterministic(int8, tmp_path):
    folder, recipe, path = int8
    frames = []
    for name in ("a", "b"):
        npy = tmp_path / f"{name}.npy"
        run_dq("generate", "-c", path, "-r", recipe, "-p", PROMPT, "-o", tmp_path / f"{name}.mp4",
               "--save-frames", npy, "--steps", 2, "-q")
        frames.append(np.load(npy))
    assert np.array_equal(*frames)
    unquantized = tmp_path / "u.npy"
    run_dq("generate", "-r", recipe, "-p", PROMPT, "-o", tmp_path / "u.mp4", "--save-frames", unquantized,
           "--steps", 2, "-q")
    assert not np.array_equal(frames[0], np.load(unquantized))  # INT8 weights do change the output


@pytest.mark.parametrize("dtype", ["bfloat16", "auto"])
def test_passthrough_checkpoint_changes_nothing(family_dir, tmp_path, dtype):
    """method none: no layer is quantized; the checkpoint holds the model as loaded (BF16, with
    diffusers' fp32-kept modules still fp32), loads back bit-identically and generates the same
    frames as the model itself."""
    from dq_cli.models import load_model
    from dq_cli.session import load_quantized

    folder = family_dir(FAMILY)
    recipe = write_recipe(tmp_path / "bf16.yaml", recipe_data(
        FAMILY, folder, model={"dtype": dtype}, quantization={"default": {"method": "none"}}))
    path = tmp_path / "bf16.safetensors"
    result = run_dq("quantize", "-r", recipe, "-o", path, "--device", "cpu")  # as the reference below
    assert "quantized 0 of" in result.stderr
    info = ckpt.read_info(path)
    assert info.layers == {}
    reference = load_model(FAMILY, str(folder), device="cpu", dtype=dtype)
    loaded, _ = load_quantized(path, "cpu", dtype=dtype)
    stored = _tensors(path)
    dtypes = set()
    for component, model in reference.transformers().items():
        ref, got = model.state_dict(), loaded.transformers()[component].state_dict()
        assert ref.keys() == got.keys()
        for key, value in ref.items():
            dtypes.add(value.dtype)
            assert stored[f"{component}.{key}"].dtype == value.dtype == got[key].dtype, key
            assert torch.equal(stored[f"{component}.{key}"], value) and torch.equal(got[key], value), key
    if dtype == "bfloat16":
        assert dtypes == {torch.bfloat16, torch.float32}  # Wan keeps its time embedder and norms in fp32
    assert torch.equal(_generate(reference), _generate(loaded))


def test_builtin_model_in_bf16_matches_its_passthrough_checkpoint(tmp_path):
    """dq-tiny in BF16 (what `auto` picks on a GPU) is cast as diffusers loads a 16-bit model — its
    fp32-kept modules fp32, the text encoder BF16 — so a checkpoint of it (rebuilt the diffusers way)
    generates the very same video. A plain `.to(bf16)` cast those modules too: on the H200 `dq bench`
    put a passthrough checkpoint at 34 dB from the model instead of identical."""
    from diffusers import WanTransformer3DModel

    from dq_cli.models import load_model
    from dq_cli.session import load_quantized
    from dq_cli.tiny.pipeline import weights_dir

    path = tmp_path / "pass.safetensors"
    recipe = write_recipe(tmp_path / "pass.yaml", {"quantization": {"default": {"method": "none"}}})
    run_dq("quantize", "-r", recipe, "-o", path, "--device", "cpu", "-q")  # fp32 on the CPU
    model = load_model("dq-tiny", device="cpu", dtype="bfloat16")
    loaded, _ = load_quantized(path, "cpu", dtype="bfloat16")
    diffusers_way = WanTransformer3DModel.from_pretrained(weights_dir() / "transformer", torch_dtype=torch.bfloat16)
    expected = {k: v.dtype for k, v in diffusers_way.state_dict().items()}
    assert {torch.float32, torch.bfloat16} == set(expected.values())
    for adapter in (model, loaded):
        assert {k: v.dtype for k, v in adapter.pipe.transformer.state_dict().items()} == expected
        assert {p.dtype for p in adapter.pipe.text_encoder.parameters()} == {torch.bfloat16}
    kwargs = dict(prompt=PROMPT, steps=2, guidance=4.0, seed=0, frames=4, height=16, width=16)
    assert torch.equal(model.generate(**kwargs), loaded.generate(**kwargs))


# ------------------------------------------------------------------ refused checkpoints


def _refused(path, message, tmp_path, *extra):
    out = tmp_path / "video.mp4"
    result = run_dq("generate", "-c", path, "-p", PROMPT, "-o", out, *extra, code=2)
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists()
    return result


def test_checkpoint_for_another_model(int8, family_dir, tmp_path):
    _, _, path = int8
    # TI2V-5B: the same transformer class, other channels
    _refused(path, "made for another model", tmp_path, "-m", family_dir("wan-ti2v"))
    # LTX: another class altogether
    _refused(path, "made for another model", tmp_path, "-m", family_dir("ltx"))


def test_checkpoint_whose_recorded_folder_changed(int8, family_dir, tmp_path):
    """The folder recorded at quantize time now holds another model."""
    _, _, path = int8
    meta_path = tmp_path / "moved.safetensors"
    tensors = _tensors(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    model = {**json.loads(meta["model"]), "path": str(family_dir("wan-i2v"))}
    save_file(tensors, meta_path, metadata={**meta, "model": json.dumps(model)})
    _refused(meta_path, "made for another model", tmp_path)


@pytest.mark.parametrize("cut", ["header", "data"])
def test_truncated_checkpoint(int8, tmp_path, cut):
    _, _, path = int8
    data = path.read_bytes()
    broken = tmp_path / "truncated.safetensors"
    broken.write_bytes(data[:64] if cut == "header" else data[: len(data) - len(data) // 3])
    _refused(broken, "truncated or corrupt", tmp_path)


def test_not_a_safetensors_file(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 7)
    _refused(junk, "not a readable safetensors file", tmp_path)


def test_wrong_format_version(int8, tmp_path):
    _, _, path = int8
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    other = tmp_path / "v99.safetensors"
    save_file(_tensors(path), other, metadata={**meta, "format_version": "99"})
    result = _refused(other, "format version 99", tmp_path)
    assert f"reads version {ckpt.FORMAT_VERSION}" in result.stderr


def test_safetensors_file_that_is_not_a_dq_checkpoint(int8, tmp_path):
    _, _, path = int8
    plain = tmp_path / "plain.safetensors"
    save_file(_tensors(path), plain)
    _refused(plain, "not a dq checkpoint", tmp_path)


def test_checkpoint_missing_a_tensor(int8, tmp_path):
    _, _, path = int8
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = _tensors(path)
    dropped = next(k for k in tensors if k.endswith(".qweight"))
    del tensors[dropped]
    broken = tmp_path / "missing.safetensors"
    save_file(tensors, broken, metadata=meta)
    result = _refused(broken, "missing tensor", tmp_path)
    assert dropped in result.stderr


def test_read_info_errors_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        ckpt.read_info(tmp_path / "absent.safetensors")


def test_an_interrupted_save_leaves_nothing(monkeypatch, tmp_path):
    """Writes are atomic: a failure while writing leaves neither the file nor a temporary."""
    model = torch.nn.Linear(4, 4)
    model.config = {"in": 4}

    def fail(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_file", fail)
    target = tmp_path / "model.safetensors"
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(target, {"transformer": model}, {}, "", {"name": "x"})
    assert list(tmp_path.iterdir()) == []


def test_generate_and_bench_sample_as_the_checkpoints_recipe(family_dir, tmp_path):
    """Without --recipe, `dq generate -c` and `dq bench -c` sample as the recipe the checkpoint was
    quantized with said (its steps, size, seed and, for generate, attention backend) instead of the
    family's defaults (Wan: 40 steps at 81×480×832, which the tiny model's RoPE table cannot even
    hold); flags override it, and --recipe replaces it."""
    folder = family_dir(FAMILY)
    g = tm.GEN_KWARGS[FAMILY]
    recipe = write_recipe(tmp_path / "r.yaml", recipe_data(FAMILY, folder, sampling={"seed": 7, "attention": "sage8"}))
    path = tmp_path / "m.safetensors"
    run_dq("quantize", "-r", recipe, "-o", path, "-q")
    shape = f"{g['num_frames']} frames {g['width']}×{g['height']}"

    recorded = run_dq("generate", "-c", path, "-p", PROMPT, "-o", tmp_path / "a.mp4",
                      "--save-frames", tmp_path / "a.npy")
    assert f"{shape} in" in recorded.stderr and "seed 7)" in recorded.stderr
    assert f"({recipe_data(FAMILY, folder)['sampling']['steps']} steps" in recorded.stderr
    assert "attention sage8: " in recorded.stderr
    explicit = run_dq("generate", "-c", path, "-r", recipe, "-p", PROMPT, "-o", tmp_path / "b.mp4",
                      "--save-frames", tmp_path / "b.npy")
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    assert "attention sage8: " in explicit.stderr

    flags = run_dq("generate", "-c", path, "-p", PROMPT, "-o", tmp_path / "c.mp4", "--steps", 1, "--seed", 3,
                   "--attention", "sdpa")
    assert "(1 step," in flags.stderr and "seed 3)" in flags.stderr and "attention sage8" not in flags.stderr

    doc = json.loads(run_dq("bench", "-c", path, "--json", "-q").stdout)
    assert {k: doc["settings"][k] for k in ("steps", "seed", "frames", "height", "width")} == {
        "steps": recipe_data(FAMILY, folder)["sampling"]["steps"], "seed": 7, "frames": g["num_frames"],
        "height": g["height"], "width": g["width"]}


def test_checkpoint_records_its_model_folder_absolute_and_says_when_it_is_gone(family_dir, tmp_path, monkeypatch):
    """A recipe naming its model folder relative to where `dq quantize` ran still gives a checkpoint
    that loads from anywhere (the folder is recorded absolute); a checkpoint whose folder is gone
    says so in one line (it used to blame the model for lacking a 'transformer') and takes --model."""
    folder = family_dir(FAMILY)
    monkeypatch.chdir(folder.parent)
    path = tmp_path / "m.safetensors"
    run_dq("quantize", "-r", write_recipe(tmp_path / "r.yaml", recipe_data(FAMILY, folder.name)), "-o", path, "-q")
    assert ckpt.read_info(path).model["path"] == str(folder.resolve())
    monkeypatch.chdir(tmp_path)
    run_dq("generate", "-c", path, "-p", PROMPT, "--steps", 1, "-o", tmp_path / "a.mp4", "-q")

    gone = tmp_path / "gone.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    model = {**json.loads(meta["model"]), "path": str(tmp_path / "deleted_folder")}
    save_file(_tensors(path), gone, metadata={**meta, "model": json.dumps(model)})
    result = _refused(gone, "is not here: give the model's diffusers folder with --model", tmp_path)
    assert "deleted_folder" in result.stderr
    run_dq("generate", "-c", gone, "-m", folder, "-p", PROMPT, "--steps", 1, "-o", tmp_path / "b.mp4", "-q")
