"""Sigma grids in ComfyUI's parameterisation (``x = latent + sigma * noise``)."""

from __future__ import annotations

import math

import torch


def reference_sigmas(train_sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """The official SPDInv code's grid: timesteps ``(steps-1)·Δ, …, Δ, 0`` with ``Δ = len // steps`` (diffusers'
    DDIM with ``steps_offset`` 0: 980, 960, …, 20, 0 for 50 steps), descending, then 0. ComfyUI's
    ``ddim_uniform`` is the same grid one timestep later (981 … 1). The reference starts the inversion from the
    clean latent as if it sat at timestep 0 and ends the edit there; here the first step goes from 0 to
    timestep 0's sigma (0.029 on SD) and the edit's last step back to 0."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    stride = max(len(train_sigmas) // steps, 1)
    timesteps = list(range(0, len(train_sigmas), stride))[:steps]
    return torch.tensor([float(train_sigmas[t]) for t in reversed(timesteps)] + [0.0], dtype=torch.float32)


def validate_sampling_grid(sigmas: torch.Tensor) -> None:
    """Check that ``sigmas`` is a descending sampling grid that ends at 0, as inversion and editing need."""
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D grid of at least 2 values, got shape {tuple(sigmas.shape)}")
    if not bool(torch.all(sigmas[:-1] > sigmas[1:])):
        raise ValueError("sigmas must be strictly descending (a sampling grid, not a flipped one)")
    if float(sigmas[-1]) != 0.0:
        raise ValueError(f"sigmas must end at 0 (the clean latent), got {float(sigmas[-1]):.4g}")


def vp_input_scale(sigma: float) -> float:
    """Factor that maps ComfyUI's latent ``x`` at ``sigma`` to the VP latent the UNet sees (EPS models):
    ``z = x / sqrt(1 + sigma^2)``. The reference code works on this scale."""
    return 1.0 / math.sqrt(1.0 + sigma * sigma)
