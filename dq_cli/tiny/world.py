"""A procedural video world for the built-in ``dq-tiny`` video diffusion model.

Every clip shows one (sometimes two) flat-coloured shapes moving on a
background, and is described by a caption from a small fixed grammar::

    a red square moving left on a blue background
    a small yellow circle moving up on a gray gradient background
    an orange diamond growing and a cyan circle moving down on a black background

The world is built so that a prompt-adherence analyzer can read every caption
attribute back out of a (blurry, noisy) generated video:

* colours are far apart in RGB and in hue, and an object is never drawn on a
  background it would be hard to tell apart from (``MIN_CONTRAST``);
* a moving object travels 35-55% of the frame over the clip and never leaves it;
  growing/shrinking objects change their width about 2x;
* shapes are 15-42% of the frame wide (20-35% unless growing or shrinking),
  legible at 32x32.

A fixed ~10% of the (color, shape, motion) triples is held out of training
(``HELD_OUT_TRIPLES``) to test compositional generalization.

Geometry is resolution-independent (coordinates are fractions of the frame), so
the same spec renders at any ``size`` and ``frames``. Rendering is deterministic;
all randomness lives in ``sample_spec`` and comes from a local generator.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

# --------------------------------------------------------------------------- vocabulary

# Fixed RGB per colour name. Chosen ~30+ degrees apart in hue and >= 95 apart in RGB,
# so a diffusion model's blur and colour drift still leave the nearest colour right.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 0),
    "yellow": (240, 230, 40),
    "green": (40, 190, 50),
    "cyan": (0, 200, 220),
    "blue": (40, 70, 230),
    "purple": (150, 50, 200),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (15, 15, 15),
}

OBJECT_COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
COLORS = OBJECT_COLORS  # the colours an object can have; backgrounds add gray and black
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "grow", "shrink")
TRANSLATIONS: dict[str, tuple[float, float]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SIZE_WORDS: tuple[str, ...] = ("small", "large")

BACKGROUND_KINDS: tuple[str, ...] = ("plain", "gradient", "striped", "checkered")
# Which colours each background kind is drawn in (the world's sampler uses only these).
BACKGROUND_COLORS: dict[str, tuple[str, ...]] = {
    "plain": ("black", "gray", "white", "red", "green", "blue", "purple", "yellow"),
    "gradient": ("gray", "blue", "green", "red", "purple"),
    "striped": ("gray", "blue", "green", "purple"),
    "checkered": ("gray", "blue", "green", "purple"),
}
BACKGROUND_KIND_WEIGHTS: dict[str, float] = {"plain": 0.55, "gradient": 0.2, "striped": 0.125, "checkered": 0.125}

# Gradients fade from the colour (top) to this fraction of it (bottom); textures
# alternate the colour with this fraction of it.
GRADIENT_DARK = 0.3
TEXTURE_DARK = 0.5
TEXTURE_CELLS = 8  # stripes / checks per frame side: 4 px wide at 32x32

# Smallest RGB distance between an object colour and any pixel of its background.
MIN_CONTRAST = 100.0
SECOND_OBJECT_PROB = 0.2

MOTION_PHRASES: dict[str, str] = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "grow": "growing",
    "shrink": "shrinking",
}

# Sizes are the object's width as a fraction of the frame width.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.20, 0.24), "medium": (0.25, 0.29), "large": (0.30, 0.35)}
TRAVEL_RANGE = (0.35, 0.55)  # fraction of the frame a translating object crosses per clip
SMALLEST_RANGE = (0.15, 0.20)  # width of a growing object at the start, a shrinking one at the end
SCALE_CHANGE_RANGE = (0.17, 0.22)  # width change per clip for grow / shrink

Triple = tuple[str, str, str]  # (color, shape, motion)


@dataclass(frozen=True)
class Background:
    """A background: its kind ("plain", "gradient", "striped", "checkered") and colour."""

    kind: str
    color: str | None

    @property
    def phrase(self) -> str:
        words = [self.color] if self.color else []
        if self.kind != "plain":
            words.append(self.kind)
        return " ".join(words)


@dataclass(frozen=True)
class ObjectSpec:
    """One moving shape. ``start`` is its centre at frame 0 and ``size`` its width at
    frame 0, both as fractions of the frame. ``speed`` is the distance travelled over
    the whole clip for left/right/up/down, and the width change for grow/shrink."""

    shape: str
    color: str
    motion: str
    start: tuple[float, float]
    size: float
    speed: float

    @property
    def triple(self) -> Triple:
        return (self.color, self.shape, self.motion)

    @property
    def size_word(self) -> str | None:
        # Only translating objects get an adjective: a growing object has no single size.
        if self.motion not in TRANSLATIONS:
            return None
        for word in SIZE_WORDS:
            low, high = SIZE_RANGES[word]
            if low - 1e-6 <= self.size <= high + 1e-6:
                return word
        return None

    def track(self, frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-frame centre x, centre y and width, each float64 [frames]."""
        t = torch.linspace(0.0, 1.0, frames, dtype=torch.float64) if frames > 1 else torch.zeros(1, dtype=torch.float64)
        x = torch.full_like(t, self.start[0])
        y = torch.full_like(t, self.start[1])
        width = torch.full_like(t, self.size)
        if self.motion in TRANSLATIONS:
            dx, dy = TRANSLATIONS[self.motion]
            x = x + dx * self.speed * t
            y = y + dy * self.speed * t
        elif self.motion == "grow":
            width = width + self.speed * t
        elif self.motion == "shrink":
            width = width - self.speed * t
        return x, y, width


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip and write its caption."""

    shape: str
    color: str
    motion: str
    background: Background
    start: tuple[float, float]
    size: float
    speed: float
    second: ObjectSpec | None = None

    @property
    def primary(self) -> ObjectSpec:
        return ObjectSpec(self.shape, self.color, self.motion, self.start, self.size, self.speed)

    @property
    def objects(self) -> list[ObjectSpec]:
        return [self.primary] + ([self.second] if self.second is not None else [])

    @property
    def triple(self) -> Triple:
        return (self.color, self.shape, self.motion)


@dataclass
class PromptSpec:
    """What a prompt asks for; ``None`` where the prompt does not say.

    ``color``/``shape``/``motion``/``size`` describe the first object named; further
    objects ("... and a green circle moving up") are in ``others``.
    """

    color: str | None = None
    shape: str | None = None
    motion: str | None = None
    background: Background | None = None
    size: str | None = None
    others: list["PromptSpec"] = field(default_factory=list)


ALL_TRIPLES: tuple[Triple, ...] = tuple(itertools.product(OBJECT_COLORS, SHAPES, MOTIONS))

# --------------------------------------------------------------------------- held-out triples

HELD_OUT_SEED = 20240611
HELD_OUT_FRACTION = 0.1


def _choose_held_out(seed: int, fraction: float) -> tuple[Triple, ...]:
    # Rank triples by a hash instead of a numpy permutation: the list must never
    # change with library versions, or old checkpoints would have "seen" the test set.
    def rank(triple: Triple) -> str:
        return hashlib.sha256(f"{seed}:{':'.join(triple)}".encode()).hexdigest()

    target = round(fraction * len(ALL_TRIPLES))
    chosen: list[Triple] = []
    used_pairs: set[tuple[str, str, str]] = set()
    for triple in sorted(ALL_TRIPLES, key=rank):
        color, shape, motion = triple
        pairs = {("cs", color, shape), ("cm", color, motion), ("sm", shape, motion)}
        # Every pair of attributes of a held-out triple stays in training through the
        # other triples; capping each pair at one held-out triple keeps that true.
        if pairs & used_pairs:
            continue
        chosen.append(triple)
        used_pairs |= pairs
        if len(chosen) == target:
            break
    return tuple(sorted(chosen))


HELD_OUT_TRIPLES: tuple[Triple, ...] = _choose_held_out(HELD_OUT_SEED, HELD_OUT_FRACTION)
TRAIN_TRIPLES: tuple[Triple, ...] = tuple(t for t in ALL_TRIPLES if t not in set(HELD_OUT_TRIPLES))


def is_held_out(spec: ClipSpec | ObjectSpec) -> bool:
    """True if any object of the clip is a held-out (color, shape, motion) triple."""
    objects = spec.objects if isinstance(spec, ClipSpec) else [spec]
    held_out = set(HELD_OUT_TRIPLES)
    return any(obj.triple in held_out for obj in objects)


# --------------------------------------------------------------------------- sampling


def _rgb(name: str) -> np.ndarray:
    return np.asarray(COLOR_RGB[name], dtype=np.float64)


def background_palette(background: Background) -> np.ndarray:
    """RGB colours the background's pixels span, [n, 3] (a gradient is sampled densely)."""
    base = _rgb(background.color or "gray")
    if background.kind == "plain":
        return base[None]
    if background.kind == "gradient":
        return np.stack([base * (1 - (1 - GRADIENT_DARK) * f) for f in np.linspace(0, 1, 9)])
    return np.stack([base, base * TEXTURE_DARK])


def contrast(color: str, background: Background) -> float:
    """Smallest RGB distance between ``color`` and any pixel of ``background``."""
    return float(np.linalg.norm(background_palette(background) - _rgb(color), axis=1).min())


ALL_BACKGROUNDS: tuple[Background, ...] = tuple(
    Background(kind, color) for kind in BACKGROUND_KINDS for color in BACKGROUND_COLORS[kind]
)


def _as_rng(rng_or_seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(int(rng_or_seed))


def _sample_object(rng: np.random.Generator, triple: Triple) -> ObjectSpec:
    color, shape, motion = triple
    if motion in TRANSLATIONS:
        size_class = ("small", "medium", "large")[rng.integers(3)]
        size = rng.uniform(*SIZE_RANGES[size_class])
        speed = rng.uniform(*TRAVEL_RANGE)
        dx, dy = TRANSLATIONS[motion]
        half = size / 2
        # Along the motion axis, start far enough back that the end stays inside.
        along_low, along_high = half + speed, 1 - half
        across = rng.uniform(half, 1 - half)
        along = rng.uniform(along_low, along_high)
        if dx > 0 or dy > 0:
            along = 1 - along
        start = (along, across) if dx else (across, along)
    else:
        # Shrinking mirrors growing: it ends where a growing object starts.
        smallest = rng.uniform(*SMALLEST_RANGE)
        speed = rng.uniform(*SCALE_CHANGE_RANGE)
        largest = smallest + speed
        size = smallest if motion == "grow" else largest
        start = (rng.uniform(largest / 2, 1 - largest / 2), rng.uniform(largest / 2, 1 - largest / 2))
    return ObjectSpec(shape, color, motion, (float(start[0]), float(start[1])), float(size), float(speed))


def _sample_background(rng: np.random.Generator, colors: Sequence[str]) -> Background:
    kinds = list(BACKGROUND_KIND_WEIGHTS)
    weights = np.asarray([BACKGROUND_KIND_WEIGHTS[k] for k in kinds])
    while True:
        kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
        choices = BACKGROUND_COLORS[kind]
        background = Background(kind, choices[rng.integers(len(choices))])
        if all(contrast(c, background) >= MIN_CONTRAST for c in colors):
            return background


def sample_spec(
    rng_or_seed: int | np.random.Generator,
    exclude: Iterable[Triple] = HELD_OUT_TRIPLES,
    triples: Sequence[Triple] | None = None,
    second_object_prob: float = SECOND_OBJECT_PROB,
) -> ClipSpec:
    """Sample a random clip.

    Args:
        rng_or_seed: a numpy Generator (advanced in place) or an int seed.
        exclude: (color, shape, motion) triples no object may have; by default the
            held-out triples, so training never sees them.
        triples: if given, the primary object's triple is drawn from these instead
            (used to make held-out evaluation prompts).
        second_object_prob: chance of a second object.
    """
    rng = _as_rng(rng_or_seed)
    excluded = set(exclude)
    pool = [t for t in (triples if triples is not None else ALL_TRIPLES) if t not in excluded]
    if not pool:
        raise ValueError("no (color, shape, motion) triple left to sample from")
    primary = _sample_object(rng, pool[rng.integers(len(pool))])

    second = None
    if rng.random() < second_object_prob:
        # A different colour keeps the two objects (and their caption words) apart.
        others = [t for t in ALL_TRIPLES if t not in excluded and t[0] != primary.color]
        second = _sample_object(rng, others[rng.integers(len(others))])

    colors = [primary.color] + ([second.color] if second else [])
    background = _sample_background(rng, colors)
    return ClipSpec(
        primary.shape, primary.color, primary.motion, background, primary.start, primary.size, primary.speed, second
    )


# --------------------------------------------------------------------------- rendering


def _pixel_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    centers = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    return centers.view(1, 1, size), centers.view(1, size, 1)  # x [1,1,W], y [1,H,1]


def render_background(background: Background, size: int = 32) -> torch.Tensor:
    """The background alone as float64 RGB in [0, 255], [size, size, 3]."""
    base = torch.tensor(COLOR_RGB[background.color or "gray"], dtype=torch.float64)
    x, y = _pixel_grid(size)
    x, y = x[0], y[0]  # [1,W], [H,1]
    if background.kind == "plain":
        shade = torch.ones(size, size, dtype=torch.float64)
    elif background.kind == "gradient":
        shade = (1 - (1 - GRADIENT_DARK) * y).expand(size, size)
    elif background.kind == "striped":
        dark = (torch.floor(x * TEXTURE_CELLS) % 2).expand(size, size)
        shade = 1 - (1 - TEXTURE_DARK) * dark
    elif background.kind == "checkered":
        dark = (torch.floor(x * TEXTURE_CELLS) + torch.floor(y * TEXTURE_CELLS)) % 2
        shade = 1 - (1 - TEXTURE_DARK) * dark
    else:
        raise ValueError(f"unknown background kind {background.kind!r}")
    return shade[..., None] * base


def _signed_distance(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance (in half-widths, <0 inside) to a shape of half-width 1 at the origin.

    Polygons use the max over their edges' distances: exact inside and close enough
    outside for one pixel of anti-aliasing.
    """
    if shape == "circle":
        return torch.sqrt(u * u + v * v) - 1
    if shape == "square":
        return torch.maximum(u.abs(), v.abs()) - 1
    if shape == "diamond":
        return (u.abs() + v.abs() - 1) / math.sqrt(2)
    if shape == "triangle":
        # Isosceles, apex up (image y grows downwards), base as wide as it is tall.
        side = (u.abs() - (v + 1) / 2) / math.sqrt(1.25)
        return torch.maximum(side, v - 1)
    raise ValueError(f"unknown shape {shape!r}")


def shape_coverage(shape: str, cx: torch.Tensor, cy: torch.Tensor, width: torch.Tensor, size: int) -> torch.Tensor:
    """Anti-aliased coverage [N, size, size] of ``shape`` centred at (cx, cy) with the given
    widths; all three are [N] tensors in fractions of the frame (the centre is the
    centre of the shape's bounding box)."""
    cx, cy, width = (torch.as_tensor(a, dtype=torch.float64).view(-1, 1, 1) for a in (cx, cy, width))
    x, y = _pixel_grid(size)
    half = width / 2
    distance = _signed_distance(shape, (x - cx) / half, (y - cy) / half) * half * size  # in pixels
    return (0.5 - distance).clamp(0.0, 1.0)


def object_coverage(obj: ObjectSpec, frames: int, size: int) -> torch.Tensor:
    """Anti-aliased fraction of each pixel the object covers, float64 [frames, size, size]."""
    return shape_coverage(obj.shape, *obj.track(frames), size)


def render(spec: ClipSpec, frames: int = 16, size: int = 32) -> torch.Tensor:
    """Render a clip as uint8 RGB [frames, size, size, 3]."""
    video = render_background(spec.background, size).expand(frames, size, size, 3)
    for obj in spec.objects:  # the second object is drawn in front
        alpha = object_coverage(obj, frames, size)[..., None]
        color = torch.tensor(COLOR_RGB[obj.color], dtype=torch.float64)
        video = video * (1 - alpha) + color * alpha
    return video.round().clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(obj: ObjectSpec) -> str:
    words = [w for w in (obj.size_word, obj.color, obj.shape) if w]
    return f"{_article(words[0])} {' '.join(words)} {MOTION_PHRASES[obj.motion]}"


def caption(spec: ClipSpec) -> str:
    """The clip's caption, e.g. "a red square moving left on a blue gradient background"."""
    objects = " and ".join(_object_phrase(obj) for obj in spec.objects)
    phrase = spec.background.phrase
    return f"{objects} on {_article(phrase)} {phrase} background"


def vocabulary() -> list[str]:
    """Every word ``caption`` can emit, sorted (the tiny text tokenizer is built from it)."""
    words = {"a", "an", "and", "on", "background", "moving"}
    words |= set(SIZE_WORDS) | set(SHAPES) | set(OBJECT_COLORS)
    words |= {c for colors in BACKGROUND_COLORS.values() for c in colors}
    words |= {k for k in BACKGROUND_KINDS if k != "plain"}
    words |= {w for phrase in MOTION_PHRASES.values() for w in phrase.split()}
    return sorted(words)


# --------------------------------------------------------------------------- prompt parsing

_COLOR_WORDS = {c: c for c in COLOR_RGB} | {"grey": "gray", "violet": "purple", "magenta": "purple", "teal": "cyan"}
_SHAPE_WORDS = {s: s for s in SHAPES} | {
    "circles": "circle", "disc": "circle", "disk": "circle", "ball": "circle", "dot": "circle",
    "squares": "square", "box": "square", "triangles": "triangle", "diamonds": "diamond", "rhombus": "diamond",
}  # fmt: skip
_MOTION_WORDS = {
    "left": "left", "leftward": "left", "leftwards": "left",
    "right": "right", "rightward": "right", "rightwards": "right",
    "up": "up", "upward": "up", "upwards": "up", "rising": "up", "rises": "up", "ascending": "up",
    "down": "down", "downward": "down", "downwards": "down", "falling": "down", "falls": "down",
    "sinking": "down", "descending": "down",
    "grow": "grow", "grows": "grow", "growing": "grow", "expanding": "grow", "expands": "grow",
    "enlarging": "grow", "bigger": "grow",
    "shrink": "shrink", "shrinks": "shrink", "shrinking": "shrink", "contracting": "shrink",
    "smaller": "shrink",
}  # fmt: skip
_KIND_WORDS = {
    "plain": "plain", "solid": "plain", "gradient": "gradient", "striped": "striped", "stripes": "striped",
    "stripy": "striped", "checkered": "checkered", "checkerboard": "checkered", "checked": "checkered",
    "chequered": "checkered",
}  # fmt: skip
_SIZE_WORDS = {"small": "small", "tiny": "small", "little": "small", "large": "large", "big": "large"}
_BACKGROUND_WORDS = {"background", "backdrop", "backround"}
_PREPOSITIONS = {"on", "over", "against", "with", "in", "atop", "above"}


def _background_span(tokens: list[str]) -> tuple[Background | None, set[int]]:
    """Find the background phrase; return it and the token positions it used."""
    anchors = [i for i, t in enumerate(tokens) if t in _BACKGROUND_WORDS or t in _KIND_WORDS]
    if not anchors:
        return None, set()
    # The phrase ends at the last anchor of the first run of anchors ("gray striped background").
    end = anchors[0]
    while end + 1 < len(tokens) and (tokens[end + 1] in _BACKGROUND_WORDS or tokens[end + 1] in _KIND_WORDS):
        end += 1
    start = anchors[0]
    # Walk left over colour words (and articles) until an object or preposition word.
    while start > 0 and (tokens[start - 1] in _COLOR_WORDS or tokens[start - 1] in {"a", "an", "the"}):
        start -= 1
    span = set(range(start, end + 1))
    words = [tokens[i] for i in sorted(span)]
    color = next((_COLOR_WORDS[w] for w in words if w in _COLOR_WORDS), None)
    if color is None and end + 2 < len(tokens) and tokens[end + 1] in {"of", "is", "in"}:
        # "a background of blue", "background is blue"
        if tokens[end + 2] in _COLOR_WORDS:
            color = _COLOR_WORDS[tokens[end + 2]]
            span.add(end + 2)
    kind = next((_KIND_WORDS[w] for w in words if w in _KIND_WORDS), "plain")
    return Background(kind, color), span


def parse_prompt(text: str) -> PromptSpec:
    """Read colour, shape, motion, size and background out of a prompt.

    Tolerant of word order, synonyms and extra words; anything it can't find is
    ``None``. The first object named is the main one, later ones go to ``others``.
    """
    tokens = re.findall(r"[a-z]+", text.lower())
    background, used = _background_span(tokens)

    objects: list[PromptSpec] = []
    current = PromptSpec()

    def flush() -> None:
        nonlocal current
        if current.shape or current.color or current.motion:
            objects.append(current)
        current = PromptSpec()

    for i, token in enumerate(tokens):
        if i in used:
            continue
        if token == "and" and current.shape is not None:
            flush()
        elif token in _SHAPE_WORDS:
            if current.shape is not None:
                flush()
            current.shape = _SHAPE_WORDS[token]
        elif token in _COLOR_WORDS:
            if current.color is not None and current.shape is not None:
                flush()
            if current.color is None:
                current.color = _COLOR_WORDS[token]
        elif token in _SIZE_WORDS and current.size is None:
            if current.shape is not None and current.motion is not None:
                flush()
            current.size = _SIZE_WORDS[token]
        elif token in _MOTION_WORDS and current.motion is None:
            current.motion = _MOTION_WORDS[token]
    flush()

    main = objects[0] if objects else PromptSpec()
    return PromptSpec(main.color, main.shape, main.motion, background, main.size, objects[1:])


# --------------------------------------------------------------------------- batches


def held_out_prompts(n: int = 32, seed: int = 0) -> list[str]:
    """``n`` distinct single-object captions whose object is a held-out triple."""
    rng = np.random.default_rng(seed)
    prompts: dict[str, None] = {}  # ordered set
    for _ in range(200 * n):
        spec = sample_spec(rng, exclude=(), triples=HELD_OUT_TRIPLES, second_object_prob=0.0)
        prompts.setdefault(caption(spec))
        if len(prompts) == n:
            return list(prompts)
    raise ValueError(f"could only make {len(prompts)} distinct held-out prompts, asked for {n}")


def to_model_video(video: torch.Tensor) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float32 [3, F, H, W] in [-1, 1]."""
    return video.permute(3, 0, 1, 2).float() / 127.5 - 1.0


def from_model_video(video: torch.Tensor) -> torch.Tensor:
    """float [3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3]."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0)


def make_batch(n: int, seed: int, frames: int = 16, size: int = 32) -> tuple[torch.Tensor, list[str]]:
    """``n`` training clips (never a held-out triple) and their captions.

    Returns videos as float32 [n, 3, frames, size, size] in [-1, 1].
    """
    rng = np.random.default_rng(seed)
    specs = [sample_spec(rng) for _ in range(n)]
    videos = torch.stack([to_model_video(render(spec, frames, size)) for spec in specs])
    return videos, [caption(spec) for spec in specs]


__all__ = [
    "ALL_BACKGROUNDS", "ALL_TRIPLES", "BACKGROUND_COLORS", "BACKGROUND_KINDS", "COLORS", "COLOR_RGB",
    "HELD_OUT_TRIPLES", "MOTIONS", "OBJECT_COLORS", "SHAPES", "TRAIN_TRIPLES", "Background", "ClipSpec",
    "ObjectSpec", "PromptSpec", "caption", "contrast", "from_model_video", "held_out_prompts", "is_held_out",
    "make_batch", "object_coverage", "parse_prompt", "render", "render_background", "sample_spec", "shape_coverage",
    "to_model_video", "vocabulary",
]  # fmt: skip
