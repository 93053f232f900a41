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

from collections.abc import Callable, Sequence

import torch

from ..spdinv.guidance import EditRecipe
from .attention_math import Attend, plain_attention
from .engine import EditEngine, check_fraction
from .unet_layers import TransformerLayer


class PlugAndPlay(EditEngine):
    """One edit's PnP injection; the edit sampler drives it like the other engines."""

    name = "Plug-and-Play"

    def __init__(self, feature_path: str, feature_fraction: float = 0.8, attention_fraction: float = 0.5,
                 recipe: EditRecipe | None = None):
        check_fraction("feature_fraction", feature_fraction)
        check_fraction("attention_fraction", attention_fraction)
        super().__init__(recipe if recipe is not None else EditRecipe(source_from_inversion=True))
        self.feature_path = feature_path
        self.feature_fraction = feature_fraction
        self.attention_fraction = attention_fraction
        self.qk_layers: frozenset[tuple[str, int, int]] = frozenset()

    def check_layers(self, layers: Sequence[TransformerLayer]) -> None:
        """Choose the decoder self-attention layers: all but those of the first decoder block with attention."""
        decoder = [layer for layer in layers if layer.block == "output" and layer.self_attention]
        if not decoder:
            raise ValueError("model: no decoder self-attention layers; Plug-and-Play needs an SD1.x, SD2.x or "
                             "SDXL-style UNet")
        first = decoder[0].block_id
        self.qk_layers = frozenset(layer.key for layer in decoder if layer.block_id != first)

    def controls(self, layer: TransformerLayer) -> tuple[str, ...]:
        return ("attn1",) if layer.key in self.qk_layers else ()

    def feature_taps(self) -> dict[str, Callable[[torch.Tensor, int | None, Sequence[int]], torch.Tensor]]:
        """Module path → function rewriting that module's output (the residual features)."""
        return {self.feature_path: self.inject_features}

    def inject_features(self, features: torch.Tensor, step: int | None, cond_or_uncond: Sequence[int]) -> torch.Tensor:
        """Target rows take the source rows' residual features while the feature window lasts."""
        if not self.within(step, self.feature_fraction):
            return features
        return self.layout(features.shape[0], cond_or_uncond).source_to_target(features)

    def self_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, step: int | None,
        cond_or_uncond: Sequence[int], layer: TransformerLayer, spatial: tuple[int, int],
        attend: Attend = plain_attention,
    ) -> torch.Tensor:
        """Target rows attend with the source rows' queries and keys over their own values."""
        if not self.within(step, self.attention_fraction) or layer.key not in self.qk_layers:
            return attend(q, k, v, heads)
        layout = self.layout(q.shape[0], cond_or_uncond)
        return attend(layout.source_to_target(q), layout.source_to_target(k), v, heads)
