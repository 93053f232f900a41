"""Guidance rules that combine conditional and unconditional predictions per editing branch.

The edit sampler stacks branches along the batch: ``[source items, target items]``. Each branch has its
own guidance scale, so the source branch can run at CFG 1 (the same operator as the inversion, so it
reconstructs) while the target runs at CFG 7.5 against its negative prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BranchCFG:
    """Classifier-free guidance with one scale per branch; ``scales[k]`` applies to branch ``k``."""

    scales: tuple[float, ...]

    def needs_uncond(self, step: int) -> bool:
        """Whether any branch needs the unconditional prediction at this step."""
        return any(s != 1.0 for s in self.scales)

    def per_row(self, batch: int, device: torch.device) -> torch.Tensor:
        """Scales expanded to rows: the batch holds ``len(scales)`` branches of equal size."""
        branches = len(self.scales)
        if batch % branches:
            raise ValueError(f"batch {batch} does not split into {branches} branches")
        per = torch.tensor(self.scales, dtype=torch.float32, device=device)
        return per.repeat_interleave(batch // branches)

    def combine(
        self, step: int, x: torch.Tensor, sigma: float, cond: torch.Tensor, uncond: torch.Tensor | None
    ) -> torch.Tensor:
        """Guided denoised prediction: ``uncond + scale * (cond - uncond)`` row by row."""
        if uncond is None:
            return cond
        scale = self.per_row(x.shape[0], x.device).view(-1, *([1] * (x.dim() - 1)))
        return uncond + scale * (cond - uncond)

    def guide(
        self, step: int, x: torch.Tensor, sigma: float, cond: torch.Tensor, uncond: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``combine`` plus the per-element edit mask of this step (``None``: this rule makes none)."""
        return self.combine(step, x, sigma, cond, uncond), None


@dataclass(frozen=True)
class ProximalCFG(BranchCFG):
    """ProxEdit's guidance (the recipe SPDInv's P2P code runs): the guidance difference is soft-thresholded
    at its ``quantile`` over the whole batch, source rows included, before it is scaled.

    Reference (``ptp_utils.diffusion_step``, prox ``l0``): ``d = ε_c − ε_u``, ``thr = quantile(|d|, q)``,
    ``d ← d − clamp(d, −thr, thr)``. Here ``d`` is taken on denoised predictions, which differ from the
    ε-space ones by the common factor ``−σ``, so the threshold, the shrinkage and the masks are the same.
    ``shrink=False`` keeps plain CFG but still yields the edit mask (for inversion guidance alone).
    ``target_only``: the threshold is the quantile over the image's target rows and only they are shrunk
    (ProxEdit's MasaCtrl recipe, whose source branch runs at CFG 1).
    """

    quantile: float = 0.7
    shrink: bool = True
    target_only: bool = False

    def guide(
        self, step: int, x: torch.Tensor, sigma: float, cond: torch.Tensor, uncond: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if uncond is None:
            return cond, None
        delta = cond - uncond
        branches = len(self.scales)
        images = x.shape[0] // branches
        per_image = delta.reshape(branches, images, -1)[-1:] if self.target_only else delta.reshape(
            branches, images, -1)
        magnitude = per_image.abs().transpose(0, 1).reshape(images, -1).float()
        threshold = torch.quantile(magnitude, self.quantile, dim=1).to(delta.dtype)
        threshold = threshold.repeat(branches).view(-1, *([1] * (delta.dim() - 1)))
        shrunk = delta - torch.maximum(torch.minimum(delta, threshold), -threshold)
        if self.target_only:
            shrunk = torch.cat([delta[:-images], shrunk[-images:]])
        mask = edit_mask(shrunk, threshold)
        scale = self.per_row(x.shape[0], x.device).view(-1, *([1] * (x.dim() - 1)))
        return uncond + scale * (shrunk if self.shrink else delta), mask


def edit_mask(shrunk: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Where the edit acts: ``|shrunk difference| > threshold`` (the raw difference beyond twice the
    threshold), dilated by a 3×3 max-pool per channel, as the reference's inversion guidance uses it."""
    hot = (shrunk.abs() > threshold).float()
    flat = hot.reshape(-1, 1, *hot.shape[-2:])
    return (F.max_pool2d(flat, kernel_size=3, stride=1, padding=1) > 0).reshape(hot.shape)


@dataclass(frozen=True)
class EditRecipe:
    """How the edit sampler guides the branches for one engine (reference notes §2.1, §3.1, §4.3).

    ``pin_below``: inversion guidance. While the model timestep is below ``pin_below`` of the training
    range (reference: t < 400 of 1000), elements outside the step's edit mask are set to the stored
    inversion latent after the step; the source branch has no edit, so it is pinned whole.
    ``source_from_inversion``: after each step the source branch is set to the stored inversion latent of
    the next step (before an engine's step hook), so engines that read the source's features get those of
    the inverted trajectory and a local blend copies the inverted background (DirectInversion's order).
    ``source_from_reconstruction``: the latents the source branch is set to are not the stored inversion's but
    the DDIM reconstruction from its noise (the inversion's prompt at CFG 1), as PnPInversion's DDIM + PnP
    feeds its source branch; implies ``source_from_inversion``'s replay of that path.
    """

    source_cfg: float = 1.0
    proximal_quantile: float | None = None
    shrink: bool = True
    proximal_target_only: bool = False
    pin_below: float | None = None
    source_from_inversion: bool = False
    source_from_reconstruction: bool = False

    def __post_init__(self) -> None:
        if self.pin_below is not None and self.proximal_quantile is None:
            raise ValueError("inversion guidance needs the proximal quantile that makes its edit mask")
        if self.source_from_reconstruction and not self.source_from_inversion:
            raise ValueError("source_from_reconstruction replays the reconstruction: set source_from_inversion too")

    def guidance(self, target_cfg: float) -> BranchCFG:
        scales = (self.source_cfg, target_cfg)
        if self.proximal_quantile is None:
            return BranchCFG(scales)
        return ProximalCFG(scales, quantile=self.proximal_quantile, shrink=self.shrink,
                           target_only=self.proximal_target_only)
