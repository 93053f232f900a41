"""The blocks of a diffusion transformer, in forward order, as ComfyUI's ``dit`` replace patches name them, and where
its attention calls hold the noisy image's tokens."""

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


def block_paths(block_lists: Sequence[tuple[str, str]], blocks: Sequence[DiTBlock]) -> dict[str, DiTBlock]:
    """Module path (inside the diffusion model) of each of ``blocks``: ``"<attribute>.<index>"``."""
    attribute = dict(block_lists)
    return {f"{attribute[b.kind]}.{b.index}": b for b in blocks}


@dataclass(frozen=True)
class ImageTokens:
    """Where a DiT's attention calls hold the noisy image's tokens: ``first`` (HiDream: the image, then the text),
    else after everything else, padded to a multiple of ``pad_multiple`` (Z-Image pads caption and image tokens to
    32 each; 1: SD3/Flux, the image's tokens are the last)."""

    first: bool = False
    pad_multiple: int = 1

    def __post_init__(self) -> None:
        if self.pad_multiple < 1:
            raise ValueError(f"pad_multiple: must be at least 1, got {self.pad_multiple}")

    def span(self, tokens: int, image: int) -> tuple[int, int]:
        """The ``(start, stop)`` range of ``image`` image tokens in a call of ``tokens`` tokens."""
        padded = image if self.first else -(-image // self.pad_multiple) * self.pad_multiple
        if not 0 < image <= padded <= tokens:
            raise ValueError(f"a call of {tokens} tokens cannot hold {image} image tokens ({padded} padded)")
        start = 0 if self.first else tokens - padded
        return start, start + image


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
