"""One SPDInv edit: the source and target branches sampled together down the inversion's grid.

The batch is the :class:`~.branches.BranchLayout` ``[source rows, target rows]``, both starting from the
inverted noise. Each step, in order:

1. **prediction**: ``predict`` returns the conditional (and, when the guidance needs it, unconditional)
   denoised predictions of the whole batch;
2. **guidance**: the recipe's per-branch rule mixes them (source at CFG 1, target at ``cfg``; ProxEdit's
   proximal rule also returns the step's edit mask);
3. **DDIM step** to the next sigma (deterministic; Euler in sigma space);
4. **replay** (``recipe.source_from_inversion``): the source rows are set to the stored inversion latent of
   the next step, so the next prediction reads the inverted trajectory's features (PnP) and the engine hook
   below copies the inverted background (DirectInversion corrects the source before P2P's local blend);
5. **pinning** (``recipe.pin_below``, the reference's inversion guidance): on steps whose model timestep is
   below ``pin_below`` of 1000, elements outside the edit mask are set to the stored inversion latent;
6. **preservation** (:mod:`.preservation`, when given): outside the edit region the target rows are set to the
   stored inversion latent of the next step, from the step the region is known on;
7. **engine hook** (e.g. P2P's local blend) on the stacked latent.

:func:`reconstruction_trajectory` makes the path a recipe with ``source_from_reconstruction`` replays instead
of the stored inversion (PnPInversion's DDIM + PnP: the source branch follows the DDIM reconstruction).

Nothing here knows ComfyUI: the node adapts a ComfyUI model to ``predict`` and reads the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .branches import BranchLayout
from .ddim import ddim_step
from .guidance import EditRecipe
from .preservation import Preservation, pin_outside, prediction_gap
from .schedules import validate_sampling_grid

BranchPredictor = Callable[[torch.Tensor, float, bool], tuple[torch.Tensor, torch.Tensor | None]]
"""``predict(x, sigma, with_uncond) -> (cond, uncond)``: denoised predictions for the stacked batch; ``uncond``
is ``None`` when ``with_uncond`` is false."""

StepHook = Callable[[int, torch.Tensor], torch.Tensor]
"""``hook(step, x) -> x`` on the stacked latent after a step (an engine's local blend)."""

Progress = Callable[[int, int, torch.Tensor, torch.Tensor], None]
"""``progress(step, total, x, denoised)`` after each step (previews, cancel)."""


@dataclass(frozen=True)
class EditResult:
    """What an edit produced: the target branch, the source branch, the steps that were pinned, and the edit region
    the target was preserved outside of (``None``: no preservation rule)."""

    edited: torch.Tensor
    reconstruction: torch.Tensor
    pinned_steps: tuple[int, ...]
    region: torch.Tensor | None = None


def pinned_steps(timesteps: Sequence[float], pin_below: float | None) -> tuple[int, ...]:
    """Steps where inversion guidance pins: the model timestep (of 1000) is below ``pin_below`` · 1000."""
    if pin_below is None:
        return ()
    return tuple(i for i, t in enumerate(timesteps) if float(t) < pin_below * 1000)


def reconstruction_trajectory(denoise: Callable[[torch.Tensor, float], torch.Tensor], noise: torch.Tensor,
                              sigmas: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Deterministic DDIM from ``noise`` down ``sigmas`` with ``denoise(x, sigma)`` (the inversion's prompt at
    CFG 1): every latent, ``[steps + 1, *noise.shape]``, ``[0]`` the noise, ``[i]`` at ``sigmas[i]`` (float32)."""
    validate_sampling_grid(sigmas)
    grid = [float(s) for s in sigmas]
    x = noise.to(device=noise.device if device is None else torch.device(device), dtype=torch.float32)
    path = [x]
    for i in range(len(grid) - 1):
        x = ddim_step(x, denoise(x, grid[i]).float(), grid[i], grid[i + 1])
        path.append(x)
    return torch.stack(path)


def run_edit(
    predict: BranchPredictor,
    trajectory: torch.Tensor,
    sigmas: torch.Tensor,
    recipe: EditRecipe,
    cfg: float,
    timesteps: Sequence[float],
    engine_step: StepHook | None = None,
    progress: Progress | None = None,
    device: torch.device | str | None = None,
    preserve: Preservation | None = None,
) -> EditResult:
    """Run a whole edit from an inversion's ``trajectory`` (``[steps + 1, images, ...]``, ``trajectory[i]``
    at ``sigmas[i]``, ``trajectory[0]`` the noise) on its grid ``sigmas``.

    ``timesteps[i]`` is the model's timestep at ``sigmas[i]`` (for the pinning window). The latents are
    kept in float32 on ``device`` (default: the trajectory's).
    """
    validate_sampling_grid(sigmas)
    grid = [float(s) for s in sigmas]
    steps = len(grid) - 1
    if trajectory.shape[0] != steps + 1:
        raise ValueError(f"the trajectory has {trajectory.shape[0]} latents for a grid of {steps} steps")
    if len(timesteps) < steps:
        raise ValueError(f"{len(timesteps)} timesteps given for {steps} steps")
    device = trajectory.device if device is None else torch.device(device)
    layout = BranchLayout(trajectory.shape[1])
    guidance = recipe.guidance(float(cfg))
    pinned = pinned_steps(timesteps[:steps], recipe.pin_below)

    def stored(i: int) -> torch.Tensor:
        return trajectory[i].to(device=device, dtype=torch.float32)

    x = layout.join(stored(0), stored(0))
    given = None if preserve is None else preserve.given_region(tuple(trajectory.shape[1:]))
    gap, region = None, None
    for i in range(steps):
        cond, uncond = predict(x, grid[i], guidance.needs_uncond(i))
        denoised, mask = guidance.guide(i, x, grid[i], cond, uncond)
        denoised = denoised.float()
        x = ddim_step(x, denoised, grid[i], grid[i + 1])
        if recipe.source_from_inversion:
            x = layout.join(stored(i + 1), layout.split(x)[1])
        if i in pinned and mask is not None:
            x = torch.where(mask, x, layout.join(stored(i + 1), stored(i + 1)))
        if preserve is not None:
            if region is None:
                if given is None:
                    step_gap = prediction_gap(*layout.split(denoised))
                    gap = step_gap if gap is None else gap + step_gap
                region = preserve.region_at(i, steps, gap, given)
            if region is not None:
                source, target = layout.split(x)
                x = layout.join(source, pin_outside(target, region, stored(i + 1)))
        if engine_step is not None:
            x = engine_step(i, x)
        if progress is not None:
            progress(i, steps, x, denoised)
    source, target = layout.split(x)
    return EditResult(target, source, pinned, region)
