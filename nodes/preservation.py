"""SPDInvPreservation: the edit sampler's preservation rule (keep the photo outside the edit region), and the
region as a MASK at the photo's size."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..spdinv.preservation import Preservation, mask_to_cells

PreservationType = io.Custom("SPDINV_PRESERVATION")


@dataclass(frozen=True)
class PreservationRequest:
    """The rule's settings and the user's pixel MASK (``None``: find the region); the edit sampler makes the
    latent-space :class:`Preservation` of its model and latent from it (:meth:`for_edit`)."""

    rule: Preservation
    mask: torch.Tensor | None = None

    def for_edit(self, model: Any, latent_shape: tuple[int, ...]) -> Preservation:
        """The rule on ``model``'s patch grid, the mask at ``latent_shape``'s cells."""
        cells = tuple(latent_shape[2:])
        try:
            mask = None if self.mask is None else mask_to_cells(self.mask, cells)
        except ValueError as e:
            raise ValueError(f"preserve: {e}") from None
        if mask is not None and mask.shape[0] not in (1, latent_shape[0]):
            raise ValueError(f"preserve: its mask has {mask.shape[0]} images for {latent_shape[0]} inverted; give one "
                             "mask, or one per image (per frame for video)")
        return replace(self.rule, mask=mask, cell=patch_cells(model))


def patch_cells(model: Any) -> tuple[int, int]:
    """Latent cells per token of ``model`` in ``(h, w)`` (a DiT's patch size; 1 for a UNet)."""
    size = getattr(model.get_model_object("diffusion_model"), "patch_size", 1)
    if isinstance(size, int):
        return (size, size)
    return (int(size[-2]), int(size[-1]))


def region_mask(region: torch.Tensor | None, latent_shape: tuple[int, ...], model: Any) -> torch.Tensor:
    """The edit region as a MASK at pixel size ``[images · frames, H, W]`` (everything, without a rule)."""
    ratio = getattr(model.get_model_object("latent_format"), "spacial_downscale_ratio", 8)
    images, cells = latent_shape[0], tuple(latent_shape[2:])
    if region is None:
        region = torch.ones(images, 1, *cells, dtype=torch.bool)
    planes = region.float().movedim(1, -3).reshape(-1, 1, *cells[-2:]) if len(cells) == 3 else region.float()
    return F.interpolate(planes.cpu(), scale_factor=ratio, mode="nearest")[:, 0]


class SPDInvPreservation(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPDInvPreservation",
            display_name="SPDInv Preserve Outside Edit",
            category="SPDInv",
            description="For the SPDInv Edit Sampler: outside the edit region the target follows the inversion, so "
                        "the photo stays exactly as it was there (no pixel shift or drift from instruction editors "
                        "such as Qwen-Image-Edit, Flux Kontext or Flux.2). The region is the mask, or where the "
                        "source and target predictions differ; the sampler's 'edit region' output shows it.",
            inputs=[
                io.Mask.Input("mask", optional=True,
                              tooltip="The region the edit may change (white), at any size: any latent cell it "
                                      "touches is inside. Leave unconnected to find it from the predictions."),
                io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Found region: where the branches' prediction difference is above this "
                                       "fraction of its range. Lower it if the edit is cut off, raise it if too "
                                       "much of the photo changes."),
                io.Float.Input("estimate_for", default=0.25, min=0.05, max=1.0, step=0.05,
                               tooltip="Found region: fraction of the steps (from the start) it is estimated over; "
                                       "the target is kept outside it from then on."),
                io.Int.Input("grow", default=1, min=0, max=16,
                             tooltip="Latent cells (8 or 16 pixels each) added around the region, to soften the "
                                     "seam."),
            ],
            outputs=[PreservationType.Output(display_name="preserve",
                                             tooltip="Connect to the SPDInv Edit Sampler's 'preserve' input.")],
        )

    @classmethod
    def execute(cls, threshold: float, estimate_for: float, grow: int, mask: torch.Tensor | None = None
                ) -> io.NodeOutput:
        rule = Preservation(threshold=threshold, estimate_for=estimate_for, grow=grow)
        return io.NodeOutput(PreservationRequest(rule, None if mask is None else mask.float().cpu()))
