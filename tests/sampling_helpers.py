"""Helpers the core tests use and the pack does not: Stable Diffusion's training sigmas and ComfyUI's
``ddim_uniform`` grid (the pack takes its grids from ComfyUI's model), one-branch deterministic DDIM sampling, and
the contraction rate of an inversion step's fixed-point map."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from spdinv_pack.spdinv.ddim import ddim_step
from spdinv_pack.spdinv.inversion import Denoiser, InversionResult, _FixedPointMap, mean_square
from spdinv_pack.spdinv.schedules import validate_sampling_grid, vp_input_scale


def sd_train_sigmas(
    timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """Training sigmas ``sqrt((1 - a) / a)`` of Stable Diffusion's scaled-linear schedule (ascending)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt().float()


def ddim_uniform_sigmas(train_sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """The ``ddim_uniform`` grid of ComfyUI: every ``len // steps``-th training sigma from index 1, descending,
    ending in 0. For 50 steps on a 1000-step schedule these are timesteps 981, 961, ..., 1 (diffusers' DDIM)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    sigmas = [float(s) for s in train_sigmas]
    start = 1
    grid: list[float] = []
    if math.isclose(sigmas[start], 0.0, abs_tol=1e-5):
        steps += 1
    else:
        grid.append(0.0)
    stride = max(len(sigmas) // steps, 1)
    grid.extend(sigmas[start::stride])
    return torch.tensor(grid[::-1], dtype=torch.float32)


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


def step_contraction(
    denoise: Denoiser,
    result: InversionResult,
    step: int,
    input_scale: Callable[[float], float] = vp_input_scale,
    iterations: int = 8,
    h: float = 1e-3,
    seed: int = 0,
    relaxation: float = 1.0,
) -> torch.Tensor:
    """Estimate, per batch item, the spectral radius of step ``step``'s fixed-point map at its stored latent
    (power iteration on finite differences; ``iterations + 1`` UNet passes), or of the relaxed map
    ``z + relaxation * (f(z) - z)`` that Anderson iterates.

    Below 1 the map is a contraction there and plain iteration converges at that rate; near 1 (v-prediction's
    last step on a zero-terminal-SNR grid, see :func:`step_relaxation`) it barely contracts. ``h`` is the
    probe's RMS size relative to the latent's.
    """
    grid = [float(s) for s in result.sigmas]
    scale_b = input_scale(grid[step])
    f = _FixedPointMap(denoise, result.latents[step + 1], grid[step + 1], grid[step], scale_b)
    z = result.latents[step] * scale_b
    view = (-1, *([1] * (z.dim() - 1)))
    size = mean_square(z).sqrt().clamp_min(1e-12).view(view) * h
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(z.shape, generator=gen).to(z)
    fz = f(z)
    radius = torch.zeros(z.shape[0])
    for _ in range(iterations):
        v = v / mean_square(v).sqrt().clamp_min(1e-30).view(view)
        w = (f(z + size * v) - fz) / size
        w = v + relaxation * (w - v)
        radius = mean_square(w).sqrt().cpu()
        v = w
    return radius
