"""MasaCtrlMutualAttention: MasaCtrl mutual self-attention on a MODEL clone, optionally mask-guided."""

from __future__ import annotations

import logging

from comfy.ldm.modules.attention import optimized_attention
from comfy.patcher_extension import WrappersMP
from comfy_api.latest import io

from ..attention_patches.families import Family
from ..attention_patches.mutual_self_attention import AutoMask, MutualSelfAttention, auto_start_layer
from ..attention_patches.registration import attach_engine
from ..spdinv.guidance import EditRecipe
from .clip_tokens import named, phrase_positions, prompt_tokens, token_ids

log = logging.getLogger(__name__)

MASK_MODES = ("none", "mask", "auto")
AUTO_START = -1
"""``start_layer`` value meaning: the family's default position in the decoder (SD1.x: layer 10 of 16)."""


def _auto_mask(clip, source_text: str, target_text: str, source_words: str, target_words: str,
               threshold: float) -> AutoMask:
    if clip is None:
        raise ValueError("clip: mask_mode 'auto' finds the words' tokens with the text encoder; connect the CLIP")
    tokenize = token_ids(clip)
    positions = []
    for side, text, spec in (("source", source_text, source_words), ("target", target_text, target_words)):
        if not spec.strip():
            raise ValueError(f"{side}_words: mask_mode 'auto' needs a word of the {side} prompt whose attention "
                             "makes the mask, e.g. 'cat'")
        prompt = named(f"{side}_text", prompt_tokens, clip, text)
        positions.append(phrase_positions(prompt, spec, tokenize, f"{side}_words"))
    return AutoMask(positions[0], positions[1], threshold)


class MasaCtrlMutualAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MasaCtrlMutualAttention",
            display_name="SPDInv MasaCtrl",
            category="SPDInv/engines",
            description="MasaCtrl mutual self-attention for the SPDInv Edit Sampler: from a start step, the "
                        "target's self-attention in the decoder queries the source's keys and values, so pose or "
                        "action can change while the subject keeps its identity. Optional mask guidance keeps "
                        "object and background apart. Sets ProxEdit's MasaCtrl guidance recipe; give the edit "
                        "sampler an empty prompt as negative.",
            inputs=[
                io.Model.Input("model", tooltip="The model the photo was inverted with."),
                io.Float.Input("start_step", default=0.08, min=0.0, max=1.0, step=0.02,
                               tooltip="Fraction of the steps before control starts (0.08 = step 4 of 50). Later: "
                                       "more freedom for the edit, less identity kept."),
                io.Int.Input("start_layer", default=AUTO_START, min=AUTO_START, max=200,
                             tooltip="First transformer layer controlled, counted in the model's forward order. "
                                     "-1: a third into the decoder's layers, comparable on every family (SD1.x "
                                     "and SD2.x: 10 of 16, the decoder's two highest resolutions, as the paper; "
                                     "SDXL: 46 of 70). Lower: more of the source kept."),
                io.Combo.Input("mask_mode", options=list(MASK_MODES), default="none",
                               tooltip="none: plain MasaCtrl. mask: the connected MASK marks the object; target "
                                       "object queries see only source object keys, background only background. "
                                       "auto: the masks come from each step's cross-attention of the words "
                                       "below (needs clip and both prompts)."),
                io.Boolean.Input("proximal_guidance", default=True,
                                 tooltip="Soft-threshold the target's guidance difference at its quantile "
                                         "(ProxEdit's MasaCtrl recipe). Off: plain CFG."),
                io.Float.Input("proximal_quantile", default=0.6, min=0.0, max=0.999, step=0.05,
                               tooltip="Quantile of the target's |guidance difference| used as threshold (0.6)."),
                io.Boolean.Input("source_from_inversion", default=False,
                                 tooltip="Feed the source branch the stored inversion latent at every step "
                                         "instead of letting it run from the noise (MasaCtrl users report real "
                                         "photos need the inverted intermediates)."),
                io.Mask.Input("mask", optional=True, tooltip="mask_mode 'mask': the object in the photo, at the "
                              "photo's size after resizing (white = object)."),
                io.Clip.Input("clip", optional=True, tooltip="mask_mode 'auto': to find the words' tokens."),
                io.String.Input("source_text", optional=True, default="", multiline=True,
                                tooltip="mask_mode 'auto': the source prompt (as encoded for the sampler)."),
                io.String.Input("target_text", optional=True, default="", multiline=True,
                                tooltip="mask_mode 'auto': the target prompt."),
                io.String.Input("source_words", optional=True, default="",
                                tooltip="mask_mode 'auto': word(s) of the source prompt naming the object."),
                io.String.Input("target_words", optional=True, default="",
                                tooltip="mask_mode 'auto': word(s) of the target prompt naming the object."),
                io.Float.Input("auto_threshold", optional=True, default=0.1, min=0.0, max=1.0, step=0.05,
                               tooltip="mask_mode 'auto': threshold on the min-max normalised maps (0.1)."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The model with MasaCtrl (use it with the "
                                     "SPDInv Edit Sampler; other samplers see plain attention).")],
        )

    @classmethod
    def execute(cls, model, start_step, start_layer, mask_mode, proximal_guidance, proximal_quantile,
                source_from_inversion, mask=None, clip=None, source_text="", target_text="", source_words="",
                target_words="", auto_threshold=0.1) -> io.NodeOutput:
        image_mask, auto = None, None
        if mask_mode == "mask":
            if mask is None:
                raise ValueError("mask: mask_mode is 'mask' but no MASK is connected")
            image_mask = mask.reshape(-1, *mask.shape[-2:])[0].float().cpu()
        elif mask_mode == "auto":
            auto = _auto_mask(clip, source_text, target_text, source_words, target_words, auto_threshold)
        elif mask is not None:
            log.warning("MasaCtrl: a MASK is connected but mask_mode is 'none'; it is not used")
        recipe = EditRecipe(source_cfg=1.0, proximal_quantile=proximal_quantile if proximal_guidance else None,
                            proximal_target_only=True, source_from_inversion=source_from_inversion)
        family = Family.of(model)
        family.require(MutualSelfAttention.node)
        if start_layer == AUTO_START:
            start_layer = named("model", auto_start_layer, family, model.get_model_object("diffusion_model"))
        engine = MutualSelfAttention(start_step, start_layer, image_mask, auto, family.default("masactrl_map_level"),
                                     recipe=recipe)
        return io.NodeOutput(attach_engine(model, engine, optimized_attention, WrappersMP.DIFFUSION_MODEL))
