"""Latents with a real VAE latent's statistics, to measure reconstruction on."""

from __future__ import annotations

import torch


def sd_like_latent(resolution: int, batch: int = 1, seed: int = 0, channels: int = 4, scale: float = 0.18215,
                   shift: float = 0.0) -> torch.Tensor:
    """Raw LATENT samples with the statistics of a real VAE latent: std 1 after the model's latent scale (SD1.5's
    0.18215 by default; SD3: 16 channels, scale 1.5305, shift 0.0609).

    The random VAE encodes images to latents about 50x smaller than a trained VAE does, which makes
    every reconstruction error look huge relative to the signal. Reconstruction quality is measured on
    latents like this instead: smooth (bicubic upsampling of a 4x coarser field), as image latents are.
    """
    gen = torch.Generator().manual_seed(seed)
    size = resolution // 8
    coarse = torch.randn(batch, channels, max(1, size // 4), max(1, size // 4), generator=gen)
    z = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return z / z.std() / scale + shift
