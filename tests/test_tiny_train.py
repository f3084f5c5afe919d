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
    tr.train(state, minutes=5, total_steps=30000, batch=1, lr=5e-4, clips=2, seed=0, device="cpu",
             init=WEIGHTS, max_steps=1)
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
