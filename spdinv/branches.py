"""The branch layout of an edit: which rows of a batch belong to the source and to the target branch.

The edit sampler stacks the two branches along the batch, ``[source rows, target rows]``, row ``j`` of one
pairing with row ``j`` of the other (one row per image). A UNet call may carry several CFG chunks of that
batch (ComfyUI's ``cond_or_uncond``: 0 conditional, 1 unconditional), each laid out the same way, except that
the edit sampler may leave the source rows out of the unconditional chunks (:class:`Chunks`): the source
branch's negative is its own prompt, so those rows would repeat the conditional chunk's source rows exactly.
The edit loop, the guidance rules, the engines and the preview all read rows through :class:`BranchLayout`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

COND = 0
"""ComfyUI's ``cond_or_uncond`` value of a conditional chunk."""


class Chunks(tuple):
    """ComfyUI's ``cond_or_uncond`` of one UNet call (a tuple of 0/1, one per CFG chunk) that also says whether
    the call's unconditional chunks carry target rows only (``shared_source``), their source rows being the
    conditional chunk's. The attention patches hand it to the engines in place of the plain list."""

    shared_source: bool

    def __new__(cls, kinds: Sequence[int], shared_source: bool = False) -> Chunks:
        chunks = super().__new__(cls, (int(k) for k in kinds))
        chunks.shared_source = shared_source
        return chunks


@dataclass(frozen=True)
class BranchLayout:
    """``images`` rows per branch in each of the CFG ``chunks`` of a batch (default: one chunk).

    With ``shared_source`` the unconditional chunks hold the ``images`` target rows only, and their source rows
    are the first conditional chunk's (see :class:`Chunks`).
    """

    images: int
    chunks: tuple[int, ...] = (COND,)
    shared_source: bool = False

    @classmethod
    def of_batch(cls, rows: int) -> BranchLayout:
        """The stacked latent of an edit: one chunk of ``rows`` = source rows + target rows."""
        return cls.of_call(rows, (COND,), "the edit")

    @classmethod
    def of_call(cls, rows: int, cond_or_uncond: Sequence[int], engine: str) -> BranchLayout:
        """The layout of one UNet call (``cond_or_uncond`` may be :class:`Chunks`); ``engine`` names the caller
        in the error for a batch that is not ``[source rows, target rows]`` in every chunk (e.g. the model run
        by a plain KSampler)."""
        kinds = tuple(int(c) for c in cond_or_uncond)
        shared = bool(getattr(cond_or_uncond, "shared_source", False)) and COND in kinds
        per_image = sum(2 if k == COND or not shared else 1 for k in kinds)
        if not kinds or rows % per_image:
            raise ValueError(f"{engine} expects source and target rows stacked in each CFG chunk, got {rows} rows "
                             f"in {len(kinds)} chunk(s); run the patched model with the SPDInv Edit Sampler")
        return cls(rows // per_image, kinds, shared)

    def _paired(self, kind: int) -> bool:
        return kind == COND or not self.shared_source

    @property
    def chunk_rows(self) -> int:
        """Rows of a conditional chunk (and of every chunk without ``shared_source``)."""
        return 2 * self.images

    @property
    def rows(self) -> int:
        return sum(self.chunk_rows if self._paired(k) else self.images for k in self.chunks)

    def chunk(self, index: int) -> slice:
        start = sum(self.chunk_rows if self._paired(k) else self.images for k in self.chunks[:index])
        return slice(start, start + (self.chunk_rows if self._paired(self.chunks[index]) else self.images))

    def cond_chunks(self) -> list[slice]:
        """Row ranges of the conditional chunks."""
        return [self.chunk(i) for i, c in enumerate(self.chunks) if c == COND]

    def uncond_chunks(self) -> list[slice]:
        return [self.chunk(i) for i, c in enumerate(self.chunks) if c != COND]

    def source_rows(self) -> torch.Tensor:
        """Indices of the source rows of every chunk, in order (a shared-source chunk's are the first
        conditional chunk's)."""
        first_cond = self.cond_chunks()[0].start if COND in self.chunks else 0
        starts = [self.chunk(i).start if self._paired(k) else first_cond for i, k in enumerate(self.chunks)]
        return torch.cat([torch.arange(self.images) + start for start in starts])

    def target_rows(self) -> torch.Tensor:
        """Indices of the target rows of every chunk; entry ``j`` pairs with ``source_rows()[j]``."""
        starts = [self.chunk(i).start + (self.images if self._paired(k) else 0) for i, k in enumerate(self.chunks)]
        return torch.cat([torch.arange(self.images) + start for start in starts])

    def split(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(source, target)`` rows of a one-chunk batch (the stacked latent, per-row predictions)."""
        self._one_chunk()
        return t[: self.images], t[self.images:]

    def join(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`split`."""
        return torch.cat([source, target])

    def source_to_target(self, t: torch.Tensor) -> torch.Tensor:
        """A copy of ``t`` whose target rows hold their source rows' values, chunk by chunk."""
        out = t.clone()
        out[self.target_rows().to(t.device)] = t[self.source_rows().to(t.device)]
        return out

    def _one_chunk(self) -> None:
        if len(self.chunks) != 1:
            raise ValueError("split/join take a batch of one chunk")
