"""An edit confined to a region: a MASK in the photo's or clip's pixels, read in the latent's cells and frames.

Outside the region the target branch is the source branch after every step (the source retraces the inversion), so
the edit equals the reconstruction there to the bit and the change stays inside, as KV-Edit keeps its background.
A latent cell belongs to the region when any of its pixels does; a clip's mask may give one frame (every frame
the same), one per latent frame, or one per pixel frame, which are then packed as Wan's VAE packs frames: the first
alone, then four to a latent frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FRAMES_PER_LATENT = 4
"""Pixel frames per latent frame after the first (Wan 2.1's causal VAE)."""


def latent_region(mask: torch.Tensor, latent_shape: tuple[int, ...]) -> torch.Tensor:
    """``mask`` (``[frames, H, W]`` or ``[H, W]``, values in 0..1, over 0.5 inside) as a bool mask over one branch's
    latent of ``latent_shape`` (``[1, C, h, w]`` or ``[1, C, T, h, w]``), shaped ``[1, 1, h, w]`` or
    ``[1, 1, T, h, w]``. Raises a ``ValueError`` naming ``mask`` when it cannot be matched to the latent."""
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3:
        raise ValueError(f"mask: expected [frames, height, width], got shape {tuple(mask.shape)}")
    frames, height, width = mask.shape
    h, w = latent_shape[-2:]
    scale = height // h
    if scale < 1 or height != scale * h or width != scale * w:
        raise ValueError(f"mask: {height}×{width} is not a whole multiple of the latent's {h}×{w} cells; use a mask "
                         "the size of the photo or clip that was encoded")
    cells = F.max_pool2d((mask > 0.5).float().unsqueeze(1), scale).squeeze(1) > 0  # [frames, h, w]
    if len(latent_shape) == 4:
        if frames != 1:
            raise ValueError(f"mask: {frames} frames for an image latent; give one mask")
        return cells.view(1, 1, h, w)
    latent_frames = latent_shape[2]
    if frames == 1 or frames == latent_frames:
        packed = cells.expand(latent_frames, h, w)
    elif frames == 1 + FRAMES_PER_LATENT * (latent_frames - 1):
        rest = cells[1:].view(latent_frames - 1, FRAMES_PER_LATENT, h, w).any(1)
        packed = torch.cat([cells[:1], rest])
    else:
        raise ValueError(f"mask: {frames} frames cannot be matched to the clip's {latent_frames} latent frames; give "
                         f"one mask, {latent_frames} (one per latent frame) or "
                         f"{1 + FRAMES_PER_LATENT * (latent_frames - 1)} (one per frame of the clip)")
    return packed.reshape(1, 1, latent_frames, h, w)
