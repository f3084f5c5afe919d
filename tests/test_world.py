"""The procedural video world of dq-tiny: sampling, rendering, captions, parsing, held-out split."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from dq_cli.tiny import world as w


@pytest.fixture(scope="module")
def specs() -> list[w.ClipSpec]:
    rng = np.random.default_rng(1234)
    return [w.sample_spec(rng) for _ in range(600)]


# --------------------------------------------------------------------------- vocabulary


def test_vocabulary_sizes_and_colors_are_distinct():
    assert len(w.SHAPES) >= 4 and len(w.OBJECT_COLORS) >= 6
    assert {"left", "right", "up", "down", "grow", "shrink"} <= set(w.MOTIONS)
    assert set(w.BACKGROUND_KINDS) == {"plain", "gradient", "striped", "checkered"}
    rgb = np.array([w.COLOR_RGB[c] for c in w.COLOR_RGB], dtype=float)
    distances = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + np.eye(len(rgb)) * 1e9
    assert distances.min() >= 90, "named colours must stay apart after a model blurs them"


def test_vocabulary_covers_every_caption_word(specs):
    vocabulary = set(w.vocabulary())
    assert w.vocabulary() == sorted(vocabulary)
    emitted = {word for spec in specs for word in w.caption(spec).split()}
    # Every caption word is known, and every known word is used (nothing dead in the grammar).
    assert emitted == vocabulary


def test_caption_examples():
    spec = w.ClipSpec("square", "red", "left", w.Background("plain", "blue"), (0.7, 0.5), 0.27, 0.4)
    assert w.caption(spec) == "a red square moving left on a blue background"
    small = w.ClipSpec("circle", "orange", "up", w.Background("gradient", "gray"), (0.5, 0.7), 0.21, 0.4)
    assert w.caption(small) == "a small orange circle moving up on a gray gradient background"
    second = w.ObjectSpec("circle", "green", "up", (0.3, 0.7), 0.27, 0.4)
    grow = w.ClipSpec("diamond", "white", "grow", w.Background("striped", "purple"), (0.5, 0.5), 0.17, 0.2, second)
    assert w.caption(grow) == (
        "a white diamond growing and a green circle moving up on a purple striped background"
    )


# --------------------------------------------------------------------------- parsing


def test_parse_recovers_every_caption(specs):
    for spec in specs:
        parsed = w.parse_prompt(w.caption(spec))
        assert (parsed.color, parsed.shape, parsed.motion) == spec.triple, w.caption(spec)
        assert parsed.background == spec.background
        assert parsed.size == spec.primary.size_word
        expected_others = [spec.second.triple] if spec.second else []
        assert [(o.color, o.shape, o.motion) for o in parsed.others] == expected_others


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Moving left: a RED square, on a grey background!", ("red", "square", "left", ("plain", "gray"))),
        ("on a blue checkerboard backdrop a big yellow disc rises", ("yellow", "circle", "up", ("checkered", "blue"))),
        (
            "a green triangle that is shrinking, blue gradient background",
            ("green", "triangle", "shrink", ("gradient", "blue")),
        ),
        ("purple rhombus falling", ("purple", "diamond", "down", None)),
        ("a square", (None, "square", None, None)),
        ("something moving right on a striped background", (None, None, "right", ("striped", None))),
        ("", (None, None, None, None)),
    ],
)
def test_parse_is_tolerant(text, expected):
    parsed = w.parse_prompt(text)
    background = (parsed.background.kind, parsed.background.color) if parsed.background else None
    assert (parsed.color, parsed.shape, parsed.motion, background) == expected


def test_parse_keeps_object_and_background_colours_apart():
    parsed = w.parse_prompt("a blue circle moving right on a red background")
    assert parsed.color == "blue" and parsed.background == w.Background("plain", "red")
    parsed = w.parse_prompt("on a red background, a blue circle moving right")
    assert parsed.color == "blue" and parsed.background == w.Background("plain", "red")


# --------------------------------------------------------------------------- sampling and rendering


def test_sampling_is_deterministic_and_seeded_locally():
    torch.manual_seed(0)
    np.random.seed(0)
    first = [w.sample_spec(np.random.default_rng(7)) for _ in range(3)]
    torch.manual_seed(1)
    np.random.seed(1)
    assert first == [w.sample_spec(7) for _ in range(3)]
    assert w.sample_spec(7) != w.sample_spec(8)


def test_sampler_mix(specs):
    kinds = {spec.background.kind for spec in specs}
    assert kinds == set(w.BACKGROUND_KINDS)
    second_share = np.mean([spec.second is not None for spec in specs])
    assert 0.13 <= second_share <= 0.27
    assert {spec.motion for spec in specs} == set(w.MOTIONS)
    assert {spec.shape for spec in specs} == set(w.SHAPES)
    assert {spec.color for spec in specs} == set(w.OBJECT_COLORS)


def test_objects_contrast_with_their_background(specs):
    for spec in specs:
        for obj in spec.objects:
            assert obj.color != spec.background.color
            assert w.contrast(obj.color, spec.background) >= w.MIN_CONTRAST
        if spec.second is not None:
            assert spec.second.color != spec.color


def test_render_shape_dtype_and_determinism(specs):
    video = w.render(specs[0])
    assert video.dtype == torch.uint8 and video.shape == (16, 32, 32, 3)
    assert torch.equal(video, w.render(specs[0]))
    assert w.render(specs[0], frames=8, size=64).shape == (8, 64, 64, 3)


def test_render_draws_named_colours():
    spec = w.ClipSpec("square", "red", "right", w.Background("plain", "blue"), (0.3, 0.5), 0.3, 0.4)
    video = w.render(spec)
    assert tuple(video[0, 0, 0].tolist()) == w.COLOR_RGB["blue"]
    cx, cy = int(0.3 * 32), int(0.5 * 32)
    assert tuple(video[0, cy, cx].tolist()) == w.COLOR_RGB["red"]
    # Anti-aliased edges: some pixels are blends, not just the two colours.
    assert len({tuple(p) for p in video[0].reshape(-1, 3).tolist()}) > 2


def test_motion_is_large_and_objects_stay_inside(specs):
    for spec in specs[:200]:
        for obj in spec.objects:
            coverage = w.object_coverage(obj, 16, 64)  # [F, H, W]
            area = coverage.sum((1, 2))
            xs = (torch.arange(64, dtype=torch.float64) + 0.5) / 64
            cx = (coverage.sum(1) * xs).sum(1) / area
            cy = (coverage.sum(2) * xs).sum(1) / area
            travel = max(abs(cx[-1] - cx[0]), abs(cy[-1] - cy[0]))
            growth = float(area[-1] / area[0])
            if obj.motion in w.TRANSLATIONS:
                assert travel >= 0.3, (obj, travel)
                dx, dy = w.TRANSLATIONS[obj.motion]
                assert torch.sign(cx[-1] - cx[0]) == dx or dx == 0
                assert torch.sign(cy[-1] - cy[0]) == dy or dy == 0
                assert 0.9 < growth < 1.1
            elif obj.motion == "grow":
                assert growth > 3 and travel < 0.06
            else:
                assert growth < 1 / 3 and travel < 0.06
            # Legible sizes, and nothing of the object is cut off by the frame edge.
            x, y, width = obj.track(16)
            assert torch.all(width >= 0.14) and torch.all(width <= 0.43)
            assert torch.all(x - width / 2 >= -1e-6) and torch.all(x + width / 2 <= 1 + 1e-6)
            assert torch.all(y - width / 2 >= -1e-6) and torch.all(y + width / 2 <= 1 + 1e-6)


def test_backgrounds_render_their_kind():
    plain = w.render_background(w.Background("plain", "green"))
    assert torch.all(plain == torch.tensor(w.COLOR_RGB["green"], dtype=torch.float64))
    gradient = w.render_background(w.Background("gradient", "gray"))
    rows = gradient[:, 0, 0]
    assert torch.all(rows[1:] < rows[:-1]) and torch.allclose(gradient[:, 0], gradient[:, -1])
    striped = w.render_background(w.Background("striped", "blue"))
    assert torch.equal(striped[0], striped[-1]) and not torch.equal(striped[:, 0], striped[:, 4])
    checkered = w.render_background(w.Background("checkered", "blue"))
    assert not torch.equal(checkered[0], checkered[4]) and not torch.equal(checkered[:, 0], checkered[:, 4])


def test_make_batch_layout_range_and_determinism():
    videos, captions = w.make_batch(6, seed=3, frames=8, size=32)
    assert videos.shape == (6, 3, 8, 32, 32) and videos.dtype == torch.float32
    assert videos.min() >= -1 and videos.max() <= 1 and len(captions) == 6
    again, same_captions = w.make_batch(6, seed=3, frames=8, size=32)
    assert torch.equal(videos, again) and captions == same_captions
    other, _ = w.make_batch(6, seed=4, frames=8, size=32)
    assert not torch.equal(videos, other)
    # The model layout converts back to the rendered uint8 clip exactly.
    spec = w.sample_spec(np.random.default_rng(3))
    assert torch.equal(w.from_model_video(videos[0]), w.render(spec, frames=8))
    assert w.caption(spec) == captions[0]


def test_rendering_is_fast():
    specs = [w.sample_spec(i) for i in range(300)]
    start = time.perf_counter()
    for spec in specs:
        w.render(spec)
    # The brief: 1000 clips well under 10 s on 2 cores; 300 clips get 6 s of slack for busy CI.
    assert time.perf_counter() - start < 6.0


# --------------------------------------------------------------------------- held-out triples


def test_held_out_triples_are_pinned():
    # Changing this list silently would leak the evaluation set into training.
    assert w.HELD_OUT_TRIPLES == (
        ("blue", "diamond", "down"), ("cyan", "circle", "grow"), ("cyan", "diamond", "shrink"),
        ("cyan", "triangle", "up"), ("orange", "circle", "right"), ("orange", "diamond", "left"),
        ("purple", "circle", "up"), ("purple", "square", "right"), ("purple", "triangle", "shrink"),
        ("red", "circle", "left"), ("red", "diamond", "right"), ("red", "square", "up"),
        ("red", "triangle", "down"), ("white", "circle", "shrink"), ("white", "diamond", "up"),
        ("white", "triangle", "right"), ("yellow", "circle", "down"), ("yellow", "square", "grow"),
        ("yellow", "triangle", "left"),
    )  # fmt: skip


def test_held_out_split_shape():
    held_out = set(w.HELD_OUT_TRIPLES)
    assert len(held_out) == len(w.HELD_OUT_TRIPLES) == round(0.1 * len(w.ALL_TRIPLES))
    assert held_out.isdisjoint(w.TRAIN_TRIPLES) and len(held_out) + len(w.TRAIN_TRIPLES) == len(w.ALL_TRIPLES)
    # Every pair of attributes of a held-out triple is still seen in training.
    train = set(w.TRAIN_TRIPLES)
    for color, shape, motion in held_out:
        assert any(t[:2] == (color, shape) for t in train)
        assert any((t[0], t[2]) == (color, motion) for t in train)
        assert any(t[1:] == (shape, motion) for t in train)


def test_training_never_samples_held_out(specs):
    assert not any(w.is_held_out(spec) for spec in specs)
    _, captions = w.make_batch(200, seed=11, frames=2, size=16)
    held_out = set(w.HELD_OUT_TRIPLES)
    for text in captions:
        parsed = w.parse_prompt(text)
        for obj in [parsed, *parsed.others]:
            assert (obj.color, obj.shape, obj.motion) not in held_out


def test_is_held_out_sees_either_object():
    color, shape, motion = w.HELD_OUT_TRIPLES[0]
    spec = w.sample_spec(0, second_object_prob=0.0)
    assert not w.is_held_out(spec)
    assert w.is_held_out(replace(spec, color=color, shape=shape, motion=motion))
    assert w.is_held_out(replace(spec, second=w.ObjectSpec(shape, color, motion, (0.5, 0.5), 0.25, 0.4)))


def test_held_out_prompts():
    prompts = w.held_out_prompts(48, seed=0)
    assert len(prompts) == len(set(prompts)) == 48
    assert prompts == w.held_out_prompts(48, seed=0) and prompts != w.held_out_prompts(48, seed=1)
    held_out = set(w.HELD_OUT_TRIPLES)
    triples = set()
    for text in prompts:
        parsed = w.parse_prompt(text)
        assert (parsed.color, parsed.shape, parsed.motion) in held_out and not parsed.others
        assert set(text.split()) <= set(w.vocabulary())
        triples.add((parsed.color, parsed.shape, parsed.motion))
    assert len(triples) >= 10  # spread over the held-out set, not one triple in 48 backgrounds
