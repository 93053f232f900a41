"""The preservation rule of an edit: outside the edit region the target branch follows the inversion.

Instruction editors (Qwen-Image-Edit, Flux Kontext, Flux.2 edits) regenerate the whole photo, so what the
instruction does not touch drifts by a few pixels or shades. An edit from an exact inversion can pin it instead:
after each step the target's latent outside the region is set to the stored inversion latent of the next step,
the path the source branch retraces (ProxEdit's inversion guidance, with a region instead of its per-element
mask), so at the end it is the photo's latent there, exactly.

The region is the user's mask, or found where the branches' guided predictions differ (as DiffEdit finds its
mask from two prompts' predictions): the per-cell mean absolute difference over the channels, summed over the
first ``estimate_for`` of the steps and averaged over each token's cells, scaled to ``[0, 1]`` per image, above
``threshold``, grown by ``grow`` cells and snapped to the model's patch grid, so a region always covers whole
tokens. The target runs free until
the region is known; the step that fixes it also pins. Where the branches predict the same everywhere (the
identity instruction) the region is empty and the target is the photo.

Latents are ``[images, channels, *cells]`` with ``cells`` ``(h, w)`` or ``(frames, h, w)``; a region is a bool
tensor ``[images, 1, *cells]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

EMPTY_GAP = 1e-6
"""A prediction difference whose range over the image is below this (relative to its largest value, or in
absolute terms for a zero one) marks no region: the branches predict the same."""


@dataclass(frozen=True)
class Preservation:
    """How the target keeps the photo outside the edit region (see the module docstring).

    ``mask``: the user's region ``[1 or images, 1, *cells]`` in ``[0, 1]`` at the latent's resolution (any cell
    it touches is inside), or ``None`` to find it. ``threshold``, ``estimate_for``: the automatic region's cut
    and the fraction of the steps it is estimated over. ``grow``: cells added around the region (both kinds).
    ``cell``: the model's patch size in latent cells ``(h, w)``, to which regions are snapped.
    """

    mask: torch.Tensor | None = None
    threshold: float = 0.5
    estimate_for: float = 0.25
    grow: int = 1
    cell: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold: must be between 0 and 1, got {self.threshold}")
        if not 0.0 < self.estimate_for <= 1.0:
            raise ValueError(f"estimate_for: must be above 0 and at most 1, got {self.estimate_for}")
        if self.grow < 0:
            raise ValueError(f"grow: must be 0 or more cells, got {self.grow}")

    def estimate_steps(self, steps: int) -> int:
        """How many of ``steps`` the automatic region is estimated over (at least one)."""
        return max(1, min(steps, math.floor(self.estimate_for * steps + 1e-9)))

    def given_region(self, latent_shape: tuple[int, ...]) -> torch.Tensor | None:
        """The user's region for latents of ``latent_shape``, or ``None`` where it is to be found."""
        if self.mask is None:
            return None
        images, cells = latent_shape[0], tuple(latent_shape[2:])
        mask = self.mask.float()
        if mask.dim() != len(cells) + 2 or mask.shape[1] != 1 or mask.shape[0] not in (1, images):
            raise ValueError(f"mask: shape {list(mask.shape)} does not fit latents {list(latent_shape)}; give one "
                             "mask, or one per image")
        if tuple(mask.shape[2:]) != cells:
            raise ValueError(f"mask: {list(mask.shape[2:])} cells, the latent has {list(cells)}")
        return self._shaped(mask.expand(images, *mask.shape[1:]) > 0)

    def region_at(self, step: int, steps: int, gap: torch.Tensor, given: torch.Tensor | None) -> torch.Tensor | None:
        """The region the target is pinned outside of after ``step``, or ``None`` while it is still being
        estimated. ``gap``: the summed :func:`prediction_gap` of the steps so far; ``given``: :meth:`given_region`."""
        if given is not None:
            return given
        if step + 1 < self.estimate_steps(steps):
            return None
        return self._shaped(region_of_gap(per_token(gap, self.cell), self.threshold))

    def _shaped(self, region: torch.Tensor) -> torch.Tensor:
        return snap_to_cells(grow_region(region, self.grow), self.cell)


def prediction_gap(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-cell mean absolute difference of two branches' predictions over the channels, ``[images, 1, *cells]``."""
    return (target.float() - source.float()).abs().mean(dim=1, keepdim=True)


def per_token(gap: torch.Tensor, cell: tuple[int, int]) -> torch.Tensor:
    """``gap`` averaged over each ``cell``-sized patch (one value per token, repeated over its cells), so that a
    region is cut where tokens differ, not single cells."""
    if tuple(cell) == (1, 1):
        return gap
    h, w = gap.shape[-2:]
    plane = gap.reshape(-1, 1, h, w).float()
    pad = (0, -w % cell[1], 0, -h % cell[0])
    tokens = F.avg_pool2d(F.pad(plane, pad, mode="replicate"), kernel_size=cell, stride=cell)
    return F.interpolate(tokens, scale_factor=cell, mode="nearest")[..., :h, :w].reshape(gap.shape)


def region_of_gap(gap: torch.Tensor, threshold: float) -> torch.Tensor:
    """Cells whose gap, scaled to ``[0, 1]`` over its image, is above ``threshold``; none where it is flat."""
    flat = gap.reshape(gap.shape[0], -1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    spread = high - low
    varies = spread > EMPTY_GAP * high.abs().clamp_min(1.0)
    scaled = (flat - low[:, None]) / spread.clamp_min(torch.finfo(flat.dtype).tiny)[:, None]
    return ((scaled > threshold) & varies[:, None]).reshape(gap.shape)


def grow_region(region: torch.Tensor, cells: int) -> torch.Tensor:
    """``region`` grown by ``cells`` in the image plane (a square max-pool; frames are not mixed)."""
    if cells == 0:
        return region
    plane = region.reshape(-1, 1, *region.shape[-2:]).float()
    grown = F.max_pool2d(plane, kernel_size=2 * cells + 1, stride=1, padding=cells)
    return (grown > 0).reshape(region.shape)


def snap_to_cells(region: torch.Tensor, cell: tuple[int, int]) -> torch.Tensor:
    """``region`` widened to whole ``cell``-sized patches (a patch is inside when any of its cells is)."""
    if tuple(cell) == (1, 1):
        return region
    h, w = region.shape[-2:]
    plane = region.reshape(-1, 1, h, w).float()
    pad = (0, -w % cell[1], 0, -h % cell[0])
    patches = F.max_pool2d(F.pad(plane, pad), kernel_size=cell, stride=cell)
    snapped = F.interpolate(patches, scale_factor=cell, mode="nearest")[..., :h, :w]
    return (snapped > 0).reshape(region.shape)


FRAMES_PER_LATENT = 4
"""Pixel frames per latent frame after the first (Wan 2.1's causal VAE: the first frame alone, then four a latent)."""


def mask_to_cells(mask: torch.Tensor, cells: tuple[int, ...]) -> torch.Tensor:
    """A pixel mask ``[masks, H, W]`` (ComfyUI's MASK) as a region mask ``[masks, 1, *cells]`` in ``[0, 1]``: a cell
    is the largest value of the pixels it covers (any covered pixel puts it inside). For a clip's ``(frames, h, w)``
    cells: one mask for every frame, one per latent frame, or one per frame of the clip (packed as Wan's VAE packs
    frames: the first alone, then four to a latent frame); a ``ValueError`` names the counts that fit."""
    if mask.dim() == 2:
        mask = mask[None]
    h, w = cells[-2:]
    plane = F.adaptive_max_pool2d(mask.float()[:, None], (h, w))
    if len(cells) == 2:
        return plane
    frames, given = cells[0], plane.shape[0]
    clip = 1 + FRAMES_PER_LATENT * (frames - 1)
    if given == 1:
        packed = plane.expand(frames, -1, -1, -1)
    elif given == frames:
        packed = plane
    elif given == clip:
        rest = plane[1:].reshape(frames - 1, FRAMES_PER_LATENT, 1, h, w).amax(dim=1)
        packed = torch.cat([plane[:1], rest])
    else:
        raise ValueError(f"mask: {given} frames cannot be matched to the clip's {frames} latent frames; give one mask, "
                         f"{frames} (one per latent frame) or {clip} (one per frame of the clip)")
    return packed.transpose(0, 1)[None]


def pin_outside(target: torch.Tensor, region: torch.Tensor, inverted: torch.Tensor) -> torch.Tensor:
    """The target with ``inverted`` (the stored inversion latent of the same step) outside ``region``."""
    return torch.where(region.to(target.device), target, inverted.to(target.dtype))
