"""What every editing engine is: immutable configuration with hooks that take values.

An engine says which attentions of a site (a UNet layer or a DiT block) it patches (:meth:`EditEngine.controls`),
may refuse a model's sites or a run before sampling (:meth:`check_sites`, :meth:`check_run`), changes attention
in :meth:`attention` (one :class:`~.attention_call.AttentionCall` in, the output out), may rewrite module outputs
(:meth:`feature_taps`) and the stacked latent after each step (:meth:`after_step`), and reports what it recorded
(:meth:`recorded_maps`). Everything a run gathers lives in that run's ``records`` (:class:`~.run.EditRun`), so one
engine is safely shared by clones, runs and ComfyUI versions that share patch objects between clones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..spdinv.branches import Chunks
from ..spdinv.guidance import EditRecipe
from .attention_call import AttentionCall
from .run import EditRun

FeatureTap = Callable[[torch.Tensor, EditRun | None, int | None, Chunks], torch.Tensor]
"""``tap(output, run, step, chunks) -> output``: rewrites one module's output during a model call."""


@dataclass(frozen=True)
class RecordedMaps:
    """What an engine recorded for the preview: cross-attention maps ``[rows, h, w, tokens]`` (source rows,
    then target rows; a clip's frames stacked along ``h``), the last local-blend mask ``[B, 1, H, W]`` (latent size;
    a clip's ``[B, 1, frames, H, W]``), both prompts' token text and the window position of their first content token
    (CLIP: 1, after the start token; umT5: 0)."""

    maps: torch.Tensor | None = None
    blend_mask: torch.Tensor | None = None
    labels: tuple[list[str], list[str]] = ([], [])
    first_token: int = 1


@dataclass(frozen=True, eq=False)
class EditEngine:
    """Base of the engines: ``recipe`` tells the edit sampler how to guide the branches."""

    recipe: EditRecipe = field(default_factory=EditRecipe, kw_only=True)
    name: ClassVar[str] = "engine"
    node: ClassVar[str] = ""
    """The node that makes this engine, as its family table entries name it."""
    sites: ClassVar[str] = "unet layers"
    """Which sites the engine patches: ``"unet layers"`` or ``"dit blocks"``."""

    def controls(self, site: Any) -> tuple[str, ...]:
        """The attentions of ``site`` this engine patches (UNet: ``attn1``/``attn2``; DiT: ``joint``)."""
        return ()

    def check_sites(self, sites: Sequence[Any]) -> None:
        """Raise a ``ValueError`` naming the input when the model cannot carry this engine."""

    def check_run(self, run: EditRun) -> None:
        """Raise a ``ValueError`` naming the input when this run cannot be edited (before sampling starts)."""

    def feature_taps(self) -> dict[str, FeatureTap]:
        """Module path (inside the diffusion model) → function rewriting that module's output."""
        return {}

    def attention(self, call: AttentionCall) -> torch.Tensor:
        """One patched attention call."""
        hook = {"self": self.self_attention, "cross": self.cross_attention, "joint": self.joint_attention}
        return hook[call.kind](call)

    def self_attention(self, call: AttentionCall) -> torch.Tensor:
        return call.attend()

    def cross_attention(self, call: AttentionCall) -> torch.Tensor:
        return call.attend()

    def joint_attention(self, call: AttentionCall) -> torch.Tensor:
        return call.attend()

    def pre_attention(self, call: AttentionCall) -> dict[str, torch.Tensor]:
        """A DiT pre-attention hook (ComfyUI's ``attn1_patch``): replacements for the call's ``q``/``k``/``v``,
        which the host then attends with its own attention (nothing by default)."""
        return {}

    def after_step(self, run: EditRun, step: int, x: torch.Tensor) -> torch.Tensor:
        """The stacked latent ``[source rows, target rows]`` after step ``step`` of ``run``."""
        return x

    def recorded_maps(self, run: EditRun) -> RecordedMaps:
        """What this engine recorded in ``run`` for the preview (nothing by default)."""
        return RecordedMaps()
