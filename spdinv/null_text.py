"""Null-text inversion (Mokady et al., CVPR 2023), as PnPInversion's benchmark runs it.

After a DDIM inversion with the source prompt, the unconditional ("null") prompt embedding is tuned step by
step so that guided sampling (source prompt at ``cfg`` against the tuned null) follows the inversion's
trajectory. The edit then uses each step's tuned embedding as the negative of both branches. The reference:
Adam with lr ``1e-2 * (1 - i / 100)`` at step ``i`` (from the noise), at most 10 iterations a step, stopping
once the step's loss is below ``1e-5 + i * 2e-5``; the loss is the mean squared gap between the guided DDIM
step and the stored latent, on the VP scale; each step starts from the previous step's embedding, the first
from the empty prompt's; the walk then continues from the guided step taken with the tuned embedding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .ddim import ddim_step
from .schedules import validate_sampling_grid, vp_input_scale

CondDenoiser = Callable[[torch.Tensor, float], torch.Tensor]
"""``cond(x, sigma) -> denoised`` with the source prompt (no gradient needed)."""
NullDenoiser = Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]
"""``uncond(x, sigma, embedding) -> denoised`` with ``embedding`` (``[batch, tokens, width]``) as the prompt;
differentiable in ``embedding``."""
StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclass(frozen=True)
class NullTextSettings:
    """The reference's defaults."""

    cfg: float = 7.5
    inner_steps: int = 10
    lr: float = 1e-2
    epsilon: float = 1e-5

    def __post_init__(self) -> None:
        if self.inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {self.inner_steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass
class NullTextResult:
    """``embeddings[i]`` is the null embedding of the edit's step ``i`` (from the noise); ``losses[i]`` and
    ``iterations[i]`` the step's last loss and Adam iterations."""

    embeddings: torch.Tensor
    losses: torch.Tensor
    iterations: torch.Tensor


def _guided(cond: torch.Tensor, uncond: torch.Tensor, cfg: float) -> torch.Tensor:
    return uncond + cfg * (cond - uncond)


def optimise_null_text(
    cond: CondDenoiser,
    uncond: NullDenoiser,
    trajectory: torch.Tensor,
    sigmas: torch.Tensor,
    null: torch.Tensor,
    settings: NullTextSettings | None = None,
    input_scale: Callable[[float], float] = vp_input_scale,
    callback: StepCallback | None = None,
) -> NullTextResult:
    """Tune one null embedding per step along ``trajectory`` (``[steps + 1, batch, ...]``, ``trajectory[0]``
    the noise at ``sigmas[0]``), starting from ``null`` (the empty prompt's embedding, one row per photo or
    one for all). Each photo has its own embeddings and stops on its own loss, as if tuned alone."""
    settings = settings or NullTextSettings()
    validate_sampling_grid(sigmas)
    grid = [float(s) for s in sigmas]
    steps = len(grid) - 1
    if trajectory.shape[0] != steps + 1:
        raise ValueError(f"the trajectory has {trajectory.shape[0]} latents for a grid of {steps} steps")
    batch = trajectory.shape[1]
    emb = null.detach().float().expand(batch, *null.shape[1:]).clone()
    x = trajectory[0].float()
    embeddings: list[torch.Tensor] = []
    losses: list[torch.Tensor] = []
    iterations: list[int] = []
    for i in range(steps):
        sigma, nxt = grid[i], grid[i + 1]
        scale = input_scale(nxt)
        target = trajectory[i + 1].float() * scale
        with torch.no_grad():
            cond_i = cond(x, sigma).float()
        with torch.inference_mode(False), torch.enable_grad():
            x, cond_i, target = x.clone(), cond_i.clone(), target.clone()  # normal tensors, savable for backward
            emb = emb.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([emb], lr=settings.lr * (1.0 - i / 100.0))
            done = torch.zeros(batch, dtype=torch.bool, device=emb.device)
            last = torch.full((batch,), float("nan"), device=emb.device)
            used = 0
            for j in range(settings.inner_steps):
                prev = ddim_step(x, _guided(cond_i, uncond(x, sigma, emb).float(), settings.cfg), sigma, nxt)
                per_item = (prev * scale - target).square().flatten(1).mean(dim=1)
                frozen = emb.detach().clone()
                opt.zero_grad()
                (per_item * ~done).sum().backward()
                opt.step()
                with torch.no_grad():
                    emb.copy_(torch.where(done.view(-1, 1, 1), frozen, emb))
                last = torch.where(done, last, per_item.detach())
                used = j + 1
                done = done | (per_item.detach() < settings.epsilon + i * 2e-5)
                if bool(done.all()):
                    break
        emb = emb.detach()
        embeddings.append(emb.clone())
        losses.append(last.cpu())
        iterations.append(used)
        with torch.no_grad():
            x = ddim_step(x, _guided(cond_i, uncond(x, sigma, emb).float(), settings.cfg), sigma, nxt)
        if callback is not None:
            callback(i, steps, x)
    return NullTextResult(torch.stack(embeddings), torch.stack(losses), torch.tensor(iterations))
