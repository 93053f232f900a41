"""Guidance rules that combine conditional and unconditional predictions per editing branch.

The edit sampler stacks branches along the batch: ``[source items, target items]``. Each branch has its
own guidance scale, so the source branch can run at CFG 1 (the same operator as the inversion, so it
reconstructs) while the target runs at CFG 7.5 against its negative prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
