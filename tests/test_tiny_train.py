"""dq-tiny's training script: the LR schedule, and a new state folder started from the shipped
weights (what `make train` does when runs/ is absent) keeping their history."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dq_cli.tiny import train as tr

WEIGHTS = Path(tr.__file__).parent / "weights"


def test_lr_warms_up_again_from_where_a_fresh_optimizer_starts():
    assert tr.lr_at(0, 1000, 1.0) == pytest.approx(1 / 500)
    assert tr.lr_at(3435, 30000, 1.0, warmup_from=3435) == pytest.approx(1 / 500)
    assert tr.lr_at(3435 + 499, 30000, 1.0, warmup_from=3435) == pytest.approx(1.0)
    # after the warm-up: the cosine of the whole schedule, below the peak and falling
    later = [tr.lr_at(s, 30000, 1.0, warmup_from=3435) for s in (4000, 10000, 20000, 29999)]
    assert all(a > b for a, b in zip(later, later[1:])) and later[0] < 1.0


@pytest.mark.slow
def test_a_new_state_starts_from_the_shipped_weights_and_keeps_their_history(tmp_path):
    history = json.loads((WEIGHTS / "training.json").read_text())
    state = tmp_path / "state"
    tr.train(state, tr.TrainConfig(minutes=5, total_steps=30000, batch=1, clips=2, device="cpu", init=WEIGHTS,
                                   max_steps=1))
    meta = json.loads((state / "meta.json").read_text())
    assert meta["step"] == history["step"] + 1
    assert meta["sessions"][:-1] == history["sessions"] and meta["warmup_from"] == history["step"]
    shipped = tr.flat_state(tr.DqTinyPipeline.from_pretrained(WEIGHTS))
    ema, raw = tr.load_file(state / "ema.safetensors"), tr.load_file(state / "raw.safetensors")
    assert shipped.keys() == ema.keys() == raw.keys()
    # one optimizer step moved the raw weights; the EMA (decay 0.999) moved by 0.1% of that, plus
    # fp32 rounding (a few ulps of the tensor's largest weight): far less than the raw move
    moved = max((raw[k] - shipped[k]).abs().max().item() for k in shipped)
    assert moved > 0
    for k in shipped:
        bound = 1.01e-3 * moved + 4 * 2.0**-23 * shipped[k].abs().max().item()
        assert (ema[k] - shipped[k]).abs().max().item() <= bound, k
    total = lambda state: sum((state[k] - shipped[k]).abs().sum().item() for k in shipped)  # noqa: E731
    assert total(ema) < 0.05 * total(raw)
    export = tmp_path / "export"
    tr.export(state, export)
    assert json.loads((export / "training.json").read_text())["step"] == history["step"] + 1
    card = (export / "MODEL_CARD.md").read_text()
    assert f"{history['step'] + 1:,} steps" in card and "No loss logged yet" in card
    # a second session resumes the folder: raw weights and Adam moments from the first, not the export
    adam = tr.load_file(state / "adam.safetensors")
    tr.train(state, tr.TrainConfig(minutes=5, total_steps=30000, batch=1, clips=2, device="cpu", init=WEIGHTS,
                                   max_steps=1))
    meta = json.loads((state / "meta.json").read_text())
    assert meta["step"] == history["step"] + 2 and len(meta["sessions"]) == len(history["sessions"]) + 2
    again = tr.load_file(state / "adam.safetensors")
    # Adam's second moment decays by β₂ = 0.99 and adds the new squared gradient: never below 0.99×
    assert all((again[k] >= 0.99 * adam[k] * (1 - 1e-6)).all() for k in adam if k.endswith("exp_avg_sq"))
    assert any((again[k] - adam[k]).abs().max() > 0 for k in adam)


# ------------------------------------------------------------------ data-parallel training
def _batch(n: int = 4):
    """A fixed small batch (2 frames of 8×8: 32 tokens) with real captions, one dropped."""
    from dq_cli.tiny.world import make_batch

    videos, captions = make_batch(n, seed=3, frames=2, size=8)
    g = torch.Generator().manual_seed(1)
    pipe = tr.DqTinyPipeline.random(seed=0)
    ids, mask = pipe.tokenizer(captions)
    mask[1] = False
    return pipe, videos.float(), ids, mask, torch.randn(videos.shape, generator=g), torch.rand(n, generator=g)


def _gradients(model, *batch) -> list[torch.Tensor]:
    """Every parameter's gradient after one backward of `model(*batch)` (a Denoiser, or one under DDP)."""
    params = list(model.parameters())
    for p in params:
        p.grad = None
    model(*batch).backward()
    return [p.grad.clone() for p in params]


def _average_worker(rank: int, size: int, init_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        pipe, *batch = _batch()
        denoiser = tr.Denoiser(pipe)
        whole = _gradients(denoiser, *batch)
        share = len(batch[0]) // size
        half = [t[rank * share:(rank + 1) * share] for t in batch]
        scale = max(g.abs().max().item() for g in whole)
        close = lambda a, b: all(torch.allclose(x, y, rtol=1e-4, atol=1e-6 * scale) for x, y in zip(a, b))  # noqa: E731
        assert not close(_gradients(denoiser, *half), whole)  # a half batch alone is not the whole batch's gradient
        # under DDP the mean of the two half-batch means is the whole batch's mean: equal up to fp32 summation order
        assert close(_gradients(tr.data_parallel(pipe, "cpu"), *half), whole)
        tr._check_in_sync(list(denoiser.parameters()))
    finally:
        dist.destroy_process_group()


def test_two_processes_average_to_the_gradient_of_the_whole_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_average_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


@pytest.mark.slow
def test_torchrun_training_takes_a_step_and_writes_one_state(tmp_path):
    """`torchrun --nproc-per-node 2 -m dq_cli.tiny.train` from the shipped weights: one step of a
    global batch of 2 (one clip per process); process 0 writes the state, which records 2 processes,
    and the processes end with the same weights (the script checks, and would exit non-zero)."""
    import subprocess
    import sys

    from test_scale_out import _env

    state = tmp_path / "state"
    cmd = [sys.executable, "-P", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "dq_cli.tiny.train", "--state", str(state), "--steps", "1", "--batch", "2", "--clips", "2",
           "--init", str(WEIGHTS), "--device", "cpu"]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    history = json.loads((WEIGHTS / "training.json").read_text())
    meta = json.loads((state / "meta.json").read_text())
    assert meta["step"] == history["step"] + 1 and meta["sessions"][-1]["device"] == "2× cpu"
    assert sorted(p.name for p in state.iterdir()) == ["adam.safetensors", "ema.safetensors", "loss.tsv",
                                                        "meta.json", "raw.safetensors"]
    shipped = tr.flat_state(tr.DqTinyPipeline.from_pretrained(WEIGHTS))
    raw = tr.load_file(state / "raw.safetensors")
    assert any(not torch.equal(raw[k], shipped[k]) for k in shipped)


def test_training_noise_levels_are_shifted_as_the_sampler_shifts_its_steps():
    """The logit-normal's median σ 0.5 maps to shift·0.5 / (1 + (shift − 1)·0.5) = 2/3 at shift 2;
    the share above 0.8 is P(z > logit(0.8 / (2 − 0.8))) = P(z > ln 2) = 0.244. 200,000 draws: the
    standard errors are ~0.001, the tolerances 5 of them."""
    sigma = tr.sample_sigmas(200_000, torch.Generator().manual_seed(0), "cpu", shift=2.0)
    assert 0 < sigma.min() and sigma.max() < 1
    assert sigma.median().item() == pytest.approx(2 / 3, abs=5e-3)
    assert (sigma > 0.8).float().mean().item() == pytest.approx(0.2441, abs=5e-3)
    plain = tr.sample_sigmas(200_000, torch.Generator().manual_seed(0), "cpu", shift=1.0)
    assert (plain > 0.8).float().mean().item() == pytest.approx(0.0828, abs=5e-3)  # P(z > ln 4)
