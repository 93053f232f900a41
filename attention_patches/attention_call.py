"""One attention call as every engine hook receives it.

A patch (UNet replace patch, DiT attention override) turns what ComfyUI hands it into an :class:`AttentionCall`:
the projected q, k, v and head count, which attention it is (``self``, ``cross`` or MM-DiT ``joint``) and where
(the site: a UNet layer or a DiT block), the edit run and step it belongs to, the call's CFG chunks, and the
attention to run: the host's (``plain``) or, where another node had patched the site first, that node's
(``inner``), so both act. ``spatial`` (UNet: the layer's ``(h, w)``) or ``image`` (DiT: the ``(start, stop)`` range
of the image tokens along ``token_dim``; text and reference-image tokens lie outside it) says how the tokens lie.
A pre-attention hook (ComfyUI's DiT ``attn1_patch``) has no attention to run: ``plain`` is ``None`` there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..spdinv.branches import BranchLayout, Chunks
from .run import EditRun, steps_for

Attend3 = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``attend(q, k, v) -> out``: one call's attention with everything but q, k, v bound."""

KINDS = ("self", "cross", "joint")


@dataclass(frozen=True)
class AttentionCall:
    """The inputs of one patched attention (see the module docstring)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    heads: int
    kind: str
    site: Any
    run: EditRun | None
    chunks: Chunks
    plain: Attend3 | None
    inner: Attend3 | None = None
    spatial: tuple[int, int] | None = None
    image: tuple[int, int] | None = None
    token_dim: int = 1
    step: int | None = None

    @classmethod
    def of(cls, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, kind: str, site: Any,
           transformer_options: dict[str, Any], plain: Attend3 | None, inner: Attend3 | None = None,
           **layout: Any) -> AttentionCall:
        """The call whose ComfyUI ``transformer_options`` are given: its run, step and chunks read from them."""
        run = EditRun.of(transformer_options)
        step = None if run is None else run.step_at(transformer_options.get("sigmas"))
        chunks = Chunks(transformer_options.get("cond_or_uncond", [0]), run is not None and run.shared_source)
        return cls(q, k, v, heads, kind, site, run, chunks, plain, inner, step=step, **layout)

    @property
    def in_run(self) -> bool:
        """Whether the call belongs to an edit run at a step of its grid."""
        return self.run is not None and self.step is not None

    def attend(self, q: torch.Tensor | None = None, k: torch.Tensor | None = None,
               v: torch.Tensor | None = None) -> torch.Tensor:
        """The site's attention (another node's if it had patched the site, else the host's) on the given
        tensors, by default the call's own."""
        q, k, v = (self.q if q is None else q), (self.k if k is None else k), (self.v if v is None else v)
        return (self.plain if self.inner is None else self.inner)(q, k, v)

    def added(self, out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
        """What the inner attention added over the host's in ``out = self.attend(q, k, v)``; ``None`` without
        one. Engines that compute some rows from explicit probabilities add it, so an additive inner attention
        (IP-Adapter's image keys and values) acts on those rows too."""
        return None if self.inner is None else out - self.plain(q, k, v)

    def within(self, fraction: float) -> bool:
        """Inside the run, before ``fraction`` of its steps (the reference's replace windows)."""
        return self.in_run and self.step < steps_for(fraction, self.run.steps)

    def from_(self, fraction: float) -> bool:
        """Inside the run, from ``fraction`` of its steps on."""
        return self.in_run and self.step >= steps_for(fraction, self.run.steps)

    def layout(self, engine: str) -> BranchLayout:
        """The call's rows as source and target per CFG chunk; ``engine`` names the caller in the error."""
        return BranchLayout.of_call(self.q.shape[0], self.chunks, engine)

    def image_tokens(self) -> slice:
        """The image tokens along ``token_dim`` (every token when the call says nothing: an image-only attention)."""
        tokens = self.k.shape[self.token_dim]
        return slice(0, tokens) if self.image is None else slice(*self.image)
