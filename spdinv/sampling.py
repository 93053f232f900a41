"""Deterministic DDIM sampling down a sigma grid, with per-step hooks for editing engines."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .ddim import ddim_step
from .schedules import validate_sampling_grid

StepDenoiser = Callable[[torch.Tensor, float, int], torch.Tensor]
"""``denoise(x, sigma, step) -> denoised``; the step index lets engines follow the schedule."""

LatentHook = Callable[[int, torch.Tensor], torch.Tensor]
"""``hook(step, x) -> x``: e.g. feed a branch the stored inversion latent, or pin it after a step."""


def ddim_sample(
    denoise: StepDenoiser,
    x_start: torch.Tensor,
    sigmas: torch.Tensor,
    before_step: LatentHook | None = None,
    after_step: LatentHook | None = None,
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
        if before_step is not None:
            x = before_step(i, x)
        denoised = denoise(x, grid[i], i).float()
        x = ddim_step(x, denoised, grid[i], grid[i + 1])
        if after_step is not None:
            x = after_step(i, x)
        if callback is not None:
            callback(i, n, x, denoised)
    return x
