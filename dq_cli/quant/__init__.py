from dq_cli.quant.apply import quantize_model
from dq_cli.quant.linear import QuantLinear
from dq_cli.quant.plan import LayerPlan, plan_layers

__all__ = ["LayerPlan", "QuantLinear", "plan_layers", "quantize_model"]
