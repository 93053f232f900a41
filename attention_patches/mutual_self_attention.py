"""MasaCtrl mutual self-attention on real-image edits (Cao et al. 2023, as SPDInv uses it).

Inside every CFG chunk the edit sampler stacks ``[source rows, target rows]``. From step
``int(start_step·steps)`` on, on the self-attention of transformer layers ``order >= start_layer`` (SD1.5:
layers 10-15, the decoder at the two highest resolutions), the target's queries attend to the source's
keys and values, in the conditional and the unconditional chunk alike; source rows are untouched.

Mask guidance keeps foreground and background apart: target queries attend once to the source's
foreground keys only and once to its background keys only, and the two results are blended with the
target mask at the layer's resolution. The masks come from a MASK (one mask for both images), or are
made automatically at each step from that step's cross-attention maps (16×16-equivalent layers, mean over
heads and layers, min–max normalised, thresholded): the source token's map on the source row, the target
token's on the target row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..spdinv.branches import BranchLayout
from ..spdinv.guidance import EditRecipe
from .attention_math import Attend, attention_probs, chained_part, masked_attention, plain_attention
from .engine import EditEngine, check_fraction
from .unet_layers import TransformerLayer


@dataclass(frozen=True)
class AutoMask:
    """Token positions whose cross-attention gives the masks: in the source prompt and the target prompt."""

    source_positions: tuple[int, ...]
    target_positions: tuple[int, ...]
    threshold: float = 0.1


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, H, W]`` float mask to ``[B, h·w]`` at a layer's size (nearest, as the reference interpolates)."""
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest").flatten(1)


class MutualSelfAttention(EditEngine):
    """One edit's MasaCtrl controller; the edit sampler drives it like the other engines."""

    name = "MasaCtrl"

    def __init__(
        self,
        start_step: float = 0.08,
        start_layer: int = 10,
        mask: torch.Tensor | None = None,
        auto: AutoMask | None = None,
        map_level: int = 2,
        recipe: EditRecipe | None = None,
    ):
        check_fraction("start_step", start_step)
        if mask is not None and auto is not None:
            raise ValueError("give a mask or automatic masks, not both")
        self.start_step = start_step
        self.start_layer = start_layer
        self.mask = None if mask is None else (mask.float() >= 0.5)
        """``[H, W]`` bool (image or latent size): the object in the photo, used for both images."""
        self.auto = auto
        self.map_level = map_level
        super().__init__(recipe if recipe is not None else EditRecipe())
        self.reset_run()

    def controls(self, layer: TransformerLayer) -> tuple[str, ...]:
        """Which attentions of ``layer`` this engine patches."""
        kinds = ("attn1",) if layer.self_attention and layer.order >= self.start_layer else ()
        if self.auto is not None and layer.cross_attention and layer.level == self.map_level:
            kinds += ("attn2",)
        return kinds

    def check_layers(self, layers: Sequence[TransformerLayer]) -> None:
        """Refuse a start layer the model does not have, or a model without reachable self-attention."""
        if self.start_layer >= len(layers):
            raise ValueError(f"start_layer: the model has {len(layers)} transformer layers (0-{len(layers) - 1}); "
                             f"{self.start_layer} controls none. -1 picks a third into the decoder (SD1.x: 10)")
        if not any(layer.self_attention for layer in layers[self.start_layer:]):
            raise ValueError("model: no self-attention layers from start_layer on; MasaCtrl needs a UNet with "
                             "self-attention (SD1.x, SD2.x, SDXL)")
        if self.auto is not None and not any(layer.level == self.map_level for layer in layers):
            raise ValueError("mask_mode: this model has no cross-attention at a quarter of the latent's "
                             "resolution, where automatic masks are made; use a MASK instead")

    def begin_run(self, steps: int, latent_shape: Sequence[int]) -> None:
        """Start a run; a MASK must be the size of the image (or of the latent) being edited."""
        if self.mask is not None:
            h, w = latent_shape[-2:]
            if tuple(self.mask.shape) not in ((8 * h, 8 * w), (h, w)):
                raise ValueError(f"mask: {self.mask.shape[1]}x{self.mask.shape[0]} does not match the image "
                                 f"({8 * w}x{8 * h}); make the mask from the image after it was resized")
        super().begin_run(steps, latent_shape)

    def reset_run(self) -> None:
        self._step_maps: list[torch.Tensor] = []
        self._maps_step: int | None = None

    def end_run(self) -> None:
        super().end_run()
        self.reset_run()

    def cross_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, step: int | None,
        cond_or_uncond: Sequence[int], layer: TransformerLayer, spatial: tuple[int, int],
        attend: Attend = plain_attention,
    ) -> torch.Tensor:
        """Plain cross-attention; records this step's maps of the conditional rows for automatic masks."""
        out = attend(q, k, v, heads)
        if not self.active or step is None or self.auto is None or 0 not in cond_or_uncond:
            return out
        if self._maps_step != step:
            self._step_maps, self._maps_step = [], step
        rows = self.layout(q.shape[0], cond_or_uncond).cond_chunks()[0]
        probs = attention_probs(q[rows], k[rows], heads).mean(1)
        self._step_maps.append(probs.reshape(probs.shape[0], *spatial, probs.shape[-1]))
        return out

    def _auto_masks(self, step: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(source, target) ``[B, h, w]`` float masks from this step's maps, or ``None`` before any exist."""
        if self._maps_step != step or not self._step_maps:
            return None
        layout = BranchLayout.of_batch(self._step_maps[0].shape[0])
        source, target = layout.split(torch.stack(self._step_maps).mean(0))

        def word_map(rows: torch.Tensor, positions: tuple[int, ...]) -> torch.Tensor:
            m = rows[..., list(positions)].sum(-1)
            lo = m.amin(dim=(1, 2), keepdim=True)
            hi = m.amax(dim=(1, 2), keepdim=True)
            return ((m - lo) / (hi - lo).clamp_min(torch.finfo(m.dtype).tiny) >= self.auto.threshold).float()

        return word_map(source, self.auto.source_positions), word_map(target, self.auto.target_positions)

    def self_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, step: int | None,
        cond_or_uncond: Sequence[int], layer: TransformerLayer, spatial: tuple[int, int],
        attend: Attend = plain_attention,
    ) -> torch.Tensor:
        """Inside the window, target rows use the source rows' keys and values (per CFG chunk)."""
        if not self.from_(step, self.start_step) or layer.order < self.start_layer:
            return attend(q, k, v, heads)
        layout = self.layout(q.shape[0], cond_or_uncond)
        half = layout.images
        source, target = layout.source_rows(), layout.target_rows()
        k, v = k.clone(), v.clone()
        k[target], v[target] = k[source], v[source]
        if self.mask is not None:
            masks = self.mask[None].float().expand(half, -1, -1)
            masks = (masks, masks)
        else:
            masks = self._auto_masks(step) if self.auto is not None else None
        out = attend(q, k, v, heads)
        if masks is None:
            return out
        key_mask = resize_mask(masks[0], spatial).bool().repeat(len(cond_or_uncond), 1)
        query_mask = resize_mask(masks[1], spatial).bool().repeat(len(cond_or_uncond), 1)
        masked = masked_attention(q[target], k[source], v[source], heads, key_mask, query_mask).to(out.dtype)
        added = chained_part(attend, out, q, k, v, heads)
        out[target] = masked if added is None else masked + added[target]
        return out
