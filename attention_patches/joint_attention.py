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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .attention_call import AttentionCall
from .dit_blocks import DiTBlock
from .engine import EditEngine
from .families import MMDIT
from .run import check_fraction

SHARES = ("keys and values", "values")
"""What the target's image tokens take from the source's: keys and values (MasaCtrl, KV-Edit) or values only
(RF-Solver-Edit)."""


@dataclass(frozen=True, eq=False)
class JointMutualAttention(EditEngine):
    """One edit's mutual-attention configuration for an MM-DiT: from ``start_step`` (fraction of the steps), in
    the blocks from ``start_block`` (position in forward order) on."""

    start_step: float = 0.1
    start_block: int = 0
    share: str = SHARES[0]
    name: ClassVar[str] = "MM-DiT mutual attention"
    node: ClassVar[str] = MMDIT
    sites: ClassVar[str] = "dit blocks"

    def __post_init__(self) -> None:
        check_fraction("start_step", self.start_step)
        if self.share not in SHARES:
            raise ValueError(f"share: must be one of {', '.join(SHARES)}, got {self.share!r}")

    def check_sites(self, blocks: Sequence[DiTBlock]) -> None:
        if not 0 <= self.start_block < len(blocks):
            raise ValueError(f"start_block: the model has {len(blocks)} joint blocks; block {self.start_block} "
                             "controls none")

    def controls(self, block: DiTBlock) -> tuple[str, ...]:
        return ("joint",) if block.order >= self.start_block else ()

    def joint_attention(self, call: AttentionCall) -> torch.Tensor:
        """One joint attention call: rows first, tokens along ``call.token_dim``, the last ``call.image_tokens``
        of them image tokens (all of them in an image-only attention)."""
        if not call.from_(self.start_step) or call.site.order < self.start_block:
            return call.attend()
        q, k, v = call.q, call.k, call.v
        layout = call.layout(self.name)
        source, target = layout.source_rows().to(q.device), layout.target_rows().to(q.device)
        tokens = k.shape[call.token_dim]
        image = slice(tokens - min(call.image_tokens or tokens, tokens), tokens)
        lead = (slice(None),) * (call.token_dim - 1)
        v = v.clone()
        v[(target, *lead, image)] = v[(source, *lead, image)]
        if self.share == "keys and values":
            k = k.clone()
            k[(target, *lead, image)] = k[(source, *lead, image)]
        return call.attend(q, k, v)
