"""The blocks of a diffusion transformer, in forward order, as ComfyUI's ``dit`` replace patches name them."""

from __future__ import annotations

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
