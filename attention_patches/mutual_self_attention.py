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
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..spdinv.branches import BranchLayout
from .attention_call import AttentionCall
from .attention_math import attention_probs, masked_attention
from .engine import EditEngine
from .families import MASACTRL, Family
from .run import EditRun, check_fraction
from .unet_layers import TransformerLayer, decoder_layer_at


@dataclass(frozen=True)
class AutoMask:
    """Token positions whose cross-attention gives the masks: in the source prompt and the target prompt."""

    source_positions: tuple[int, ...]
    target_positions: tuple[int, ...]
    threshold: float = 0.1


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, H, W]`` float mask to ``[B, h·w]`` at a layer's size (nearest, as the reference interpolates)."""
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest").flatten(1)


@dataclass
class StepMaps:
    """One run's cross-attention maps of the current step (in ``run.records``), for automatic masks."""

    step: int | None = None
    maps: list[torch.Tensor] = field(default_factory=list)



def auto_start_layer(family: Family, unet: torch.nn.Module) -> int:
    """``start_layer`` -1's layer: ``family``'s default fraction into the decoder's transformer layers (SD1.x 10 of
    16, SDXL 46 of 70); one function so that the node and the tests make the same choice."""
    return decoder_layer_at(family.sites(unet), family.default("masactrl_decoder_start"))

@dataclass(frozen=True, eq=False)
class MutualSelfAttention(EditEngine):
    """One edit's MasaCtrl configuration. ``mask``: ``[H, W]`` (image or latent size), the object in the photo,
    used for both images (any values; ≥ 0.5 is the object)."""

    start_step: float = 0.08
    start_layer: int = 10
    mask: torch.Tensor | None = None
    auto: AutoMask | None = None
    map_level: int = 2
    name: ClassVar[str] = "MasaCtrl"
    node: ClassVar[str] = MASACTRL

    def __post_init__(self) -> None:
        check_fraction("start_step", self.start_step)
        if self.mask is not None and self.auto is not None:
            raise ValueError("give a mask or automatic masks, not both")
        if self.mask is not None:
            object.__setattr__(self, "mask", self.mask.float() >= 0.5)

    def controls(self, layer: TransformerLayer) -> tuple[str, ...]:
        """Which attentions of ``layer`` this engine patches."""
        kinds = ("attn1",) if layer.self_attention and layer.order >= self.start_layer else ()
        if self.auto is not None and layer.cross_attention and layer.level == self.map_level:
            kinds += ("attn2",)
        return kinds

    def check_sites(self, layers: Sequence[TransformerLayer]) -> None:
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

    def check_run(self, run: EditRun) -> None:
        """A MASK must be the size of the image (or of the latent) being edited."""
        if self.mask is not None:
            h, w = run.latent_shape[-2:]
            if tuple(self.mask.shape) not in ((8 * h, 8 * w), (h, w)):
                raise ValueError(f"mask: {self.mask.shape[1]}x{self.mask.shape[0]} does not match the image "
                                 f"({8 * w}x{8 * h}); make the mask from the image after it was resized")

    def step_maps(self, run: EditRun) -> StepMaps:
        return run.records.setdefault(self.name, StepMaps())

    def cross_attention(self, call: AttentionCall) -> torch.Tensor:
        """Plain cross-attention; records this step's maps of the conditional rows for automatic masks."""
        out = call.attend()
        if not call.in_run or self.auto is None or 0 not in call.chunks:
            return out
        record = self.step_maps(call.run)
        if record.step != call.step:
            record.step, record.maps = call.step, []
        rows = call.layout(self.name).cond_chunks()[0]
        probs = attention_probs(call.q[rows], call.k[rows], call.heads).mean(1)
        record.maps.append(probs.reshape(probs.shape[0], *call.spatial, probs.shape[-1]))
        return out

    def _auto_masks(self, run: EditRun, step: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(source, target) ``[B, h, w]`` float masks from this step's maps, or ``None`` before any exist."""
        record = self.step_maps(run)
        if record.step != step or not record.maps:
            return None
        layout = BranchLayout.of_batch(record.maps[0].shape[0])
        source, target = layout.split(torch.stack(record.maps).mean(0))

        def word_map(rows: torch.Tensor, positions: tuple[int, ...]) -> torch.Tensor:
            m = rows[..., list(positions)].sum(-1)
            lo = m.amin(dim=(1, 2), keepdim=True)
            hi = m.amax(dim=(1, 2), keepdim=True)
            return ((m - lo) / (hi - lo).clamp_min(torch.finfo(m.dtype).tiny) >= self.auto.threshold).float()

        return word_map(source, self.auto.source_positions), word_map(target, self.auto.target_positions)

    def self_attention(self, call: AttentionCall) -> torch.Tensor:
        """Inside the window, target rows use the source rows' keys and values (per CFG chunk)."""
        if not call.from_(self.start_step) or call.site.order < self.start_layer:
            return call.attend()
        layout = call.layout(self.name)
        half = layout.images
        source, target = layout.source_rows(), layout.target_rows()
        q, k, v = call.q, call.k.clone(), call.v.clone()
        k[target], v[target] = k[source], v[source]
        if self.mask is not None:
            masks = self.mask[None].float().expand(half, -1, -1)
            masks = (masks, masks)
        else:
            masks = self._auto_masks(call.run, call.step) if self.auto is not None else None
        out = call.attend(q, k, v)
        if masks is None:
            return out
        chunks = len(call.chunks)
        key_mask = resize_mask(masks[0], call.spatial).bool().repeat(chunks, 1)
        query_mask = resize_mask(masks[1], call.spatial).bool().repeat(chunks, 1)
        masked = masked_attention(q[target], k[source], v[source], call.heads, key_mask, query_mask).to(out.dtype)
        added = call.added(out, q, k, v)
        out[target] = masked if added is None else masked + added[target]
        return out
