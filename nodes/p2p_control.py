"""P2PAttentionControl: Prompt-to-Prompt on a MODEL clone, with the two prompts encoded once."""

from __future__ import annotations

from comfy.ldm.modules.attention import optimized_attention
from comfy.patcher_extension import WrappersMP
from comfy_api.latest import io

from ..attention_patches.families import Family
from ..attention_patches.prompt_to_prompt import (
    BLEND_MAPS,
    LocalBlend,
    PromptToPrompt,
    RefineMapping,
    ReplaceMapping,
)
from ..attention_patches.registration import attach_engine
from ..attention_patches.token_alignment import (
    equalizer,
    parse_word_factors,
    refinement_mapper,
    replacement_mapper,
)
from ..spdinv.guidance import EditRecipe
from .clip_tokens import named, phrase_positions, prompt_tokens, token_ids, token_text

MODES = ("refine", "word swap")
PIN_BELOW = 0.4
"""Inversion guidance acts while the timestep is below 400 of 1000, as in the reference."""


class P2PAttentionControl(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="P2PAttentionControl",
            display_name="SPDInv Prompt-to-Prompt",
            category="SPDInv/engines",
            description="Prompt-to-Prompt attention control for the SPDInv Edit Sampler: the target prompt's "
                        "cross-attention follows the source's (word swap or refine), optionally reweighted, with "
                        "self-attention replacement and local blend. SD1.x, SD2.x, SDXL and Wan video (umT5 prompts; "
                        "maps and blend masks over every frame). Also encodes both prompts and sets the "
                        "ProxEdit guidance recipe SPDInv uses (proximal guidance, inversion guidance).",
            inputs=[
                io.Model.Input("model", tooltip="The model the photo was inverted with."),
                io.Clip.Input("clip", tooltip="The text encoder, to tokenize and encode both prompts."),
                io.String.Input("source_text", multiline=True, default="a photo of a cat",
                                tooltip="Describes the photo: the prompt the inversion used. Connect the "
                                        "'source' output to SPDInv Invert and the edit sampler."),
                io.String.Input("target_text", multiline=True, default="a photo of a dog",
                                tooltip="The edit: the source prompt with words swapped, added or removed."),
                io.Combo.Input("mode", options=list(MODES), default="refine",
                               tooltip="refine: aligns the prompts token by token (words may be added or "
                                       "removed; new words keep their own attention). word swap: same number of "
                                       "words, changed words take the maps of the words they replace."),
                io.Float.Input("cross_replace", default=0.8, min=0.0, max=1.0, step=0.05,
                               tooltip="Fraction of the steps (from the start) where the target's cross-attention "
                                       "follows the source's (paper code: 0.8; PIE-Bench protocol: 0.4). Lower it "
                                       "if the edit is too weak."),
                io.Float.Input("self_replace", default=0.6, min=0.0, max=1.0, step=0.05,
                               tooltip="Fraction of the steps where the target uses the source's self-attention "
                                       "(layout, 0.6). Raise it to keep more structure, lower it for bigger shape "
                                       "changes."),
                io.String.Input("blend_source_words", default="",
                                tooltip="Local blend: words (comma-separated) of the source prompt whose region "
                                        "may change, e.g. 'cat'. Empty on both sides: no local blend."),
                io.String.Input("blend_target_words", default="",
                                tooltip="Local blend: words of the target prompt whose region may change, e.g. "
                                        "'dog'. Outside the union of both regions the edit keeps the source."),
                io.Float.Input("blend_threshold", default=0.3, min=0.0, max=1.0, step=0.05,
                               tooltip="Local blend mask threshold on the normalised word maps (0.3). Lower it if "
                                       "the edited region is cut too tight."),
                io.Float.Input("blend_start", default=0.2, min=0.0, max=1.0, step=0.05,
                               tooltip="Local blend applies from this fraction of the steps on (0.2: step 11 of "
                                       "50)."),
                io.String.Input("reweight", default="",
                                tooltip="Per-word factors on the target's cross-attention, e.g. 'silver:2.0, "
                                        "cat:0.5' (words of the target prompt). Acts during cross_replace."),
                io.Boolean.Input("proximal_guidance", default=True,
                                 tooltip="Soft-threshold the guidance difference at its quantile (ProxEdit, as "
                                         "SPDInv's code does): edits stay local. Off: plain CFG."),
                io.Float.Input("proximal_quantile", default=0.7, min=0.0, max=0.999, step=0.05,
                               tooltip="Quantile of |guidance difference| used as threshold (0.7; PIE-Bench "
                                       "protocol: 0.75). Higher: fewer pixels edited."),
                io.Boolean.Input("inversion_guidance", default=True,
                                 tooltip="For the last steps (timestep < 400 of 1000), pin everything outside the "
                                         "guidance's edit mask to the inversion trajectory: the background matches "
                                         "the photo. The reconstruction output is then the photo itself."),
                io.Conditioning.Input("target_conditioning", optional=True,
                                      tooltip="Use this encoding of the target instead of encoding target_text (e.g. "
                                              "from SPDInv ELITE Mapper, whose placeholder word comes from an "
                                              "image). target_text must be the same text: it aligns the tokens."),
                io.Combo.Input("blend_maps", options=list(BLEND_MAPS), default="target", optional=True,
                               tooltip="Which target maps local blend (and the preview) reads. target: the "
                                       "target prompt's own attention. edited: what the official code reads, "
                                       "the edited maps (inside the cross_replace window, the source word's maps "
                                       "mapped onto the target); choose it to reproduce the paper's numbers."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model with P2P attention control (use it "
                                "with the SPDInv Edit Sampler; other samplers see plain attention)."),
                io.Conditioning.Output(display_name="source", tooltip="The source prompt's encoding."),
                io.Conditioning.Output(display_name="target", tooltip="The target prompt's encoding."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, source_text, target_text, mode, cross_replace, self_replace,
                blend_source_words, blend_target_words, blend_threshold, blend_start, reweight, proximal_guidance,
                proximal_quantile, inversion_guidance, target_conditioning=None,
                blend_maps="target") -> io.NodeOutput:
        tokenize = token_ids(clip)
        source = named("source_text", prompt_tokens, clip, source_text)
        target = named("target_text", prompt_tokens, clip, target_text)
        if mode == "word swap":
            mapping = ReplaceMapping(named("target_text", replacement_mapper, source, target))
        else:
            mapping = RefineMapping(*refinement_mapper(source, target))
        factors = named("reweight", parse_word_factors, reweight)
        eq = named("reweight", equalizer, target, factors, tokenize) if factors else None
        blend = None
        if blend_source_words.strip() or blend_target_words.strip():
            src = phrase_positions(source, blend_source_words, tokenize, "blend_source_words")
            tgt = phrase_positions(target, blend_target_words, tokenize, "blend_target_words")
            blend = LocalBlend(src, tgt, blend_threshold, blend_start)
        guided = proximal_guidance or inversion_guidance
        recipe = EditRecipe(source_cfg=1.0, proximal_quantile=proximal_quantile if guided else None,
                            shrink=proximal_guidance, pin_below=PIN_BELOW if inversion_guidance else None)
        labels = (token_text(clip, list(source.ids)), token_text(clip, list(target.ids)))
        family = Family.of(model)
        family.require(PromptToPrompt.node)
        levels = ({"self_min_level": family.default("p2p_self_min_level"), "map_level": family.default("p2p_map_level")}
                  if family.is_unet else {})
        engine = PromptToPrompt(mapping, eq, cross_replace, self_replace, blend, labels=labels, blend_maps=blend_maps,
                                first_token=source.start, recipe=recipe, **levels)
        patched = attach_engine(model, engine, optimized_attention, WrappersMP.DIFFUSION_MODEL)
        source_cond = clip.encode_from_tokens_scheduled(clip.tokenize(source_text))
        if target_conditioning is None:
            target_conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(target_text))
        return io.NodeOutput(patched, source_cond, target_conditioning)
