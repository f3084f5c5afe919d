"""dq generate: text (or image) to video with a BF16 model or a quantized checkpoint."""

from __future__ import annotations

import re
import time
from pathlib import Path

import typer

from dq_cli import recipe as recipes
from dq_cli.commands.common import (ATTENTION_OPTION, DEVICE_OPTION, QUIET_OPTION, check_attention, check_writable,
                                    console, counted, handle_errors, load_image, note, pick_device, progress_bar,
                                    set_threads)
from dq_cli.errors import DQError


@handle_errors
def command(
    prompt: str = typer.Option(None, "--prompt", "-p", help="What the video should show."),
    prompts: str = typer.Option(None, "--prompts", help="A prompt file instead of --prompt (txt: one a line; jsonl, "
                                "csv, parquet or a saved datasets folder, as `dq calibrate --prompts`): one video "
                                "per prompt from one loaded (and compiled) model, written into the --out folder as "
                                "000-<first words>.mp4, ...; seeds count up from the seed."),
    num_prompts: int = typer.Option(None, "--num-prompts", "-n", min=1, help="With --prompts: the first N only."),
    out: Path = typer.Option(None, "--out", "-o", help="MP4 file to write (H.264; default out/video.mp4); with "
                             "--prompts, the folder (default out/videos)."),
    checkpoint: Path = typer.Option(None, "--checkpoint", "-c", help="Quantized checkpoint from `dq quantize`. "
                                    "Without it the model runs unquantized."),
    model: str = typer.Option(None, "--model", "-m", help="Built-in model name or local diffusers folder "
                              "(default: the checkpoint's model, else dq-tiny)."),
    recipe: str = typer.Option(None, "--recipe", "-r", help="Take the model and sampling settings from a recipe "
                               "(default: with --checkpoint, the sampling settings of the recipe it was quantized "
                               "with; flags override either)."),
    image: Path = typer.Option(None, "--image", help="First-frame image for image-to-video models "
                               "(Wan 2.2 I2V-A14B, TI2V-5B)."),
    negative_prompt: str = typer.Option(None, "--negative-prompt", help="What the video should not show."),
    steps: int = typer.Option(None, "--steps", min=1, help="Denoising steps (default: the recipe's, else the "
                              "model's)."),
    guidance: float = typer.Option(None, "--guidance", min=0.0, help="Classifier-free guidance scale."),
    seed: int = typer.Option(None, "--seed", help="Random seed; the same seed gives the same video."),
    frames: int = typer.Option(None, "--frames", min=1, help="Number of frames."),
    height: int = typer.Option(None, "--height", min=8, help="Height in pixels."),
    width: int = typer.Option(None, "--width", min=8, help="Width in pixels."),
    fps: int = typer.Option(None, "--fps", min=1, help="Frames per second of the MP4."),
    display_size: int = typer.Option(128, "--display-size", min=1, help="Upscale (nearest) small videos so the "
                                     "shorter side is at least this many pixels in the MP4."),
    save_frames_to: Path = typer.Option(None, "--save-frames", help="Also save the raw frames at the model's "
                                        "resolution (.npy or .pt, uint8 [F, H, W, 3]) for metrics."),
    predictor: Path = typer.Option(None, "--predictor", help="6Bit-Diffusion predictor replacing the one "
                                   "recorded in the checkpoint."),
    tdc: bool = typer.Option(None, "--tdc/--no-tdc", help="Turn the Temporal Delta Cache on or off (default: "
                             "the checkpoint's recipe)."),
    attention: str = ATTENTION_OPTION,
    compile_: str = typer.Option("off", "--compile", help="torch.compile the transformer blocks: off, on, or "
                                 "reduce-overhead (each block replayed as a CUDA graph: no per-launch host cost). "
                                 "The first steps pay for compilation; worth it for long or repeated runs. "
                                 "6Bit-Diffusion checkpoints: on only (their routed linears stay eager)."),
    context_parallel: int = typer.Option(None, "--context-parallel", min=1, help="Split the token sequence over "
                                         "N processes (Wan 2.2, LTX-Video, dq-tiny; Ulysses attention): start dq "
                                         "with `torchrun --nproc-per-node N -m dq_cli generate ...`."),
    device: str = DEVICE_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Generate a video and write it as an MP4.

    In: a prompt (or a prompt file), and a quantized checkpoint or a model. Out: a playable H.264 MP4
    per prompt (and, with --save-frames, the raw frames). With --context-parallel N under torchrun,
    every process holds 1/N of the tokens; the video is the one-process video, and process 0 writes it.
    """
    # Imported here: `dq --help` must not wait for torch and diffusers.
    set_threads()
    texts, outs = _videos(prompt, prompts, num_prompts, out, save_frames_to)
    if save_frames_to is not None and save_frames_to.suffix not in (".npy", ".pt"):
        raise DQError(f"--save-frames {save_frames_to}: expected a .npy or .pt path")
    if image is not None and not image.is_file():
        raise DQError(f"--image {image}: no such file")
    check_attention(attention)
    from dq_cli.compile import check_choice, for_choice

    check_choice(compile_)
    if compile_ != "off" and context_parallel and context_parallel > 1:
        raise DQError("--compile: not with --context-parallel (the sequence split is not traced)")
    from dq_cli.parallel import enable_context_parallel, launched
    from dq_cli.parallel import world as process_world
    from dq_cli.session import sampling
    from dq_cli.video import VideoWriterError, check_mp4_writer, save_frames, upscale, write_mp4

    try:
        check_mp4_writer()
    except VideoWriterError as e:
        raise DQError(str(e)) from None

    if context_parallel and context_parallel > 1 and not launched():
        raise DQError(f"--context-parallel {context_parallel}: start dq with torchrun --nproc-per-node "
                      f"{context_parallel} -m dq_cli generate ...")
    if launched() and not context_parallel:
        raise DQError("dq generate runs under torchrun with --context-parallel N only (N = the number of processes)")
    device = pick_device(device)
    with process_world(device) as world:
        if world is not None:
            device = world.device
            quiet = quiet or not world.is_main  # one voice: process 0's
        # the recipe's model is only loaded when neither a checkpoint nor --model names one
        spec = recipes.load(recipe, check=checkpoint is None and model is None) if recipe else None
        adapter, recorded = _load_adapter(checkpoint, spec, model, predictor, tdc, device, quiet)
        if image is not None and not adapter.supports_image:
            raise DQError(f"--image: the {adapter.family} model generates from text only; it cannot use an image")
        if image is None and adapter.needs_image:
            raise DQError(f"--image: the {adapter.family} model generates from a first frame; give --image")
        if not adapter.trained:
            note(quiet, "[yellow]note:[/] dq-tiny is untrained (seeded random weights): the video will be noise")
        for warning in dict.fromkeys(w for text in texts for w in adapter.prompt_warnings(text)):
            console.print(f"[yellow]warning:[/] {warning}")
        run = sampling(adapter, spec.sampling if spec else recorded, steps=steps, guidance=guidance, seed=seed,
                       frames=frames, height=height, width=width, fps=fps, negative_prompt=negative_prompt,
                       attention=attention)
        if run.attention != "sdpa":
            adapter.set_attention(run.attention)
        # After dq's own hooks: diffusers' split must run outside them.
        split = enable_context_parallel(adapter, world, context_parallel) if world is not None else None
        first_frame = load_image(image) if image is not None else None
        compiled = for_choice(adapter, compile_)
        made = []  # (path, frames, seconds, seed) per video
        with compiled, progress_bar(quiet, "denoising", run.steps * len(texts)) as advance:
            for i, (text, path) in enumerate(zip(texts, outs)):
                start = time.perf_counter()
                video = adapter.generate(text, negative_prompt=run.negative_prompt, image=first_frame,
                                         steps=run.steps, guidance=run.guidance, seed=run.seed + i,
                                         frames=run.frames, height=run.height, width=run.width,
                                         on_step=lambda s: advance())
                made.append((path, video.shape, time.perf_counter() - start, run.seed + i))
                if world is None or world.is_main:  # written as it comes: a long list holds one video at a time
                    write_mp4(upscale(video, display_size), path, run.fps)
                    if save_frames_to is not None:
                        save_frames(video, save_frames_to)
            compile_line = compiled.summary() if compile_ != "off" else None  # before the context resets dynamo
        if world is not None and not world.is_main:
            return
        _report(adapter, run, made, split, compile_line, quiet)


def _videos(prompt, prompts, num_prompts, out, save_frames_to) -> tuple[list[str], list[Path]]:
    """The prompts and the MP4 each goes to, checked before any work: --prompt and one file, or
    --prompts and a folder of numbered files."""
    if (prompt is None) == (prompts is None):
        raise DQError("give --prompt TEXT or --prompts FILE (one of them)")
    if prompts is None:
        if num_prompts is not None:
            raise DQError("--num-prompts: goes with --prompts")
        out = out or Path("out/video.mp4")
        if out.suffix.lower() != ".mp4":
            raise DQError(f"--out {out}: the video is written as MP4; give a path ending in .mp4")
        check_writable(out, "--out")
        return [prompt], [out]
    from dq_calib.prompts import PromptSourceError, load_prompts

    if save_frames_to is not None:
        raise DQError("--save-frames: one video's frames; not with --prompts (`dq bench --quality` measures prompt "
                      "sets)")
    folder = out or Path("out/videos")
    if folder.suffix.lower() == ".mp4" or folder.is_file():
        raise DQError(f"--out {folder}: with --prompts, --out is the folder the videos go to")
    try:
        texts = load_prompts(prompts, num_prompts)
    except PromptSourceError as e:
        raise DQError(f"--prompts {e}") from None
    width = max(3, len(str(len(texts) - 1)))  # the names sort in prompt order
    outs = [folder / f"{i:0{width}d}-{_words(text)}.mp4" for i, text in enumerate(texts)]
    check_writable(outs[0], "--out")
    return texts, outs


def _words(text: str, limit: int = 40) -> str:
    """The prompt's first whole words as a file name (up to `limit` characters): lower case, letters and
    digits, '-' between."""
    name = ""
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        if name and len(name) + 1 + len(word) > limit:
            break
        name = f"{name}-{word}" if name else word[:limit]
    return name or "video"


def _report(adapter, run, made: list, split, compile_line: str | None, quiet: bool) -> None:
    """What was made, and how: one line a video, then the attention, routing, split and compile lines."""
    if adapter.attention is not None:
        note(quiet, adapter.attention.line())
    frames = made[0][1][0]  # every video of the run has its settings
    if frames != run.frames:  # the VAE's temporal factor: Wan takes 4k + 1 frames, LTX 8k + 1
        note(quiet, f"[yellow]note:[/] the {adapter.family} model made {frames} frames of the "
                    f"{run.frames} asked for (its VAE takes frame counts of a fixed step)")
    for path, shape, seconds, seed in made:
        where = f" → {path}" if len(made) > 1 else ""
        note(quiet, f"{shape[0]} frames {shape[2]}×{shape[1]} in {seconds:.1f} s "
                    f"({counted(run.steps, 'step')}, guidance {run.guidance}, seed {seed}){where}")
    if getattr(adapter, "runtime", None) is not None:
        note(quiet, adapter.runtime.line())
    if split is not None:
        note(quiet, split.line())
    if compile_line is not None:
        note(quiet, compile_line)
    if quiet:  # -q prints the result: the files, one a line
        typer.echo("\n".join(str(path) for path, *_ in made))
    elif len(made) > 1:
        console.print(f"wrote {len(made)} videos to {made[0][0].parent}")
    else:
        console.print(f"wrote {made[0][0]}")


def _load_adapter(checkpoint, spec, model, predictor, tdc, device: str, quiet: bool):
    """The model to sample — a quantized checkpoint, the recipe's model, or --model (dq-tiny) — and
    the sampling settings recorded with it (a checkpoint's recipe's; else None)."""
    from dq_cli.session import load_quantized, load_recipe_model, recorded_sampling

    if (predictor is not None or tdc is not None) and checkpoint is None:
        raise DQError("--predictor/--tdc: need a quantized checkpoint (--checkpoint)")
    if checkpoint is not None:
        adapter, info = load_quantized(checkpoint, device, model=model, predictor=predictor, tdc=tdc)
        note(quiet, f"checkpoint {checkpoint}: {len(info.layers)} quantized layers")
        return adapter, recorded_sampling(info)
    if spec is not None and model is None:
        return load_recipe_model(spec.model, device), None
    from dq_cli.models import load_model

    return load_model(model or "dq-tiny", device=device), None
