"""A small random-weight EPS denoiser in ComfyUI's convention, for core tests without weights.

``denoise(x, sigma)`` scales ``x`` to the VP latent ``x / sqrt(1 + sigma^2)``, predicts eps with a small
time-conditioned conv net and returns ``x - sigma * eps``, like ComfyUI's ``BaseModel.apply_model`` for
SD1.x. It is nonlinear enough that plain DDIM inversion leaves a visible fixed-point residual.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from spdinv_pack.tests.sampling_helpers import sd_train_sigmas


class ToyEpsNet(nn.Module):
    def __init__(self, channels: int = 4, hidden: int = 32, seed: int = 0, gain: float = 1.0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv_in = nn.Conv2d(channels, hidden, 3, padding=1)
        self.time = nn.Linear(16, hidden)
        self.conv_mid = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv_out = nn.Conv2d(hidden, channels, 3, padding=1)
        for p in self.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.data = torch.randn(p.shape, generator=gen) * (gain / math.sqrt(fan_in) if p.dim() > 1 else 0.1)
        self.requires_grad_(False)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(torch.arange(8, dtype=torch.float32) * -math.log(1000.0) / 8)
        angles = t.float().view(-1, 1) * freqs.view(1, -1)
        emb = self.time(torch.cat([angles.sin(), angles.cos()], dim=1))
        h = torch.nn.functional.silu(self.conv_in(z) + emb[:, :, None, None])
        h = torch.nn.functional.silu(self.conv_mid(h))
        return self.conv_out(h) + 0.5 * z


class ToyDenoiser:
    """Callable ``denoise(x, sigma, items=None) -> denoised`` that counts its forward passes and the batch rows
    it evaluated; with ``items`` it evaluates only those rows (the others come back as ``x``), as the pack's
    ComfyUI denoiser does."""

    def __init__(self, net: ToyEpsNet | None = None):
        self.net = net or ToyEpsNet()
        self.train_sigmas = sd_train_sigmas()
        self.log_sigmas = self.train_sigmas.log()
        self.forwards = 0
        self.rows = 0

    def timestep(self, sigma: float) -> torch.Tensor:
        return (self.log_sigmas - math.log(sigma)).abs().argmin().float()

    def __call__(self, x: torch.Tensor, sigma: float, items: torch.Tensor | None = None) -> torch.Tensor:
        self.forwards += 1
        if items is not None:
            out = x.clone()
            out[items] = self(x[items], sigma)
            self.forwards -= 1
            return out
        self.rows += x.shape[0]
        return self.predict(x, sigma)

    def predict(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        z = x / math.sqrt(1.0 + sigma * sigma)
        t = self.timestep(sigma).expand(x.shape[0])
        return x - sigma * self.net(z, t)


def toy_latent(batch: int = 1, size: int = 8, seed: int = 1) -> torch.Tensor:
    """A smooth random latent of SD-like magnitude (already scaled as the model sees it)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, 4, size // 2, size // 2, generator=gen)
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)


def v_skip(sigma: float) -> float:
    """``c_skip`` of a v-prediction model (sigma_data 1)."""
    return 1.0 / (1.0 + sigma * sigma)


class ToyVDenoiser(ToyDenoiser):
    """The same net read as a v-prediction, as ComfyUI's ``V_PREDICTION`` sampling does (sigma_data 1)."""

    def predict(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        norm = math.sqrt(1.0 + sigma * sigma)
        t = self.timestep(sigma).expand(x.shape[0])
        return v_skip(sigma) * x - sigma / norm * self.net(x / norm, t)
