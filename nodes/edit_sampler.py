"""SPDInvEditSampler: regenerate an inverted photo under a target prompt, source branch alongside."""

from __future__ import annotations

import comfy.samplers
import torch
from comfy_api.latest import io

from ..attention_patches.registration import engine_of
from ..spdinv.edit_loop import run_edit
from ..spdinv.guidance import EditRecipe
from .attention_preview import AttentionMaps, AttentionRecord
from .branch_conditioning import at_photo_size, edit_conditioning
from .comfy_bridge import branch_predictor, run_in_guider
from .inversion_type import Inversion


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
                                              "the paper's P2P recipe does (it steers away from the original)."),
            ],
            outputs=[
                io.Latent.Output(display_name="edited", tooltip="The target branch."),
                io.Latent.Output(display_name="reconstruction", tooltip="The source branch: the photo rebuilt "
                                 "from the inversion (compare it with the input to judge the inversion)."),
                AttentionMaps.Output(display_name="attention", tooltip="Cross-attention maps recorded by a "
                                     "Prompt-to-Prompt model, for SPDInv Attention Preview."),
            ],
        )

    @classmethod
    def execute(cls, model, inversion, source, target, cfg, negative=None) -> io.NodeOutput:
        inversion.check_model(model, "model")
        result = inversion.result
        rows = result.noise.shape[0]
        engine = engine_of(model)
        recipe = engine.recipe if engine is not None else EditRecipe()
        if not recipe.source_from_inversion:
            inversion.warn_if_other_source(source)
        guider = comfy.samplers.CFGGuider(model)
        source, target, negative = (None if c is None else at_photo_size(c, inversion.source_latent, model)
                                    for c in (source, target, negative))
        guider.set_conds(*edit_conditioning(source, target, negative, rows))
        timesteps = model.get_model_object("model_sampling").timestep(result.sigmas[:-1].float()).tolist()

        def routine(guider, extra_args, start, _latent, grid, progress):
            edit = run_edit(branch_predictor(guider, extra_args), result.latents, grid, recipe, cfg, timesteps,
                            engine_step=None if engine is None else engine.after_step, progress=progress,
                            device=start.device)
            return torch.cat([edit.reconstruction, edit.edited]), edit

        start = torch.cat([result.noise, result.noise])
        latent_image = torch.cat([inversion.source_latent, inversion.source_latent])
        if engine is not None:
            engine.begin_run(result.steps, tuple(result.noise.shape))
        try:
            out, _ = run_in_guider(guider, routine, start, latent_image, result.sigmas, result.steps)
        finally:
            if engine is not None:
                engine.end_run()
        return io.NodeOutput({"samples": out[rows:]}, {"samples": out[:rows]}, AttentionRecord.of(engine))
