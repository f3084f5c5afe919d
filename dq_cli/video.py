"""Writing videos: H.264 MP4 through imageio's ffmpeg (the binary ships in the imageio-ffmpeg
wheel), and raw frames for metrics. Files appear only once complete. Reading a first-frame image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dq_cli.atomic import write_atomic
from dq_cli.errors import DQError


def upscale(frames: torch.Tensor, min_size: int) -> torch.Tensor:
    """Nearest-neighbour upscale of uint8 [F, H, W, 3] by an integer factor so that the shorter
    side reaches `min_size` (nearest keeps a tiny model's pixels honest: no invented detail)."""
    f, h, w, _ = frames.shape
    factor = max(1, -(-min_size // min(h, w)))
    if factor == 1:
        return frames
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, scale_factor=factor, mode="nearest")
    return x.round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def load_image(path: Path, name: str = "image"):
    """A first-frame image as RGB; a file that is not a readable image is a DQError naming `name`."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path).convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise DQError(f"{name} {path}: not a readable image ({e})") from None


def check_mp4_writer() -> None:
    """Raise VideoWriterError unless an ffmpeg is at hand for write_mp4: asked before sampling, not
    after minutes of it (imageio's own error comes only at the first write, as a traceback)."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as e:
        raise VideoWriterError(f"writing MP4 needs ffmpeg, through the imageio-ffmpeg package (pip install "
                               f"imageio-ffmpeg, a dependency of dq; or IMAGEIO_FFMPEG_EXE=/path/to/ffmpeg): {e}") from None


class VideoWriterError(RuntimeError):
    pass


def write_mp4(frames: torch.Tensor, path: Path, fps: int) -> None:
    """uint8 [F, H, W, 3] → H.264 MP4 (yuv420p, playable everywhere; sides padded to even)."""
    import imageio.v2 as imageio

    arr = frames.cpu().numpy()
    pad_h, pad_w = arr.shape[1] % 2, arr.shape[2] % 2
    if pad_h or pad_w:
        arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")

    def write(tmp: str) -> None:
        with imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                pixelformat="yuv420p", quality=9, macro_block_size=1,
                                ffmpeg_log_level="error") as writer:
            for frame in arr:
                writer.append_data(frame)
    write_atomic(path, write, suffix=path.suffix)


def save_frames(frames: torch.Tensor, path: Path) -> None:
    """Raw uint8 frames [F, H, W, 3] as .npy (or .pt) at the model's resolution."""

    def write(tmp: str) -> None:
        if path.suffix == ".pt":
            torch.save(frames.cpu(), tmp)
        else:
            with open(tmp, "wb") as f:
                np.save(f, frames.cpu().numpy())
    write_atomic(path, write)


def read_mp4(path: Path) -> torch.Tensor:
    """uint8 [F, H, W, 3]. (Not `list(imageio.v2.get_reader(...))`: the reader reports its unknown
    length as sys.maxsize, which list() preallocates: MemoryError.)"""
    import imageio.v3 as iio

    return torch.from_numpy(np.ascontiguousarray(iio.imread(str(path), plugin="FFMPEG")))
