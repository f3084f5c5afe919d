"""Train dq-tiny on the procedural world: rectified flow (as Wan), text encoder trained jointly,
10% caption dropout for classifier-free guidance, an EMA of the weights shipped.

Runs in time-boxed sessions (`--minutes`) that resume from a state folder, because the GPU we
train on is lent 10 minutes at a time. The state folder holds flat safetensors files (none over
16 MB, so each comes back from the GPU machine whole):

    ema.safetensors    raw.safetensors    adam.safetensors    meta.json    loss.tsv

    python -m dq_cli.tiny.train --state runs/dq-tiny --minutes 9          # train (or resume)
    python -m dq_cli.tiny.train --state runs/dq-tiny --export dq_cli/tiny/weights
    torchrun --standalone --nproc-per-node 2 -m dq_cli.tiny.train --state runs/dq-tiny --minutes 9

Under torchrun the training is data-parallel (torch's DistributedDataParallel): each process renders
its own clips, takes its share of `--batch` (the global batch), and the gradients are averaged over
the processes during the backward pass, so N GPUs take the steps of one GPU N times as fast (the
lent GPU time is what limits training).

A new state folder can start from exported weights (`--init dq_cli/tiny/weights`, what `make train`
does): both the raw and the EMA weights start from the export's EMA, the optimizer starts fresh with
a new warm-up, and the export's `training.json` carries the earlier sessions into the model card.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel

from dq_cli.parallel import World, world
from dq_cli.tiny.pipeline import FLOW_SHIFT, DqTinyPipeline
from dq_cli.tiny.world import make_batch

FRAMES, SIZE = 16, 32
CAPTION_DROPOUT = 0.1


def _clips(args: tuple[int, int]) -> tuple[torch.Tensor, list[str]]:
    n, seed = args
    torch.set_num_threads(1)  # one process per core already
    videos, captions = make_batch(n, seed, FRAMES, SIZE)
    return videos.to(torch.float16), captions


def build_dataset(clips: int, seed: int, workers: int) -> tuple[torch.Tensor, list[str]]:
    """`clips` rendered clips (never a held-out triple), float16 [n, 3, F, H, W] in [-1, 1]."""
    chunk = 500
    jobs = [(min(chunk, clips - i), seed * 1_000_003 + i) for i in range(0, clips, chunk)]
    # spawn, not fork: a child forked from a parent whose OpenMP pool (or CUDA) is running can hang.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_clips, jobs))
    return torch.cat([p[0] for p in parts]), [c for p in parts for c in p[1]]


def modules(pipe: DqTinyPipeline) -> dict[str, torch.nn.Module]:
    return {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder}


def flat_state(pipe: DqTinyPipeline) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.detach().float().cpu().contiguous()
            for name, m in modules(pipe).items() for k, v in m.state_dict().items()}


def load_flat(pipe: DqTinyPipeline, state: dict[str, torch.Tensor]) -> None:
    for name, m in modules(pipe).items():
        prefix = name + "."
        m.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})


def sample_sigmas(n: int, generator: torch.Generator, device, shift: float = FLOW_SHIFT) -> torch.Tensor:
    """Logit-normal noise levels (SD3), shifted as the sampler shifts its steps (σ' = shift·σ / (1 +
    (shift − 1)·σ)): training lands where sampling spends its steps. Unshifted, 8% of the training
    draws fall above σ 0.8 where a third of the 20 sampling steps lie, and those steps lay out where
    the object is in each frame (its motion); shifted by 2, 24% do."""
    sigma = torch.sigmoid(torch.randn(n, generator=generator, device=device))
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_loss(pipe: DqTinyPipeline | Denoiser, x0: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
              noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Rectified-flow loss: the model sees x_t = (1−σ)·x₀ + σ·ε and predicts ε − x₀ (mean over the batch)."""
    s = sigma.view(-1, 1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    text = pipe.text_encoder(ids, mask)
    v = pipe.transformer(xt, sigma * 1000, text, return_dict=False)[0]
    return F.mse_loss(v.float(), noise - x0)


class Denoiser(torch.nn.Module):
    """What a training step runs — text encoder, transformer, flow loss — as one module, so that
    DistributedDataParallel can wrap it. DDP all-reduces the gradients in buckets while the backward
    pass still runs, and divides by the number of processes: with equal shares of the batch, the mean
    of the processes' batch-mean gradients is the gradient of the whole batch. Every parameter takes
    part in every step (no `find_unused_parameters`)."""

    def __init__(self, pipe: DqTinyPipeline):
        super().__init__()
        self.text_encoder, self.transformer = pipe.text_encoder, pipe.transformer

    def forward(self, x0, ids, mask, noise, sigma) -> torch.Tensor:
        return flow_loss(self, x0, ids, mask, noise, sigma)


def data_parallel(pipe: DqTinyPipeline, device: str) -> DistributedDataParallel:
    """The pipe's Denoiser under DDP (which also copies process 0's weights to the others)."""
    dev = torch.device(device)
    return DistributedDataParallel(Denoiser(pipe), device_ids=[dev] if dev.type == "cuda" else None)


def _check_in_sync(params: list[torch.nn.Parameter]) -> None:
    """The processes must hold the same weights (same start, same averaged gradients)."""
    flat = torch._utils._flatten_dense_tensors([p.detach() for p in params])
    first = flat.clone()
    dist.broadcast(first, 0)
    if not torch.equal(flat, first):
        raise RuntimeError(f"process {dist.get_rank()}: weights drifted from process 0's "
                           f"(max |Δ| {(flat - first).abs().max().item():.3g})")


def lr_at(step: int, total: int, peak: float, warmup: int = 500, warmup_from: int = 0) -> float:
    """Linear warm-up over `warmup` steps from `warmup_from` (0, or where a fresh optimizer took over
    from exported weights), then cosine to 0 at `total`."""
    if step - warmup_from < warmup:
        return peak * (step - warmup_from + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


@dataclass(frozen=True)
class TrainConfig:
    """One session's settings (the command's flags)."""

    minutes: float = 9.0  # stop and save after this long
    total_steps: int = 11_000  # length of the LR schedule
    batch: int = 128  # global batch, split over torchrun's processes
    lr: float = 5e-4
    clips: int = 20_000  # rendered per session and process
    seed: int = 0
    device: str = "cpu"
    init: Path | None = None  # exported weights a new state folder starts from
    max_steps: int | None = None  # stop after this many steps in this session


@dataclass
class _Models:
    """What a session trains: the raw and the EMA pipelines, and the optimizer of the raw one."""

    pipe: DqTinyPipeline
    ema: DqTinyPipeline
    optimizer: torch.optim.Optimizer

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for m in modules(self.pipe).values() for p in m.parameters()]

    @property
    def ema_params(self) -> list[torch.nn.Parameter]:
        return [p for m in modules(self.ema).values() for p in m.parameters()]


def train(state_dir: Path, config: TrainConfig, group: World | None = None) -> None:
    """Train (or resume) for `config.minutes`. Under torchrun (`group`) each process takes
    batch / processes of the global batch and renders its own clips; process 0 writes the state."""
    start = time.time()
    rank, processes = (group.rank, group.size) if group else (0, 1)
    device = group.device if group else config.device
    if config.batch % processes:
        raise SystemExit(f"--batch {config.batch}: not divisible by the {processes} processes")
    local_batch, main = config.batch // processes, rank == 0
    state_dir.mkdir(parents=True, exist_ok=True)
    meta = _load_meta(state_dir, config.init)
    session = len(meta["sessions"])
    workers = max(1, min(16, (os.cpu_count() or 2) // processes - 1))
    videos, captions = build_dataset(config.clips, config.seed + 7919 * session + 104_729 * rank, workers)
    if main:
        print(f"session {session}: {len(captions)} clips per process rendered in {time.time() - start:.1f} s "
              f"on {workers} workers; {processes} process(es), {local_batch} clips each per step", flush=True)
    models = _load_models(state_dir, meta, config, device, main)
    params, ema_params = models.params, models.ema_params
    denoiser = data_parallel(models.pipe, device) if group else Denoiser(models.pipe)

    videos = videos.to(device)
    ids, mask = models.pipe.tokenizer(captions)
    ids, mask = ids.to(device), mask.to(device)
    generator = torch.Generator(device).manual_seed(config.seed * 100 + session + 1_000 * rank)
    log = open(state_dir / "loss.tsv", "a") if main else None
    deadline = start + config.minutes * 60
    step, session_start, losses = meta["step"], time.time(), []
    last = config.total_steps if config.max_steps is None else min(config.total_steps, step + config.max_steps)
    save = lambda: _save(state_dir, models, meta, step, time.time() - session_start, config, processes, device)  # noqa: E731
    while step < last and not _time_is_up(step, deadline, device, group):
        idx = torch.randint(0, len(captions), (local_batch,), generator=generator, device=device)
        keep = (torch.rand(local_batch, 1, generator=generator, device=device) > CAPTION_DROPOUT)
        x0 = videos[idx].float()
        noise = torch.randn(x0.shape, generator=generator, device=device)
        sigma = sample_sigmas(local_batch, generator, device)
        for g in models.optimizer.param_groups:
            g["lr"] = lr_at(step, config.total_steps, config.lr, warmup_from=meta.get("warmup_from", 0))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            loss = denoiser(x0, ids[idx], mask[idx] & keep, noise, sigma)
        models.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP: the gradients arrive averaged over the processes
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        models.optimizer.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        losses.append(loss.detach())
        step += 1
        if step % 100 == 0:
            mean = _mean_over_processes(losses, group)
            losses.clear()
            if main:
                log.write(f"{step}\t{mean:.5f}\t{time.time() - session_start:.1f}\n")
                log.flush()
                if step % 500 == 0:
                    print(f"step {step} loss {mean:.4f} ({time.time() - session_start:.0f} s)", flush=True)
            if step % 2000 == 0 and main:  # a killed session still leaves a state to resume from
                save()
    if group:  # same start, same averaged gradients: the processes must end with the same weights
        _check_in_sync(params)
    if main:
        log.close()
        save()
        print(f"saved step {step} to {state_dir} after {time.time() - session_start:.0f} s", flush=True)


def _load_meta(state_dir: Path, init: Path | None) -> dict:
    """The state folder's history; a new folder starts from `init`'s (or from nothing)."""
    path = state_dir / "meta.json"
    if path.exists():
        return json.loads(path.read_text())
    return _history(init) if init is not None else {"step": 0, "sessions": [], "seconds": 0.0}


def _load_models(state_dir: Path, meta: dict, config: TrainConfig, device: str, main: bool) -> _Models:
    """Seeded random weights, the state folder's (resuming), or `init`'s in a new folder (raw and EMA
    both start from its EMA, with a fresh optimizer)."""
    pipe, ema = DqTinyPipeline.random(seed=config.seed), DqTinyPipeline.random(seed=config.seed)
    resuming = (state_dir / "raw.safetensors").exists() and meta["step"]
    if resuming:
        load_flat(pipe, load_file(state_dir / "raw.safetensors"))
        load_flat(ema, load_file(state_dir / "ema.safetensors"))
    elif config.init is not None:
        weights = flat_state(DqTinyPipeline.from_pretrained(config.init))
        load_flat(pipe, weights)
        load_flat(ema, weights)
        if main:
            print(f"initialised from {config.init} (step {meta['step']}); fresh optimizer, warm-up from there",
                  flush=True)
    pipe.to(device)
    ema.to(device)
    for m in modules(pipe).values():
        m.train()
    params = [p for m in modules(pipe).values() for p in m.parameters()]
    models = _Models(pipe, ema, torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.99), weight_decay=0.01))
    if resuming and (state_dir / "adam.safetensors").exists():
        _load_adam(models.optimizer, models.params, load_file(state_dir / "adam.safetensors"), meta["step"])
    return models


def _mean_over_processes(losses: list[torch.Tensor], group: World | None) -> float:
    mean = torch.stack(losses).mean()
    if group:
        dist.all_reduce(mean)
        mean /= group.size
    return mean.item()


def _time_is_up(step: int, deadline: float, device: str, group: World | None) -> bool:
    """Process 0's clock decides for all, every 20 steps (a decision costs a GPU sync)."""
    if group is None:
        return time.time() >= deadline
    if step % 20:
        return False
    up = torch.tensor([time.time() >= deadline], dtype=torch.int32, device=device)
    dist.broadcast(up, 0)
    return bool(up.item())


def _save(state_dir: Path, models: _Models, meta: dict, step: int, elapsed: float, config: TrainConfig,
          processes: int, device: str) -> None:
    """Write the state; the session's entry is replaced, not appended, by saves within a session."""
    meta = json.loads(json.dumps(meta))
    meta["seconds"] += elapsed
    meta["step"] = step
    name = _device_name(device) if processes == 1 else f"{processes}× {_device_name(device)}"
    meta["sessions"].append({"steps_to": step, "seconds": round(elapsed, 1), "device": name, "batch": config.batch,
                             "clips": config.clips, "lr": config.lr, "total_steps": config.total_steps,
                             "sigma_shift": FLOW_SHIFT})
    save_file(flat_state(models.pipe), str(state_dir / "raw.safetensors"))
    save_file(flat_state(models.ema), str(state_dir / "ema.safetensors"))
    save_file(_adam_state(models.optimizer, models.params), str(state_dir / "adam.safetensors"))
    (state_dir / "meta.json").write_text(json.dumps(meta, indent=1))


def _adam_state(optimizer, params) -> dict[str, torch.Tensor]:
    out = {}
    for i, p in enumerate(params):
        st = optimizer.state.get(p)
        if st:
            out[f"{i}.exp_avg"] = st["exp_avg"].float().cpu().contiguous()
            out[f"{i}.exp_avg_sq"] = st["exp_avg_sq"].float().cpu().contiguous()
    return out


def _load_adam(optimizer, params, flat: dict[str, torch.Tensor], step: int) -> None:
    for i, p in enumerate(params):
        if f"{i}.exp_avg" in flat:
            optimizer.state[p] = {"step": torch.tensor(float(step)), "exp_avg": flat[f"{i}.exp_avg"].to(p.device),
                                  "exp_avg_sq": flat[f"{i}.exp_avg_sq"].to(p.device)}


def _history(init: Path) -> dict:
    """The training history of exported weights (their training.json), to continue from."""
    path = init / "training.json"
    meta = json.loads(path.read_text()) if path.exists() else {"step": 0, "sessions": [], "seconds": 0.0}
    meta["warmup_from"] = meta["step"]
    meta["init"] = str(init)
    return meta


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"


def export(state_dir: Path, folder: Path) -> None:
    """Write the EMA weights as the pipeline folder dq loads (fp32 safetensors + configs), with
    the model card and the loss curve."""
    pipe = DqTinyPipeline.random()
    load_flat(pipe, load_file(state_dir / "ema.safetensors"))
    pipe.save_pretrained(folder)
    meta = json.loads((state_dir / "meta.json").read_text())
    losses = [tuple(float(v) for v in line.split("\t")) for line in (state_dir / "loss.tsv").read_text().splitlines()]
    _plot_loss(losses, folder / "loss.png")
    (folder / "MODEL_CARD.md").write_text(model_card(pipe, meta, losses))
    (folder / "training.json").write_text(json.dumps(meta, indent=1))
    print(f"exported {state_dir} -> {folder}")


def _plot_loss(losses: list[tuple[float, ...]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot([r[0] for r in losses], [r[1] for r in losses], lw=1)
    ax.set(xlabel="step", ylabel="flow-matching MSE (mean of 100 steps)", yscale="log", title="dq-tiny training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def model_card(pipe: DqTinyPipeline, meta: dict, losses: list[tuple[float, ...]]) -> str:
    from dq_cli.tiny.pipeline import FLOW_SHIFT, TEXT_CONFIG, TRANSFORMER_CONFIG
    from dq_cli.tiny.world import HELD_OUT_TRIPLES, TRAIN_TRIPLES

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    sessions = "\n".join(f"| {i} | {s['steps_to']} | {s['seconds']:.0f} | {s['device']} | {s['batch']} | {s['lr']} "
                         f"| {s['total_steps']:,} | {s.get('sigma_shift', 1.0)} |" for i, s in enumerate(meta["sessions"]))
    return f"""# dq-tiny

The built-in model of dq: a text-to-video diffusion transformer small enough to run on a CPU,
trained by `dq_cli/tiny/train.py` on the procedural world of `dq_cli/tiny/world.py`.

## Architecture
- Denoiser: diffusers `WanTransformer3DModel` {json.dumps(TRANSFORMER_CONFIG)} — {count(pipe.transformer):,} parameters.
- Pixel space: 16 frames × 32 × 32 RGB in [-1, 1]; patch (1, 2, 2) → a 16 × 16 × 16 token grid. Videos are
  upscaled (nearest) for display.
- Text: word-level tokenizer over the world's grammar ({len(pipe.tokenizer.vocab)} tokens incl. <pad>, <unk>) and
  `TinyTextEncoder` {json.dumps(TEXT_CONFIG)} — {count(pipe.text_encoder):,} parameters.
- Rectified flow as Wan: x_t = (1−σ)·x₀ + σ·ε, the model predicts ε − x₀; σ logit-normal in training, shifted
  as the sampler shifts its steps in the sessions whose σ shift (table below) is {FLOW_SHIFT};
  sampled with diffusers' `UniPCMultistepScheduler` (flow prediction, flow_shift {FLOW_SHIFT}), 20 steps, CFG 4.

## Data
Procedurally rendered clips (a fresh set of {meta['sessions'][-1]['clips']:,} clips each session and process): 4 shapes × 8 colours ×
6 motions (left, right, up, down, grow, shrink), plain / gradient / striped / checkered backgrounds, a second
object in ~20% of clips, captions from a fixed grammar; 10% of captions dropped for classifier-free guidance.
{len(HELD_OUT_TRIPLES)} of {len(HELD_OUT_TRIPLES) + len(TRAIN_TRIPLES)} (colour, shape, motion) triples are held
out of training (`HELD_OUT_TRIPLES`); `recipes/prompts/dq-tiny-heldout.txt` draws only from them.

## Training
AdamW (β 0.9/0.99, wd 0.01), cosine LR after 500 warm-up steps, bf16 autocast, gradient clip 1.0; the
shipped weights are an EMA (0.999). {meta['step']:,} steps in {meta['seconds'] / 60:.1f} minutes of training
over {len(meta['sessions'])} session(s):

| session | steps reached | seconds | device | batch | peak LR | LR schedule (steps) | σ shift |
|---|---|---|---|---|---|---|---|
{sessions}

{_loss_line(meta, losses)}
Reproduce: `make train` on a GPU machine (`TRAIN_GPUS=2` for the sessions on two GPUs; repeat until the
schedule's {meta['sessions'][-1]['total_steps']:,} steps are done).
"""


def _loss_line(meta: dict, losses: list[tuple[float, ...]]) -> str:
    if not losses:
        return "No loss logged yet (one line per 100 steps)."
    line = f"Final loss (mean of the last 100 steps): {losses[-1][1]:.4f}. Loss curve: `loss.png`"
    if meta.get("init"):  # the log of the sessions before the export we started from was not kept
        line += f", from step {meta['warmup_from']:,} on"
    return line + "."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", type=Path, default=Path("runs/dq-tiny"), help="training state folder")
    d = TrainConfig()
    ap.add_argument("--minutes", type=float, default=d.minutes, help="stop and save after this long")
    ap.add_argument("--total-steps", type=int, default=d.total_steps, help="length of the LR schedule")
    ap.add_argument("--batch", type=int, default=d.batch, help="global batch (split over torchrun's processes)")
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--clips", type=int, default=d.clips, help="clips rendered per session and process")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--export", type=Path, default=None, help="export EMA weights to this folder and exit")
    ap.add_argument("--init", type=Path, default=None,
                    help="start a new state folder from these exported weights (ignored when resuming)")
    ap.add_argument("--steps", type=int, default=None, help="stop after this many steps in this session")
    args = ap.parse_args()
    if args.export:
        export(args.state, args.export)
        return
    with world(args.device) as group:
        train(args.state, TrainConfig(args.minutes, args.total_steps, args.batch, args.lr, args.clips, args.seed,
                                      args.device, args.init, args.steps), group)


if __name__ == "__main__":
    main()
