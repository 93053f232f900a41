"""The inversions ``SPDInvInvert`` offers, and what each asks of the edit.

The paper compares SPDInv with other inversions under the same editing engine (its Table 1, after
PnPInversion's benchmark). All but ``spdinv`` invert with plain DDIM; they differ in how the edit treats the
source branch:

- ``spdinv`` and ``ddim``: the source branch runs at CFG 1 on its own prompt (the inversion's operator, so it
  retraces the inversion); the target's negative is the source prompt unless another is given.
- ``negative_prompt`` (negative-prompt inversion, Miyake et al. 2023): DDIM inversion with the source prompt
  as the negative of both branches, always, which makes the source branch guidance-free like the inversion.
- ``null_text`` (null-text inversion, Mokady et al. CVPR 2023; :mod:`.null_text`): the negative prompt's
  embedding tuned per step so that the source branch, guided at the edit's CFG against it, retraces the
  inversion; both branches use the tuned embeddings as their negative.
- ``direct_inversion`` (PnPInversion, Ju et al. ICLR 2024): both branches at the edit's CFG against the
  negative (the null prompt in the reference), the source branch set to the inversion's latent before every
  step. The reference adds each step's gap to the inversion latent to the source after the step, which puts
  it on the same latents; the target keeps its own path and reads the exact source's attention.

With ``source_guidance`` "like target" on the edit sampler, ``ddim`` edits as the paper's DDIM + P2P
baseline does (both branches against the null prompt at the edit's CFG).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .guidance import EditRecipe

INVERSION_METHODS = ("spdinv", "ddim", "negative_prompt", "null_text", "direct_inversion")
SOURCE_GUIDANCE = ("exact", "like target")


@dataclass(frozen=True)
class SourceProtocol:
    """What an inversion method asks of the edit's source branch."""

    trajectory: str
    """The core inversion that makes the trajectory: ``spdinv`` or ``ddim``."""
    guided: bool = False
    """The source branch runs at the edit's CFG against the negative instead of CFG 1 on its own prompt."""
    source_is_negative: bool = False
    """The source prompt is the negative of both branches, whatever negative is connected."""
    replay: bool = False
    """The source rows are set to the inversion's latent before every step."""
    tuned_null: bool = False
    """The inversion tunes the negative's embedding per step (null-text); the edit uses them."""


PROTOCOLS = {
    "spdinv": SourceProtocol("spdinv"),
    "ddim": SourceProtocol("ddim"),
    "negative_prompt": SourceProtocol("ddim", source_is_negative=True),
    "null_text": SourceProtocol("ddim", guided=True, tuned_null=True),
    "direct_inversion": SourceProtocol("ddim", guided=True, replay=True),
}


def protocol_of(method: str, source_guidance: str = "exact") -> SourceProtocol:
    """The protocol of ``method``, with the source guided when ``source_guidance`` asks for it."""
    if method not in PROTOCOLS:
        raise ValueError(f"method must be one of {INVERSION_METHODS}, got {method!r}")
    if source_guidance not in SOURCE_GUIDANCE:
        raise ValueError(f"source_guidance must be one of {SOURCE_GUIDANCE}, got {source_guidance!r}")
    proto = PROTOCOLS[method]
    if source_guidance == "like target" and not proto.guided:
        if proto.source_is_negative:
            raise ValueError("source_guidance: negative_prompt inversion guides the source against its own "
                             "prompt, which is CFG-free; keep 'exact' (or invert with ddim for a guided source)")
        proto = dataclasses.replace(proto, guided=True)
    return proto


def edit_recipe(recipe: EditRecipe, proto: SourceProtocol, cfg: float) -> EditRecipe:
    """``recipe`` (an engine's) with the source branch as ``proto`` asks: the edit's CFG for a guided source,
    replay for DirectInversion (kept where the engine replays already)."""
    return dataclasses.replace(recipe, source_cfg=float(cfg) if proto.guided else recipe.source_cfg,
                               source_from_inversion=recipe.source_from_inversion or proto.replay)
