"""dq from Python: a quantized checkpoint rebuilt into its diffusers pipeline and sampled, as `dq
generate -c` does, for code that keeps the model resident (a server, a notebook, an evaluation loop).

    import dq_cli as dq

    model = dq.load("out/wan22_w4a4.safetensors")                        # CUDA when present
    frames = dq.generate(model, "a red fox running through snow", seed=1)  # uint8 [F, H, W, 3]
    frames = dq.generate(model, "a red fox", steps=20, height=480, width=832)

Sampling settings default to the recipe the checkpoint was quantized with, then to the model's own,
as in `dq generate -c`. `model.pipe` is the diffusers pipeline with dq's layers inside. DeltaQuant's
cube schedule and 6Bit-Diffusion's routing read the sampling step, which dq follows through the
pipeline's step callback: to call the pipeline yourself, use `model.run_pipeline(model.pipe, kwargs,
steps)`; a direct `model.pipe(...)` call warns, because the step dq sees does not advance there.
Errors are `dq_cli.errors.DQError` (bad paths, another model's checkpoint, unsupported settings).
"""

from __future__ import annotations

import typing
from pathlib import Path

import torch

from dq_cli.errors import DQError
from dq_cli.models.base import Adapter
from dq_cli.recipe import ModelSpec

__all__ = ["generate", "load"]

DTYPES = typing.get_args(ModelSpec.model_fields["dtype"].annotation)  # a recipe's model.dtype


def load(checkpoint: str | Path, *, model: str | None = None, device: str | None = None, dtype: str = "auto",
         attention: str | None = None, compile: str = "off") -> Adapter:
    """Rebuild a `dq quantize` checkpoint around its model. `model` (a built-in name or a diffusers
    folder) says where the other components come from when the recorded folder moved; `device`
    defaults to CUDA when present; `attention` ("sdpa" or "sage8") replaces the recipe's backend;
    `compile` ("on", or "reduce-overhead" for CUDA graphs) compiles the transformer blocks as `dq
    generate --compile` does, for as long as the model lives (the first call pays for compiling;
    `model.compiled.summary()` counts graphs and breaks)."""
    from dq_cli.attention import BACKENDS
    from dq_cli.compile import check_choice, for_choice
    from dq_cli.session import load_quantized, pick_device, recorded_sampling

    if attention is not None and attention not in BACKENDS:
        raise DQError(f"attention {attention!r}: expected one of {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise DQError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    check_choice(compile, "compile")
    device = pick_device(device, "device")
    adapter, info = load_quantized(Path(checkpoint), device, dtype=dtype, model=model, model_option="model=")
    adapter.recorded_sampling = recorded_sampling(info)
    backend = attention or (adapter.recorded_sampling.attention if adapter.recorded_sampling else None)
    if backend and backend != "sdpa":
        adapter.set_attention(backend)
    adapter.compiled = for_choice(adapter, compile).__enter__() if compile != "off" else None
    return adapter


def generate(model: Adapter, prompt: str, *, negative_prompt: str | None = None, image=None,
             steps: int | None = None, guidance: float | None = None, seed: int | None = None,
             frames: int | None = None, height: int | None = None, width: int | None = None) -> torch.Tensor:
    """One video as uint8 frames [F, H, W, 3] on the CPU; the same seed gives the same frames as
    `dq generate -c` with the same settings. `image` (a path or a PIL image) is the first frame of
    image-to-video models."""
    from dq_cli.session import sampling

    for name, value, least in (("steps", steps, 1), ("frames", frames, 1), ("height", height, 1),
                               ("width", width, 1), ("guidance", guidance, 0)):
        if value is not None and value < least:
            raise DQError(f"{name} {value}: must be at least {least}")
    if image is not None and not model.supports_image:
        raise DQError(f"image: the {model.family} model generates from text only")
    if image is None and model.needs_image:
        raise DQError(f"image: the {model.family} model generates from a first frame; pass image=")
    if isinstance(image, (str, Path)):
        from dq_cli.video import load_image

        image = load_image(Path(image))
    run = sampling(model, model.recorded_sampling, steps=steps, guidance=guidance, seed=seed,
                   frames=frames, height=height, width=width, negative_prompt=negative_prompt)
    return model.generate(prompt, negative_prompt=run.negative_prompt, image=image, steps=run.steps,
                          guidance=run.guidance, seed=run.seed, frames=run.frames, height=run.height,
                          width=run.width)
