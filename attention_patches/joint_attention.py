"""Mutual attention on MM-DiT joint attention (SD3.x, Flux): the target's image tokens read the source's.

In a joint (double-stream) block, text and image tokens attend together: queries, keys and values hold the text
tokens first and the image tokens last. From ``start_step`` of the edit on, in the blocks from ``start_block``
on, the target rows' image-token keys and values (``share`` "values": the values only, as RF-Solver-Edit shares
them) are replaced by their source rows', in every CFG chunk, while the target's text tokens keep their own. The
target's queries then attend to its own prompt and to the source's image: the new prompt steers the content,
the source's image tokens carry layout and appearance (MasaCtrl's idea, as KV-Edit and RF-Solver-Edit carry it
to flow transformers). Source rows are untouched, so the source branch still retraces the inversion. An
attention over image tokens only (SD3.5's second attention in its first blocks) shares all its tokens.

Prompt-to-Prompt's cross-attention control does not carry over: in joint attention the text tokens are
updated by every block (the text stream has its own weights per block), so a text token's attention map is
not a fixed word's map, and replacing maps across prompts of different lengths changes the attention of the
text tokens themselves. This module offers the mutual-attention engine only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..spdinv.guidance import EditRecipe
from .engine import EditEngine, check_fraction

SHARES = ("keys and values", "values")
"""What the target's image tokens take from the source's: keys and values (MasaCtrl, KV-Edit) or values only
(RF-Solver-Edit)."""

JointAttend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``attend(q, k, v)``: the host's attention for one call with everything but q, k, v bound."""


def block_from(relative_depth: float, blocks: int) -> int:
    """The first controlled block for a relative depth in [0, 1] (0: every block, 1: only the last)."""
    check_fraction("start_block", relative_depth)
    return min(blocks - 1, int(round(relative_depth * blocks)))


class JointMutualAttention(EditEngine):
    """One edit's mutual-attention controller for an MM-DiT; the edit sampler drives it like the other engines."""

    name = "MM-DiT mutual attention"

    def __init__(self, start_step: float, start_block: int, blocks: int, share: str = SHARES[0],
                 recipe: EditRecipe | None = None):
        check_fraction("start_step", start_step)
        if share not in SHARES:
            raise ValueError(f"share: must be one of {', '.join(SHARES)}, got {share!r}")
        if not 0 <= start_block < blocks:
            raise ValueError(f"start_block: the model has {blocks} joint blocks; block {start_block} controls none")
        self.start_step = start_step
        self.start_block = start_block
        self.blocks = blocks
        self.share = share
        super().__init__(recipe if recipe is not None else EditRecipe())

    def controls_block(self, index: int) -> bool:
        """Whether block ``index`` (in the model's order of joint, then single-stream, blocks) is controlled."""
        return index >= self.start_block

    def joint_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: int | None,
                        cond_or_uncond: Sequence[int], block: int, image_tokens: int, token_dim: int,
                        attend: JointAttend) -> torch.Tensor:
        """One joint attention call: ``q``, ``k``, ``v`` with rows first and tokens along ``token_dim`` (the last
        ``image_tokens`` of them are image tokens; all of them in an image-only attention)."""
        if not self.from_(step, self.start_step) or not self.controls_block(block):
            return attend(q, k, v)
        layout = self.layout(q.shape[0], cond_or_uncond)
        source, target = layout.source_rows().to(q.device), layout.target_rows().to(q.device)
        tokens = k.shape[token_dim]
        image = slice(tokens - min(image_tokens, tokens), tokens)
        lead = (slice(None),) * (token_dim - 1)
        v = v.clone()
        v[(target, *lead, image)] = v[(source, *lead, image)]
        if self.share == "keys and values":
            k = k.clone()
            k[(target, *lead, image)] = k[(source, *lead, image)]
        return attend(q, k, v)
