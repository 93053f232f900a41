"""The branch layout of an edit: which rows of a batch belong to the source and to the target branch.

The edit sampler stacks the two branches along the batch, ``[source rows, target rows]``, row ``j`` of one
pairing with row ``j`` of the other (one row per image). A UNet call may carry several CFG chunks of that
batch (ComfyUI's ``cond_or_uncond``: 0 conditional, 1 unconditional), each laid out the same way. The edit
loop, the guidance rules, the engines and the preview all read rows through :class:`BranchLayout`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

COND = 0
"""ComfyUI's ``cond_or_uncond`` value of a conditional chunk."""


@dataclass(frozen=True)
class BranchLayout:
    """``images`` rows per branch in each of the CFG ``chunks`` of a batch (default: one chunk)."""

    images: int
    chunks: tuple[int, ...] = (COND,)

    @classmethod
    def of_batch(cls, rows: int) -> BranchLayout:
        """The stacked latent of an edit: one chunk of ``rows`` = source rows + target rows."""
        return cls.of_call(rows, (COND,), "the edit")

    @classmethod
    def of_call(cls, rows: int, cond_or_uncond: Sequence[int], engine: str) -> BranchLayout:
        """The layout of one UNet call; ``engine`` names the caller in the error for a batch that is not
        ``[source rows, target rows]`` in every chunk (e.g. the model run by a plain KSampler)."""
        chunks = len(cond_or_uncond)
        chunk = rows // max(chunks, 1)
        if chunks == 0 or chunk % 2 or chunk * chunks != rows:
            raise ValueError(f"{engine} expects source and target rows stacked in each CFG chunk, got {rows} rows "
                             f"in {chunks} chunk(s); run the patched model with the SPDInv Edit Sampler")
        return cls(chunk // 2, tuple(int(c) for c in cond_or_uncond))

    @property
    def chunk_rows(self) -> int:
        return 2 * self.images

    @property
    def rows(self) -> int:
        return self.chunk_rows * len(self.chunks)

    def chunk(self, index: int) -> slice:
        return slice(index * self.chunk_rows, (index + 1) * self.chunk_rows)

    def cond_chunks(self) -> list[slice]:
        """Row ranges of the conditional chunks."""
        return [self.chunk(i) for i, c in enumerate(self.chunks) if c == COND]

    def uncond_chunks(self) -> list[slice]:
        return [self.chunk(i) for i, c in enumerate(self.chunks) if c != COND]

    def source_rows(self) -> torch.Tensor:
        """Indices of the source rows of every chunk, in order."""
        return torch.cat([torch.arange(self.images) + i * self.chunk_rows for i in range(len(self.chunks))])

    def target_rows(self) -> torch.Tensor:
        """Indices of the target rows of every chunk; entry ``j`` pairs with ``source_rows()[j]``."""
        return self.source_rows() + self.images

    def split(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(source, target)`` rows of a one-chunk batch (the stacked latent, per-row predictions)."""
        self._one_chunk()
        return t[: self.images], t[self.images:]

    def join(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`split`."""
        return torch.cat([source, target])

    def source_to_target(self, t: torch.Tensor) -> torch.Tensor:
        """A copy of ``t`` whose target rows hold the source rows' values, chunk by chunk."""
        view = t.reshape(len(self.chunks), 2, self.images, *t.shape[1:])
        return torch.stack([view[:, 0], view[:, 0]], dim=1).reshape(t.shape)

    def _one_chunk(self) -> None:
        if len(self.chunks) != 1:
            raise ValueError("split/join take a batch of one chunk")
