"""Mutual attention on MM-DiT joint attention (SD3.x, Flux): the target's image tokens read the source's.

In a joint (double-stream) block, text and image tokens attend together: queries, keys and values hold the text
tokens first and the image tokens last. From ``start_step`` of the edit on, in the blocks from ``start_block``
on, the target rows' image-token keys and values (``share`` "values": the values only, as RF-Solver-Edit shares
them) are replaced by their source rows', in every CFG chunk, while the target's text tokens keep their own. The
target's queries then attend to its own prompt and to the source's image: the new prompt steers the content,
the source's image tokens carry layout and appearance (MasaCtrl's idea, as KV-Edit and RF-Solver-Edit carry it
to flow transformers). Source rows are untouched, so the source branch still retraces the inversion. An
attention over image tokens only (SD3.5's second attention in its first blocks) shares all its tokens.

Prompt-to-Prompt's cross-attention control does not carry over to joint attention (it does to Wan's
cross-attention, see :mod:`.prompt_to_prompt`): in joint attention the text tokens are
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

    def shared_keys_values(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
        """The call's keys and values with the target rows' image tokens taken from their source rows (rows first,
        tokens along ``call.token_dim``), or the call's own outside the run's window and blocks."""
        if not call.from_(self.start_step) or call.site.order < self.start_block:
            return call.k, call.v
        k, v = call.k, call.v
        layout = call.layout(self.name)
        source, target = layout.source_rows().to(k.device), layout.target_rows().to(k.device)
        index = (*(slice(None),) * (call.token_dim - 1), call.image_tokens())
        v = v.clone()
        v[(target, *index)] = v[(source, *index)]
        if self.share == "keys and values":
            k = k.clone()
            k[(target, *index)] = k[(source, *index)]
        return k, v

    def joint_attention(self, call: AttentionCall) -> torch.Tensor:
        """One joint attention call, attended with :meth:`shared_keys_values`."""
        return call.attend(call.q, *self.shared_keys_values(call))

    def self_attention(self, call: AttentionCall) -> torch.Tensor:
        """A video DiT's self-attention over the clip's tokens (Wan), shared as an attention of image tokens only."""
        return self.joint_attention(call)

    def pre_attention(self, call: AttentionCall) -> dict[str, torch.Tensor]:
        """ComfyUI's DiT ``attn1_patch``: the shared keys and values, to attend with the host's own attention."""
        k, v = self.shared_keys_values(call)
        return {} if k is call.k and v is call.v else {"k": k, "v": v}
