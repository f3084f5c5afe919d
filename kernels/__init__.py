"""dq_kernels: the numeric formats (INT4, NVFP4, INT8, FP8) as pure functions — quantize,
dequantize, pack — in PyTorch (the reference and the CPU path); Triton kernels join them behind
the same functions."""

from dq_kernels.checks import NonFiniteError, check_finite
from dq_kernels.fp8 import dequantize_fp8, quantize_fp8
from dq_kernels.int4 import dequantize_int4, pack_int4, quantize_int4, unpack_int4
from dq_kernels.int8 import dequantize_int8, quantize_int8_rowwise
from dq_kernels.nvfp4 import dequantize_nvfp4, pack_fp4, quantize_nvfp4, unpack_fp4

__all__ = [
    "NonFiniteError", "check_finite",
    "quantize_int4", "dequantize_int4", "pack_int4", "unpack_int4",
    "quantize_nvfp4", "dequantize_nvfp4", "pack_fp4", "unpack_fp4",
    "quantize_int8_rowwise", "dequantize_int8",
    "quantize_fp8", "dequantize_fp8",
]
