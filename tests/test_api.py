"""dq from Python (dq_cli/api.py): `dq_cli.load` + `dq_cli.generate` give the frames `dq generate -c`
writes for the same checkpoint and settings (the recipe's sampling by default, overrides as flags),
errors are DQErrors naming what is wrong, and a transformer called outside `run_pipeline` — where the
sampling step does not advance — warns when something in the model depends on that step."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import dq_cli
from conftest import recipe_data, run_dq, tm, write_recipe
from dq_cli.errors import DQError

FAMILY = "wan"
PROMPT = "a cat dancing in the rain"


@pytest.fixture(scope="module")
def checkpoint(family_dir, tmp_path_factory):
    folder, tmp = family_dir(FAMILY), tmp_path_factory.mktemp("api")
    recipe = write_recipe(tmp / "r.yaml", recipe_data(FAMILY, folder, sampling={"seed": 5}))
    path = tmp / "m.safetensors"
    run_dq("quantize", "-r", recipe, "-o", path, "--device", "cpu", "-q")
    return path


def test_load_and_generate_give_the_frames_of_dq_generate(checkpoint, tmp_path):
    """Same checkpoint, same (recorded) settings: the same frames, bit for bit; and an override
    changes them as the flag does."""
    run_dq("generate", "-c", checkpoint, "-p", PROMPT, "-o", tmp_path / "a.mp4", "--save-frames",
           tmp_path / "a.npy", "--device", "cpu", "-q")
    run_dq("generate", "-c", checkpoint, "-p", PROMPT, "-o", tmp_path / "b.mp4", "--save-frames",
           tmp_path / "b.npy", "--device", "cpu", "--seed", 6, "-q")
    model = dq_cli.load(checkpoint, device="cpu")
    recorded = dq_cli.generate(model, PROMPT)  # the checkpoint's recipe: seed 5
    assert recorded.dtype == torch.uint8 and recorded.shape[-1] == 3
    assert np.array_equal(recorded.numpy(), np.load(tmp_path / "a.npy"))
    assert np.array_equal(dq_cli.generate(model, PROMPT, seed=6).numpy(), np.load(tmp_path / "b.npy"))
    assert not np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


def test_image_to_video_from_python_takes_a_path_as_the_cli_does(family_dir, image_file, tmp_path):
    """Image-to-video Wan: `image=` a path gives `dq generate --image`'s frames; without an image the
    model is refused by name."""
    folder = family_dir("wan-i2v")
    recipe = write_recipe(tmp_path / "r.yaml", recipe_data("wan-i2v", folder))
    path = tmp_path / "i2v.safetensors"
    run_dq("quantize", "-r", recipe, "-o", path, "--device", "cpu", "-q")
    run_dq("generate", "-c", path, "-p", PROMPT, "--image", image_file, "-o", tmp_path / "v.mp4", "--save-frames",
           tmp_path / "v.npy", "--device", "cpu", "-q")
    model = dq_cli.load(path, device="cpu")
    assert np.array_equal(dq_cli.generate(model, PROMPT, image=image_file).numpy(), np.load(tmp_path / "v.npy"))
    with pytest.raises(DQError, match="from a first frame"):
        dq_cli.generate(model, PROMPT)
    with pytest.raises(DQError, match="not a readable image"):
        dq_cli.generate(model, PROMPT, image=tmp_path / "v.npy")


def test_a_checkpoint_whose_model_folder_moved_loads_with_model(checkpoint, family_dir, tmp_path):
    """The error names the Python argument (not the CLI's --model), and `model=` then loads it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(checkpoint), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    moved = tmp_path / "moved.safetensors"
    save_file(tensors, moved, metadata={**meta, "model": json.dumps(
        {**json.loads(meta["model"]), "path": str(tmp_path / "old_folder")})})
    with pytest.raises(DQError, match="old_folder, is not here: give the model's diffusers folder with model="):
        dq_cli.load(moved, device="cpu")
    model = dq_cli.load(moved, device="cpu", model=str(family_dir(FAMILY)))
    assert model.family == FAMILY


def test_load_and_generate_errors_name_the_problem(checkpoint, tmp_path, image_file):
    with pytest.raises(DQError, match="no such checkpoint"):
        dq_cli.load(tmp_path / "missing.safetensors", device="cpu")
    with pytest.raises(DQError, match="attention 'fast'"):
        dq_cli.load(checkpoint, device="cpu", attention="fast")
    model = dq_cli.load(checkpoint, device="cpu")
    with pytest.raises(DQError, match="text only"):
        dq_cli.generate(model, PROMPT, image=image_file)
    for kw, message in ((dict(dtype="fp16"), "dtype 'fp16': expected one of auto"),
                        (dict(device="tpu"), "device tpu: expected cpu or cuda")):
        with pytest.raises(DQError, match=message):
            dq_cli.load(checkpoint, **kw)
    if not torch.cuda.is_available():
        with pytest.raises(DQError, match="no CUDA device is available"):
            dq_cli.load(checkpoint, device="cuda")
    for kw in (dict(steps=0), dict(frames=0), dict(height=-8), dict(guidance=-1.0)):
        with pytest.raises(DQError, match=f"{next(iter(kw))} .*: must be at least"):
            dq_cli.generate(model, PROMPT, **kw)
    with pytest.raises(AttributeError, match="no attribute 'quantize'"):
        dq_cli.quantize  # noqa: B018 - only load and generate are the package's


def _untracked_warnings(call) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if "outside Adapter.run_pipeline" in str(w.message)]


def test_a_direct_pipeline_call_warns_where_the_step_matters(family_dir):
    """A user's own `model.pipe(...)` skips dq's step callback. With a DeltaQuant cube schedule (a
    stand-in layer here) that is wrong silently, so it warns once; `run_pipeline` does not warn, and
    a model with nothing step-dependent does not either."""
    from dq_cli.models import load_model

    adapter = load_model(FAMILY, str(family_dir(FAMILY)), device="cpu")
    g = tm.GEN_KWARGS[FAMILY]
    call = dict(prompt=PROMPT, num_inference_steps=1, guidance_scale=g["guidance_scale"], num_frames=g["num_frames"],
                height=g["height"], width=g["width"], output_type="pt",
                generator=torch.Generator("cpu").manual_seed(0))

    def direct():
        with torch.inference_mode():
            adapter.pipe(**call)

    assert _untracked_warnings(direct) == []  # nothing depends on the step
    scheduled = SimpleNamespace(plan=SimpleNamespace(cubes=((0.5, (4, 1, 4)), (1.0, (4, 2, 8))), method="deltaquant"),
                                cube=None, resolve_cube=lambda progress: None)
    adapter.quant_layers = {"transformer": [scheduled]}
    assert _untracked_warnings(lambda: adapter.run_pipeline(adapter.pipe, call, 1)) == []
    first = _untracked_warnings(direct)
    assert len(first) == 1 and "cube schedule" in first[0]
    assert _untracked_warnings(direct) == []  # once per model


def test_load_with_compile_gives_the_eager_frames_and_refuses_a_bad_choice(checkpoint, monkeypatch):
    """`compile="on"` keeps the blocks compiled for the model's life (aot_eager here: no C++ compiler
    needed), as `dq generate --compile on` does for one run: the same frames, every call."""
    monkeypatch.setenv("DQ_COMPILE_BACKEND", "aot_eager")
    eager = dq_cli.generate(dq_cli.load(checkpoint, device="cpu"), PROMPT, steps=2)
    model = dq_cli.load(checkpoint, device="cpu", compile="on")
    try:  # a failed assertion must not leave the blocks compiled for the tests after it
        for _ in range(2):
            assert np.array_equal(dq_cli.generate(model, PROMPT, steps=2).numpy(), eager.numpy())
        assert "graphs, 0 graph breaks" in model.compiled.summary()
    finally:
        model.compiled.__exit__(None, None, None)
    with pytest.raises(DQError, match="compile fast: expected off, on or reduce-overhead"):
        dq_cli.load(checkpoint, device="cpu", compile="fast")
