"""Prompt adherence: the analyzer must read the world's ground truth back out of its videos."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dq_cli.quality import adherence
from dq_cli.tiny import world as w

CLIPS = 200
ATTRIBUTES = ("color", "motion", "background", "shape")


def _degrade(video: torch.Tensor, generator: torch.Generator, noise: float = 8.0) -> torch.Tensor:
    """What a diffusion model's output looks like: softer (3x3 binomial blur) and noisy."""
    x = video.permute(0, 3, 1, 2).float()
    taps = torch.tensor([0.25, 0.5, 0.25])
    kernel = (taps[:, None] * taps[None, :]).expand(3, 1, 3, 3)
    x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    x = x + noise * torch.randn(x.shape, generator=generator)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _upscale(video: torch.Tensor, size: int = 128) -> torch.Tensor:
    x = F.interpolate(video.permute(0, 3, 1, 2).float(), size=(size, size), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _accuracy(scores: list[adherence.AdherenceScore]) -> dict[str, float]:
    result = {}
    for name in ATTRIBUTES + ("others",):
        values = [getattr(s, f"{name}_ok") for s in scores if getattr(s, f"{name}_ok") is not None]
        result[name] = float(np.mean(values)) if values else float("nan")
    return result


@pytest.fixture(scope="module")
def clips() -> list[tuple[w.ClipSpec, torch.Tensor]]:
    # A seed no other test uses: these clips are "fresh" for the analyzer.
    rng = np.random.default_rng(2024_11_22)
    specs = [w.sample_spec(rng) for _ in range(CLIPS)]
    return [(spec, w.render(spec)) for spec in specs]


def test_clips_cover_the_hard_cases(clips):
    kinds = [spec.background.kind for spec, _ in clips]
    assert sum(k in ("striped", "checkered") for k in kinds) >= 20 and kinds.count("gradient") >= 20
    assert sum(spec.second is not None for spec, _ in clips) >= 20
    assert {spec.motion for spec, _ in clips} == set(w.MOTIONS)


def test_clean_32px_accuracy(clips):
    scores = [adherence.score(video, w.caption(spec)) for spec, video in clips]
    accuracy = _accuracy(scores)
    for name in ATTRIBUTES:
        assert accuracy[name] >= 0.95, accuracy
    assert accuracy["others"] >= 0.9, accuracy
    assert np.mean([s.overall for s in scores]) >= 0.95


def test_noisy_blurred_accuracy(clips):
    generator = torch.Generator().manual_seed(0)
    scores = [adherence.score(_degrade(video, generator), w.caption(spec)) for spec, video in clips]
    accuracy = _accuracy(scores)
    for name in ATTRIBUTES:
        assert accuracy[name] >= 0.90, accuracy


def test_128px_accuracy(clips):
    # Upscaled 32x32 clips and clips rendered natively at 128x128.
    scores = []
    for spec, video in clips[:12]:
        scores.append(adherence.score(_upscale(video), w.caption(spec)))
        scores.append(adherence.score(w.render(spec, size=128), w.caption(spec)))
    accuracy = _accuracy(scores)
    for name in ATTRIBUTES:
        assert accuracy[name] >= 0.95, accuracy


def test_held_out_prompts_are_analyzable():
    rng = np.random.default_rng(5)
    for _ in range(12):
        spec = w.sample_spec(rng, exclude=(), triples=w.HELD_OUT_TRIPLES, second_object_prob=0.0)
        result = adherence.score(w.render(spec), w.caption(spec))
        assert result.overall == 1.0, (w.caption(spec), result)


# --------------------------------------------------------------------------- negatives


@pytest.fixture(scope="module")
def red_square_left() -> torch.Tensor:
    spec = w.ClipSpec("square", "red", "left", w.Background("plain", "gray"), (0.75, 0.5), 0.3, 0.5)
    return w.render(spec)


def test_matching_prompt_scores_full(red_square_left):
    result = adherence.score(red_square_left, "a red square moving left on a gray background")
    assert (result.color_ok, result.motion_ok, result.shape_ok, result.background_ok) == (True, True, True, True)
    assert result.overall == 1.0 and set(result.counted) == {"color", "motion", "shape", "background"}


def test_wrong_prompt_fails_those_attributes(red_square_left):
    result = adherence.score(red_square_left, "a blue square moving right on a gray background")
    assert result.color_ok is False and result.motion_ok is False
    assert result.shape_ok is True and result.background_ok is True
    assert result.overall == 0.5

    result = adherence.score(red_square_left, "a red circle moving left on a white striped background")
    assert (result.color_ok, result.motion_ok, result.shape_ok, result.background_ok) == (True, True, False, False)

    for motion in ("up", "down", "growing", "shrinking"):
        assert adherence.score(red_square_left, f"a red square {motion}").motion_ok is False


def test_only_named_attributes_count(red_square_left):
    result = adherence.score(red_square_left, "something moving left")
    assert result.counted == ("motion",) and result.overall == 1.0
    assert result.color_ok is None and result.shape_ok is None and result.background_ok is None
    no_shape = adherence.score(red_square_left, "a red circle moving left", include_shape=False)
    assert no_shape.shape_ok is False and "shape" not in no_shape.counted and no_shape.overall == 1.0


def test_empty_video_has_no_object():
    gray = torch.full((16, 32, 32, 3), 128, dtype=torch.uint8)
    analysis = adherence.analyze(gray)
    assert analysis.objects == [] and analysis.background == w.Background("plain", "gray")
    result = adherence.score(gray, "a red square moving left on a gray background")
    assert result.color_ok is False and result.motion_ok is False and result.background_ok is True


def test_static_object_has_no_motion():
    spec = w.ClipSpec("circle", "yellow", "left", w.Background("plain", "blue"), (0.5, 0.5), 0.3, 0.0)
    analysis = adherence.analyze(w.render(spec))
    assert analysis.object_color == "yellow" and analysis.shape == "circle" and analysis.motion is None


def test_second_object_is_checked():
    second = w.ObjectSpec("circle", "cyan", "down", (0.3, 0.25), 0.25, 0.5)
    two = w.ClipSpec("square", "red", "left", w.Background("plain", "black"), (0.75, 0.25), 0.25, 0.5, second)
    prompt = "a red square moving left and a cyan circle moving down on a black background"
    assert adherence.score(w.render(two), prompt).others_ok is True
    wrong = adherence.score(w.render(two), prompt.replace("moving down", "moving up"))
    assert wrong.others_ok is False and wrong.color_ok is True
    missing = adherence.score(w.render(replace(two, second=None)), prompt)
    assert missing.others_ok is False and missing.overall < 1.0
    # The main object is found by colour, whichever is larger.
    assert adherence.score(w.render(two), "a cyan circle moving down").overall == 1.0


def test_analysis_is_deterministic_and_keeps_torch_threads(clips):
    threads = torch.get_num_threads()
    spec, video = clips[0]
    assert adherence.analyze(video) == adherence.analyze(video.numpy())
    assert torch.get_num_threads() == threads


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        adherence.analyze(torch.zeros(16, 32, 32))
