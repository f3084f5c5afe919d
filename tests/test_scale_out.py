"""Scale-out on the CPU with gloo and 2 processes: data-parallel `dq calibrate` under torchrun writes
the artifact one process writes; context-parallel `dq generate --context-parallel 2` (diffusers'
Ulysses attention) makes the one-process video, quantized or not; and the pieces under them —
the sharded DeltaQuant cube split, whole-sequence NVFP4 scales and 6Bit statistics — give one
process's numbers on each slice of the sequence."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import recipe_data, run_dq, write_recipe
from dq_cli.errors import DQError
from dq_cli.models.base import ForwardState
from dq_cli.quant.plan import LayerPlan
from dq_cli.quant.sequence import _layout

PY = sys.executable
# CPU processes with gloo always; 2 GPUs with NCCL (and gloo for the CPU statistics) where there are two.
DEVICES = [pytest.param("cpu", marks=pytest.mark.slow),
           pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
               torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")])]


def _has_mp4_writer() -> bool:
    import importlib.util

    return importlib.util.find_spec("imageio_ffmpeg") is not None
DRIVER = Path(__file__).with_name("distributed_driver.py")
PROMPTS = ["a cat dancing in the rain", "a dog running on the beach", "a red car on a road"]


def _env() -> dict:
    """The children never import the repo's bare `kernels/` (PYTHONSAFEPATH is python -P) and run one
    thread each, as the in-process tests do."""
    env = dict(os.environ, PYTHONSAFEPATH="1", OMP_NUM_THREADS="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def torchrun(args: list, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 ARGS` (gloo on the CPU); fails the test on a non-zero exit."""
    cmd = [PY, "-P", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *map(str, args)]
    result = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)}: exit {result.returncode}\n{result.stderr[-6000:]}"
    return result


# ------------------------------------------------------------------ the sharded cube layout (no processes)
@pytest.mark.parametrize("grid, cube, size", [((3, 4, 4), (2, 2, 2), 2), ((3, 4, 4), (4, 1, 4), 2),
                                              ((5, 6, 4), (2, 3, 2), 4), ((4, 4, 4), (2, 2, 2), 2)])
def test_shard_layout_finds_the_cubes_that_straddle_a_boundary(grid, cube, size):
    """Against a brute force over tokens: a cube is shared iff its tokens lie on more than one
    process; each process's compact ids index the cubes it touches; counts are whole-cube counts."""
    from dq_kernels.delta_cubes import cube_ids

    ids, n = cube_ids(grid, cube)
    per = ids.numel() // size
    owners = [set() for _ in range(n)]
    for token, c in enumerate(ids.tolist()):
        owners[c].add(token // per)
    shared = [c for c in range(n) if len(owners[c]) > 1]
    for rank in range(size):
        compact, counts, m, at, here = _layout(grid, cube, size, rank)
        local = ids[rank * per: (rank + 1) * per]
        touched = sorted(set(local.tolist()))
        assert m == len(touched) and [touched[i] for i in compact.tolist()] == local.tolist()
        assert counts.tolist() == [float((ids == c).sum()) for c in touched]
        assert [shared[i] for i in torch.nonzero(here).flatten().tolist()] == [touched[i] for i in at.tolist()]
        assert sorted(touched[i] for i in at.tolist()) == [c for c in shared if rank in owners[c]]
    if grid == (4, 4, 4) and cube == (2, 2, 2):
        assert not shared  # the boundary falls between slabs of whole cubes: nothing to exchange


# ------------------------------------------------------------------ one layer, 2 gloo processes
GRID, K = (3, 4, 4), 64


def _plans():
    base = dict(group_size=64, rank=0, smoothing=None, cubes=None, core="fp8")
    return {
        "nvfp4": LayerPlan(method="rtn", weight="int4", activation="nvfp4", **base),
        "int8": LayerPlan(method="rtn", weight="int4", activation="int8", **base),
        "dq_int4": LayerPlan(method="deltaquant", weight="int4", activation="int4",
                             **{**base, "cubes": ((1.0, (2, 2, 2)),)}),
        "dq_nvfp4": LayerPlan(method="deltaquant", weight="int4", activation="nvfp4",
                              **{**base, "cubes": ((1.0, (4, 1, 4)),)}),
    }


def _dyadic_input(seed: int = 0) -> torch.Tensor:
    """[2, 48, K] of multiples of 1/8 below 16 in magnitude: every partial sum of a cube is exact in
    fp32, so the sharded and the whole computation must agree bit for bit (any difference is a logic
    error, not rounding). The largest value sits in the second half, so per-slice NVFP4 scales differ."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-48, 49, (2, 48, K), generator=g).float() / 8 + (torch.arange(K) % 8 - 4) / 4
    x[1, 40, 7] = 15.5
    return x


def _layer_worker(rank: int, size: int, init_file: str) -> None:
    import torch.distributed as dist

    from dq_cli.quant.activations import quantize_input
    from dq_cli.quant.sequence import SequenceShard, outlier_ratio, row_ratio

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        x = _dyadic_input()
        n = x.shape[1] // size
        mine = x[:, rank * n: (rank + 1) * n]
        whole = ForwardState(step=1, num_steps=4, grid=GRID, in_forward=True)
        sharded = ForwardState(step=1, num_steps=4, grid=GRID, in_forward=True,
                               shard=SequenceShard(dist.group.WORLD, rank, size))
        for name, plan in _plans().items():
            full = quantize_input(x, plan, whole, sees_video=True)
            got = quantize_input(mine, plan, sharded, sees_video=True)
            assert torch.equal(got, full[:, rank * n: (rank + 1) * n]), name
            # Negative control: each slice rounded on its own differs where scales are not token-local
            # (NVFP4's per-tensor scale, cube means); INT8 per token does not care.
            alone = quantize_input(mine, plan, ForwardState(step=1, num_steps=4, grid=GRID, in_forward=True),
                                   sees_video=True)
            slices = [torch.empty_like(alone) for _ in range(size)]
            dist.all_gather(slices, alone)
            assert torch.equal(torch.cat(slices, dim=1), full) == (name == "int8"), name
        assert outlier_ratio(mine, sharded.shard) == pytest.approx(outlier_ratio(x, None), rel=1e-6)
        y = x * 0.5 + 1
        num = (y - x).abs().reshape(2, -1).sum(1)
        den = x.abs().reshape(2, -1).sum(1)
        part = ((y - x)[:, rank * n: (rank + 1) * n].abs().reshape(2, -1).sum(1),
                x[:, rank * n: (rank + 1) * n].abs().reshape(2, -1).sum(1))
        assert torch.equal(row_ratio(*part, sharded.shard), num / den)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_layer_rounds_like_one_process(tmp_path):
    """Two gloo processes each hold half of a (3, 4, 4) grid's tokens — the boundary cuts through a
    slab of cubes — and round them as the whole sequence would: NVFP4 with the whole tensor's scale,
    DeltaQuant with whole-cube means (cubes 2×2×2: some cubes straddle; 4×1×4: all do)."""
    import torch.multiprocessing as mp

    mp.spawn(_layer_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


# ------------------------------------------------------------------ data-parallel calibration
def _compare_artifacts(one: Path, two: Path, rtol: float = 1e-5) -> None:
    """Equal within float tolerance, and what cannot depend on floats exactly.

    Each prompt runs the same arithmetic in either setting (same seeds, same single thread), so the
    artifacts are in fact bit-identical on this CPU. The tolerance covers what may legitimately
    differ on another machine: CPU kernels (GEMM, SDPA) may reduce in another order in another
    process layout, ~1e-6 relative in fp32 values; a stored bf16 token may then round to the
    neighbouring bf16 value, one bf16 ulp (2⁻⁸ relative). On GPUs the model runs in bf16, so `rtol`
    is one bf16 ulp there for every value. The choice of tokens (keys come from (seed, prompt,
    position), never from values), their metadata and NaN patterns must match exactly."""
    a, b = load_file(str(one.with_suffix(".safetensors"))), load_file(str(two.with_suffix(".safetensors")))
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        assert x.shape == y.shape and x.dtype == y.dtype, key
        if key.endswith(".token_meta"):
            assert torch.equal(x, y), key
        elif key.endswith(".tokens"):
            assert torch.allclose(x.float(), y.float(), rtol=2 ** -8, atol=0), key
        else:
            nan = torch.isnan(x)
            assert torch.equal(nan, torch.isnan(y)), key
            assert torch.allclose(x[~nan], y[~nan], rtol=rtol, atol=1e-7), key
    ja, jb = json.loads(one.with_suffix(".json").read_text()), json.loads(two.with_suffix(".json").read_text())
    assert (ja.pop("processes"), jb.pop("processes")) == (1, 2)
    ja.pop("tensors"), jb.pop("tensors")
    assert ja == jb


@pytest.mark.parametrize("device", DEVICES)
def test_data_parallel_calibration_equals_one_process(family_dir, tmp_path, device):
    """`torchrun --nproc-per-node 2 -m dq_cli calibrate` (gloo on the CPU; NCCL + gloo on 2 GPUs) on
    3 prompts (2 + 1 per process) with 6Bit trajectories writes the artifact one process writes."""
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    data = recipe_data("wan", family_dir("wan"), prompts=tmp_path / "prompts.txt",
                       calibration={"num_prompts": 3, "steps": 3, "tokens_per_layer": 64, "step_ranges": 2},
                       quantization={"default": {"method": "rtn", "weight": "nvfp4", "activation": "nvfp4"}},
                       predictor={"routes": ["nvfp4", "int8"]})
    recipe = write_recipe(tmp_path / "r.yaml", data)
    run_dq("calibrate", "-r", recipe, "-o", tmp_path / "one", "-q", "--device", device)
    out = torchrun(["-m", "dq_cli", "calibrate", "-r", recipe, "-o", tmp_path / "two", "--device", device],
                   cwd=tmp_path)
    assert "data-parallel over 2 processes: 3 prompts" in out.stderr
    assert out.stderr.count("wrote ") == 1  # process 0 alone writes
    assert not list(tmp_path.glob(".*partial"))
    _compare_artifacts(tmp_path / "one", tmp_path / "two", rtol=1e-5 if device == "cpu" else 2 ** -7)
    cal = json.loads((tmp_path / "two.json").read_text())
    assert cal["prompts"] == 3 and cal["forwards"] == 3 * 3 * 2 and cal["branches"] == ["cond", "uncond"]
    assert all(layer["tokens"] == 64 for layer in cal["layers"].values())


# ------------------------------------------------------------------ context-parallel generation
def _six_bit(tmp_path: Path, folder: Path) -> Path:
    data = recipe_data("wan", folder, prompts=tmp_path / "prompts.txt",
                       calibration={"num_prompts": 2, "steps": 6, "tokens_per_layer": 64, "step_ranges": 1},
                       sampling={"steps": 6},
                       quantization={"default": {"method": "rtn", "weight": "nvfp4", "activation": "nvfp4"},
                                     "roles": ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.out",
                                               "ffn.up", "ffn.down"]},
                       predictor={"target_bits": 6.0, "routes": ["nvfp4", "int8"], "refresh_ratio": 3.0},
                       tdc={"enabled": True, "tau": 0.5, "max_skips": 2})
    recipe = write_recipe(tmp_path / "six.yaml", data)
    run_dq("calibrate", "-r", recipe, "-o", tmp_path / "six-cal", "-q")
    run_dq("predictor-fit", "-r", recipe, "-c", tmp_path / "six-cal", "-o", tmp_path / "pred.json", "-q")
    run_dq("quantize", "-r", recipe, "--predictor", tmp_path / "pred.json", "-o", tmp_path / "six.safetensors", "-q")
    return tmp_path / "six.safetensors"


def _delta_quant(tmp_path: Path, folder: Path) -> Path:
    """DeltaQuant W4A4 with NVFP4 deltas and 2×2×2 cubes: on the 3×4×4 grid split in two, the
    boundary cuts the first slab, so half its cubes straddle the processes."""
    data = recipe_data("wan", folder, prompts=tmp_path / "prompts.txt",
                       calibration={"num_prompts": 2, "steps": 3, "tokens_per_layer": 64, "step_ranges": 1},
                       quantization={"default": {"method": "deltaquant", "weight": "int4", "activation": "nvfp4",
                                                 "rank": 4, "smoothing": {"alpha": 0.5}, "core": "fp8",
                                                 "cubes": [{"until": 1.0, "size": [2, 2, 2]}]},
                                     "roles": ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.out",
                                               "cross_attn.q", "cross_attn.out", "ffn.up", "ffn.down"]})
    recipe = write_recipe(tmp_path / "dq.yaml", data)
    run_dq("calibrate", "-r", recipe, "-o", tmp_path / "dq-cal", "-q")
    run_dq("quantize", "-r", recipe, "-c", tmp_path / "dq-cal", "-o", tmp_path / "dq.safetensors", "-q")
    return tmp_path / "dq.safetensors"


def _nvfp4(tmp_path: Path, folder: Path, family: str) -> Path:
    data = recipe_data(family, folder, quantization={"default": {"method": "rtn", "weight": "nvfp4",
                                                                 "activation": "nvfp4"}})
    recipe = write_recipe(tmp_path / f"{family}-nvfp4.yaml", data)
    run_dq("quantize", "-r", recipe, "-o", tmp_path / f"{family}-nvfp4.safetensors", "-q")
    return tmp_path / f"{family}-nvfp4.safetensors"


@pytest.mark.parametrize("device", DEVICES)
def test_context_parallel_generation_equals_one_process(family_dir, tmp_path, device, monkeypatch):
    """`dq generate --context-parallel 2` in 2 gloo processes (one torchrun launch, one command after
    another) against `dq generate` in one process, same seed: unquantized Wan and LTX-Video, Wan with
    DeltaQuant (NVFP4 deltas, cubes cut by the boundary), Wan with 6Bit-Diffusion routing + TDC
    (same routes and skips), LTX with NVFP4 W4A4 (its text tokens are split too).

    Tolerance: each process does one process's arithmetic on its tokens, except that the sums of the
    cubes that straddle the boundary (and 6Bit's whole-sequence sums) are added in another order:
    ulp-level differences that can move a pixel across a uint8 rounding boundary. So at most one
    level anywhere and 0.1% of the values may differ (on this CPU the frames are bit-identical).
    The negative control — the same DeltaQuant run with each process rounding its slice on its own
    (per-slice NVFP4 scales and cube means) — must miss that bound.

    On 2 GPUs (bf16) the GEMMs of half as many rows may take other cuBLAS kernels, whose rounding
    differs in the last bf16 bit and grows over the steps: there the bound is 30 dB PSNR against the
    one-GPU frames, and the numbers are printed (and kept in gpu_differences.json)."""
    mp4 = _has_mp4_writer()
    if not mp4:  # GPU images without imageio-ffmpeg: compare the saved frames only
        import dq_cli.video

        monkeypatch.setattr(dq_cli.video, "write_mp4", lambda *a, **k: None)
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    wan, ltx = family_dir("wan"), family_dir("ltx")
    size = {"wan": ["--frames", 9, "--height", 64, "--width", 64],
            "ltx": ["--frames", 9, "--height", 32, "--width", 32]}
    runs = {  # name -> (model folder, family, extra args)
        "wan": (wan, "wan", ["--steps", 3]),
        "wan-dq": (wan, "wan", ["--steps", 3, "-c", _delta_quant(tmp_path, wan)]),
        "wan-6bit": (wan, "wan", ["--steps", 6, "-c", _six_bit(tmp_path, wan)]),
        "ltx": (ltx, "ltx", ["--steps", 3]),
        "ltx-nvfp4": (ltx, "ltx", ["--steps", 3, "-c", _nvfp4(tmp_path, ltx, "ltx")]),
    }

    def args(name: str, tag: str) -> list[str]:
        folder, family, extra = runs[name]
        return [str(a) for a in ["generate", "-m", folder, "-p", PROMPTS[0], *size[family], *extra, "--device", device,
                                 "-o", tmp_path / f"{name}-{tag}.mp4", "--save-frames", tmp_path / f"{name}-{tag}.npy"]]

    one_err = {name: run_dq(*args(name, "one")).stderr for name in runs}
    commands = [{"args": args(name, "two") + ["--context-parallel", "2"], "no_mp4": not mp4} for name in runs]
    commands.append({"args": args("wan-dq", "local") + ["--context-parallel", "2"], "local_scales": True,
                     "no_mp4": not mp4})
    (tmp_path / "commands.json").write_text(json.dumps(commands))
    out = torchrun([DRIVER, tmp_path / "commands.json"], cwd=tmp_path).stderr
    assert out.count("context-parallel over 2 processes (Ulysses): 24 of 48 video tokens per process") == 4
    assert out.count("context-parallel over 2 processes (Ulysses): 96 of 192 video tokens per process") == 2

    def differs(name: str, tag: str) -> tuple[int, float, float]:
        """(largest difference in levels, fraction of values that differ, PSNR in dB)."""
        a = np.load(tmp_path / f"{name}-one.npy").astype(int)
        b = np.load(tmp_path / f"{name}-{tag}.npy").astype(int)
        assert a.shape == b.shape and a.std() > 5  # a real video, not a flat frame
        mse = float(((a - b) ** 2).mean())
        return int(np.abs(a - b).max()), float((a != b).mean()), 10 * np.log10(255 ** 2 / mse) if mse else float("inf")

    found = {name: differs(name, "two") for name in runs} | {"wan-dq local scales": differs("wan-dq", "local")}
    if device == "cuda":
        (tmp_path / "gpu_differences.json").write_text(json.dumps(found, indent=1))
        print("differences from one GPU (max level, fraction):", json.dumps(found))
    control = found.pop("wan-dq local scales")
    for name, (worst, fraction, psnr) in found.items():
        if device == "cpu":
            assert worst <= 1 and fraction <= 1e-3, (name, worst, fraction)
        else:
            assert psnr >= 30, (name, worst, fraction, psnr)
    if device == "cpu":
        assert control[0] > 1 and control[1] > 1e-2, control
    # 6Bit-Diffusion decided alike: the same routes and the same TDC skips as one process.
    line = re.compile(r"activations: .*skipped \d+ of \d+ block evaluations.*")
    assert line.search(one_err["wan-6bit"]).group(0) in out
    assert "TDC skipped 0 of" not in line.search(one_err["wan-6bit"]).group(0)


# ------------------------------------------------------------------ errors
def test_context_parallel_needs_torchrun(family_dir, tmp_path, monkeypatch):
    r = run_dq("generate", "-m", family_dir("wan"), "-p", "a cat", "--context-parallel", "2",
               "-o", tmp_path / "v.mp4", code=2)
    assert "torchrun --nproc-per-node 2" in r.stderr and "Traceback" not in r.stderr
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = run_dq("generate", "-m", family_dir("wan"), "-p", "a cat", "-o", tmp_path / "v.mp4", code=2)
    assert "--context-parallel N" in r.stderr


def test_context_parallel_refuses_what_it_cannot_split(family_dir):
    """Checked before any collective, so every process stops with the same message."""
    from dq_cli.models import load_model
    from dq_cli.parallel import SequenceCheck, SplitStats, World, enable_context_parallel

    cog = load_model("cogvideox", str(family_dir("cogvideox")))
    with pytest.raises(DQError, match="CogVideoXTransformer3DModel .* no context-parallel plan"):
        enable_context_parallel(cog, World(0, 2, "cpu"), 2)
    wan = load_model("wan", str(family_dir("wan")))
    with pytest.raises(DQError, match="dq runs 2 processes; give --context-parallel 2"):
        enable_context_parallel(wan, World(0, 2, "cpu"), 4)
    with pytest.raises(DQError, match="transformer has 2"):  # 2 heads cannot go to 3 processes
        enable_context_parallel(wan, World(0, 3, "cpu"), 3)
    check = SequenceCheck(wan, SplitStats(5))
    hidden = torch.zeros(1, 16, 3, 8, 8)  # 3×4×4 = 48 tokens
    with pytest.raises(DQError, match="48 video tokens .*change --frames/--height/--width"):
        check.pre_forward(wan.pipe.transformer, hidden_states=hidden)
    SequenceCheck(wan, SplitStats(2)).pre_forward(wan.pipe.transformer, hidden_states=hidden)  # 48 = 2 × 24
