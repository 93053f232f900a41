"""Deterministic DDIM sampling down a sigma grid (one branch; the edit's two-branch loop is ``edit_loop``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .ddim import ddim_step
from .schedules import validate_sampling_grid

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
"""``denoise(x, sigma) -> denoised``."""


def ddim_sample(
    denoise: Denoiser,
    x_start: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run deterministic DDIM from ``x_start`` at ``sigmas[0]`` down to ``sigmas[-1] == 0``.

    ``callback(step, total, x, denoised)`` runs after each step (progress, previews, cancel).
    """
    validate_sampling_grid(sigmas)
    grid = [float(s) for s in sigmas]
    n = len(grid) - 1
    x = x_start.float()
    for i in range(n):
        denoised = denoise(x, grid[i]).float()
        x = ddim_step(x, denoised, grid[i], grid[i + 1])
        if callback is not None:
            callback(i, n, x, denoised)
    return x
