"""Video quality for dq: prompt adherence on the dq-tiny world and full-reference metrics."""

from dq_cli.quality.adherence import AdherenceScore, ObjectAnalysis, VideoAnalysis, analyze, score
from dq_cli.quality.metrics import psnr, psnr_per_frame, ssim, ssim_per_frame

__all__ = [
    "AdherenceScore",
    "ObjectAnalysis",
    "VideoAnalysis",
    "analyze",
    "psnr",
    "psnr_per_frame",
    "score",
    "ssim",
    "ssim_per_frame",
]
