"""Prompt adherence for videos of the ``dq-tiny`` world: does a video show what its prompt asked?

``analyze`` reads a video back into the world's vocabulary:

1. The video is area-resized to 32x32 (the world's native size), so 128x128
   upscales and 32x32 renders go through the same path.
2. Background: the per-pixel temporal median (moving objects mostly vanish from it)
   is compared with a rendering of every (kind, colour) background the grammar can
   name, sharp and blurred; the best fit has the lowest trimmed mean error over the
   75% best-fitting pixels (objects cover at most ~20% of the frame). A per-channel
   offset absorbs mild colour drift; where the median agrees with the rendering it
   replaces it, so the video's own blur of stripes and checks is not "object".
3. Objects: pixels far from that background. Each is labelled with the object colour
   whose blend with the local background explains it best (an anti-aliased red edge
   on yellow is a red/yellow blend, not orange), then split per frame and colour into
   connected components, tracked across frames by colour. Two objects that touch
   therefore stay apart.
4. Motion: robust (Theil-Sen) slopes of each track's centroid and log-area;
   whichever of translation and scaling is larger relative to what the world
   produces wins.
5. Shape: template matching on the soft coverage (how far each pixel lies from the
   background towards the object colour): each shape is rendered with the world's own
   rasterizer at the observed centroid and area, at a few blurs and scales, on the
   largest views of the object; the best-fitting shape wins.

Measured on fresh world clips (1 or 2 objects, all background kinds) at 32x32, 128x128
and with blur + noise, colour/motion/background are >= 99% right and shape ~99%; the
misses are two objects occluding each other.

``score`` compares an analysis with ``parse_prompt(prompt)``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from dq_cli.tiny.world import (
    BACKGROUND_KINDS,
    COLOR_RGB,
    OBJECT_COLORS,
    TRANSLATIONS,
    Background,
    PromptSpec,
    parse_prompt,
    render_background,
    shape_coverage,
)

WORK_SIZE = 32
INLIER_FRACTION = 0.75  # share of pixels assumed to show background when fitting it
BACKGROUND_TOLERANCE = 50.0  # RGB distance up to which the temporal median is background
# RGB distance from the background that counts as object: above the noise, but never
# above what every object clears (the world keeps objects >= 100 from their background).
MIN_THRESHOLD = 35.0
MAX_THRESHOLD = 60.0
MIN_COMPONENT_AREA = 3.0  # pixels at 32x32
MIN_TRACK_FRACTION = 0.4  # a track must be seen in this share of frames
# What the world produces, used to weigh translation against scaling: objects travel
# >= 0.35 of the frame, and grow/shrink change log(area) by >= ~1.2.
TYPICAL_TRAVEL = 0.35
TYPICAL_LOG_AREA_CHANGE = 1.2
MIN_MOTION_STRENGTH = 0.35  # below this fraction of the typical change the object is static
SHAPE_VIEWS = 6  # frames (largest object views) the shape is matched on
# Templates are tried at these blurs (pixels) and width factors: generated videos are soft.
TEMPLATE_BLURS = (0.0, 0.7, 1.2)
TEMPLATE_SCALES = (0.9, 1.0, 1.1)
# Area of each shape relative to its squared width (triangles are as tall as wide).
SHAPE_FILL = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5}
# A real object is one or two blobs per frame; noise or texture residue is many.
MAX_PARTS_PER_FRAME = 2


@dataclass
class ObjectAnalysis:
    """One tracked object. Displacement is in fractions of the frame over the clip."""

    color: str
    motion: str | None  # None: no clear motion
    shape: str | None
    displacement: tuple[float, float]
    log_area_change: float
    mean_area: float  # fraction of the frame
    frames_seen: float  # fraction of frames
    color_distance: float  # RGB distance of the object's median colour to its named colour
    shape_errors: dict[str, float] = field(default_factory=dict)  # template mismatch per shape


@dataclass
class VideoAnalysis:
    """What a video shows, in the world's vocabulary. Objects are sorted largest first."""

    background: Background
    background_error: float  # trimmed mean RGB error of the best background fit
    background_margin: float  # how much worse the second-best background fits
    objects: list[ObjectAnalysis] = field(default_factory=list)

    @property
    def background_color(self) -> str | None:
        return self.background.color

    @property
    def main(self) -> ObjectAnalysis | None:
        return self.objects[0] if self.objects else None

    @property
    def object_color(self) -> str | None:
        return self.main.color if self.main else None

    @property
    def motion(self) -> str | None:
        return self.main.motion if self.main else None

    @property
    def shape(self) -> str | None:
        return self.main.shape if self.main else None


@dataclass
class AdherenceScore:
    """Per-attribute agreement with the prompt; ``None`` where the prompt doesn't say.

    ``overall`` is the mean over the attributes in ``counted``: colour, motion, shape and
    background of the main object, plus ``others_ok`` when the prompt names more objects.
    """

    color_ok: bool | None
    motion_ok: bool | None
    background_ok: bool | None
    shape_ok: bool | None
    others_ok: bool | None
    overall: float
    counted: tuple[str, ...]
    analysis: VideoAnalysis


# --------------------------------------------------------------------------- preprocessing


def _to_working_video(video: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8/float [F, H, W, 3] in [0, 255] -> float32 [F, 3, 32, 32]."""
    video = torch.as_tensor(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected a video [frames, height, width, 3], got {tuple(video.shape)}")
    frames = video.permute(0, 3, 1, 2).float()
    if frames.shape[-2:] != (WORK_SIZE, WORK_SIZE):
        if min(frames.shape[-2:]) >= WORK_SIZE:
            frames = F.adaptive_avg_pool2d(frames, WORK_SIZE)
        else:
            frames = F.interpolate(frames, size=(WORK_SIZE, WORK_SIZE), mode="bilinear", align_corners=False)
    return frames


@lru_cache(maxsize=None)
def _blur_kernel(sigma: float) -> torch.Tensor:
    radius = 3
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    return (kernel[:, None] * kernel[None, :])[None, None]


@lru_cache(maxsize=1)
def _background_candidates() -> tuple[list[Background], torch.Tensor]:
    # Every background the grammar can name, not only those the sampler draws, so that
    # a wrong background in a generated video is recognised as that wrong background.
    # Each is also tried blurred: a soft 4-px checkerboard otherwise fits "plain" best.
    names = [Background(kind, color) for kind in BACKGROUND_KINDS for color in COLOR_RGB]
    sharp = torch.stack([render_background(b, WORK_SIZE).permute(2, 0, 1).float() for b in names])
    images = [sharp]
    for sigma in TEMPLATE_BLURS:
        if sigma > 0:
            padded = F.pad(sharp, (3, 3, 3, 3), mode="reflect")
            images.append(F.conv2d(padded, _blur_kernel(sigma).expand(3, 1, 7, 7), groups=3))
    return names * len(images), torch.cat(images)  # [n, 3, H, W]


def _channel_norm(rgb: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over dim 1 (much faster than ``linalg.norm`` on a middle dim)."""
    return rgb.pow(2).sum(1).sqrt()


def _trimmed_mean(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of the smallest ``fraction`` of the last dimension."""
    k = max(1, int(values.shape[-1] * fraction))
    return values.topk(k, dim=-1, largest=False).values.mean(-1)


def _fit_background(frames: torch.Tensor) -> tuple[Background, torch.Tensor, float, float]:
    """Best background candidate and the estimated background image [3, H, W]."""
    candidates, images = _background_candidates()
    median = frames.median(dim=0).values  # [3, H, W]
    residual = median[None] - images  # [n, 3, H, W]
    # Allow a global colour offset (generated videos drift), estimated robustly.
    offset = residual.flatten(2).median(dim=-1).values[..., None, None].clamp(-40, 40)
    error = _channel_norm(residual - offset).flatten(1)  # [n, H*W]
    fit = _trimmed_mean(error, INLIER_FRACTION)
    order = fit.argsort()
    best = int(order[0])
    # Margin to the best *different* background, not to a blurred copy of the same one.
    second = next(int(i) for i in order if candidates[int(i)] != candidates[best])
    estimate = images[best] + offset[best]
    # Where the temporal median agrees with the rendering, trust the median: it carries
    # the video's own blur of stripes and checks. Where it doesn't (an object that
    # stays put, e.g. while growing), keep the rendering.
    agrees = _channel_norm((median - estimate)[None])[0] < BACKGROUND_TOLERANCE
    estimate = torch.where(agrees, median, estimate)
    return candidates[best], estimate, float(fit[best]), float(fit[second] - fit[best])


# --------------------------------------------------------------------------- segmentation


def _connected_components(mask: torch.Tensor) -> torch.Tensor:
    """8-connected component labels for a boolean [N, H, W] mask.

    Label 0 is background; every component gets the largest flat pixel index + 1 in
    it, so ``(label - 1) // (H * W)`` is the image it lies in.
    """
    n, height, width = mask.shape
    # float32 holds integer ids exactly up to 2**24, plenty for 32x32 clips.
    ids = torch.arange(1, n * height * width + 1, dtype=torch.float32).view(n, 1, height, width)
    keep = mask[:, None].float()
    labels = ids * keep
    for _ in range(height * width):
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * keep
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels[:, 0].long()


@dataclass
class _Blob:
    frame: int
    color: str
    color_distance: float  # RGB distance of the blob's median core colour to its named colour
    area: float  # soft area in pixels
    center: tuple[float, float]  # pixels
    coverage: torch.Tensor  # soft coverage [H, W] (0 where another object is)
    valid: torch.Tensor  # bool [H, W]: pixels not covered by another object


def _area_and_centroid(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft area and centroid (pixel units) of coverage maps [N, H, W]."""
    height, width = alpha.shape[-2:]
    area = alpha.sum((1, 2)).clamp_min(1e-6)
    cx = (alpha * torch.arange(width, dtype=alpha.dtype)).sum((1, 2)) / area
    cy = (alpha * torch.arange(height, dtype=alpha.dtype).view(-1, 1)).sum((1, 2)) / area
    return area, cx, cy


def _unmix(difference: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coverage and residual of pixels as background + alpha * (colour - background).

    difference: pixel - background [F, 3, H, W]; direction: colour - background [K, 3, H, W].
    Returns alpha and residual, both [F, K, H, W].
    """
    frames, _, height, width = difference.shape
    # Flattened to one matmul: pixels x colours, per channel summed.
    d = difference.permute(0, 2, 3, 1).reshape(frames, height * width, 1, 3)
    k = direction.permute(2, 3, 0, 1).reshape(1, height * width, -1, 3)
    along = (d * k).sum(-1)  # [F, HW, K]
    length2 = k.pow(2).sum(-1).clamp_min(1.0)
    alpha = (along / length2).clamp(0, 1)
    # |d - alpha k|^2 expanded, so the [F, HW, K, 3] difference is never built.
    residual2 = d.pow(2).sum(-1) - 2 * alpha * along + alpha.pow(2) * length2
    residual = residual2.clamp_min(0).sqrt()
    to_maps = lambda t: t.view(frames, height, width, -1).permute(0, 3, 1, 2)  # noqa: E731
    return to_maps(alpha), to_maps(residual)


def _blobs(frames: torch.Tensor, background: torch.Tensor) -> list[_Blob]:
    frame_count, _, height, width = frames.shape
    difference = frames - background[None]  # [F, 3, H, W]
    distance = _channel_norm(difference)  # [F, H, W]
    # Threshold above the background's own noise (generated videos are noisy).
    typical = distance.flatten().median()
    spread = (distance.flatten() - typical).abs().median() * 1.4826
    mask = distance > min(max(MIN_THRESHOLD, float(typical + 6 * spread)), MAX_THRESHOLD)

    # Label each object pixel with the colour whose blend with the local background
    # explains it best: an anti-aliased red-on-yellow edge is a red/yellow blend, not orange.
    palette = torch.tensor([COLOR_RGB[c] for c in OBJECT_COLORS], dtype=torch.float32)
    alpha, residual = _unmix(difference, palette[:, :, None, None] - background[None])
    nearest = residual.argmin(dim=1)  # [F, H, W]
    present = [k for k in range(len(OBJECT_COLORS)) if (mask & (nearest == k)).sum() >= MIN_COMPONENT_AREA]
    if not present:
        return []

    # Components of each colour in each frame, all in one batch of K * F images.
    colored = torch.stack([mask & (nearest == k) for k in present]).flatten(0, 1)  # [K*F, H, W]
    labels = _connected_components(colored)
    ids = labels.unique()
    ids = ids[ids > 0]
    image = (ids - 1) // (height * width)
    components = labels[image] == ids.view(-1, 1, 1)  # [N, H, W]
    keep = components.sum((1, 2)) >= MIN_COMPONENT_AREA
    components, image = components[keep], image[keep]
    if len(image) == 0:
        return []
    frame = image % frame_count
    color_index = torch.tensor(present)[image // frame_count]

    # Soft coverage over each component and a two-pixel rim (minus other objects), so
    # the anti-aliased or blurred edge counts towards area, centroid and shape.
    near = F.max_pool2d(components[:, None].float(), 5, stride=1, padding=2)[:, 0] > 0
    valid = ~mask[frame] | near
    coverage = alpha[frame, color_index] * (near & (~mask[frame] | components))
    area, cx, cy = _area_and_centroid(coverage)

    # Colour confidence: median of the component's more salient half.
    salience = torch.where(components, distance[frame], torch.nan).flatten(1)
    core = salience >= salience.nanmedian(dim=1, keepdim=True).values
    pixels = torch.where(core[:, None], frames[frame].flatten(2), torch.nan)  # [N, 3, H*W]
    color_distance = (pixels.nanmedian(dim=2).values - palette[color_index]).norm(dim=1)

    rows = zip(frame.tolist(), color_index.tolist(), color_distance.tolist(), area.tolist(), cx.tolist(), cy.tolist())
    return [
        _Blob(f, OBJECT_COLORS[k], d, a, (x, y), coverage[i], valid[i])
        for i, (f, k, d, a, x, y) in enumerate(rows)
    ]


# --------------------------------------------------------------------------- tracks


def _theil_sen_slope(t: torch.Tensor, values: torch.Tensor) -> float:
    """Median of pairwise slopes: one mis-segmented frame can't flip the motion."""
    i, j = torch.triu_indices(len(t), len(t), offset=1)
    dt = t[j] - t[i]
    return float(((values[j] - values[i]) / dt).median()) if len(dt) else 0.0


def _classify_motion(displacement: tuple[float, float], log_area_change: float) -> str | None:
    dx, dy = displacement
    translation = max(abs(dx), abs(dy)) / TYPICAL_TRAVEL
    scaling = abs(log_area_change) / TYPICAL_LOG_AREA_CHANGE
    if max(translation, scaling) < MIN_MOTION_STRENGTH:
        return None
    if scaling > translation:
        return "grow" if log_area_change > 0 else "shrink"
    direction = (math.copysign(1, dx), 0) if abs(dx) >= abs(dy) else (0, math.copysign(1, dy))
    return next(name for name, vector in TRANSLATIONS.items() if vector == direction)


def _shape_errors(views: list[_Blob]) -> dict[str, float]:
    """Mismatch between the object's coverage and each shape, rendered where it is.

    For each view the template is placed at the observed centroid with the width that
    gives the observed area, then the best of a few blurs and width factors is kept:
    a blurred diamond still fits a blurred diamond better than a circle.
    """
    observed = torch.stack([v.coverage for v in views])  # [V, H, W]
    valid = torch.stack([v.valid for v in views]).float()
    area = torch.tensor([v.area for v in views], dtype=torch.float64)
    cx = torch.tensor([v.center[0] for v in views], dtype=torch.float64)
    cy = torch.tensor([v.center[1] for v in views], dtype=torch.float64)
    errors = {}
    for shape, fill in SHAPE_FILL.items():
        best = torch.full((len(views),), float("inf"))
        for scale in TEMPLATE_SCALES:
            width = (area / fill).sqrt() * scale / WORK_SIZE
            # The centroid of an apex-up triangle lies a sixth of its width below its box centre.
            shift = width / 6 if shape == "triangle" else 0.0
            template = shape_coverage(shape, (cx + 0.5) / WORK_SIZE, (cy + 0.5) / WORK_SIZE - shift, width, WORK_SIZE)
            template = template.float()[:, None]
            for sigma in TEMPLATE_BLURS:
                blurred = template if sigma == 0 else F.conv2d(template, _blur_kernel(sigma), padding=3)
                error = ((blurred[:, 0] - observed) ** 2 * valid).sum((1, 2)) / area.float()
                best = torch.minimum(best, error)
        errors[shape] = float(best.mean())
    return errors


def _track(blobs: list[_Blob], frame_count: int) -> ObjectAnalysis:
    # Several blobs of one colour in a frame (a shape cut in two) count as one object.
    per_frame: dict[int, list[_Blob]] = {}
    for blob in blobs:
        per_frame.setdefault(blob.frame, []).append(blob)
    t, xs, ys, log_areas = [], [], [], []
    for frame, parts in sorted(per_frame.items()):
        area = sum(p.area for p in parts)
        t.append(frame)
        xs.append(sum(p.center[0] * p.area for p in parts) / area / WORK_SIZE)
        ys.append(sum(p.center[1] * p.area for p in parts) / area / WORK_SIZE)
        log_areas.append(math.log(max(area, 1e-3)))
    span = max(frame_count - 1, 1)
    t_ = torch.tensor(t, dtype=torch.float64)
    dx = _theil_sen_slope(t_, torch.tensor(xs, dtype=torch.float64)) * span
    dy = _theil_sen_slope(t_, torch.tensor(ys, dtype=torch.float64)) * span
    d_log_area = _theil_sen_slope(t_, torch.tensor(log_areas, dtype=torch.float64)) * span

    # Shape from the largest unsplit views of the object, where pixels resolve it best.
    whole = sorted((parts[0] for parts in per_frame.values() if len(parts) == 1), key=lambda b: -b.area)
    views = [b for b in whole if b.area >= 0.6 * whole[0].area][:SHAPE_VIEWS] if whole else []
    errors = _shape_errors(views) if views else {}
    shape = min(errors, key=errors.get) if errors else None

    return ObjectAnalysis(
        color=blobs[0].color,
        motion=_classify_motion((dx, dy), d_log_area),
        shape=shape,
        displacement=(dx, dy),
        log_area_change=d_log_area,
        mean_area=float(np.mean([math.exp(v) for v in log_areas])) / WORK_SIZE**2,
        frames_seen=len(per_frame) / frame_count,
        color_distance=float(np.median([b.color_distance for b in blobs])),
        shape_errors=errors,
    )


@contextmanager
def _single_threaded() -> Iterator[None]:
    # The tensors here are tiny: extra intra-op threads only add synchronisation, and on
    # a busy machine spinning OpenMP workers made analysis ~6x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def analyze(video: torch.Tensor | np.ndarray) -> VideoAnalysis:
    """Read background, objects, their colours, motions and shapes out of a video.

    Args:
        video: uint8 (or float in [0, 255]) RGB [frames, height, width, 3], any size.
    """
    with _single_threaded():
        return _analyze(video)


def _analyze(video: torch.Tensor | np.ndarray) -> VideoAnalysis:
    frames = _to_working_video(video)
    background, estimate, error, margin = _fit_background(frames)

    by_color: dict[str, list[_Blob]] = {}
    for blob in _blobs(frames, estimate):
        by_color.setdefault(blob.color, []).append(blob)
    frame_count = frames.shape[0]
    objects = []
    for blobs in by_color.values():
        frames_seen = len({b.frame for b in blobs})
        compact = len(blobs) <= MAX_PARTS_PER_FRAME * frames_seen
        if compact and frames_seen >= MIN_TRACK_FRACTION * frame_count:
            objects.append(_track(blobs, frame_count))
    objects.sort(key=lambda o: o.mean_area * o.frames_seen, reverse=True)
    return VideoAnalysis(background, error, margin, objects)


# --------------------------------------------------------------------------- scoring


def _match(prompt: PromptSpec, objects: list[ObjectAnalysis]) -> ObjectAnalysis | None:
    """The analysed object the prompt's object most likely refers to: same colour, else largest."""
    same_color = [o for o in objects if o.color == prompt.color]
    if same_color:
        return same_color[0]
    return objects[0] if objects else None


def _agrees(asked: str | None, seen: str | None) -> bool | None:
    return None if asked is None else asked == seen


def _object_agrees(asked: PromptSpec, seen: ObjectAnalysis | None) -> bool:
    """A further object is right if it is there with the colour and motion asked for."""
    if seen is None:
        return False
    return _agrees(asked.color, seen.color) is not False and _agrees(asked.motion, seen.motion) is not False


def score(
    video: torch.Tensor | np.ndarray | VideoAnalysis,
    prompt: str | PromptSpec,
    include_shape: bool = True,
) -> AdherenceScore:
    """How well a video follows its prompt.

    Args:
        video: a video for ``analyze`` or an existing analysis.
        prompt: prompt text (parsed with ``parse_prompt``) or a parsed ``PromptSpec``.
        include_shape: count shape in ``overall``. On by default: the classifier is
            ~99% right on world clips, but it is the least robust attribute on very
            blurry videos.
    """
    analysis = video if isinstance(video, VideoAnalysis) else analyze(video)
    asked = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    main = _match(asked, analysis.objects)

    color_ok = _agrees(asked.color, main.color if main else None)
    motion_ok = _agrees(asked.motion, main.motion if main else None)
    shape_ok = _agrees(asked.shape, main.shape if main else None)
    background_ok = None
    if asked.background is not None:
        seen = analysis.background
        background_ok = asked.background.kind == seen.kind and asked.background.color in (None, seen.color)

    others_ok = None
    if asked.others:
        rest = [o for o in analysis.objects if o is not main]
        others_ok = all(_object_agrees(other, _match(other, rest)) for other in asked.others)

    results = {"color": color_ok, "motion": motion_ok, "background": background_ok, "others": others_ok}
    if include_shape:
        results["shape"] = shape_ok
    counted = tuple(name for name, ok in results.items() if ok is not None)
    overall = sum(bool(results[name]) for name in counted) / len(counted) if counted else 0.0
    return AdherenceScore(color_ok, motion_ok, background_ok, shape_ok, others_ok, overall, counted, analysis)


__all__ = ["AdherenceScore", "ObjectAnalysis", "VideoAnalysis", "analyze", "score"]
