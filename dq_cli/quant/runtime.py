"""6Bit-Diffusion at inference: one `diffusers.hooks.ModelHook` per transformer block that

1. decides, before the block runs, each of its quantized linears' activation route for this step
   from the block's Γ at the previous step (`Predictor.route`: no Γ → the safe INT8 route);
2. measures Γ = ‖out − in‖₁/‖in‖₁ after it runs, for the next step (with TDC's Δ and its change in
   the same pass over the block's output: dq_kernels.residual_l1);
3. runs the Temporal Delta Cache (dq_cli/quant/tdc.py): a stable block is skipped and returns
   input + cached Δ (for CogVideoX's joint blocks, the encoder stream's Δ too).

State is kept per (expert, CFG branch) stream, as FirstBlockCache keeps its per `cache_context`,
but keyed on the adapter's `ForwardState` (which the ForwardTracker fills from that same
`cache_context`), so a batched CFG forward (LTX, CogVideoX: [uncond, cond] in one batch) is one
stream, and the expert is known for the reset at Wan 2.2's switch. At the switch every block of
the expert that stops releases its cached Δ (`peers`): the other expert's blocks have hooks of their
own, never called again in that run, and would otherwise hold a tensor the size of the hidden states
for each block and branch — 25 GiB at Wan A14B 480p (40 blocks × 2 branches × 32,760 × 5,120 BF16),
measured as 6bit's peak over BF16's in `dq bench e2e` before this release.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.utils.torch_utils import unwrap_module

from dq_calib.predictor import ROUTE_BITS, Predictor
from dq_cli.models.base import ForwardState
from dq_cli.quant import tdc
from dq_cli.quant.linear import QuantLinear
from dq_cli.quant.sequence import row_ratio
from dq_kernels.residual_l1 import residual_l1

RUNTIME_HOOK = "dq_6bit_block"


# ---- block I/O (shared with calibration) ------------------------------------------------------------
def block_metadata(module: torch.nn.Module) -> TransformerBlockMetadata:
    """diffusers' own description of where a block's hidden states are; a block class it does not
    know is taken to map `hidden_states` to one tensor."""
    cls = unwrap_module(module).__class__
    try:
        return TransformerBlockRegistry.get(cls)
    except ValueError:
        return TransformerBlockMetadata(return_hidden_states_index=None, return_encoder_hidden_states_index=None,
                                        _cls=cls)


def block_inputs(meta: TransformerBlockMetadata, args, kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    hidden = meta._get_parameter_from_args_kwargs(meta.hidden_states_argument_name, args, kwargs)
    enc = None
    if meta.return_encoder_hidden_states_index is not None:
        enc = meta._get_parameter_from_args_kwargs(meta.encoder_hidden_states_argument_name, args, kwargs)
    return hidden, enc


def block_outputs(meta: TransformerBlockMetadata, output) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not isinstance(output, tuple):
        return output, None
    enc_i = meta.return_encoder_hidden_states_index
    return output[meta.return_hidden_states_index or 0], (output[enc_i] if enc_i is not None else None)


def join_outputs(meta: TransformerBlockMetadata, hidden: torch.Tensor, enc: torch.Tensor | None):
    if meta.return_encoder_hidden_states_index is None:
        return hidden
    out = [None, None]
    out[meta.return_hidden_states_index] = hidden
    out[meta.return_encoder_hidden_states_index] = enc
    return tuple(out)


def transformer_blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(`<list name>.<i>`, block) for the block lists diffusers' caches recognise."""
    out = []
    for name, child in model.named_children():
        if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList):
            out += [(f"{name}.{i}", block) for i, block in enumerate(child)]
    return out


# ---- what a run did ---------------------------------------------------------------------------------
@dataclass
class RuntimeStats:
    """Counted during generation: routes of every quantized linear evaluation inside the blocks
    (weighted by input features, as predictor-fit counts bits) and block evaluations / skips."""

    route_weight: dict[str, float] = field(default_factory=dict)
    route_calls: dict[str, int] = field(default_factory=dict)
    block_evals: int = 0      # block forwards requested (per stream)
    block_skips: int = 0
    run_bits: list[float] = field(default_factory=list)  # average bits of each run closed by end_run()
    _run_start: dict[str, float] = field(default_factory=dict, repr=False)

    def count_route(self, route: str, in_features: int) -> None:
        self.route_weight[route] = self.route_weight.get(route, 0.0) + in_features
        self.route_calls[route] = self.route_calls.get(route, 0) + 1

    @property
    def average_bits(self) -> float | None:
        return _bits(self.route_weight)

    def end_run(self) -> None:
        """Close one generation: the target bit width is a per-generation promise, so a bench
        records each run's bits besides the average over all of them."""
        since = {r: w - self._run_start.get(r, 0.0) for r, w in self.route_weight.items()}
        bits = _bits(since)
        if bits is not None:
            self.run_bits.append(bits)
        self._run_start = dict(self.route_weight)

    @property
    def skip_fraction(self) -> float:
        return self.block_skips / self.block_evals if self.block_evals else 0.0

    def summary(self) -> dict:
        total = sum(self.route_calls.values())
        return {"average_bits": self.average_bits,
                "route_mix": {r: c / total for r, c in sorted(self.route_calls.items())} if total else {},
                "route_calls": dict(sorted(self.route_calls.items())),
                "block_evals": self.block_evals, "block_skips": self.block_skips,
                "skip_fraction": self.skip_fraction,
                "run_bits": list(self.run_bits), "max_run_bits": max(self.run_bits, default=None)}

    def line(self) -> str:
        s = self.summary()
        bits = "—" if s["average_bits"] is None else f"{s['average_bits']:.2f}"
        mix = ", ".join(f"{r} {100 * f:.1f}%" for r, f in s["route_mix"].items()) or "—"
        return (f"activations: {bits} bits on average ({mix}); TDC skipped {self.block_skips} of "
                f"{self.block_evals} block evaluations ({100 * self.skip_fraction:.1f}%)")

    def reset(self) -> None:
        self.route_weight.clear()
        self.route_calls.clear()
        self.block_evals = self.block_skips = 0
        self.run_bits.clear()
        self._run_start.clear()


def _bits(route_weight: dict[str, float]) -> float | None:
    total = sum(route_weight.values())
    if not total:
        return None
    return sum(w * ROUTE_BITS.get(r, 16.0) for r, w in route_weight.items()) / total


# ---- the hook ---------------------------------------------------------------------------------------
class SixBitBlockHook(ModelHook):
    _is_stateful = True

    def __init__(self, forward_state: ForwardState, linears: dict[str, QuantLinear], predictor: Predictor | None,
                 tdc_config: tdc.TDCConfig | None, stats: RuntimeStats, peers: list | None = None):
        super().__init__()
        self.forward_state, self.linears, self.predictor = forward_state, linears, predictor
        self.tdc, self.stats = tdc_config, stats
        self.states: dict[tuple, tdc.BlockState] = {}
        self.peers = peers if peers is not None else []  # every block's hook, of every expert
        self.peers.append(self)
        self._meta: TransformerBlockMetadata | None = None
        # The block's own forward compiled (dq_cli/compile.py), this hook's decisions staying eager.
        self.compiled_body = None

    def initialize_hook(self, module):
        self._meta = block_metadata(module)
        return module

    def state(self) -> tdc.BlockState:
        fs = self.forward_state
        key = tuple(fs.branches)
        st = self.states.get(key)
        if st is None or st.stale(fs.step, fs.expert):
            self.release_other_experts(fs.expert)
            st = self.states[key] = tdc.BlockState(expert=fs.expert)
        return st

    def release_other_experts(self, expert: str | None) -> None:
        """Drop every block's state kept for another expert (Wan 2.2 never returns to an expert
        within a run, and a new run starts over anyway)."""
        for peer in self.peers:
            for key in [k for k, s in peer.states.items() if s.expert != expert]:
                del peer.states[key]

    def new_forward(self, module, *args, **kwargs):
        st, step = self.state(), self.forward_state.step
        hidden, enc = block_inputs(self._meta, args, kwargs)
        self.stats.block_evals += 1
        if tdc.should_skip(st, self.tdc):
            tdc.on_skip(st, step)
            self.stats.block_skips += 1
            d_hidden, d_enc = st.delta
            return join_outputs(self._meta, hidden + d_hidden, None if enc is None else enc + d_enc)
        refresh = self.tdc.refresh_ratio if (self.tdc is not None and st.skips > 0) else None
        for name, linear in self.linears.items():
            routed = self.predictor is not None and name in self.predictor.layers
            linear.route = self.predictor.route(name, st.gamma) if routed else None
            linear.refresh_ratio = refresh
            linear.last_route = None
        output = (self.compiled_body or self.fn_ref.original_forward)(*args, **kwargs)
        out_hidden, out_enc = block_outputs(self._meta, output)
        cached = st.delta[0] if self.tdc is not None and st.delta is not None else None
        d_hidden, sums = residual_l1(out_hidden, hidden, cached, write_delta=self.tdc is not None)
        # A batched CFG forward is one stream: its most-changing row decides (the conservative side).
        # Under context parallelism the sums run over the whole sequence: every process decides alike.
        # One host sync for Γ and the change together.
        g, change = row_ratio(sums[:, 0::2], sums[:, 1::2], self.forward_state.shard).amax(0).tolist()
        delta = (d_hidden, None if enc is None else out_enc - enc) if self.tdc is not None else (None, None)
        tdc.on_compute(st, step, delta, change if cached is not None else None, g)
        for linear in self.linears.values():
            if linear.last_route is not None:
                self.stats.count_route(linear.last_route, linear.in_features)
        return output

    def reset_state(self, module):
        self.states.clear()
        return module


def block_hook(block: torch.nn.Module) -> SixBitBlockHook | None:
    """The 6Bit hook of a transformer block, if installed."""
    registry = getattr(block, "_diffusers_hook", None)
    return registry.get_hook(RUNTIME_HOOK) if registry is not None else None


def install(adapter, predictor: Predictor | None, tdc_config: tdc.TDCConfig | None) -> RuntimeStats:
    """Hook every transformer block of the adapter's model(s); returns the run counters."""
    stats, hooks = RuntimeStats(), []
    for component, model in adapter.transformers().items():
        for block_name, block in transformer_blocks(model):
            prefix = f"{component}.{block_name}."
            linears = {prefix + n: m for n, m in block.named_modules() if isinstance(m, QuantLinear)}
            for linear in linears.values():
                linear.stepwise = True
            registry = HookRegistry.check_if_exists_or_initialize(block)
            if registry.get_hook(RUNTIME_HOOK) is not None:
                registry.remove_hook(RUNTIME_HOOK, recurse=False)
            registry.register_hook(SixBitBlockHook(adapter.state, linears, predictor, tdc_config, stats, hooks),
                                   RUNTIME_HOOK)
        # cache_context walks a cached list of child registries: it must see the new ones.
        HookRegistry.check_if_exists_or_initialize(model).invalidate_child_registries_cache()
    return stats
