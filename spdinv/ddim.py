"""Deterministic DDIM (eta = 0), which in ComfyUI's sigma form is exactly Euler: ``x' = x + (s' - s) * eps``."""

from __future__ import annotations

import torch


def eps_from_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
    """Noise prediction recovered from a denoised prediction: ``eps = (x - denoised) / sigma``."""
    return (x - denoised) / sigma


def ddim_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One deterministic DDIM step from ``sigma`` to ``sigma_next`` (either direction)."""
    if sigma_next == 0.0:
        return denoised
    return denoised + sigma_next * eps_from_denoised(x, denoised, sigma)
