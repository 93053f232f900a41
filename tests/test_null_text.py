"""Null-text inversion's per-step tuning (spdinv.null_text) on a toy denoiser with a prompt embedding."""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.spdinv.ddim import ddim_step
from spdinv_pack.spdinv.inversion import InversionSettings, invert
from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.spdinv.null_text import NullTextSettings, optimise_null_text
from spdinv_pack.tests.sampling_helpers import ddim_uniform_sigmas

from toy_model import ToyDenoiser, toy_latent

STEPS, TOKENS, WIDTH = 6, 4, 16


class PromptedToy:
    """The toy denoiser steered by a prompt embedding ``[batch, TOKENS, WIDTH]`` through a fixed linear map onto
    the latent: ``denoised = model(x) - sigma * map(embedding)``; the empty prompt's embedding is near the
    source's, so guidance drifts the way a real null prompt's does, by a few dB, not to nonsense."""

    def __init__(self, model: ToyDenoiser, size: int = 8):
        gen = torch.Generator().manual_seed(7)
        self.model, self.shape = model, (4, size, size)
        self.map = 4 * torch.randn(TOKENS * WIDTH, 4 * size * size, generator=gen) / (TOKENS * WIDTH) ** 0.5
        self.source = torch.randn(1, TOKENS, WIDTH, generator=gen)
        self.empty = self.source + 0.05 * torch.randn(1, TOKENS, WIDTH, generator=gen)

    def __call__(self, x: torch.Tensor, sigma: float, emb: torch.Tensor) -> torch.Tensor:
        shift = (emb.flatten(1) @ self.map).view(-1, *self.shape)
        return self.model(x, sigma) - sigma * 0.1 * shift.expand(x.shape[0], *self.shape)

    def cond(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self(x, sigma, self.source)


def guided_sample(toy: PromptedToy, noise: torch.Tensor, sigmas: torch.Tensor, nulls: torch.Tensor,
                  cfg: float) -> torch.Tensor:
    x = noise
    for i in range(len(sigmas) - 1):
        s, n = float(sigmas[i]), float(sigmas[i + 1])
        c, u = toy.cond(x, s), toy(x, s, nulls[i])
        x = ddim_step(x, u + cfg * (c - u), s, n)
    return x


def test_tuned_null_embeddings_make_guided_sampling_retrace_the_ddim_inversion():
    toy = PromptedToy(ToyDenoiser())
    x0 = torch.cat([toy_latent(seed=1), toy_latent(seed=2)])
    sigmas = ddim_uniform_sigmas(toy.model.train_sigmas, STEPS)
    inv = invert(toy.cond, x0, sigmas, InversionSettings(method="ddim"))
    result = optimise_null_text(toy.cond, toy, inv.latents, sigmas, toy.empty, NullTextSettings(cfg=7.5))
    steps = len(sigmas) - 1
    assert result.embeddings.shape == (steps, 2, TOKENS, WIDTH)
    empty = toy.empty.expand(steps, 2, TOKENS, WIDTH)
    plain = guided_sample(toy, inv.noise, sigmas, empty, 7.5)
    tuned = guided_sample(toy, inv.noise, sigmas, result.embeddings, 7.5)
    cfg1 = guided_sample(toy, inv.noise, sigmas, empty, 1.0)
    db = [latent_psnr(out, x0) for out in (plain, tuned, cfg1)]
    print(f"\n[core] guided 7.5 with the empty prompt {db[0]:.1f} dB, with tuned nulls {db[1]:.1f} dB, "
          f"CFG 1 {db[2]:.1f} dB")
    assert db[1] > db[0] + 4 and db[1] > db[2] + 1  # it even corrects DDIM inversion's own drift (CFG 1)
    assert int(result.iterations.max()) <= 10 and int(result.iterations.min()) >= 1
    alone = optimise_null_text(toy.cond, toy, inv.latents[:, 1:], sigmas, toy.empty, NullTextSettings(cfg=7.5))
    torch.testing.assert_close(result.embeddings[:, 1:], alone.embeddings, atol=1e-3, rtol=0)  # Adam: last bits


def test_null_text_settings_are_checked():
    with pytest.raises(ValueError, match="inner_steps"):
        NullTextSettings(inner_steps=-1)
