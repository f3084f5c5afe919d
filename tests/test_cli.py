"""The `dq` command line: help, predictor-fit's refusal of a recipe without a predictor, and `dq generate`'s MP4 (a real H.264 file,
frame count and size, the same seed giving the same video, --image refused on text-only models)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import COMMANDS, recipe_data, run_dq, write_recipe

# ------------------------------------------------------------------ help


def test_root_help_lists_the_five_subcommands(dq):
    result = dq("--help")
    listed = re.findall(r"^\W*([a-z][a-z-]+)\s{2,}\S", result.stdout, flags=re.M)
    assert sorted(c for c in listed if c in COMMANDS) == sorted(COMMANDS)
    assert "recipe" in result.stdout


def test_version(dq):
    from dq_cli import __version__

    assert dq("--version").stdout.strip() == f"dq {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_each_subcommand_help_explains_itself(dq, command):
    from dq_cli.app import app

    callback = next(c.callback for c in app.registered_commands if c.name == command)
    summary = callback.__doc__.strip().splitlines()[0]
    text = " ".join(dq(command, "--help").stdout.split())  # undo the help's line wrapping
    assert f"Usage: dq {command}" in text
    assert " ".join(summary.split()) in text
    # Every subcommand says what it takes and what it makes.
    assert "In: " in text and "Out: " in text


@pytest.mark.parametrize("command", COMMANDS)
def test_help_paragraphs_fill_the_terminal(command):
    """The docstring's line breaks are the source's, not the terminal's: on a wide terminal each
    paragraph of the description is one line, not the source lines re-wrapped into ragged halves."""
    from typer.testing import CliRunner

    from dq_cli.app import app

    callback = next(c.callback for c in app.registered_commands if c.name == command)
    paragraphs = [" ".join(p.split()) for p in callback.__doc__.split("\n\n") if p.strip()]
    lines = [line.strip() for line in CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "1000"}).stdout.splitlines()]
    for paragraph in paragraphs:
        assert paragraph in lines, paragraph


def test_help_does_not_import_torch():
    """`dq --help` must not wait for torch and diffusers."""
    code = "import sys; import dq_cli.app; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr


# ------------------------------------------------------------------ predictor-fit


def test_predictor_fit_needs_a_predictor_section(dq, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "predictor.json"
    result = dq("predictor-fit", "-r", "tiny_w4a4.yaml", "-o", out, code=2)
    assert "builtin:tiny_w4a4.yaml: predictor" in result.stderr and "no predictor section" in result.stderr
    assert not out.exists()
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # not --out, not a default path, not a temporary file


def test_predictor_fit_real_process_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dq_cli", "predictor-fit", "-o", str(tmp_path / "p.json")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 2  # the default recipe (tiny_w4a4) has no predictor section
    assert "no predictor section" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ generate: the MP4

LTX = dict(frames=9, height=32, width=64)  # not square: a swapped width/height would show


def _generate(dq, folder, out, seed, *extra, code=0):
    return dq("generate", "-m", folder, "-p", "a cat dancing in the rain", "-o", out, "--steps", 2,
              "--frames", LTX["frames"], "--height", LTX["height"], "--width", LTX["width"], "--seed", seed,
              "-q", *extra, code=code)


@pytest.fixture(scope="module")
def ltx_videos(family_dir, tmp_path_factory):
    """Two runs with seed 1 and one with seed 2 of the LTX tiny model, each with its raw frames."""
    folder, tmp = family_dir("ltx"), tmp_path_factory.mktemp("videos")
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        mp4, npy = tmp / f"{name}.mp4", tmp / f"{name}.npy"
        result = _generate(run_dq, folder, mp4, seed, "--save-frames", npy)
        assert result.stdout.strip() == str(mp4)  # --quiet prints only the result
        runs[name] = (mp4, npy)
    return runs


def test_generate_writes_a_playable_h264_mp4(ltx_videos):
    import imageio.v3 as iio
    import imageio_ffmpeg

    from dq_cli.video import read_mp4

    mp4, npy = ltx_videos["a"]
    raw = np.load(npy)
    assert raw.shape == (LTX["frames"], LTX["height"], LTX["width"], 3) and raw.dtype == np.uint8
    # Small videos are upscaled by an integer factor so the shorter side reaches --display-size (128).
    factor = math.ceil(128 / min(LTX["height"], LTX["width"]))
    meta = iio.immeta(mp4, plugin="FFMPEG")
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert tuple(meta["size"]) == (LTX["width"] * factor, LTX["height"] * factor)  # (width, height)
    # The bundled ffmpeg reads it as H.264 too, without errors.
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(mp4), "-f", "null", "-"],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0 and probe.stderr.strip() == ""
    info = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(mp4)],
                          capture_output=True, text=True, timeout=60).stderr
    assert re.search(r"Video: h264", info)
    video = read_mp4(mp4).numpy()
    assert video.shape == (LTX["frames"], LTX["height"] * factor, LTX["width"] * factor, 3)
    # Lossy, but the decoded frames are the generated ones, upscaled (nearest).
    upscaled = raw.repeat(factor, axis=1).repeat(factor, axis=2).astype(np.float64)
    error = np.abs(video.astype(np.float64) - upscaled).mean()
    assert error < 0.25 * np.abs(upscaled - upscaled.mean()).mean(), error
    assert not list(mp4.parent.glob(".*")), "a temporary file was left behind"


def test_read_mp4_reads_every_frame(tmp_path):
    """`read_mp4` once ran out of memory (imageio's reader reports an unknown length as sys.maxsize)."""
    import torch

    from dq_cli.video import read_mp4, write_mp4

    frames = torch.randint(0, 256, (16, 128, 128, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    frames[:, :64] = 0
    write_mp4(frames, tmp_path / "v.mp4", fps=8)
    video = read_mp4(tmp_path / "v.mp4")
    assert video.shape == (16, 128, 128, 3) and video.dtype == torch.uint8
    assert video[:, :60].float().mean() < 8 and video[:, 68:].float().mean() > 64


def test_the_same_seed_gives_the_same_video(ltx_videos):
    from dq_cli.video import read_mp4

    a, b, c = (ltx_videos[k] for k in "abc")
    assert np.array_equal(np.load(a[1]), np.load(b[1]))
    assert np.array_equal(read_mp4(a[0]).numpy(), read_mp4(b[0]).numpy())
    assert not np.array_equal(np.load(a[1]), np.load(c[1]))  # and another seed another video


@pytest.mark.parametrize("family", ["ltx", "cogvideox", "wan"])
def test_image_on_a_text_only_model_is_refused(dq, family_dir, image_file, tmp_path, family):
    out = tmp_path / "v.mp4"
    result = _generate(dq, family_dir(family), out, 0, "--image", image_file, code=2)
    assert f"the {family} model generates from text only" in result.stderr
    assert "Traceback" not in result.output and not out.exists()


def test_image_to_video_needs_an_image(dq, family_dir, tmp_path):
    out = tmp_path / "v.mp4"
    result = dq("generate", "-m", family_dir("wan-i2v"), "-p", "a cat", "-o", out, "--steps", 1, code=2)
    assert "give --image" in result.stderr and not out.exists()


@pytest.mark.parametrize("args, message", [
    (["-o", "{tmp}/v.gif"], "ending in .mp4"),
    (["-o", "{tmp}/v.mp4", "--image", "{tmp}/missing.png"], "no such file"),
    (["-o", "{tmp}/v.mp4", "--image", "{tmp}/not_an_image.png"], "not a readable image"),
    (["-o", "{tmp}/v.mp4", "--save-frames", "{tmp}/f.txt"], "expected a .npy or .pt"),
    (["-o", "{tmp}/v.mp4", "-c", "{tmp}/missing.safetensors"], "no such checkpoint file"),
    (["-o", "{tmp}/v.mp4", "-m", "{tmp}/no_model"], "not a built-in model"),
    (["-o", "{tmp}/v.mp4", "--device", "tpu"], "--device tpu: expected cpu or cuda[:N]"),
    (["-o", "{tmp}/v.mp4", "--device", "cudax"], "--device cudax: expected cpu or cuda[:N]"),  # torch's error before
])
def test_generate_refuses_bad_arguments(dq, family_dir, tmp_path, args, message):
    (tmp_path / "not_an_image.png").write_text("hello")
    folder = family_dir("wan-i2v")
    args = [a.format(tmp=tmp_path) for a in args]
    result = dq("generate", "-m", folder, "-p", "a cat", "--steps", 1, *args, code=2)
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*"))


def test_generate_without_ffmpeg_says_so_before_sampling(dq, tmp_path, monkeypatch):
    """Without imageio-ffmpeg, imageio failed at the first frame written — after the whole sampling
    (50 s for dq-tiny on an H200 with compile), as a traceback. dq asks before loading the model."""
    import dq_cli.models

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the video writer was checked")

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # what an absent package gives: ImportError
    monkeypatch.setattr(dq_cli.models, "load_model", no_model)
    out = tmp_path / "v.mp4"
    result = dq("generate", "-p", "a cat", "--steps", 1, "-o", out, code=2)
    assert "pip install imageio-ffmpeg" in result.stderr and "Traceback" not in result.output
    assert not out.exists()


def test_generate_from_a_recipe_takes_its_sampling_settings(dq, family_dir, tmp_path):
    data = recipe_data("cogvideox", family_dir("cogvideox"))
    data["sampling"].update(steps=1, frames=9, height=32, width=64)  # the family's default: 49 x 480 x 720
    recipe = write_recipe(tmp_path / "r.yaml", data)
    npy = tmp_path / "f.npy"
    dq("generate", "-r", recipe, "-p", "a cat", "-o", tmp_path / "v.mp4", "--save-frames", npy, "-q")
    assert np.load(npy).shape == (9, 32, 64, 3)


def test_settings_the_pipeline_refuses_are_a_user_error(dq, family_dir, tmp_path, monkeypatch):
    from dq_cli.models.base import Adapter

    out = tmp_path / "v.mp4"
    size = ("--frames", 9, "--height", 32, "--width", 48)
    result = dq("generate", "-m", family_dir("ltx"), "-p", "a cat", "-o", out, "--steps", 2, *size, code=2)
    assert "takes multiples of 32" in result.stderr  # dq's own check of the size comes first
    assert "Traceback" not in result.output and not out.exists()
    # What the pipeline's own checks refuse (a ValueError) is a user error too, named after the family.
    monkeypatch.setattr(Adapter, "check_size", lambda self, height, width: None)
    result = dq("generate", "-m", family_dir("ltx"), "-p", "a cat", "-o", out, "--steps", 2, *size, code=2)
    assert "ltx: " in result.stderr and "divisible by 32" in result.stderr
    assert "Traceback" not in result.output and not out.exists()
    result = dq("generate", "-m", family_dir("ltx"), "-p", "a cat", "-o", out, "--steps", 1, "--frames", 9,
                "--height", 32, "--width", 32, code=2)
    assert "at least 2 steps" in result.stderr and not out.exists()


def test_non_finite_values_exit_with_the_layer_named_and_no_traceback(capsys):
    import typer

    from dq_cli.commands.common import handle_errors
    from dq_kernels.checks import check_finite

    @handle_errors
    def command():
        check_finite(torch.tensor([1.0, float("nan")]), "blocks.2.ffn.net.0.proj")

    with pytest.raises(typer.Exit) as info:
        command()
    assert info.value.exit_code == 1
    out = capsys.readouterr()
    assert "blocks.2.ffn.net.0.proj" in out.out + out.err and "Traceback" not in out.out + out.err


def test_other_value_errors_still_propagate():
    from dq_cli.commands.common import handle_errors

    @handle_errors
    def command():
        raise ValueError("a bug, not a user error")

    with pytest.raises(ValueError, match="a bug"):
        command()


# ------------------------------------------------------------------ outputs that cannot be written
@pytest.mark.parametrize("args", [
    ("generate", "-p", "a cat", "--steps", 1),
    ("quantize", "-r", "tiny_w8a8.yaml"),
    ("calibrate", "-r", "tiny_w8a8.yaml"),
    ("bench", "--steps", 1),
    ("bench", "kernels"),
])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(args, dq, tmp_path):
    """-o under a regular file (no folder can be made there, whoever runs the tests): exit 2 naming
    --out and the place, no traceback, nothing written — and before the work (bench used to run
    every configuration, then fail on the report with a traceback)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = dq(*args, "-o", blocker / "sub" / "out.mp4" if args[0] == "generate" else blocker / "sub" / "out",
                code=2)
    assert "--out" in result.stderr and "cannot write in" in result.stderr and str(blocker) in result.stderr
    assert "Traceback" not in result.output and sorted(tmp_path.iterdir()) == [blocker]


# ------------------------------------------------------------------ outputs: whole, and readable
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_outputs_take_the_umask_not_mkstemps_0600(umask, tmp_path):
    from dq_cli.atomic import write_atomic

    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "a" / "f.bin", lambda tmp: Path(tmp).write_bytes(b"x"))
        with pytest.raises(RuntimeError):
            write_atomic(tmp_path / "a" / "g.bin", lambda tmp: (_ for _ in ()).throw(RuntimeError("disk full")))
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "f.bin").read_bytes() == b"x"
    assert (tmp_path / "a" / "f.bin").stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["f.bin"]  # the failed write left nothing


def test_generated_video_and_frames_are_readable_by_others(dq, tmp_path):
    """What a command writes through the atomic path (here a video and its frames) has the permissions
    of any file the user writes: 0644 under umask 022 (it was 0600)."""
    old = os.umask(0o022)
    try:
        dq("generate", "-p", "a red circle", "--steps", 1, "-o", tmp_path / "v.mp4",
           "--save-frames", tmp_path / "f.npy", "-q")
    finally:
        os.umask(old)
    assert [(tmp_path / n).stat().st_mode & 0o777 for n in ("v.mp4", "f.npy")] == [0o644, 0o644]


def test_generate_warns_of_words_dq_tiny_cannot_read(dq, tmp_path):
    """dq-tiny knows a small vocabulary and reads 16 words: what it drops is said, not silently lost."""
    prompt = "a red circle moving right on a blue background with a zebra " + "and a red circle " * 3
    result = dq("generate", "-p", prompt, "--steps", 1, "--frames", 2, "--height", 16, "--width", 16,
                "-o", tmp_path / "v.mp4", "--device", "cpu")
    text = " ".join(result.stderr.split())
    assert "words the model does not know (ignored): with, zebra" in text
    assert "reads the first 16 words of a prompt; ignored: and a red circle and a red circle" in text


def test_generate_from_a_prompt_file_gives_each_prompts_own_video(dq, tmp_path, monkeypatch):
    """--prompts: one model for a list of prompts; video i is the one `-p PROMPT_i --seed S+i` makes
    (frames compared as written, before the MP4 encoder), named by its index and first words."""
    import dq_cli.video

    written = {}
    real_write = dq_cli.video.write_mp4

    def keep(frames, path, fps):
        written[Path(path)] = frames.clone()
        real_write(frames, path, fps)

    monkeypatch.setattr(dq_cli.video, "write_mp4", keep)
    prompts = ["a red circle moving right", "a blue square on a plain background"]
    source = tmp_path / "p.txt"
    source.write_text("# two prompts\n" + "\n".join(prompts) + "\n")
    common = ["--steps", 1, "--frames", 2, "--height", 16, "--width", 16, "--device", "cpu", "--seed", 5]
    result = dq("generate", "--prompts", source, "-o", tmp_path / "vids", *common, "-q")
    names = ["000-a-red-circle-moving-right.mp4", "001-a-blue-square-on-a-plain-background.mp4"]
    assert result.stdout.split() == [str(tmp_path / "vids" / n) for n in names]
    assert sorted(p.name for p in (tmp_path / "vids").iterdir()) == names
    batch = [written[tmp_path / "vids" / n] for n in names]
    for i, prompt in enumerate(prompts):
        one = tmp_path / f"one{i}.mp4"
        dq("generate", "-p", prompt, "-o", one, *common[:-1], 5 + i, "-q")
        assert torch.equal(written[one], batch[i])
    assert not torch.equal(batch[0], batch[1])
    # -n takes the first prompts only; a file for --out, or --prompts with --prompt, is refused up front
    dq("generate", "--prompts", source, "-n", 1, "-o", tmp_path / "first", *common, "-q")
    assert [p.name for p in (tmp_path / "first").iterdir()] == names[:1]
    for args, message in [(["--prompts", source, "-o", tmp_path / "v.mp4"], "--out is the folder"),
                          (["--prompts", source, "-p", "a cat"], "give --prompt TEXT or --prompts FILE"),
                          (["--prompts", tmp_path / "none.txt"], "no such prompt file")]:
        result = dq("generate", *args, *common, code=2)
        assert message in result.stderr and "Traceback" not in result.output
