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

On a video DiT (Wan), each block's cross-attention reads the prompt's umT5 tokens, embedded once for the whole model
and the same in every block, so a token's map is a word's map as in a UNet and the same control carries over: in
every block the cross-attention is controlled and recorded (one resolution), the self-attention over all frames'
tokens is replaced inside its window, and maps and blend masks lie over ``(frames, h, w)`` (recorded with the
frames stacked along the height). Joint attention (SD3, Flux) has no such fixed word maps: see
:mod:`.joint_attention`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..spdinv.branches import BranchLayout
from .attention_call import AttentionCall
from .attention_math import apply_probs, attention_probs
from .dit_blocks import DiTBlock
from .engine import EditEngine, RecordedMaps
from .families import P2P
from .run import EditRun, check_fraction, steps_for
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


PROBABILITIES_PER_BLOCK = 1 << 27
"""Most attention probabilities (float32: 512 MiB) computed at once: a clip's queries go in blocks of this size (a
real 81-frame Wan clip has 32,760 tokens; 40 heads × 512 keys × 2 rows of them would be 5 GiB at once)."""


def query_blocks(queries: int, per_query: int, limit: int) -> list[slice]:
    """Query ranges whose probabilities (``per_query`` each) stay within ``limit``: one range for any UNet layer."""
    size = max(1, limit // max(1, per_query))
    return [slice(start, min(start + size, queries)) for start in range(0, queries, size)]


BLEND_MAPS = ("target", "edited")
"""Which target maps local blend and the preview read: the target's own, or the edited ones (the paper's)."""


@dataclass(frozen=True)
class LocalBlend:
    """Token positions of the blend words in each prompt, threshold and start (fraction of the steps)."""

    source_positions: tuple[int, ...]
    target_positions: tuple[int, ...]
    threshold: float = 0.3
    start: float = 0.2


@dataclass
class MapRecord:
    """What one run's P2P calls gather (in ``run.records``): the maps summed for local blend, the maps summed
    over the cross-replace window for the preview, and the last blend mask."""

    blend_sum: torch.Tensor | None = None
    preview_sum: torch.Tensor | None = None
    preview_count: int = 0
    blend_mask: torch.Tensor | None = None

    def add(self, maps: torch.Tensor, in_window: bool) -> None:
        self.blend_sum = maps if self.blend_sum is None else self.blend_sum + maps
        if in_window:
            self.preview_sum = maps if self.preview_sum is None else self.preview_sum + maps
            self.preview_count += 1


@dataclass(frozen=True, eq=False)
class PromptToPrompt(EditEngine):
    """One edit's P2P configuration. In a call of an edit run, ``cross_attention``/``self_attention`` edit the
    target rows and record maps into the run; ``after_step`` blends. Outside a run every layer is plain.

    ``labels``: the text of the content tokens (positions ``first_token``.. of the window) of the source and the
    target prompt, for previews. On DiT blocks (Wan) ``self_min_level`` and ``map_level`` do not apply: every block
    is controlled and recorded.
    """

    mapping: ReplaceMapping | RefineMapping
    equalizer: torch.Tensor | None = None
    cross_fraction: float = 0.8
    self_fraction: float = 0.6
    blend: LocalBlend | None = None
    self_min_level: int = 1
    map_level: int = 2
    labels: tuple[list[str], list[str]] = ([], [])
    blend_maps: str = "target"
    first_token: int = 1
    name: ClassVar[str] = "P2P"
    node: ClassVar[str] = P2P

    def __post_init__(self) -> None:
        check_fraction("cross_fraction", self.cross_fraction)
        check_fraction("self_fraction", self.self_fraction)
        if self.blend_maps not in BLEND_MAPS:
            raise ValueError(f"blend_maps must be one of {BLEND_MAPS}, got {self.blend_maps!r}")

    def controls(self, site: TransformerLayer | DiTBlock) -> tuple[str, ...]:
        """Every cross-attention, and the self-attention at ``self_min_level`` and below (every DiT block's)."""
        if isinstance(site, DiTBlock):
            return ("self", "cross")
        kinds = ("attn2",) if site.cross_attention else ()
        if site.self_attention and site.level >= self.self_min_level:
            kinds += ("attn1",)
        return kinds

    def check_sites(self, sites: Sequence[TransformerLayer | DiTBlock]) -> None:
        if not any(isinstance(site, DiTBlock) or site.cross_attention for site in sites):
            raise ValueError("model: no cross-attention layers found; Prompt-to-Prompt needs a text-conditioned "
                             "UNet (SD1.x, SD2.x, SDXL) or Wan")

    def _records_at(self, site: TransformerLayer | DiTBlock) -> bool:
        return isinstance(site, DiTBlock) or site.level == self.map_level

    def _needs_maps(self, call: AttentionCall, edit: bool) -> bool:
        """Whether this call's maps are used: always at a UNet's one map level; on a DiT, where every block records,
        only for local blend or inside the preview's window (explicit probabilities over a clip's tokens are
        costly)."""
        if not isinstance(call.site, DiTBlock) or self.blend is not None or edit:
            return True
        return call.in_run and steps_for(self.cross_fraction, call.run.steps) == 0

    def _replaces_self_at(self, site: TransformerLayer | DiTBlock) -> bool:
        return isinstance(site, DiTBlock) or site.level >= self.self_min_level

    def record(self, run: EditRun) -> MapRecord:
        """This run's map record (made on first use)."""
        return run.records.setdefault(self.name, MapRecord())

    def cross_attention(self, call: AttentionCall) -> torch.Tensor:
        """One cross-attention layer.

        While it records or edits, every row is computed from explicit probabilities; an inner attention
        chained under the engine still adds its part to them."""
        edit = call.within(self.cross_fraction)
        record = self._records_at(call.site) and self._needs_maps(call, edit)
        if not call.in_run or not (record or edit):
            return call.attend()
        q, k, v, heads = call.q, call.k, call.v, call.heads
        layout = call.layout(self.name)
        tokens = self.mapping.tokens
        if k.shape[1] % tokens:
            raise ValueError(f"P2P: the cross-attention context has {k.shape[1]} tokens, not a multiple of the "
                             f"prompts' {tokens}; a node that extends the text context (e.g. an IP-Adapter that "
                             "appends image tokens) or an image-to-video model's image context cannot be combined "
                             "with Prompt-to-Prompt")
        in_window = edit or steps_for(self.cross_fraction, call.run.steps) == 0
        # Every row from explicit probabilities, the unconditional ones too: where the prompts agree (the
        # source branch, an identity edit) cond and uncond are then equal to the bit, so the guidance's edit
        # mask is empty there instead of marking the host kernel's rounding.
        out = torch.empty_like(q)
        rows_at_once = max(c.stop - c.start for c in layout.cond_chunks() + layout.uncond_chunks())
        queries = query_blocks(q.shape[1], rows_at_once * heads * k.shape[1], PROBABILITIES_PER_BLOCK)
        for rows in layout.uncond_chunks():
            for part in queries:
                out[rows, part] = apply_probs(attention_probs(q[rows, part], k[rows], heads), v[rows]).to(out.dtype)
        half = layout.images
        for rows in layout.cond_chunks():
            maps = []
            for part in queries:
                probs = attention_probs(q[rows, part], k[rows], heads)
                # ComfyUI repeats a context to batch it with a longer one: map each 77-token copy alike.
                probs = probs.unflatten(-1, (-1, tokens))
                if record and self.blend_maps == "target":
                    maps.append(probs.sum(-2).mean(1))
                if edit:
                    mapped = self.mapping(probs[:half], probs[half:])
                    if self.equalizer is not None:
                        mapped = mapped * self.equalizer.to(mapped)
                    probs = torch.cat([probs[:half], mapped])
                if record and self.blend_maps == "edited":
                    maps.append(probs.sum(-2).mean(1))
                out[rows, part] = apply_probs(probs.flatten(-2), v[rows])
            if maps:
                self._record(call, torch.cat(maps, dim=1), in_window)
        if call.inner is not None:
            out = out + call.added(call.attend(), q, k, v)
        return out

    def self_attention(self, call: AttentionCall) -> torch.Tensor:
        """One self-attention layer: inside the window the target attends with the source's probabilities."""
        if not call.within(self.self_fraction) or not self._replaces_self_at(call.site):
            return call.attend()
        layout = call.layout(self.name)
        half = layout.images
        q, k = call.q.clone(), call.k.clone()
        for rows in layout.cond_chunks():
            start = rows.start
            q[start + half:rows.stop] = q[start:start + half]
            k[start + half:rows.stop] = k[start:start + half]
        return call.attend(q, k)

    def _record(self, call: AttentionCall, maps: torch.Tensor, in_window: bool) -> None:
        """Add one call's maps ``[rows, queries, tokens]`` (averaged over heads) to the run's record."""
        if call.spatial is None:
            raise ValueError(f"model: the {maps.shape[1]} query tokens of {self.node}'s cross-attention do not form "
                             "the latent's grid; the maps cannot be laid out on this model")
        h, w = call.spatial
        self.record(call.run).add(maps.reshape(maps.shape[0], h, w, maps.shape[-1]), in_window)

    def recorded_maps(self, run: EditRun) -> RecordedMaps:
        """Cross-attention maps ``[rows, h, w, tokens]`` (source rows, then target rows) averaged over the
        recorded layers and the cross-replace steps (all steps when that window is empty), the last blend mask."""
        record = self.record(run)
        maps = None if record.preview_sum is None else (record.preview_sum / record.preview_count).cpu()
        mask = None if record.blend_mask is None else record.blend_mask.cpu()
        return RecordedMaps(maps, mask, self.labels, self.first_token)

    def blend_masks(self, run: EditRun, latent_size: tuple[int, ...]) -> torch.Tensor | None:
        """The local-blend mask ``[B, 1, *latent_size]`` (bool) from the maps recorded so far in ``run``, or ``None``.
        ``latent_size``: ``(H, W)``, or a clip's ``(frames, H, W)`` (maps recorded with the frames stacked along the
        height; each frame pooled on its own, one peak for the whole clip)."""
        blend_sum = self.record(run).blend_sum
        if self.blend is None or blend_sum is None:
            return None
        layout = BranchLayout.of_batch(blend_sum.shape[0])
        source, target = layout.split(blend_sum)
        words = layout.join(source[..., list(self.blend.source_positions)].sum(-1),
                            target[..., list(self.blend.target_positions)].sum(-1)).unsqueeze(1)
        if len(latent_size) == 3:
            words = F.max_pool3d(words.unflatten(2, (latent_size[0], -1)), (1, 3, 3), stride=1, padding=(0, 1, 1))
        else:
            words = F.max_pool2d(words, kernel_size=3, stride=1, padding=1)
        words = F.interpolate(words, size=tuple(latent_size), mode="nearest")
        peak = words.amax(dim=tuple(range(2, words.dim())), keepdim=True).clamp_min(torch.finfo(words.dtype).tiny)
        source_mask, target_mask = layout.split((words / peak) > self.blend.threshold)
        return source_mask | target_mask

    def after_step(self, run: EditRun, step: int, x: torch.Tensor) -> torch.Tensor:
        """Local blend on the stacked latent ``[source rows, target rows]`` after DDIM step ``step``."""
        if self.blend is None or step < steps_for(self.blend.start, run.steps):
            return x
        mask = self.blend_masks(run, tuple(x.shape[2:]))
        if mask is None:
            return x
        self.record(run).blend_mask = mask
        layout = BranchLayout.of_batch(x.shape[0])
        source, target = layout.split(x)
        return layout.join(source, torch.where(mask.to(x.device), target, source))
