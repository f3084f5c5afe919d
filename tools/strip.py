"""A PNG strip of real dq-tiny outputs for the README: one row per prompt, evenly spaced frames,
the prompt written above each row (and a quantized checkpoint's row beneath, if given).

    .venv/bin/python -P tools/strip.py --out docs/dq-tiny-strip.png [--checkpoint ckpt.safetensors]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from dq_calib.prompts import load_prompts
from dq_cli.models import load_model
from dq_cli.session import load_quantized, sampling
from dq_cli.video import upscale

DEMO_PROMPTS = Path(__file__).parents[1] / "recipes" / "prompts" / "dq-tiny-demo.txt"
CAPTION = 14  # pixels of caption band above each row


def frames_row(video: torch.Tensor, shown: int, size: int) -> Image.Image:
    picks = torch.linspace(0, video.shape[0] - 1, shown).round().long()
    tiles = upscale(video[picks], size)
    return Image.fromarray(torch.cat(list(tiles), dim=1).numpy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--prompts", nargs="*", default=None, help=f"default: {DEMO_PROMPTS.name}")
    ap.add_argument("--frames-shown", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    models = [("BF16", load_model("dq-tiny", device=args.device))]
    if args.checkpoint:
        models.append((args.checkpoint.stem, load_quantized(args.checkpoint, args.device)[0]))
    rows = []
    for prompt in args.prompts or load_prompts(DEMO_PROMPTS):
        for label, adapter in models:
            run = sampling(adapter)
            video = adapter.generate(prompt, steps=run.steps, guidance=run.guidance, seed=run.seed,
                                     frames=run.frames, height=run.height, width=run.width)
            strip = frames_row(video, args.frames_shown, args.size)
            band = Image.new("RGB", (strip.width, CAPTION), "white")
            ImageDraw.Draw(band).text((2, 1), f"{prompt}  [{label}]" if len(models) > 1 else prompt, fill="black")
            rows += [band, strip]
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    main()
