"""Plug-and-Play feature and self-attention injection (Tumanyan et al. 2023, as SPDInv uses it).

The edit sampler feeds the source branch the stored inversion latent of each step (with the empty prompt),
so the source rows carry the inverted photo's features. Inside every CFG chunk, ``[source rows, target
rows]``:

- residual features: for ``step < int(feature_fraction·steps)`` the target rows of one decoder ResBlock's
  residual branch (SD1.x: ``output_blocks[4][0]`` = diffusers ``up_blocks[1].resnets[1]``) are replaced by the
  source rows', before the skip connection is added;
- self-attention: for ``step < int(attention_fraction·steps)`` the target rows' queries and keys (not
  values) are the source rows', in every decoder self-attention layer except the first transformer of the
  lowest-resolution decoder stage (SD1.x: 8 layers, ``output_blocks`` 4-11).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..spdinv.branches import BranchLayout, Chunks
from ..spdinv.guidance import EditRecipe
from .attention_call import AttentionCall
from .engine import EditEngine, FeatureTap
from .families import PNP, Family
from .run import EditRun, check_fraction, steps_for
from .unet_layers import TransformerLayer, decoder_stage_at_level, resblock_output_path


def pnp_attention_layers(layers: Sequence[TransformerLayer]) -> frozenset[tuple[str, int, int]]:
    """The reference's self-attention layers: every decoder self-attention but those of the first decoder block
    with attention (SD1.x: ``output_blocks`` 4-11)."""
    decoder = [layer for layer in layers if layer.block == "output" and layer.self_attention]
    if not decoder:
        raise ValueError("model: no decoder self-attention layers; Plug-and-Play needs an SD1.x, SD2.x or "
                         "SDXL-style UNet")
    first = decoder[0].block_id
    return frozenset(layer.key for layer in decoder if layer.block_id != first)



def pnp_sites(family: Family, unet: torch.nn.Module) -> tuple[str, frozenset[tuple[str, int, int]]]:
    """The feature path and the query/key layers PlugAndPlay controls on ``unet``, chosen by ``family``'s
    defaults from the UNet's structure (SD1.x: ``output_blocks.4.0.out_layers.3``, SDXL:
    ``output_blocks.1.0.out_layers.3``); one function so that the node and the tests make the same choice."""
    stage = decoder_stage_at_level(unet, family.default("pnp_feature_level"))
    path = resblock_output_path(unet, stage, family.default("pnp_feature_index"))
    return path, pnp_attention_layers(family.sites(unet))

@dataclass(frozen=True, eq=False)
class PlugAndPlay(EditEngine):
    """One edit's PnP configuration: the ResBlock output path whose features the target takes, the
    self-attention layers whose queries and keys it takes (:func:`pnp_attention_layers`), and their windows."""

    feature_path: str
    feature_fraction: float = 0.8
    attention_fraction: float = 0.5
    qk_layers: frozenset[tuple[str, int, int]] = frozenset()
    recipe: EditRecipe = field(default_factory=lambda: EditRecipe(source_from_inversion=True), kw_only=True)
    name: ClassVar[str] = "Plug-and-Play"
    node: ClassVar[str] = PNP

    def __post_init__(self) -> None:
        check_fraction("feature_fraction", self.feature_fraction)
        check_fraction("attention_fraction", self.attention_fraction)

    def check_sites(self, layers: Sequence[TransformerLayer]) -> None:
        missing = self.qk_layers - {layer.key for layer in layers}
        if missing:
            raise ValueError(f"model: it has no transformer layers {sorted(missing)}; Plug-and-Play's layers come "
                             "from another model (connect the model the engine was made for)")

    def controls(self, layer: TransformerLayer) -> tuple[str, ...]:
        return ("attn1",) if layer.key in self.qk_layers else ()

    def feature_taps(self) -> dict[str, FeatureTap]:
        return {self.feature_path: self.inject_features}

    def inject_features(self, features: torch.Tensor, run: EditRun | None, step: int | None,
                        chunks: Chunks) -> torch.Tensor:
        """Target rows take the source rows' residual features while the feature window lasts."""
        if run is None or step is None or step >= steps_for(self.feature_fraction, run.steps):
            return features
        return BranchLayout.of_call(features.shape[0], chunks, self.name).source_to_target(features)

    def self_attention(self, call: AttentionCall) -> torch.Tensor:
        """Target rows attend with the source rows' queries and keys over their own values."""
        if not call.within(self.attention_fraction) or call.site.key not in self.qk_layers:
            return call.attend()
        layout = call.layout(self.name)
        return call.attend(layout.source_to_target(call.q), layout.source_to_target(call.k))
