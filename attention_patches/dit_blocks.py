"""The blocks of a diffusion transformer, in forward order, as ComfyUI's ``dit`` replace patches name them."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .run import check_fraction


@dataclass(frozen=True)
class DiTBlock:
    """One transformer block: its ``dit`` patch kind (``"double_block"``, ``"single_block"``), its index among
    blocks of that kind, and its position among all blocks in forward order."""

    kind: str
    index: int
    order: int


def dit_blocks(diffusion_model: Any, block_lists: Sequence[tuple[str, str]]) -> list[DiTBlock]:
    """The blocks of ``diffusion_model`` in forward order; ``block_lists`` pairs a patch kind with the attribute
    holding those blocks (SD3: ``("double_block", "joint_blocks")``; Flux: double then single-stream blocks)."""
    found: list[DiTBlock] = []
    for kind, attribute in block_lists:
        for index in range(len(getattr(diffusion_model, attribute, ()))):
            found.append(DiTBlock(kind, index, len(found)))
    return found


def block_from(relative_depth: float, blocks: int) -> int:
    """The first controlled block for a relative depth in [0, 1] (0: every block, 1: only the last)."""
    check_fraction("start_block", relative_depth)
    return min(blocks - 1, int(round(relative_depth * blocks)))


@functools.cache
def _forward_reads(cls: type, key: str) -> bool:
    try:
        return f'"{key}"' in inspect.getsource(cls.forward)
    except (OSError, TypeError, AttributeError):
        return False


def calls_pre_attention_patch(diffusion_model: Any, block_lists: Sequence[tuple[str, str]]) -> bool:
    """Whether this ComfyUI's blocks call the DiT pre-attention hook ``attn1_patch`` (0.33 does for Flux, Flux.2,
    Chroma and Qwen-Image; 0.3.64 does not): read from the code of the first block and its submodules."""
    for _, attribute in block_lists:
        blocks = getattr(diffusion_model, attribute, ())
        if len(blocks):
            return any(_forward_reads(type(m), "attn1_patch") for m in blocks[0].modules())
    return False
