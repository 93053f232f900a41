"""What the pack knows about each model family, as data: one :class:`Family` entry per family in :data:`FAMILIES`.

An entry says which ComfyUI model configs it covers (``comfy.supported_models`` class names, matched along the
config class's parents), how its attention sites are found (UNet transformer layers, or DiT block lists), how its
tokens lie, its sampling grid, whether it takes size conditioning or distilled guidance, which editing engines
run on it, and the engines' documented defaults on it. Nodes ask :meth:`Family.of` for a MODEL's family and read
everything from it; adding a family is one entry (plus, for a new block layout, its ``blocks``). Duck-typed:
nothing here imports ComfyUI.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .dit_blocks import DiTBlock, ImageTokens, dit_blocks
from .unet_layers import TransformerLayer, transformer_layers

P2P = "SPDInv Prompt-to-Prompt"
MASACTRL = "SPDInv MasaCtrl"
PNP = "SPDInv Plug-and-Play"
ELITE = "SPDInv ELITE Mapper"
MMDIT = "SPDInv MM-DiT Mutual Attention"

UNET_DEFAULTS: dict[str, Any] = {
    "p2p_self_min_level": 1,
    "p2p_map_level": 2,
    "masactrl_decoder_start": 1 / 3,
    "masactrl_map_level": 2,
    "pnp_feature_level": 2,
    "pnp_feature_index": 1,
}
"""UNet families. P2P: self-attention replaced at half the latent's resolution and below (32×32 at SD1.5 512²),
maps for local blend and the preview at a quarter (16×16), as the reference. MasaCtrl: from a third into the
decoder's transformer layers (SD1.x 10 of 16, the paper's; SDXL 46 of 70), automatic masks from the quarter-
resolution maps. PnP: features of the second block of the decoder stage at 1/32 of the image (SD1.x diffusers
``up_blocks[1].resnets[1]``, the reference's)."""


@dataclass(frozen=True)
class Family:
    """One model family (see the module docstring). ``tokens``: ``"spatial"`` (UNet layers see an ``h×w`` grid),
    ``"joint"`` (MM-DiT: text and image tokens attend together), ``"joint+single"`` (double-stream then
    single-stream blocks) or ``"video"`` (Wan: self-attention over all frames' tokens, cross-attention to the
    text). ``blocks``: a DiT's ``(dit patch kind, attribute)`` block lists in forward order.
    ``grid``: the scheduler of the ``auto`` inversion grid. ``hook``: how the DiT engine is installed:
    ``"attn1_patch"``, the host's pre-attention hook, where this ComfyUI's blocks call it (else ``dit`` block
    patches, as with ``None``); ``"optimized_attention_override"``, one attention override for the whole model, for
    models with neither (Z-Image, HiDream): the pack's call wrapper tells it which block is running;
    ``"self-attention"``: ``dit`` block patches that hand the engine each block's self-attention only (Wan).
    ``image_at``: where the noisy image's tokens lie in a block's attention call, ``"last"`` (after the text, padded
    to the model's ``pad_tokens_multiple`` where it has one) or ``"first"``. ``marks``: attributes a diffusion model
    of a config no entry names must also have to count as this family (Z-Image's ``layers`` is a common name).
    ``refuses``: model inputs that put image tokens the engine cannot tell from the photo's into the calls.
    ``distilled_guidance``: the model takes its guidance as an input (FluxGuidance) and runs at CFG 1; ``None``: read
    from the model (a ``guidance_in`` embedder, as Flux.2 dev has and Klein has not)."""

    name: str
    configs: tuple[str, ...] = ()
    tokens: str = "spatial"
    blocks: tuple[tuple[str, str], ...] = ()
    grid: str | None = None
    size_conditioning: bool = False
    distilled_guidance: bool | None = False
    hook: str | None = None
    image_at: str = "last"
    marks: tuple[str, ...] = ()
    refuses: tuple[str, ...] = ()
    engines: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def is_unet(self) -> bool:
        return self.tokens == "spatial"

    def sites(self, diffusion_model: Any) -> list[TransformerLayer] | list[DiTBlock]:
        """The model's attention sites in forward order: UNet transformer layers or DiT blocks."""
        if self.is_unet:
            return transformer_layers(diffusion_model)
        return dit_blocks(diffusion_model, self.blocks)

    def image_tokens(self, diffusion_model: Any) -> ImageTokens:
        """Where this model's attention calls hold the noisy image's tokens (see ``image_at``)."""
        pad = getattr(diffusion_model, "pad_tokens_multiple", None)
        return ImageTokens(first=self.image_at == "first", pad_multiple=1 if self.image_at == "first" else pad or 1)

    def guidance_distilled(self, diffusion_model: Any) -> bool:
        """Whether this model takes distilled guidance (see ``distilled_guidance``)."""
        if self.distilled_guidance is None:
            return bool(getattr(getattr(diffusion_model, "params", None), "guidance_embed", False))
        return self.distilled_guidance

    def default(self, key: str) -> Any:
        """A documented engine default on this family (``KeyError`` names the family)."""
        if key not in self.defaults:
            raise KeyError(f"{self.name} has no default {key!r}")
        return self.defaults[key]

    def require(self, engine: str) -> None:
        """Refuse an engine this family does not run, naming the families it runs on and the engine that fits."""
        if engine in self.engines:
            return
        runs_on = ", ".join(f.name for f in FAMILIES if engine in f.engines)
        fits = " or ".join(e for e in self.engines if e != ELITE)
        advice = f"use {fits}" if fits else ("no SPDInv editing engine supports it yet; SPDInv Invert and the Edit "
                                             "Sampler without an engine still work")
        raise ValueError(f"model: {engine} runs on {runs_on}; this model is {self.name}: {advice}")

    def matches(self, diffusion_model: Any) -> bool:
        """Whether ``diffusion_model`` has this family's structure (for models of configs no entry names)."""
        if self.is_unet:
            return all(hasattr(diffusion_model, a) for a in ("input_blocks", "output_blocks"))
        attributes = [attribute for _, attribute in self.blocks] + list(self.marks)
        return bool(self.blocks) and all(hasattr(diffusion_model, a) for a in attributes)

    @staticmethod
    def of(model_patcher: Any) -> Family:
        """The family of a MODEL: by its config class (or a parent of it), else by the diffusion model's
        structure (named "<config> (<family>-like)"), else a family that supports no engine."""
        config = getattr(getattr(model_patcher, "model", None), "model_config", None)
        names = [cls.__name__ for cls in type(config).__mro__] if config is not None else []
        for name in names:
            for family in FAMILIES:
                if name in family.configs:
                    return family
        diffusion_model = model_patcher.get_model_object("diffusion_model")
        label = names[0] if names else type(diffusion_model).__name__
        for family in FAMILIES:
            if family.matches(diffusion_model):
                return replace(family, name=f"{label} ({family.name}-like)")
        return Family(label, tokens="unknown")


FLUX_BLOCKS = (("double_block", "double_blocks"), ("single_block", "single_blocks"))
HIDREAM_BLOCKS = (("double_block", "double_stream_blocks"), ("single_block", "single_stream_blocks"))
OVERRIDE = "optimized_attention_override"
"""``hook`` of the families installed through one model-wide attention override."""
SELF_ATTENTION = "self-attention"
"""``hook`` of video DiTs (Wan): ``dit`` block patches that hand the engine each block's self-attention only."""

FAMILIES: tuple[Family, ...] = (
    Family("SD1.x", ("SD15",), grid="ddim_uniform", engines=(P2P, MASACTRL, PNP, ELITE), defaults=UNET_DEFAULTS),
    Family("SD2.x", ("SD20",), grid="ddim_uniform", engines=(P2P, MASACTRL, PNP), defaults=UNET_DEFAULTS),
    Family("SDXL", ("SDXL", "SDXLRefiner"), grid="ddim_uniform", size_conditioning=True,
           engines=(P2P, MASACTRL, PNP), defaults=UNET_DEFAULTS),
    Family("SD3.x", ("SD3",), tokens="joint", blocks=(("double_block", "joint_blocks"),), grid="simple",
           engines=(MMDIT,), defaults={"mmdit_start_block": 0.5}),
    Family("Flux.1", ("Flux",), tokens="joint+single", blocks=FLUX_BLOCKS, grid="simple", distilled_guidance=True,
           hook="attn1_patch", engines=(MMDIT,), defaults={"mmdit_start_block": 0.65}),
    Family("Flux.2", ("Flux2",), tokens="joint+single", blocks=FLUX_BLOCKS, grid="simple", distilled_guidance=None,
           hook="attn1_patch", engines=(MMDIT,), defaults={"mmdit_start_block": 0.65}),
    Family("Chroma", ("Chroma",), tokens="joint+single", blocks=FLUX_BLOCKS, grid="simple", hook="attn1_patch",
           engines=(MMDIT,), defaults={"mmdit_start_block": 0.65}),
    Family("Qwen-Image", ("QwenImage",), tokens="joint", blocks=(("double_block", "transformer_blocks"),),
           grid="simple", hook="attn1_patch", engines=(MMDIT,), defaults={"mmdit_start_block": 0.5}),
    Family("Z-Image", ("ZImage",), tokens="joint", blocks=(("double_block", "layers"),), grid="simple",
           hook=OVERRIDE, marks=("noise_refiner", "context_refiner"), refuses=("ref_latents",), engines=(MMDIT,),
           defaults={"mmdit_start_block": 0.5}),
    Family("HiDream", ("HiDream",), tokens="joint+single", blocks=HIDREAM_BLOCKS, grid="simple", hook=OVERRIDE,
           image_at="first", refuses=("image_cond",), engines=(MMDIT,), defaults={"mmdit_start_block": 0.65}),
    Family("Wan", ("WAN21_T2V",), tokens="video", blocks=(("double_block", "blocks"),), grid="simple",
           hook=SELF_ATTENTION, marks=("patch_embedding", "text_embedding", "time_projection"), engines=(MMDIT, P2P),
           defaults={"mmdit_start_block": 0.5}),
)
"""The families the pack knows. A model's family is the entry naming its config class, else the nearest parent
class an entry names (Flux.2's config is a child of Flux.1's); a model of no named config takes the first entry
whose structure it has.

MM-DiT start blocks: SD3.x shares from half its joint blocks on; Flux.1 from 0.65 of its 57 blocks, the last 20 of
its 38 single-stream blocks, the block range where RF-Solver-Edit shares values. Sharing keys and values from a
start step is MasaCtrl's rule, as KV-Edit carries it to flow transformers. Flux.2 and Chroma (Flux's double- then
single-stream layout) take Flux.1's depth, Qwen-Image (joint blocks only) SD3.x's: by analogy, not yet measured on
real weights. Likewise by analogy: Z-Image (30 single-stream layers in which caption and image attend together,
like SD3.x's joint blocks) takes SD3.x's 0.5, HiDream (16 double- then 32 single-stream blocks, Flux's layout) Flux's
0.65 (block 31 of 48: its last 17 single-stream blocks). Neither calls ComfyUI's pre-attention hook nor has ``dit``
block patches, so the engine is one model-wide attention override there (ComfyUI 0.33 for Z-Image, 0.3.64 too for
HiDream); a Lumina 2 model (Z-Image's parent config: the same transformer, no pad tokens) is Z-Image-like by its
structure and runs it too. HiDream E1's reference image (``image_cond``) is concatenated with the latent along the
width, which interleaves its tokens with the photo's, and Z-Image's omni reference images (``ref_latents``) come with
their own caption segments: the engine refuses both. Flux's, Flux.2's and Qwen-Image's reference images (Kontext,
Flux.2 edits, Qwen-Image-Edit) follow the image's tokens; the engine leaves them out of what it shares. Wan (2.1, 2.2
and their variants, all children of ``WAN21_T2V``): self-attention over every frame's tokens, then cross-attention to
the prompt in each block; the engine shares the self-attention's keys and values (every token is the clip's) through
``dit`` block patches (ComfyUI's ``attn1_patch`` runs after Wan's attention), from half the blocks on, by analogy with
SD3.x, not yet measured on real weights. Wan's cross-attention reads the prompt's umT5 tokens, embedded once and the
same in every block, so Prompt-to-Prompt runs there too: every block's cross-attention is controlled and recorded,
and its self-attention replaced inside the self-replace window (a DiT has one resolution, so there are no levels
to choose)."""
