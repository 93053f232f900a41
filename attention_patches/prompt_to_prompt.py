"""Prompt-to-Prompt attention control on real-image edits (Hertz et al. 2022, as SPDInv uses it).

The edit sampler stacks the branches along the batch: inside every CFG chunk the first half of the rows
is the source branch and the second half the target branch (row ``j`` of each pairs with row ``j`` of the
other). Control applies to the conditional chunks only, as in the reference; the unconditional chunks
run plain attention. Per step ``i`` of ``steps``:

- cross-attention, every layer, for ``i < int(cross_fraction·steps)``: the target's probabilities become
  the source's mapped through the token mapping (word swap or refine), then scaled per token by the
  reweight equaliser;
- self-attention, layers at ``level >= self_min_level`` (32×32 and below for a 512² SD1.5 image), for
  ``i < int(self_fraction·steps)``: the target uses the source's probabilities (over its own values);
- cross-attention maps at ``map_level`` (16×16 at 512²) are recorded, summed over layers and steps, for
  local blend and the preview: the target's own maps (``blend_maps="target"``), or, as the official code
  does, the edited ones (``"edited"``: inside the cross-replace window the target's maps are the source's
  mapped through the token mapping and reweighted, because its store keeps a view of the tensor that the
  edit then overwrites in place);
- local blend (after the DDIM step, from ``int(start·steps)``): the blend words' summed maps, 3×3
  max-pool, upsampled to the latent, divided by their maximum, thresholded; the source and target word
  masks are united and outside them the target latent is replaced by the source latent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..spdinv.branches import BranchLayout
from ..spdinv.guidance import EditRecipe
from .attention_math import Attend, LayerAttention, apply_probs, attention_probs, plain_attention
from .engine import EditEngine, check_fraction, steps_for
from .unet_layers import TransformerLayer


@dataclass(frozen=True)
class ReplaceMapping:
    """Word swap: target map ``n`` = Σ_w source map ``w`` · ``matrix[w, n]``."""

    matrix: torch.Tensor

    @property
    def tokens(self) -> int:
        return self.matrix.shape[0]

    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...w,wn->...n", source, self.matrix.to(source))


@dataclass(frozen=True)
class RefineMapping:
    """Refine: aligned target tokens take the aligned source token's map, inserted ones keep their own."""

    index: torch.Tensor
    alphas: torch.Tensor

    @property
    def tokens(self) -> int:
        return self.index.shape[0]

    def __call__(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        alphas = self.alphas.to(source)
        return source[..., self.index.to(source.device)] * alphas + target * (1 - alphas)


BLEND_MAPS = ("target", "edited")
"""Which target maps local blend and the preview read: the target's own, or the edited ones (the paper's)."""


@dataclass(frozen=True)
class LocalBlend:
    """Token positions of the blend words in each prompt, threshold and start (fraction of the steps)."""

    source_positions: tuple[int, ...]
    target_positions: tuple[int, ...]
    threshold: float = 0.3
    start: float = 0.2


class PromptToPrompt(EditEngine):
    """One edit's P2P controller. The sampler calls ``begin_run``/``end_run`` around a run and
    ``after_step`` after each DDIM step and guides the branches by ``recipe``; the attention patches call
    ``cross_attention``/``self_attention``. The maps recorded in a run stay readable after it ends.

    Between runs (or without a step index, e.g. inside a plain KSampler) every layer is plain attention.
    """

    name = "P2P"

    def __init__(
        self,
        mapping: ReplaceMapping | RefineMapping,
        equalizer: torch.Tensor | None = None,
        cross_fraction: float = 0.8,
        self_fraction: float = 0.6,
        blend: LocalBlend | None = None,
        self_min_level: int = 1,
        map_level: int = 2,
        recipe: EditRecipe | None = None,
        labels: tuple[list[str], list[str]] | None = None,
        blend_maps: str = "target",
    ):
        check_fraction("cross_fraction", cross_fraction)
        check_fraction("self_fraction", self_fraction)
        if blend_maps not in BLEND_MAPS:
            raise ValueError(f"blend_maps must be one of {BLEND_MAPS}, got {blend_maps!r}")
        super().__init__(recipe if recipe is not None else EditRecipe())
        self.mapping = mapping
        self.equalizer = equalizer
        self.cross_fraction = cross_fraction
        self.self_fraction = self_fraction
        self.blend = blend
        self.self_min_level = self_min_level
        self.map_level = map_level
        self.blend_maps = blend_maps
        self.labels = labels if labels is not None else ([], [])
        """Text of the content tokens (positions 1..n) of the source and the target prompt, for previews."""
        self.reset_run()

    def reset_run(self) -> None:
        self.blend_sum: torch.Tensor | None = None
        self.preview_sum: torch.Tensor | None = None
        self.preview_count = 0
        self.blend_mask: torch.Tensor | None = None

    def controls(self, layer: TransformerLayer) -> tuple[str, ...]:
        """Every cross-attention, and the self-attention at ``self_min_level`` and below."""
        kinds = ("attn2",) if layer.cross_attention else ()
        if layer.self_attention and layer.level >= self.self_min_level:
            kinds += ("attn1",)
        return kinds

    def check_layers(self, layers: Sequence[TransformerLayer]) -> None:
        if not any(layer.cross_attention for layer in layers):
            raise ValueError("model: no cross-attention layers found; Prompt-to-Prompt needs a text-conditioned "
                             "UNet (SD1.x, SD2.x, SDXL)")

    def cross_steps(self) -> int:
        return steps_for(self.cross_fraction, self.steps)

    def cross_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, step: int | None,
        cond_or_uncond: Sequence[int], layer: TransformerLayer, spatial: tuple[int, int],
        attend: Attend = plain_attention,
    ) -> torch.Tensor:
        """One cross-attention layer; ``spatial`` is the layer's ``(h, w)``, ``attend`` the layer's attention.

        While it records or edits, every row is computed from explicit probabilities; an inner attention
        chained under the engine (:class:`LayerAttention`) still adds its part to them."""
        record = layer.level == self.map_level
        edit = self.within(step, self.cross_fraction)
        if not self.active or step is None or not (record or edit):
            return attend(q, k, v, heads)
        layout = self.layout(q.shape[0], cond_or_uncond)
        tokens = self.mapping.tokens
        if k.shape[1] % tokens:
            raise ValueError(f"P2P: the cross-attention context has {k.shape[1]} tokens, not a multiple of the "
                             f"prompts' {tokens}; a node that extends the text context (e.g. an IP-Adapter that "
                             "appends image tokens) cannot be combined with Prompt-to-Prompt")
        # Every row from explicit probabilities, the unconditional ones too: where the prompts agree (the
        # source branch, an identity edit) cond and uncond are then equal to the bit, so the guidance's edit
        # mask is empty there instead of marking the host kernel's rounding.
        out = torch.empty_like(q)
        for rows in layout.uncond_chunks():
            out[rows] = apply_probs(attention_probs(q[rows], k[rows], heads), v[rows]).to(out.dtype)
        half = layout.images
        for rows in layout.cond_chunks():
            probs = attention_probs(q[rows], k[rows], heads)
            # ComfyUI repeats a context to batch it with a longer one: map each 77-token copy alike.
            probs = probs.unflatten(-1, (-1, tokens))
            if record and self.blend_maps == "target":
                self._record(probs.sum(-2), spatial, in_window=edit or self.cross_steps() == 0)
            if edit:
                mapped = self.mapping(probs[:half], probs[half:])
                if self.equalizer is not None:
                    mapped = mapped * self.equalizer.to(mapped)
                probs = torch.cat([probs[:half], mapped])
            if record and self.blend_maps == "edited":
                self._record(probs.sum(-2), spatial, in_window=edit or self.cross_steps() == 0)
            out[rows] = apply_probs(probs.flatten(-2), v[rows])
        if isinstance(attend, LayerAttention) and attend.inner is not None:
            out = out + attend.added(attend(q, k, v, heads), q, k, v, heads)
        return out

    def self_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, step: int | None,
        cond_or_uncond: Sequence[int], layer: TransformerLayer, spatial: tuple[int, int],
        attend: Attend = plain_attention,
    ) -> torch.Tensor:
        """One self-attention layer: inside the window the target attends with the source's probabilities."""
        if not self.within(step, self.self_fraction) or layer.level < self.self_min_level:
            return attend(q, k, v, heads)
        layout = self.layout(q.shape[0], cond_or_uncond)
        half = layout.images
        q, k = q.clone(), k.clone()
        for rows in layout.cond_chunks():
            start = rows.start
            q[start + half:rows.stop] = q[start:start + half]
            k[start + half:rows.stop] = k[start:start + half]
        return attend(q, k, v, heads)

    def _record(self, probs: torch.Tensor, spatial: tuple[int, int], in_window: bool) -> None:
        h, w = spatial
        maps = probs.mean(1).reshape(probs.shape[0], h, w, probs.shape[-1])
        self.blend_sum = maps if self.blend_sum is None else self.blend_sum + maps
        if in_window:
            self.preview_sum = maps if self.preview_sum is None else self.preview_sum + maps
            self.preview_count += 1

    def attention_maps(self) -> torch.Tensor | None:
        """Cross-attention maps ``[rows, h, w, tokens]`` (source rows, then target rows) averaged over the
        recorded layers and the cross-replace steps (all steps when that window is empty)."""
        if self.preview_sum is None:
            return None
        return self.preview_sum / self.preview_count

    def blend_masks(self, latent_hw: tuple[int, int]) -> torch.Tensor | None:
        """The local-blend mask ``[B, 1, H, W]`` (bool) from the maps recorded so far, or ``None``."""
        if self.blend is None or self.blend_sum is None:
            return None
        layout = BranchLayout.of_batch(self.blend_sum.shape[0])
        source, target = layout.split(self.blend_sum)
        words = layout.join(source[..., list(self.blend.source_positions)].sum(-1),
                            target[..., list(self.blend.target_positions)].sum(-1)).unsqueeze(1)
        words = F.max_pool2d(words, kernel_size=3, stride=1, padding=1)
        words = F.interpolate(words, size=latent_hw, mode="nearest")
        peak = words.amax(dim=(2, 3), keepdim=True).clamp_min(torch.finfo(words.dtype).tiny)
        source_mask, target_mask = layout.split((words / peak) > self.blend.threshold)
        return source_mask | target_mask

    def after_step(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """Local blend on the stacked latent ``[source rows, target rows]`` after DDIM step ``step``."""
        if self.blend is None or step < steps_for(self.blend.start, self.steps):
            return x
        mask = self.blend_masks(tuple(x.shape[-2:]))
        if mask is None:
            return x
        self.blend_mask = mask
        layout = BranchLayout.of_batch(x.shape[0])
        source, target = layout.split(x)
        return layout.join(source, torch.where(mask.to(x.device), target, source))
