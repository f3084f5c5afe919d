"""dq calibrate: run the model over calibration prompts and save activation statistics."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import typer

from dq_cli import recipe as recipes
from dq_cli.commands.common import (DEVICE_OPTION, QUIET_OPTION, RECIPE_OPTION, check_writable, console, counted,
                                    default_output, handle_errors, load_image, note, pick_device, progress_bar,
                                    set_threads)
from dq_cli.errors import DQError


def builtin_prompts(family: str) -> Path:
    """A built-in prompt set: dq-tiny's training-world captions, its held-out set, or video.txt."""
    name = f"{family}.txt" if family.startswith("dq-tiny") else "video.txt"
    return Path(str(resources.files("dq_recipes") / "prompts" / name))


@handle_errors
def command(
    recipe: str = RECIPE_OPTION,
    model: str = typer.Option(None, "--model", "-m", help="Local diffusers folder; replaces the recipe's model.path."),
    out: Path = typer.Option(None, "--out", "-o", help="Artifact path without suffix; writes <out>.safetensors "
                             "and <out>.json. Default: out/<recipe name>-calib."),
    prompts: str = typer.Option(None, "--prompts", "-p", help="Prompt file (txt, jsonl, csv, parquet) or a saved "
                                "datasets folder; overrides calibration.prompts."),
    num_prompts: int = typer.Option(None, "--num-prompts", "-n", min=1, help="Overrides calibration.num_prompts."),
    image: Path = typer.Option(None, "--image", help="First-frame image for every prompt; required by "
                               "image-to-video models (Wan 2.2 I2V-A14B)."),
    device: str = DEVICE_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Gather activation statistics for every layer the recipe quantizes.

    In: a recipe (model, calibration prompts and settings). Out: <out>.safetensors with, per layer,
    the per-channel absmax by step range and a bounded sample of input tokens with their (step,
    CFG branch, t, h, w), and <out>.json summarising it with the recipe. With a `predictor:`
    section or `tdc.enabled`, also per block and step Γ = ‖out − in‖₁/‖in‖₁ and the change of
    Δ = out − in, and per quantized linear and step E_rel under each activation route.

    Under `torchrun --nproc-per-node N -m dq_cli calibrate ...` the prompts are split over the N
    processes (one GPU each, or CPU processes) and the statistics combined: the artifact is the one
    a single process writes, and process 0 writes it.
    """
    # Imported here: `dq --help` must not wait for torch and diffusers.
    from dq_calib.artifact import artifact_paths
    from dq_calib.prompts import PromptSourceError, load_prompts
    from dq_cli.calibrate import calibrate, owned_prompts, reduce_result, save_artifact
    from dq_cli.parallel import world as process_world
    from dq_cli.quant import plan_layers
    from dq_cli.session import load_recipe_model, sampling
    set_threads()
    spec = recipes.load(recipe, model_path=model)
    source = recipes.resolve(recipe)[0]
    out = out or default_output(source, "calibration")
    check_writable(artifact_paths(out)[0], "--out")
    if image is not None and not image.is_file():
        raise DQError(f"--image {image}: no such file")
    cal = spec.calibration
    device = pick_device(device)
    with process_world(device) as world:
        main = world is None or world.is_main
        quiet = quiet or not main  # one voice: process 0's
        adapter = load_recipe_model(spec.model, world.device if world else device)
        if spec.quantization.fuse_qkv:  # statistics under the fused layers' names (their shared input)
            adapter.fuse_qkv()
        plans = plan_layers(spec.quantization, adapter.linears(), source,
                            hadamard=spec.predictor.hadamard_block if spec.predictor else 0)
        layers = [info for info in adapter.linears() if info.name in plans]
        if image is not None and not adapter.supports_image:
            raise DQError(f"--image: the {adapter.family} model generates from text only; it cannot use an image")
        if image is None and adapter.needs_image:
            raise DQError(f"--image: the {adapter.family} model generates from a first frame; give --image")
        first_frame = load_image(image) if image is not None else None
        prompt_source = prompts or (str(builtin_prompts(adapter.family)) if cal.prompts == "builtin" else cal.prompts)
        wanted = num_prompts or cal.num_prompts
        try:
            prompt_list = load_prompts(prompt_source, wanted)
        except PromptSourceError as e:
            raise DQError(str(e)) from None
        if len(prompt_list) < wanted:
            asked = "--num-prompts" if num_prompts else "calibration.num_prompts"
            note(quiet, f"[yellow]note:[/] {prompt_source} holds {counted(len(prompt_list), 'prompt')}, fewer than "
                        f"the {wanted} asked for ({asked}): calibrating on {len(prompt_list)}")
        run = sampling(adapter, spec.sampling, steps=cal.steps)
        if not adapter.trained:
            note(quiet, "[yellow]note:[/] dq-tiny has no trained weights yet: calibrating a seeded random network")
        shard = (world.rank, world.size) if world else (0, 1)
        if world is not None:
            note(quiet, f"data-parallel over {world.size} processes: {len(prompt_list)} prompts, "
                        f"{-(-len(prompt_list) // world.size)} or fewer per process")
        # 6Bit-Diffusion (a predictor section or TDC): also Γ, Δ per block and E_rel per route.
        routes = tuple(spec.predictor.routes) if spec.predictor else (() if spec.tdc.enabled else None)
        mine = len(owned_prompts(len(prompt_list), shard))
        with progress_bar(quiet, f"calibrating {len(layers)} layers", mine * run.steps) as advance:
            result = calibrate(adapter, layers, prompt_list, steps=run.steps, guidance=run.guidance,
                               frames=run.frames, height=run.height, width=run.width, seed=cal.seed,
                               step_ranges=cal.step_ranges, tokens_per_layer=cal.tokens_per_layer,
                               negative_prompt=run.negative_prompt, image=first_frame, on_step=lambda s: advance(),
                               plans=plans, routes=routes, shard=shard)
        if world is not None:
            reduce_result(result, layers, len(prompt_list), shard)
        if not main:
            return
        summary = {"model": {"name": spec.model.name, "path": spec.model.path, "family": adapter.family},
                   "prompts": len(prompt_list), "prompt_source": prompt_source, "steps": run.steps,
                   "step_ranges": cal.step_ranges, "forwards": result.forwards,
                   "branches": sorted(result.branches_seen),
                   "steps_by_expert": {k: sorted(set(v)) for k, v in result.steps_seen.items()},
                   "processes": shard[1]}
        tensors_path, json_path = save_artifact(out, result, layers, spec.text, summary)
    note(quiet, f"{counted(len(prompt_list), 'prompt')} × {counted(run.steps, 'step')}, "
                f"{counted(result.forwards, 'forward')}, "
                f"branches {', '.join(sorted(result.branches_seen))}")
    if result.trajectories is not None:
        t = result.trajectories
        note(quiet, f"trajectories: Γ and Δ of {len(t.blocks)} blocks, E_rel of {len(t.linears)} linears "
                    f"under {', '.join(t.routes) or 'no route'}")
    console.print(f"wrote {tensors_path} and {json_path}") if not quiet else typer.echo(str(json_path))
