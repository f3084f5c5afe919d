"""Every model family through `dq calibrate` → `dq quantize` → `dq generate` on its tiny random
diffusers folder, and what the adapters tell the layers: token grid, text offset, CFG branches,
the Wan 2.2 expert switch, and the image paths of I2V-A14B and TI2V-5B."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import FAMILIES, recipe_data, run_dq, tm, write_recipe

PROMPT, NEGATIVE = "a cat dancing in the rain", "a dog in the snow"
# Steps per family in the CLI flow: with 4 UniPC steps (flow shift 3) the timesteps are
# 999, 900, 750, 500, so each Wan 2.2 expert runs two steps, and I2V's boundary 0.9 * 1000 falls
# exactly on the second step (t >= boundary goes to the high-noise expert).
FLOW_STEPS = {"wan": 4, "wan-i2v": 4}
EXPERTS = {"wan": ("transformer", "transformer_2"), "wan-i2v": ("transformer", "transformer_2")}
BATCHED_CFG = {"ltx", "cogvideox"}  # one forward of [uncond, cond]; Wan runs cond, then uncond
_BLOCK = re.compile(r"^(blocks|transformer_blocks)\.\d+\.")


def block_linears(model: torch.nn.Module) -> set[str]:
    """The linear layers inside the transformer blocks, bar the AdaLN modulation ones (`norm*`),
    found from the module tree alone: what the default recipe roles cover."""
    return {name for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and _BLOCK.match(name) and "norm" not in name}


def expected_grid(pipe, family: str) -> tuple[int, int, int]:
    """Latent (frames, height, width) at GEN_KWARGS, divided by the transformer's patch."""
    g = tm.GEN_KWARGS[family]
    if family == "ltx":
        tc, sc = pipe.vae_temporal_compression_ratio, pipe.vae_spatial_compression_ratio
    else:
        tc, sc = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
    cfg = pipe.transformer.config
    patch = cfg.patch_size
    if isinstance(patch, (tuple, list)):
        pt, ph, pw = patch
    else:
        pt, ph, pw = (cfg.get("patch_size_t") or 1), patch, patch
    return ((g["num_frames"] - 1) // tc + 1) // pt, g["height"] // sc // ph, g["width"] // sc // pw


def text_tokens(pipe, family: str) -> int:
    return pipe.transformer.config.max_text_seq_length if family == "cogvideox" else 0


def scheduler_timesteps(folder: Path, steps: int) -> list[float]:
    """The folder's own scheduler, loaded on its own."""
    import diffusers

    name = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    scheduler = getattr(diffusers, name).from_pretrained(folder, subfolder="scheduler")
    scheduler.set_timesteps(steps)
    return [float(t) for t in scheduler.timesteps]


# ------------------------------------------------------------------ the CLI flow, per family


@dataclass
class Flow:
    family: str
    folder: Path
    steps: int
    prompts: int
    calib: dict
    calib_tensors: Path
    checkpoint: Path
    video: Path
    frames: Path


@pytest.fixture(scope="module", params=FAMILIES)
def flow(request, family_dir, image_file, prompt_file, tmp_path_factory) -> Flow:
    family = request.param
    folder, tmp = family_dir(family), tmp_path_factory.mktemp(f"flow_{family.replace('-', '_')}")
    steps = FLOW_STEPS.get(family, 3)
    recipe = write_recipe(tmp / "recipe.yaml", recipe_data(
        family, folder, prompt_file, calibration={"steps": steps, "step_ranges": steps},
        sampling={"steps": steps}))
    image = ["--image", image_file] if family == "wan-i2v" else []
    run_dq("calibrate", "-r", recipe, "-o", tmp / "calib", "-q", *image)
    run_dq("quantize", "-r", recipe, "-o", tmp / "model.safetensors", "-q")
    run_dq("generate", "-c", tmp / "model.safetensors", "-r", recipe, "-p", PROMPT, "-o", tmp / "video.mp4",
           "--save-frames", tmp / "frames.npy", "-q", *image)
    return Flow(family, folder, steps, 2, json.loads((tmp / "calib.json").read_text()), tmp / "calib.safetensors",
                tmp / "model.safetensors", tmp / "video.mp4", tmp / "frames.npy")


def test_folder_family_is_read_from_model_index(flow):
    from dq_cli.models.base import folder_family

    assert folder_family(flow.folder) == flow.family


def test_calibration_covers_the_block_layers_and_both_branches(flow):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(flow.folder)
    experts = EXPERTS.get(flow.family, ("transformer",))
    expected = {f"{c}.{n}" for c in experts for n in block_linears(getattr(pipe, c))}
    calib = flow.calib
    assert set(calib["layers"]) == expected
    assert calib["branches"] == ["cond", "uncond"]
    assert calib["prompts"] == flow.prompts and calib["steps"] == flow.steps
    forwards_per_step = 1 if flow.family in BATCHED_CFG else 2
    assert calib["forwards"] == flow.prompts * flow.steps * forwards_per_step
    steps_by_expert = {e: set(s) for e, s in calib["steps_by_expert"].items()}
    assert set(steps_by_expert) == set(experts) and set().union(*steps_by_expert.values()) == set(range(flow.steps))

    # Self-attention Q sees every token of every CFG row of every step its expert ran.
    seq = text_tokens(pipe, flow.family) + int(np.prod(expected_grid(pipe, flow.family)))
    cap = recipe_data(flow.family, flow.folder)["calibration"]["tokens_per_layer"]
    with safe_open(str(flow.calib_tensors), "pt") as f:
        for name, layer in calib["layers"].items():
            expert, stored = name.split(".")[0], layer.get("same_input_as", name)  # Q/K/V: stored once
            absmax = f.get_tensor(f"{stored}.absmax")
            tokens, meta = f.get_tensor(f"{stored}.tokens"), f.get_tensor(f"{stored}.token_meta")
            assert absmax.shape == (flow.steps, layer["in_features"])  # step_ranges == steps here
            assert tokens.shape == (min(cap, layer["tokens_seen"]), layer["in_features"]) and meta.shape[1] == 5
            assert layer["tokens"] == tokens.shape[0]
            # one step per range: a range has statistics exactly when its expert ran that step
            ran = (absmax > 0).any(dim=1).nonzero().flatten().tolist()
            assert ran == sorted(steps_by_expert[expert]), name
            assert set(meta[:, 0].tolist()) <= steps_by_expert[expert]
            if name.endswith("attn1.to_q"):
                assert layer["tokens_seen"] == flow.prompts * len(steps_by_expert[expert]) * 2 * seq


def test_quantized_checkpoint_holds_every_calibrated_layer(flow):
    from dq_cli.checkpoint import read_info

    info = read_info(flow.checkpoint)
    assert set(info.layers) == set(flow.calib["layers"])
    assert set(info.classes) == set(EXPERTS.get(flow.family, ("transformer",)))
    assert info.model["family"] == flow.family and info.model["path"] == str(flow.folder)
    assert {(p.method, p.weight, p.activation) for p in info.layers.values()} == {("rtn", "int8", "none")}
    with safe_open(str(flow.checkpoint), "pt") as f:
        for name in info.layers:
            assert f.get_tensor(f"{name}.qweight").dtype == torch.int8


def test_loading_the_checkpoint_puts_its_layers_in_the_pipeline(flow):
    """The pipeline built around a checkpoint runs the quantized transformers, not the folder's."""
    from dq_cli.session import load_quantized

    adapter, info = load_quantized(flow.checkpoint, "cpu")
    quantized = {f"{c}.{n}" for c, model in adapter.transformers().items() for n, m in model.named_modules()
                 if getattr(m, "is_quant_linear", False)}
    assert quantized == set(info.layers)


def test_generated_video_has_the_requested_shape(flow):
    from dq_cli.video import read_mp4

    g = tm.GEN_KWARGS[flow.family]
    frames = np.load(flow.frames)
    assert frames.shape == (g["num_frames"], g["height"], g["width"], 3) and frames.dtype == np.uint8
    assert frames.std() > 0  # not a blank video
    assert read_mp4(flow.video).shape[0] == g["num_frames"]


def test_calibration_records_the_expert_switch_at_the_boundary(flow):
    """Steps with t >= boundary_ratio * 1000 ran on `transformer`, the rest on `transformer_2`
    (timesteps from the folder's own scheduler); one-transformer models run every step on it."""
    boundary = json.loads((flow.folder / "model_index.json").read_text()).get("boundary_ratio")
    if boundary is None:
        assert flow.calib["steps_by_expert"] == {"transformer": list(range(flow.steps))}
        return
    timesteps = scheduler_timesteps(flow.folder, flow.steps)
    high = [i for i, t in enumerate(timesteps) if t >= boundary * 1000]
    assert 0 < len(high) < flow.steps  # the switch happens inside the run
    assert flow.calib["steps_by_expert"] == {"transformer": high,
                                             "transformer_2": [i for i in range(flow.steps) if i not in high]}


# ------------------------------------------------------------------ what the adapter sees, per forward


class Recorder:
    """Per transformer forward: the adapter's state and the inputs, plus block 0's Q input."""

    def __init__(self, adapter):
        self.adapter, self.calls, self.handles = adapter, [], []
        for component, model in adapter.transformers().items():
            self.handles.append(model.register_forward_hook(self._after(component), with_kwargs=True))
            q = next(m for n, m in model.named_modules() if re.fullmatch(r"(transformer_)?blocks\.0\.attn1\.to_q", n))
            self.handles.append(q.register_forward_pre_hook(self._q))

    def _q(self, module, args):
        self._q_shape = tuple(args[0].shape)

    def _after(self, component):
        def hook(module, args, kwargs, output):
            s = self.adapter.state
            self.calls.append(dict(component=component, expert=s.expert, step=s.step, branches=s.branches,
                                   grid=s.grid, text_tokens=s.text_tokens, q_shape=self._q_shape,
                                   hidden=tuple(kwargs["hidden_states"].shape), timestep=kwargs["timestep"].clone(),
                                   text=kwargs["encoder_hidden_states"].clone()))
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def _run(adapter, family, steps=2, prompt=PROMPT, negative=NEGATIVE, image=None, seed=0):
    g = tm.GEN_KWARGS[family]
    recorder = Recorder(adapter)
    try:
        video = adapter.generate(prompt, negative_prompt=negative, image=image, steps=steps,
                                 guidance=g["guidance_scale"], seed=seed, frames=g["num_frames"],
                                 height=g["height"], width=g["width"])
    finally:
        recorder.close()
    return video, recorder.calls


@pytest.fixture(scope="module")
def adapters(family_dir):
    from dq_cli.models import load_model

    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = load_model(family, str(family_dir(family)), device="cpu")
        return cache[family]

    return get


def _first_image(family):
    return tm.make_image(64, 64, seed=1234) if family == "wan-i2v" else None


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_state_grid_text_offset_and_branches(family, adapters):
    adapter = adapters(family)
    steps = 2
    video, calls = _run(adapter, family, steps=steps, image=_first_image(family))
    g = tm.GEN_KWARGS[family]
    assert tuple(video.shape) == (g["num_frames"], g["height"], g["width"], 3)
    grid, text = expected_grid(adapter.pipe, family), text_tokens(adapter.pipe, family)
    per_step = 1 if family in BATCHED_CFG else 2
    assert len(calls) == steps * per_step
    for i, call in enumerate(calls):
        assert call["grid"] == grid and call["text_tokens"] == text
        assert call["step"] == i // per_step and call["expert"] == call["component"]
        # the sequence block 0's Q sees: text (CogVideoX) then the video tokens of the grid
        assert call["q_shape"][-2] == text + int(np.prod(grid))
        if family in BATCHED_CFG:
            assert call["hidden"][0] == 2 and call["branches"] == ("uncond", "cond")
        else:
            assert call["hidden"][0] == 1 and call["branches"] == (("cond",), ("uncond",))[i % 2]


def test_the_tracker_hands_each_forward_its_cube(family_dir):
    """DeltaQuant's cube is resolved per forward by the tracker (outside compiled blocks), follows
    the schedule through the steps, and is cleared after each forward."""
    from dq_cli.models import load_model
    from dq_cli.quant.apply import attach_state, set_submodule
    from dq_cli.quant.linear import QuantLinear
    from dq_cli.quant.plan import LayerPlan

    adapter = load_model("wan", str(family_dir("wan")), device="cpu")
    plan = LayerPlan(method="deltaquant", weight="int4_row", activation="int4_row", group_size=64, rank=0,
                     smoothing=None, cubes=((0.5, (4, 1, 4)), (1.0, (2, 2, 4))), core="fp8")
    model = adapter.transformers()["transformer"]
    name = next(n for n, _ in model.named_modules() if n.endswith("blocks.0.attn1.to_q"))
    layer = QuantLinear.from_linear(model.get_submodule(name), plan, name)
    set_submodule(model, name, layer)
    attach_state(adapter)
    seen = []
    layer.register_forward_pre_hook(lambda m, args: seen.append((adapter.state.step, m.cube)))
    from dq_kernels.delta_quantize import _cube_order

    _cube_order.cache_clear()
    g = tm.GEN_KWARGS["wan"]
    adapter.generate(PROMPT, steps=4, guidance=g["guidance_scale"], seed=0, frames=g["num_frames"],
                     height=g["height"], width=g["width"])
    steps = sorted({step for step, _ in seen})
    assert steps, "the quantized layer never ran (expert boundary?)"
    for step, cube in seen:
        assert cube == ((4, 1, 4) if step / 4 < 0.5 else (2, 2, 4)), (step, cube)
    assert layer.cube is None  # cleared after the forward: a stale cube cannot leak into other calls
    # The kernels' cube orders were made by the tracker, outside the blocks (CUDA graphs must not
    # record them): one per cube, for the grid and batch of the forwards.
    from dq_kernels.delta_cubes import clip_cube
    from dq_kernels.delta_quantize import cube_order

    cubes = {cube for _, cube in seen}
    made = _cube_order.cache_info().currsize
    for cube in cubes:
        cube_order(adapter.state.grid, clip_cube(cube, adapter.state.grid), 1, torch.device("cpu"))
    assert made == len(cubes) and _cube_order.cache_info().currsize == made  # each found, none made


def _text_by_branch(calls) -> dict[str, torch.Tensor]:
    out = {}
    for call in calls:
        for row, branch in enumerate(call["branches"]):
            out.setdefault(branch, call["text"][row])
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_branch_labels_follow_the_prompts(family, adapters):
    """Swap prompt and negative prompt: what was labelled cond is now labelled uncond."""
    adapter = adapters(family)
    image = _first_image(family)
    # (2 steps: LTX's scheduler, with shift_terminal, cannot make a 1-step schedule)
    _, a = _run(adapter, family, steps=2, image=image)
    _, b = _run(adapter, family, steps=2, prompt=NEGATIVE, negative=PROMPT, image=image)
    a, b = _text_by_branch(a), _text_by_branch(b)
    assert set(a) == set(b) == {"cond", "uncond"}
    assert not torch.equal(a["cond"], a["uncond"])
    assert torch.equal(a["cond"], b["uncond"]) and torch.equal(a["uncond"], b["cond"])


@pytest.mark.parametrize("family", ["wan", "wan-i2v"])
def test_each_wan_expert_runs_the_timesteps_of_its_side_of_the_boundary(family, adapters):
    adapter = adapters(family)
    steps = 6
    _, calls = _run(adapter, family, steps=steps, image=_first_image(family))
    boundary = adapter.pipe.config.boundary_ratio * adapter.pipe.scheduler.config.num_train_timesteps
    by_expert = {}
    for call in calls:
        by_expert.setdefault(call["component"], []).append((call["step"], float(call["timestep"].flatten()[0])))
    assert set(by_expert) == {"transformer", "transformer_2"}
    assert all(t >= boundary for _, t in by_expert["transformer"])
    assert all(t < boundary for _, t in by_expert["transformer_2"])
    # high-noise steps first, then low-noise: one switch
    assert max(s for s, _ in by_expert["transformer"]) < min(s for s, _ in by_expert["transformer_2"])


def test_wan_i2v_conditions_on_the_image(adapters):
    adapter = adapters("wan-i2v")
    config = adapter.pipe.transformer.config
    a, calls = _run(adapter, "wan-i2v", steps=1, image=tm.make_image(64, 64, seed=1))
    b, _ = _run(adapter, "wan-i2v", steps=1, image=tm.make_image(64, 64, seed=2))
    # noise latents + mask + encoded first frame, as the 36 input channels
    assert calls[0]["hidden"][1] == config.in_channels == 2 * config.out_channels + 4
    assert not torch.equal(a, b)  # the image reaches the video


def test_wan_ti2v_uses_the_image_pipeline_only_with_an_image(adapters):
    adapter = adapters("wan-ti2v")
    grid = expected_grid(adapter.pipe, "wan-ti2v")
    frame_tokens = grid[1] * grid[2]
    plain, calls = _run(adapter, "wan-ti2v", steps=1)
    with_a, calls_a = _run(adapter, "wan-ti2v", steps=1, image=tm.make_image(64, 64, seed=1))
    with_b, _ = _run(adapter, "wan-ti2v", steps=1, image=tm.make_image(64, 64, seed=2))
    assert type(adapter.pipe).__name__ == "WanPipeline"
    for c in calls + calls_a:
        assert c["timestep"].shape == (1, int(np.prod(grid)))  # per-token timesteps (expand_timesteps)
        assert c["hidden"][1] == 48
    t0 = calls[0]["timestep"][0]
    assert (t0 > 0).all()  # text to video: every token is noised
    ti = calls_a[0]["timestep"][0]
    # image to video: the first latent frame is the clean image (timestep 0), the rest is noise
    assert (ti[:frame_tokens] == 0).all() and torch.equal(ti[frame_tokens:], t0[frame_tokens:])
    assert not torch.equal(plain, with_a) and not torch.equal(with_a, with_b)


@pytest.mark.parametrize("family", ["wan-i2v", "wan-ti2v"])
def test_generate_cli_with_an_image(family, family_dir, image_file, tmp_path):
    g = tm.GEN_KWARGS[family]
    recipe = write_recipe(tmp_path / "r.yaml", recipe_data(family, family_dir(family), sampling={"steps": 1}))
    out, npy = tmp_path / "v.mp4", tmp_path / "v.npy"
    run_dq("generate", "-r", recipe, "-p", PROMPT, "--image", image_file, "-o", out, "--save-frames", npy, "-q")
    assert out.is_file() and np.load(npy).shape == (g["num_frames"], g["height"], g["width"], 3)


def test_ti2v_is_told_by_expand_timesteps_not_channels(tmp_path, family_dir):
    """A Wan folder is TI2V-5B when model_index.json says expand_timesteps, whatever its channels."""
    from dq_cli.models.base import folder_family

    index = json.loads((family_dir("wan-ti2v") / "model_index.json").read_text())
    (tmp_path / "model_index.json").write_text(json.dumps({**index, "expand_timesteps": False}))
    assert folder_family(tmp_path) == "wan"
    (tmp_path / "model_index.json").write_text(json.dumps({**index, "expand_timesteps": True}))
    assert folder_family(tmp_path) == "wan-ti2v"


@pytest.mark.parametrize("family", ["cogvideox", "wan-ti2v", "dq-tiny", "wan", "ltx"])
def test_sizes_off_the_vae_times_patch_multiple_are_refused_up_front(family, adapters, monkeypatch):
    """Height and width must be multiples of the VAE's spatial factor times the patch (and of what the
    pipeline itself insists on: 32 for LTX). The pipelines check only the VAE's factor or a fixed
    number, so CogVideoX at 40 (8 × 5) and dq-tiny (no VAE) at 34 failed in the transformer with a
    shape traceback, and TI2V-5B at 48 (16 × 3) silently made a video 32 high."""
    from dq_cli.errors import DQError
    from dq_cli.models import load_model

    adapter = load_model("dq-tiny", device="cpu") if family == "dq-tiny" else adapters(family)
    multiple, vae, patch = adapter.size_multiple()
    # the released models' rules, which the tiny folders share: Wan and CogVideoX VAE 8 × patch 2,
    # TI2V-5B 16 × 2, LTX-Video 32 (its pipeline's; the tiny VAE's factor is 4), dq-tiny patch 2
    assert multiple == {"cogvideox": 16, "wan-ti2v": 32, "dq-tiny": 2, "wan": 16, "ltx": 32}[family]
    g = tm.GEN_KWARGS.get(family, {"num_frames": 2})
    kwargs = dict(prompt="a cat", steps=2, guidance=1.0, seed=0, frames=g["num_frames"], image=None)
    video = adapter.generate(height=multiple, width=2 * multiple, **kwargs)  # the multiple is enough
    assert video.shape[1:3] == (multiple, 2 * multiple)
    off = multiple + vae if patch > 1 else multiple + multiple // 2  # passes a check of the VAE's factor only
    with pytest.raises(DQError, match=f"takes multiples of {multiple}"):
        adapter.generate(height=off, width=multiple, **kwargs)
    if family in ("cogvideox", "wan-ti2v", "dq-tiny"):  # without dq's check the pipeline admits it, then
        monkeypatch.setattr(type(adapter), "check_size", lambda self, h, w: None)
        try:  # ... fails in the transformer, or makes a video of another size (TI2V-5B)
            video = adapter.generate(height=off, width=multiple, **kwargs)
        except DQError:
            raise
        except Exception:
            video = None
        assert video is None or video.shape[1:3] != (off, multiple)


def test_generate_says_when_the_vae_changed_the_frame_count(family_dir, tmp_path):
    """Wan's VAE takes 4k + 1 frames: the pipeline makes 5 of 6 asked for, and dq says so."""
    from dq_cli.video import read_mp4

    out = tmp_path / "v.mp4"
    result = run_dq("generate", "-m", family_dir("wan"), "-p", "a cat", "--steps", 2, "--frames", 6,
                    "--height", 32, "--width", 32, "-o", out)
    assert read_mp4(out).shape[0] == 5
    assert "made 5 frames of the 6 asked for" in " ".join((result.stdout + result.stderr).split())
