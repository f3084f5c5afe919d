"""Calibration: prompt sources, the token reservoir (uniform, bounded, deterministic), absmax by
step range against the true maximum, and the (step, branch, t, h, w) of every sampled token."""

from __future__ import annotations

import json
import math
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from conftest import recipe_data, run_dq, tm, write_recipe
from dq_calib.artifact import load_calibration
from dq_calib.prompts import PromptSourceError, load_prompts
from dq_calib.stats import ChannelAbsMax, TokenReservoir
from dq_cli.calibrate import BRANCH_CODES, calibrate, save_artifact, token_meta
from dq_cli.models.base import ForwardState

PROMPTS = ["a cat dancing in the rain", "a red car on a road", "a bird over the sea, at night"]


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path_factory, monkeypatch):
    """`datasets` caches what it parses; keep that out of the user's home. Set without importing it:
    only the prompt-source tests need `datasets`, and the statistics tests run where it is missing."""
    cache = tmp_path_factory.getbasetemp() / "hf_datasets"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))  # read when datasets is first imported
    config = sys.modules.get("datasets.config")
    if config is not None:  # imported already (by an earlier test): its constant is set
        monkeypatch.setattr(config, "HF_DATASETS_CACHE", cache)


# ------------------------------------------------------------------ prompt sources


def _write_source(kind: str, folder, column: str = "prompt"):
    if kind in ("csv", "parquet"):
        import pandas as pd
    if kind in ("dataset", "dataset_dict"):
        import datasets

    if kind == "txt":
        path = folder / "p.txt"
        path.write_text("# calibration prompts\n" + "\n\n".join(PROMPTS) + "\n   \n")
    elif kind == "jsonl":
        path = folder / "p.jsonl"
        path.write_text("".join(json.dumps({column: p, "id": i}) + "\n" for i, p in enumerate(PROMPTS)))
    elif kind == "csv":
        path = folder / "p.csv"
        pd.DataFrame({"id": range(len(PROMPTS)), column: PROMPTS}).to_csv(path, index=False)
    elif kind == "parquet":
        path = folder / "p.parquet"
        pd.DataFrame({column: PROMPTS, "id": range(len(PROMPTS))}).to_parquet(path)
    elif kind == "dataset":
        path = folder / "p_dataset"
        datasets.Dataset.from_dict({column: PROMPTS, "id": list(range(len(PROMPTS)))}).save_to_disk(str(path))
    elif kind == "dataset_dict":
        path = folder / "p_dataset_dict"
        ds = datasets.Dataset.from_dict({column: PROMPTS})
        datasets.DatasetDict({"validation": ds.select([0]), "train": ds}).save_to_disk(str(path))
    else:
        raise ValueError(kind)
    return path


@pytest.mark.parametrize("kind, column", [("txt", None), ("jsonl", "prompt"), ("csv", "text"),
                                          ("parquet", "caption"), ("dataset", "prompt"),
                                          ("dataset_dict", "text")])
def test_prompts_from_every_source(kind, column, tmp_path):
    path = _write_source(kind, tmp_path, column or "prompt")
    assert load_prompts(path) == PROMPTS  # in order, comments and blank lines dropped
    assert load_prompts(str(path), limit=2) == PROMPTS[:2]


def test_prompts_take_the_first_filled_column_of_each_row(tmp_path, capfd):
    """JSON lines need not share keys; a row's empty `prompt` falls back to its `text`. And the
    datasets library's cache-building progress bar is not dq's output."""
    rows = [{"text": "a red circle"}, {"caption": "a blue square"}, {"prompt": "", "text": "a green star"},
            {"prompt": None, "caption": "  "}, {"prompt": "a pink ring", "text": "ignored"}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_prompts(path) == ["a red circle", "a blue square", "a green star", "a pink ring"]
    assert "Generating" not in capfd.readouterr().err


def test_prompt_source_errors(tmp_path):
    with pytest.raises(PromptSourceError, match="no such prompt file"):
        load_prompts(tmp_path / "absent.txt")
    (tmp_path / "p.tsv").write_text("a\tb\n")
    with pytest.raises(PromptSourceError, match="unknown prompt file type"):
        load_prompts(tmp_path / "p.tsv")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(PromptSourceError, match="holds no prompts"):
        load_prompts(tmp_path / "empty.txt")
    path = _write_source("jsonl", tmp_path, column="description")
    with pytest.raises(PromptSourceError, match="no column named prompt, text, caption"):
        load_prompts(path)
    (tmp_path / "not_a_dataset").mkdir()
    with pytest.raises(PromptSourceError, match="save_to_disk"):
        load_prompts(tmp_path / "not_a_dataset")


def test_calibrate_cli_takes_prompts_from_a_file(family_dir, tmp_path):
    path = _write_source("parquet", tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", recipe_data("cogvideox", family_dir("cogvideox"),
                                                          calibration={"steps": 2}))
    # A dot in the name is the name's: the artifact is calib.v2.json, not calib.json.
    run_dq("calibrate", "-r", recipe, "--prompts", path, "-n", 2, "-o", tmp_path / "calib.v2", "-q")
    assert sorted(p.name for p in tmp_path.glob("calib*")) == ["calib.v2.json", "calib.v2.safetensors"]
    summary = json.loads((tmp_path / "calib.v2.json").read_text())
    assert summary["prompts"] == 2 and summary["prompt_source"] == str(path)
    assert summary["forwards"] == 2 * 2  # 2 prompts x 2 steps, CFG batched
    assert load_calibration(tmp_path / "calib.v2").summary["prompts"] == 2
    bad = run_dq("calibrate", "-r", recipe, "--prompts", tmp_path / "r.yaml", "-o", tmp_path / "x", code=2)
    assert "unknown prompt file type" in bad.stderr and not (tmp_path / "x.json").exists()


# ------------------------------------------------------------------ the reservoir


def _stream(reservoir: TokenReservoir, n: int, chunks, start: int = 0) -> None:
    """Feed tokens start..start+n-1 (value = number, also in meta column 0) in chunks of the given sizes."""
    i, k = 0, 0
    while i < n:
        size = min(chunks[k % len(chunks)], n - i)
        idx = torch.arange(start + i, start + i + size)
        meta = torch.zeros(size, 5, dtype=torch.int32)
        meta[:, 0] = idx.int()
        # the number's base-256 digits: exact in the reservoir's BF16
        reservoir.update(torch.stack([idx // 256, idx % 256], dim=1).float(), meta)
        i, k = i + size, k + 1


def _kept(reservoir: TokenReservoir) -> torch.Tensor:
    tokens, meta = reservoir.sample()
    assert torch.equal(tokens[:, 0].long() * 256 + tokens[:, 1].long(), meta[:, 0].long())  # its own meta
    return meta[:, 0].long()


def test_reservoir_keeps_tokens_as_the_artifact_stores_them():
    """BF16 (half of fp32's host memory): an fp32 token is kept as its BF16 rounding — what the
    artifact held before the reservoir itself was BF16 — and a BF16 one exactly."""
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    for given in (x, x.to(torch.bfloat16)):
        r = TokenReservoir(3, capacity=16, seed=0)
        meta = torch.zeros(10, 5, dtype=torch.int32)
        meta[:, 0] = torch.arange(10)
        r.update(given, meta)
        tokens, kept = r.sample()
        assert tokens.dtype == torch.bfloat16 and torch.equal(tokens, x.to(torch.bfloat16)[kept[:, 0].long()])


def test_reservoir_is_bounded_and_fills_first(tmp_path):
    r = TokenReservoir(2, capacity=16, seed=0)
    _stream(r, 10, [3])
    assert r.filled == 10 and r.seen == 10
    assert sorted(_kept(r).tolist()) == list(range(10))  # under capacity: everything, in order
    _stream(r, 5000, [7, 64, 1, 300])
    assert r.filled == 16 and r.seen == 5010 and r.tokens.shape == (16, 2) and r.meta.shape == (16, 5)
    kept = _kept(r)
    assert len(set(kept.tolist())) == 16  # no token twice


def test_reservoir_is_deterministic_for_a_seed():
    runs = []
    for seed in (3, 3, 4):
        r = TokenReservoir(2, capacity=32, seed=seed)
        _stream(r, 2000, [5, 100, 33])
        runs.append(_kept(r))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_reservoir_keeps_the_smallest_keys_of_each_stream():
    """Bottom-k: token i of stream p draws key u from a generator seeded by (seed, p) (draws in stream
    order); the reservoir keeps the `capacity` smallest keys, whatever the chunking, and returns them
    in key order. A one-token-at-a-time oracle with the same draws must agree."""
    from dq_calib.stats import stream_seed

    capacity, seed = 8, 11
    r = TokenReservoir(2, capacity=capacity, seed=seed)
    oracle = []
    for stream, (n, chunks) in enumerate([(300, [5, 40, 1]), (250, [120, 7])]):
        r.begin_stream(stream)
        gen = torch.Generator().manual_seed(stream_seed(seed, stream))
        _stream(r, n, chunks)
        oracle += [(u, stream, i) for i, u in enumerate(torch.rand(n, generator=gen, dtype=torch.float64).tolist())]
    expected = [i for _, _, i in sorted(oracle)[:capacity]]
    assert _kept(r).tolist() == expected and r.seen == 550


def test_sample_sorts_in_place_and_hands_out_views():
    """An artifact saves every layer's sample: as views of the reservoir's sorted storage they cost
    no second copy of the tokens. Sorting moves slots only, so a reservoir sampled between updates
    keeps exactly the tokens, in the order, of one never sampled."""
    sampled, untouched = TokenReservoir(2, capacity=24, seed=7), TokenReservoir(2, capacity=24, seed=7)
    for r in (sampled, untouched):
        r.begin_stream(0)
    for start in range(0, 3000, 500):
        for r in (sampled, untouched):
            _stream(r, 500, [37, 200], start=start)
        tokens, meta = sampled.sample()
        assert tokens.data_ptr() == sampled.tokens.data_ptr() and meta.data_ptr() == sampled.meta.data_ptr()
        assert tokens.is_contiguous() and torch.equal(sampled.order(), torch.arange(sampled.filled))
    for a, b in zip(sampled.sample(), untouched.sample()):
        assert torch.equal(a, b)
    assert torch.equal(_kept(sampled), _kept(untouched))


def _fill(streams) -> TokenReservoir:
    r = TokenReservoir(2, capacity=24, seed=5)
    for p in streams:
        r.begin_stream(p)
        _stream(r, 100 + 10 * p, [9, 31], start=1000 * p)
    return r


PROCESS_STREAMS = ([0, 3], [1, 4], [2])  # uneven on purpose: one process runs a single prompt


def _reduce_worker(rank: int, size: int, init_file: str) -> None:
    import torch.distributed as dist

    from dq_calib.merge import reduce_reservoir

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        merged = _fill(PROCESS_STREAMS[rank])
        reduce_reservoir(merged)
        if rank == 0:
            whole = _fill(range(5))
            assert merged.seen == whole.seen and merged.filled == whole.filled
            for a, b in zip(merged.sample(), whole.sample()):
                assert torch.equal(a, b)
            assert set((_kept(whole) // 1000).tolist()) == set(range(5))  # every stream is represented
    finally:
        dist.destroy_process_group()


def test_reservoirs_reduced_over_processes_equal_one_pass(tmp_path):
    """Streams split over 3 gloo processes and reduced into process 0 (`reduce_reservoir`, what
    data-parallel calibration does) keep exactly the tokens, in the same order, that one reservoir
    over every stream keeps."""
    import torch.multiprocessing as mp

    mp.spawn(_reduce_worker, args=(len(PROCESS_STREAMS), str(tmp_path / "init")), nprocs=len(PROCESS_STREAMS),
             join=True)
    assert torch.equal(_kept(_fill([0, 1])), _kept(_fill([1, 0])))  # the order of the streams is irrelevant


def _idle_process_worker(rank: int, size: int, init_file: str) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    from dq_calib.stats import LayerStats
    from dq_cli.calibrate import CalibrationResult, reduce_result
    from dq_cli.models.base import LinearInfo

    # A timeout rather than a hang if the processes' collectives ever stop matching.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size,
                            timeout=timedelta(seconds=60))
    try:
        layers = [LinearInfo("transformer", f"attn1.to_{p}", f"self_attn.{p}", 2, 2) for p in "qkv"]
        result = CalibrationResult({i.name: LayerStats.new(2, 1, 8, 0) for i in layers})
        if rank == 0:  # ran the only prompt: found K and V reading Q's input
            result.forwards = 1
            result.share(layers[1].name, layers[0].name)
            result.share(layers[2].name, layers[0].name)
            _stream(result.stats[layers[0].name].reservoir, 20, [7])
        reduce_result(result, layers, prompts=1, shard=(rank, size))  # a mismatch here would hang
        q = result.stats[layers[0].name]
        assert result.stats[layers[1].name] is q and result.stats[layers[2].name] is q
        if rank == 0:
            assert q.reservoir.filled == 8 and q.reservoir.seen == 20
    finally:
        dist.destroy_process_group()


def test_a_process_without_prompts_adopts_the_shared_inputs(tmp_path):
    """Two processes, one prompt: the idle process never saw a forward, so it takes the others'
    shared inputs before the statistics are reduced layer by layer (a collective per layer must be
    entered by every process alike)."""
    import torch.multiprocessing as mp

    mp.spawn(_idle_process_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


def test_reservoir_sample_is_uniform():
    """Every token of the stream is kept with probability capacity / n.

    Over S independent seeds the inclusion count of token i is Binomial(S, p), p = k/n. Counts
    of different tokens are slightly anti-correlated (each run keeps exactly k), which scales
    Pearson's statistic by (1 - p): X² / (1 - p) ~ χ²(n - 1). The test fails at the 0.1%
    level: on a uniform sampler it fails with probability 1e-3 (and, seeds being fixed, never
    flakes). A sampler biased towards early or late tokens (e.g. one that never replaces, or
    replaces with probability 1/2) gives X² in the thousands."""
    from scipy import stats

    n, k, seeds = 100, 10, 600
    counts = torch.zeros(n)
    for seed in range(seeds):
        r = TokenReservoir(2, capacity=k, seed=seed)
        _stream(r, n, [7, 1, 19])
        counts[_kept(r)] += 1
    p = k / n
    expected = seeds * p
    chi2 = float(((counts - expected) ** 2 / expected).sum()) / (1 - p)
    assert chi2 < stats.chi2.ppf(0.999, n - 1), chi2

    # Early vs late tokens: the first and last fifth of the stream are each kept at rate p.
    # Their counts sum m = seeds * (n/5) Bernoulli(p) draws (negatively correlated: the bound
    # below is conservative); 4.5 standard deviations puts a false alarm under 1e-5.
    m = seeds * n // 5
    sd = math.sqrt(m * p * (1 - p))
    early, late = counts[: n // 5].sum().item(), counts[-n // 5:].sum().item()
    assert abs(early - m * p) < 4.5 * sd and abs(late - m * p) < 4.5 * sd, (early, late, m * p, sd)


def test_channel_absmax_is_the_max_per_step_range():
    gen = torch.Generator().manual_seed(0)
    stats = ChannelAbsMax(6, step_ranges=3)
    seen = {0: [], 2: []}
    for r in (0, 2, 0, 2, 2):
        x = torch.randn(11, 6, generator=gen) * (1 + r)
        stats.update(x, r)
        seen[r].append(x)
    for r, xs in seen.items():
        assert torch.equal(stats.value[r], torch.cat(xs).abs().amax(dim=0))
    assert torch.equal(stats.value[1], torch.zeros(6))  # a range no step fell in


# ------------------------------------------------------------------ token positions


def test_token_meta_positions_for_a_known_grid():
    t, h, w, text = 2, 3, 4, 5
    state = ForwardState(step=7, num_steps=10, branches=("uncond", "cond"), grid=(t, h, w), text_tokens=text)
    adapter = SimpleNamespace(state=state)
    seq = text + t * h * w
    meta = token_meta(adapter, 2, seq).reshape(2, seq, 5)
    assert (meta[..., 0] == 7).all()
    assert (meta[0, :, 1] == BRANCH_CODES["uncond"]).all() and (meta[1, :, 1] == BRANCH_CODES["cond"]).all()
    assert (meta[:, :text, 2:] == -1).all()  # text tokens have no grid position
    # Video tokens are flattened T-major, then H, then W.
    expected = torch.tensor([[ti, hi, wi] for ti in range(t) for hi in range(h) for wi in range(w)], dtype=torch.int32)
    for b in range(2):
        assert torch.equal(meta[b, text:, 2:], expected)
    # A layer that sees only the video tokens of a joint-sequence model (CogVideoX's head).
    video_only = token_meta(adapter, 1, t * h * w).reshape(t * h * w, 5)
    assert torch.equal(video_only[:, 2:], expected)


class _Capture:
    """Every input of one linear layer, labelled independently of dq's forward state: the step by
    counting transformer forwards, the CFG branch by the pipeline's call order (Wan: cond, then
    uncond; LTX and CogVideoX: one batch of [uncond, cond])."""

    def __init__(self, adapter, layer: str, batched: bool):
        self.inputs, self.forwards, self.batched = {}, 0, batched
        self.handles = [m.register_forward_pre_hook(self._count) for m in adapter.transformers().values()]
        component, module = layer.split(".", 1)
        self.handles.append(adapter.transformers()[component].get_submodule(module).register_forward_pre_hook(self._x))

    def _count(self, module, args):
        self.forwards += 1

    def _x(self, module, args):
        x = args[0].detach().clone()
        if self.batched:
            step = self.forwards - 1
            for row, branch in enumerate(("uncond", "cond")):
                self.inputs[(step, branch)] = x[row]
        else:
            step, branch = divmod(self.forwards - 1, 2)
            self.inputs[(step, ("cond", "uncond")[branch])] = x[0]

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("family, layer", [
    ("cogvideox", "transformer.transformer_blocks.0.attn1.to_q"),  # text then video in one sequence
    ("cogvideox", "transformer.transformer_blocks.1.ff.net.2"),
    ("ltx", "transformer.transformer_blocks.1.attn1.to_out.0"),
    ("wan", "transformer_2.blocks.1.ffn.net.0.proj"),  # the low-noise expert
    ("wan-ti2v", "transformer.blocks.0.attn1.to_v"),
])
def test_every_sampled_token_is_where_its_meta_says(family, layer, family_dir):
    """Run calibration with one prompt, then look every kept token up in the layer's real inputs
    at its (step, branch) and (t, h, w): it must be exactly there. Text tokens (t = -1) must be
    one of the text rows. Also checks absmax by step range against the true maximum."""
    from dq_cli.models import load_model

    adapter = load_model(family, str(family_dir(family)), device="cpu")
    info = next(i for i in adapter.linears() if i.name == layer)
    g = tm.GEN_KWARGS[family]
    steps, ranges = 4, 3
    capture = _Capture(adapter, layer, batched=family in ("ltx", "cogvideox"))
    try:
        result = calibrate(adapter, [info], ["a cat dancing in the rain"], steps=steps, guidance=g["guidance_scale"],
                           frames=g["num_frames"], height=g["height"], width=g["width"], seed=0,
                           step_ranges=ranges, tokens_per_layer=96)
    finally:
        capture.close()
    stats = result.stats[layer]
    tokens, meta = stats.reservoir.sample()
    assert tokens.shape[0] == 96 < stats.reservoir.seen  # sampled, not everything
    t, h, w = adapter.state.grid
    text = adapter.state.text_tokens
    assert text == (tm.GEN_KWARGS[family]["max_sequence_length"] if family == "cogvideox" else 0)
    for x, (step, branch, ti, hi, wi) in zip(tokens, meta.tolist()):
        # kept in the reservoir's BF16: the input's rounding, exactly
        seq = capture.inputs[(step, {v: k for k, v in BRANCH_CODES.items()}[branch])].to(x.dtype)
        assert seq.shape[0] == text + t * h * w
        if ti == -1:
            assert text > 0 and (seq[:text] == x).all(dim=1).any()
        else:
            assert 0 <= ti < t and 0 <= hi < h and 0 <= wi < w
            assert torch.equal(seq[text + (ti * h + hi) * w + wi], x)
    assert {m[1] for m in meta.tolist()} == set(BRANCH_CODES.values())  # both branches sampled

    # absmax by step range: range r covers steps with floor(step * ranges / steps) == r
    tmp = family_dir(family).parent / "artifact"
    tensors_path, _ = save_artifact(tmp, result, [info], "", {})
    with safe_open(str(tensors_path), "pt") as f:
        absmax = f.get_tensor(f"{layer}.absmax")
    truth = torch.zeros(ranges, info.in_features)
    for (step, _), x in capture.inputs.items():
        r = step * ranges // steps
        truth[r] = torch.maximum(truth[r], x.abs().amax(dim=0))
    assert torch.equal(absmax, truth)


# ------------------------------------------------------------------ reading the artifact
@pytest.fixture(scope="module")
def artifact(family_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("artifact")
    recipe = write_recipe(tmp / "r.yaml", recipe_data("wan", family_dir("wan"), calibration={"num_prompts": 1}))
    run_dq("calibrate", "-r", recipe, "-o", tmp / "cal", "-q")
    return tmp / "cal"


def test_layers_fed_one_tensor_share_their_statistics(artifact):
    """Q, K and V of the self-attention read one tensor, and so do the text K and V: their statistics
    are gathered and stored once, by the first of them (a quarter less host memory and file for a Wan
    block), and the others name it. No other layer shares: each reads its own input."""
    import safetensors

    from dq_calib.artifact import load_calibration

    cal = load_calibration(artifact)
    shared = {name: layer["same_input_as"] for name, layer in cal.summary["layers"].items() if "same_input_as" in layer}
    blocks = sorted({name.split(".attn")[0] for name in cal.layers if ".attn1." in name})
    assert blocks and shared == {f"{b}.{a}": f"{b}.{leader}" for b in blocks
                                 for a, leader in (("attn1.to_k", "attn1.to_q"), ("attn1.to_v", "attn1.to_q"),
                                                   ("attn2.to_v", "attn2.to_k"))}
    with safetensors.safe_open(str(artifact.with_suffix(".safetensors")), framework="pt") as f:
        stored = {k.rsplit(".", 1)[0] for k in f.keys() if not k.startswith("traj.")}
    assert stored == set(cal.layers) - set(shared)
    for follower, leader in shared.items():
        assert torch.equal(cal.layers[follower].tokens, cal.layers[leader].tokens)


def test_shared_inputs_follow_identity_not_addresses():
    """SharedInputs: a layer follows the one before it only when it gets that very tensor, at its
    first call; another tensor at the same address (as a freed one's reused memory) does not match; a
    follower later fed another tensor is an error naming both layers."""
    from dq_calib.stats import LayerStats
    from dq_cli.calibrate import CalibrationResult, SharedInputs
    from dq_cli.errors import DQError

    result = CalibrationResult({n: LayerStats.new(4, 1, 2, 0) for n in ("q", "k", "v", "out", "up")})
    shared = SharedInputs(result)
    x = torch.randn(3, 4)
    assert [shared.follows(n, x) for n in ("q", "k", "v")] == [False, True, True]
    y = torch.randn(3, 4)
    assert not shared.follows("out", y)
    same_memory = y.view(3, 4)  # another tensor at y's address, as a freed tensor's memory may be reused
    assert same_memory.data_ptr() == y.data_ptr() and not shared.follows("up", same_memory)
    assert result.same_input == {"k": "q", "v": "q"} and result.stats["k"] is result.stats["q"]
    shared.forward_done()
    x2 = torch.randn(3, 4)
    assert not shared.follows("q", x2) and shared.follows("k", x2)
    with pytest.raises(DQError, match="v read the input of q in the first forward but not in a later one"):
        shared.follows("v", torch.randn(3, 4))


def test_a_newer_calibration_format_is_refused_by_name(artifact, tmp_path):
    import shutil

    from dq_calib.artifact import ArtifactError, load_calibration

    for suffix in (".json", ".safetensors"):
        shutil.copy(artifact.with_suffix(suffix), tmp_path / f"cal{suffix}")
    doc = json.loads((tmp_path / "cal.json").read_text())
    (tmp_path / "cal.json").write_text(json.dumps({**doc, "format_version": "99"}))
    with pytest.raises(ArtifactError, match="calibration format 99 is newer than this dq reads"):
        load_calibration(tmp_path / "cal")


def test_artifact_layers_are_read_one_at_a_time(artifact, monkeypatch):
    """load_calibration reads no layer's tensors up front (a Wan A14B artifact is tens of GB): the
    whole-file reader is never called, and each layer read on access equals the file's tensors."""
    import safetensors.torch

    from dq_calib.artifact import load_calibration

    whole = safetensors.torch.load_file(str(artifact.with_suffix(".safetensors")))
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("read the whole artifact"))
    cal = load_calibration(artifact)
    assert list(cal.layers) == list(json.loads(artifact.with_suffix(".json").read_text())["layers"])
    # asking whether a layer is there reads nothing (Mapping's default `in` would read its tensors:
    # dq quantize asks for every layer before fitting)
    import dq_calib.artifact

    with monkeypatch.context() as m:
        m.setattr(dq_calib.artifact, "safe_open", lambda *a, **k: pytest.fail("read a layer to test membership"))
        assert all(name in cal.layers for name in cal.layers) and "transformer.no_such_layer" not in cal.layers
    for name in cal.layers:
        layer, stored = cal.layers[name], cal.summary["layers"][name].get("same_input_as", name)
        for part in ("absmax", "tokens", "token_meta"):
            assert torch.equal(getattr(layer, part), whole[f"{stored}.{part}"])
    with pytest.raises(KeyError):
        cal.layers["transformer.no_such_layer"]


def test_damaged_artifacts_are_refused_when_loaded(artifact, tmp_path):
    from safetensors.torch import load_file, save_file

    from dq_calib.artifact import ArtifactError, load_calibration

    data = artifact.with_suffix(".safetensors").read_bytes()
    (tmp_path / "cut.json").write_text(artifact.with_suffix(".json").read_text())
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ArtifactError, match="unreadable"):
        load_calibration(tmp_path / "cut")
    tensors = load_file(str(artifact.with_suffix(".safetensors")))
    name = next(iter(json.loads(artifact.with_suffix(".json").read_text())["layers"]))
    del tensors[f"{name}.tokens"]
    (tmp_path / "gap.json").write_text(artifact.with_suffix(".json").read_text())
    save_file(tensors, tmp_path / "gap.safetensors")
    with pytest.raises(ArtifactError, match=f"missing tensor {name}.tokens"):
        load_calibration(tmp_path / "gap")


def test_calibrate_says_when_the_prompt_file_is_shorter_than_asked(family_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog\n")
    for asked, warned in ((3, True), (2, False)):
        recipe = write_recipe(tmp_path / "r.yaml", recipe_data("wan", family_dir("wan"), prompts,
                                                               calibration={"num_prompts": asked, "steps": 1}))
        result = run_dq("calibrate", "-r", recipe, "-o", tmp_path / f"cal{asked}")
        assert ("holds 2 prompts, fewer than the 3 asked for (calibration.num_prompts)" in result.stderr) == warned
        assert json.loads((tmp_path / f"cal{asked}.json").read_text())["prompts"] == 2


def test_quantize_refuses_an_artifact_of_another_model_before_fitting(family_dir, tmp_path):
    """An artifact of another model failed mid-fit with a shape traceback (or, where names and widths
    agreed, would fit the layers to foreign tokens). Both models here have the same recipe."""
    smooth = {"quantization": {"default": {"method": "smoothquant", "weight": "int8", "activation": "int8"}}}
    cog = write_recipe(tmp_path / "cog.yaml", recipe_data("cogvideox", family_dir("cogvideox"), **smooth,
                                                          calibration={"steps": 2, "num_prompts": 1}))
    run_dq("calibrate", "-r", cog, "-o", tmp_path / "cog", "-q")
    wan = write_recipe(tmp_path / "wan.yaml", recipe_data("wan", family_dir("wan"), **smooth))
    out = tmp_path / "wan.safetensors"
    result = run_dq("quantize", "-r", wan, "-c", tmp_path / "cog", "-o", out, code=2)
    message = " ".join(result.stderr.split())
    assert f"was calibrated on cogvideox ({family_dir('cogvideox')})" in message
    assert "has no statistics for" in message and "Traceback" not in result.output and not out.exists()
    # a recipe whose methods need no statistics says it does not use the artifact given
    rtn = write_recipe(tmp_path / "rtn.yaml", recipe_data("cogvideox", family_dir("cogvideox")))
    result = run_dq("quantize", "-r", rtn, "-c", tmp_path / "cog", "-o", tmp_path / "rtn.safetensors")
    assert "need no calibration" in " ".join(result.stderr.split())


def test_check_calibration_names_the_layer_of_another_width():
    from dq_cli.errors import DQError
    from dq_cli.models.base import LinearInfo
    from dq_cli.quant.apply import check_calibration
    from dq_cli.quant.plan import LayerPlan

    info = LinearInfo("transformer", "blocks.0.attn1.to_q", "self_attn.q", 128, 128)
    plans = {info.name: LayerPlan(method="smoothquant", weight="int8", activation="int8", group_size=0, rank=0,
                                  smoothing={"alpha": 0.5}, cubes=None, core="none")}
    artifact = lambda width: SimpleNamespace(  # noqa: E731
        summary={"model": {"name": "dq-tiny", "path": None}, "layers": {info.name: {"in_features": width}}},
        layers={info.name: None})
    check_calibration(artifact(128), [info], plans, "c")  # the same width: accepted
    with pytest.raises(DQError, match=r"its transformer.blocks.0.attn1.to_q takes 24 input channels, this model's 128"):
        check_calibration(artifact(24), [info], plans, "c")
    check_calibration(artifact(24), [info], {}, "c")  # a layer the recipe leaves alone is not checked
