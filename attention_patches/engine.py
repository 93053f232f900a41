"""What every editing engine shares: its guidance recipe, the run lifecycle and step windows.

The edit sampler calls :meth:`EditEngine.begin_run` before a run and :meth:`EditEngine.end_run` after it
(also on error or Cancel). Outside a run, and in a UNet call the edit sampler did not make, every patched
layer is plain attention. The step of a call is read from what ComfyUI puts in ``transformer_options``
(the current ``sigmas`` within the run's ``sample_sigmas``), so nothing has to be written into the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..spdinv.branches import BranchLayout
from ..spdinv.guidance import EditRecipe
from .attention_math import Attend, plain_attention
from .unet_layers import TransformerLayer


def steps_for(fraction: float, steps: int) -> int:
    """How many of ``steps`` a fraction covers, rounded down as the reference does (0.8·50 → 40)."""
    return int(math.floor(fraction * steps + 1e-9))


def check_fraction(name: str, value: float) -> None:
    """Refuse a step fraction outside ``[0, 1]``, naming the input."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: must be between 0 and 1, got {value}")


def step_of(transformer_options: Mapping[str, Any]) -> int | None:
    """Index of the call's sigma in the run's ``sample_sigmas`` (both set by ComfyUI's sampling), or
    ``None`` when the call is not on that grid (or either is missing)."""
    grid, sigma = transformer_options.get("sample_sigmas"), transformer_options.get("sigmas")
    if grid is None or sigma is None or len(grid) == 0:
        return None
    s = float(sigma.reshape(-1)[0])
    distance = (grid.detach().float().cpu() - s).abs()
    index = int(distance.argmin())
    return index if float(distance[index]) <= 1e-5 * max(1.0, abs(s)) else None


class EditEngine:
    """Base of the engines: ``recipe`` for the edit sampler, the run's step count, and whether a run is on.

    Subclasses say which attentions of a layer they patch (:meth:`controls`), may refuse a model
    (:meth:`check_layers`), override the attentions they change, and clear their per-run records in
    :meth:`reset_run`. ``after_step`` is the engine's hook on the stacked latent after each DDIM step.
    """

    name = "engine"

    def __init__(self, recipe: EditRecipe):
        self.recipe = recipe
        self.steps = 0
        self.active = False

    def controls(self, layer: TransformerLayer) -> tuple[str, ...]:
        return ()

    def check_layers(self, layers: Sequence[TransformerLayer]) -> None:
        """Raise a ``ValueError`` naming the input when the model cannot carry this engine."""

    def begin_run(self, steps: int, latent_shape: Sequence[int] = ()) -> None:
        """Start a sampling run of ``steps`` steps on latents of ``latent_shape`` (one branch)."""
        self.steps = steps
        self.active = True
        self.reset_run()

    def end_run(self) -> None:
        self.active = False

    def reset_run(self) -> None:
        """Clear what an earlier run recorded."""

    def within(self, step: int | None, fraction: float) -> bool:
        """Inside a run, before ``fraction`` of the steps (the reference's replace windows)."""
        return self.active and step is not None and step < steps_for(fraction, self.steps)

    def from_(self, step: int | None, fraction: float) -> bool:
        """Inside a run, from ``fraction`` of the steps on."""
        return self.active and step is not None and step >= steps_for(fraction, self.steps)

    def layout(self, rows: int, cond_or_uncond: Sequence[int]) -> BranchLayout:
        return BranchLayout.of_call(rows, cond_or_uncond, self.name)

    def after_step(self, step: int, x: torch.Tensor) -> torch.Tensor:
        return x

    def self_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, step: int | None,
        cond_or_uncond: Sequence[int], layer: TransformerLayer, spatial: tuple[int, int],
        attend: Attend = plain_attention,
    ) -> torch.Tensor:
        return attend(q, k, v, heads)

    def cross_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, step: int | None,
        cond_or_uncond: Sequence[int], layer: TransformerLayer, spatial: tuple[int, int],
        attend: Attend = plain_attention,
    ) -> torch.Tensor:
        return attend(q, k, v, heads)
