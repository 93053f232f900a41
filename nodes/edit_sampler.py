"""SPDInvEditSampler: regenerate an inverted photo under a target prompt, source branch alongside."""

from __future__ import annotations

import logging
from typing import Any

import comfy.samplers
import torch
from comfy_api.latest import io

from ..attention_patches.engine import RecordedMaps
from ..attention_patches.families import Family
from ..attention_patches.registration import engine_of
from ..attention_patches.run import EditRun
from ..spdinv.edit_loop import reconstruction_trajectory, run_edit
from ..spdinv.guidance import EditRecipe
from ..spdinv.inversion_methods import SOURCE_GUIDANCE, edit_recipe, protocol_of
from .attention_preview import AttentionMaps
from .branch_conditioning import at_photo_size, edit_conditioning
from .comfy_bridge import branch_predictor, denoiser, run_in_guider
from .inversion_type import Inversion, InversionPayload
from .null_embedding import step_lookup
from .preservation import PreservationRequest, PreservationType, region_mask


class SPDInvEditSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPDInvEditSampler",
            display_name="SPDInv Edit Sampler",
            category="SPDInv",
            description="Sample the source and target branches together from the inverted noise with "
                        "deterministic DDIM on the inversion's grid. The source branch (CFG 1, source prompt) "
                        "reconstructs the photo; the target branch follows the target prompt. Connect a MODEL "
                        "patched by an engine node for attention-controlled edits.",
            inputs=[
                io.Model.Input("model", tooltip="The model used for the inversion, optionally patched by an "
                               "editing engine (P2P, MasaCtrl, PnP)."),
                Inversion.Input("inversion", tooltip="Output of SPDInv Invert."),
                io.Conditioning.Input("source", tooltip="The source prompt's encoding (the one inverted with)."),
                io.Conditioning.Input("target", tooltip="The target prompt's encoding (what the edit should show). "
                                      "Same as source for a pure reconstruction."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Guidance scale of the target branch (paper: 7.5). Raise for a stronger "
                                       "edit, lower if the background drifts."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Negative for the target branch. Default: the source prompt, as "
                                              "the paper's P2P recipe does (it steers away from the original). "
                                              "Needed (the empty prompt) where the source branch is guided: "
                                              "null_text and direct_inversion, or source_guidance 'like "
                                              "target'."),
                io.Combo.Input("source_guidance", options=list(SOURCE_GUIDANCE), default="exact", optional=True,
                               tooltip="exact: the source branch runs at CFG 1 on its own prompt, as the "
                                       "inversion did, so it retraces it. like target: at this CFG against the "
                                       "negative, as the paper's DDIM + P2P baseline (and null_text and "
                                       "direct_inversion, which set it) does."),
                PreservationType.Input("preserve", optional=True,
                                       tooltip="From SPDInv Preserve Outside Edit: outside the edit region the "
                                               "target keeps the photo exactly (for instruction editors)."),
            ],
            outputs=[
                io.Latent.Output(display_name="edited", tooltip="The target branch."),
                io.Latent.Output(display_name="reconstruction", tooltip="The source branch: the photo rebuilt "
                                 "from the inversion (compare it with the input to judge the inversion)."),
                AttentionMaps.Output(display_name="attention", tooltip="Cross-attention maps recorded by a "
                                     "Prompt-to-Prompt model, for SPDInv Attention Preview."),
                io.Mask.Output(display_name="edit region", tooltip="Where the target was free to change, at the "
                               "photo's size: the preservation rule's region (everything without one)."),
            ],
        )

    @classmethod
    def execute(cls, model, inversion, source, target, cfg, negative=None, source_guidance="exact",
                preserve: PreservationRequest | None = None) -> io.NodeOutput:
        inversion.check_model(model, "model")
        proto = protocol_of(inversion.method, source_guidance)
        if proto.guided and negative is None:
            raise ValueError(f"negative: the source branch is guided ({inversion.method} inversion, source_guidance "
                             f"'{source_guidance}'), against the negative prompt; connect the empty prompt "
                             "(CLIPTextEncode with no text), as the reference does")
        if proto.source_is_negative and negative is not None:
            logging.warning("SPDInv Edit Sampler: negative_prompt inversion edits with the source prompt as the "
                            "negative; the connected 'negative' is not used")
            negative = None
        null_text = inversion.null_text
        if null_text is not None and abs(null_text.cfg - cfg) > 1e-6:
            logging.warning(f"SPDInv Edit Sampler: the null-text embeddings were tuned for CFG {null_text.cfg:g} "
                            f"but cfg is {cfg:g}; the source branch will not retrace the inversion exactly")
        family = Family.of(model)
        distilled = family.guidance_distilled(model.get_model_object("diffusion_model"))
        if distilled and abs(cfg - 1.0) > 1e-6:
            logging.warning(f"SPDInv Edit Sampler: {family.name} is guidance-distilled (its guidance comes "
                            f"from FluxGuidance on the prompts); cfg {cfg:g} also runs true CFG against the "
                            "negative: set cfg 1 unless that is what you want")
        result = inversion.result
        rows = result.noise.shape[0]
        engine = engine_of(model)
        run = EditRun(result.sigmas, tuple(result.noise.shape))
        if engine is not None:
            engine.check_run(run)
        recipe = edit_recipe(engine.recipe if engine is not None else EditRecipe(), proto, cfg)
        rule = None if preserve is None else preserve.for_edit(model, tuple(result.noise.shape))
        if not recipe.source_from_inversion:
            inversion.warn_if_other_source(source)
        trajectory = result.latents
        if recipe.source_from_reconstruction:
            trajectory = reconstruct(model, inversion)
        guider = comfy.samplers.CFGGuider(model)
        source, target, negative = (None if c is None else at_photo_size(c, inversion.source_latent, model)
                                    for c in (source, target, negative))
        guider.set_conds(*edit_conditioning(source, target, negative, rows, guided_source=proto.guided,
                                            branch_guidance=distilled))
        timesteps = model.get_model_object("model_sampling").timestep(result.sigmas[:-1].float()).tolist()

        def routine(guider, extra_args, start, _latent, grid, progress):
            tuned = None if null_text is None else step_lookup(result.sigmas, null_text.embeddings.to(start.device))
            predict = branch_predictor(guider, extra_args, run, share_source=not proto.guided, null_embedding=tuned)
            edit = run_edit(predict, trajectory, grid, recipe, cfg, timesteps,
                            engine_step=None if engine is None else (lambda i, x: engine.after_step(run, i, x)),
                            progress=progress, device=start.device, preserve=rule)
            return torch.cat([edit.reconstruction, edit.edited]), edit

        start = torch.cat([result.noise, result.noise])
        latent_image = torch.cat([inversion.source_latent, inversion.source_latent])
        out, edit = run_in_guider(guider, routine, start, latent_image, result.sigmas, result.steps)
        maps = RecordedMaps() if engine is None else engine.recorded_maps(run)
        region = region_mask(edit.region, tuple(result.noise.shape), model)
        return io.NodeOutput({"samples": out[rows:]}, {"samples": out[:rows]}, maps, region)


def reconstruct(model: Any, inversion: InversionPayload) -> torch.Tensor:
    """The DDIM reconstruction of ``inversion``'s noise on its grid, every latent (model space), with the prompt
    it was inverted with at CFG 1 and no engine active (an engine acts only inside the edit's run)."""
    if inversion.source is None:
        raise ValueError("inversion: it does not carry the prompt it was inverted with (made by an older SPDInv "
                         "Invert); invert again to reconstruct its source path")
    result = inversion.result
    guider = comfy.samplers.CFGGuider(model)
    source = at_photo_size(inversion.source, inversion.source_latent, model)
    guider.set_conds(source, source)
    guider.set_cfg(1.0)

    def routine(guider, extra_args, start, _latent, grid, progress):
        denoise = denoiser(guider, extra_args)
        path = reconstruction_trajectory(denoise, start, grid, device=start.device)
        return path[-1], path

    _, path = run_in_guider(guider, routine, result.noise, inversion.source_latent, result.sigmas, result.steps)
    return path
