"""Shared fixtures: the tiny random pipeline of each family (built once per session), recipes for
them at tiny sampling settings, and the `dq` CLI run in-process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run in its interpreter on a CPU-only machine
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Inductor's FX graph cache does not key on a custom op's fake kernel: after changing one, a cached
# graph kept the old output strides and a test failed against it. Tests compile afresh.
os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
import yaml

try:
    import tiny_models as tm
except ImportError:  # tests/ imported as a package
    from tests import tiny_models as tm

FAMILIES = tuple(tm.FAMILIES)  # wan, wan-i2v, wan-ti2v, ltx, cogvideox
STEPS = 3
COMMANDS = ("calibrate", "predictor-fit", "quantize", "generate", "bench")


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """The models are tiny: one intra-op thread is as fast, and much faster than an OpenMP team
    spinning on 2 shared cores. The commands set their own thread count: keep it at one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        import dq_cli.commands.bench
        import dq_cli.commands.calibrate
        import dq_cli.commands.generate
        import dq_cli.commands.quantize

        for name in ("bench", "calibrate", "generate", "quantize"):
            mp.setattr(sys.modules[f"dq_cli.commands.{name}"], "set_threads", lambda: None)
        yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory):
    """family -> folder of its tiny random pipeline (saved with save_pretrained), built once."""
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = tm.build(family, tmp_path_factory.mktemp(family.replace("-", "_")) / "pipe", seed=0)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "first_frame.png"
    tm.make_image(64, 64, seed=1234).save(path)
    return path


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("a cat dancing in the rain\n# a comment\n\na dog running on the beach\n")
    return path


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def recipe_data(family: str, folder: Path, prompts: Path | None = None, **sections) -> dict:
    """A recipe for a tiny family folder at GEN_KWARGS' size, weight-only INT8 by default;
    `sections` are merged in (e.g. calibration={"steps": 4})."""
    g = tm.GEN_KWARGS[family]
    data = {
        "version": 1,
        "name": f"test-{family}",
        "model": {"name": family, "path": str(folder)},
        "calibration": {"num_prompts": 2, "steps": STEPS, "tokens_per_layer": 64, "step_ranges": STEPS},
        "sampling": {"steps": STEPS, "guidance": g["guidance_scale"], "frames": g["num_frames"],
                     "height": g["height"], "width": g["width"], "fps": 8},
        "quantization": {"default": {"method": "rtn", "weight": "int8", "activation": "none"}},
    }
    if prompts is not None:
        data["calibration"]["prompts"] = str(prompts)
    return _merge(data, sections)


def write_recipe(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def run_dq(*args, code: int | None = 0):
    """Run `dq ARGS` in-process; check the exit code (showing the output when it differs)."""
    from typer.testing import CliRunner

    from dq_cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if code is not None:
        assert result.exit_code == code, (
            f"dq {' '.join(map(str, args))}: exit {result.exit_code}, expected {code}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}\nexception: {result.exception!r}")
    return result


@pytest.fixture
def dq():
    return run_dq
