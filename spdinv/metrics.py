"""Reconstruction metrics."""

from __future__ import annotations

import math

import torch


def latent_psnr(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of a latent against a reference, with the reference's largest magnitude as peak."""
    mse = float((estimate.float() - reference.float()).square().mean())
    peak = float(reference.float().abs().max())
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse)
