"""dq_calib: what dq learns from data (activation statistics now; smoothing, low-rank factors,
Γ/E_rel regressions and TDC thresholds as the methods land)."""

from dq_calib.prompts import load_prompts
from dq_calib.stats import ChannelAbsMax, LayerStats, TokenReservoir

__all__ = ["ChannelAbsMax", "LayerStats", "TokenReservoir", "load_prompts"]
