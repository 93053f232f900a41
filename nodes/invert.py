"""SPDInvInvert: invert a VAE-encoded photo to noise with SPDInv (or plain DDIM inversion)."""

from __future__ import annotations

import comfy.model_management
import comfy.samplers
import torch
from comfy_api.latest import io

from ..attention_patches.families import Family
from ..spdinv.inversion import SOLVERS, InversionSettings, invert
from ..spdinv.inversion_methods import INVERSION_METHODS, protocol_of
from ..spdinv.null_text import NullTextSettings, optimise_null_text
from ..spdinv.schedules import validate_sampling_grid
from .branch_conditioning import at_photo_size
from .comfy_bridge import (
    denoiser,
    input_scale_of,
    make_weights_autograd_safe,
    null_denoiser,
    run_in_guider,
    sampling_grid,
    skip_of,
)
from .inversion_type import Inversion, InversionPayload, NullText, check_latent_channels

GRIDS = ("auto", "ddim_uniform", "simple", "reference")
DEFAULT_SOLVER = "anderson"
DEFAULT_REL_TOL = 0.01
"""Chosen by benchmarks/bench_inversion.py (see README, Performance)."""


def latent_of_rank(model, samples: torch.Tensor) -> torch.Tensor:
    """``samples`` in the rank the model takes: ``[B, C, H, W]``, or ``[B, C, T, H, W]`` for models with a
    frame axis (Qwen-Image, Wan), to which an image latent gets one frame as ComfyUI's samplers give it."""
    rank = 2 + getattr(model.get_model_object("latent_format"), "latent_dimensions", 2)
    if samples.ndim == 4 and rank == 5:
        samples = samples.unsqueeze(2)
    if samples.ndim != rank:
        layout = "[B, C, H, W]" if rank == 4 else "[B, C, T, H, W]"
        raise ValueError(f"latent: this model takes latents {layout}, got shape {tuple(samples.shape)}")
    return samples


class SPDInvInvert(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPDInvInvert",
            display_name="SPDInv Invert",
            category="SPDInv",
            description="Invert a VAE-encoded photo to noise on a DDIM grid. 'spdinv' solves each step's fixed "
                        "point (Source Prompt Disentangled Inversion, ECCV 2024), so sampling back with the source "
                        "prompt reconstructs the photo; 'ddim' is plain DDIM inversion for comparison.",
            inputs=[
                io.Model.Input("model", tooltip="The model you will edit with (LoRAs may be applied already)."),
                io.Conditioning.Input("source", tooltip="Encoding of a prompt that describes the photo "
                                      "(the source prompt). Inversion uses it without CFG, as the paper does."),
                io.Latent.Input("latent", tooltip="The photo, VAE-encoded (VAEEncode)."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="DDIM steps (ddim_uniform grid). Use the same number in the edit sampler: "
                                     "it reads the grid from the inversion."),
                io.Combo.Input("method", options=list(INVERSION_METHODS), default="spdinv",
                               tooltip="spdinv: fixed-point inversion (faithful reconstructions). ddim: plain "
                                       "DDIM inversion (fast, drifts). For comparison, as in the paper's table "
                                       "(both invert with DDIM): negative_prompt edits with the source prompt as "
                                       "every negative; null_text tunes the empty prompt's embedding per step "
                                       "(connect it as negative here and in the edit sampler); direct_inversion "
                                       "(PnPInversion) guides both branches "
                                       "against the edit sampler's negative (connect the empty prompt) and keeps "
                                       "the source branch on the inversion's latents."),
                io.Combo.Input("solver", options=list(SOLVERS), default=DEFAULT_SOLVER,
                               tooltip="anderson: forward-only Anderson-accelerated fixed-point iteration, each "
                                       "step warm-started from the previous one (about 2-3 UNet passes a step). "
                                       "adamw: the paper's gradient descent through the "
                                       "UNet (lr, K, delta as published; much slower)."),
                io.Int.Input("max_iters", default=25, min=1, max=500,
                             tooltip="K: most solver iterations per step (paper: 25)."),
                io.Float.Input("lr", default=1e-3, min=1e-6, max=1.0, step=1e-4, round=False,
                               tooltip="AdamW learning rate on the VP latent (paper: 0.001). adamw only."),
                io.Float.Input("delta", default=5e-6, min=0.0, max=1.0, step=1e-7, round=False,
                               tooltip="Stop a step once its mean squared fixed-point residual (VP latent scale, "
                                       "as in the paper's code) is below delta (paper: 5e-6)."),
                io.Float.Input("rel_tol", default=DEFAULT_REL_TOL, min=0.0, max=0.99, step=0.001, round=False,
                               tooltip="Also require the residual to fall to this fraction of the step's "
                                       "starting guess's (0 = off: the paper's rule). The paper's delta is loose "
                                       "with many steps (at 50 the DDIM guess mostly meets it already); 0.01 "
                                       "makes the reconstruction far better there (README, Performance)."),
                io.Boolean.Input("measure_residual", default=True,
                                 tooltip="For the DDIM methods: spend one extra UNet pass per step to record the "
                                         "fixed-point residual (for the residual plot)."),
                io.Sigmas.Input("sigmas", optional=True,
                                tooltip="Optional custom sampling grid (descending, ending at 0); overrides steps "
                                        "and grid."),
                io.Combo.Input("grid", options=list(GRIDS), default="auto", optional=True,
                               tooltip="auto: ddim_uniform on SD models, the model's own schedule (simple, with "
                                       "its shift, from pure noise) on flow models (SD3, Flux). ddim_uniform: "
                                       "ComfyUI's DDIM grid (timesteps 981 ... 1 for 50 steps). simple: ComfyUI's "
                                       "simple scheduler. reference: the official SPDInv code's (980 ... 0), for "
                                       "the paper's procedure (SD models)."),
                io.Float.Input("dci_rate", default=0.0, min=0.0, max=10.0, step=0.1, round=False, optional=True,
                               tooltip="spdinv only: DCI's correction (Dual-Conditional Inversion, 2025), which "
                                       "pulls each step's noise prediction towards the clean latent by this much "
                                       "(its code: 1.0, with the adamw solver's paper settings). 0 = plain "
                                       "SPDInv."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="null_text only: the empty prompt (CLIPTextEncode with no text), "
                                              "whose embedding it tunes step by step. Connect the same one as the "
                                              "edit sampler's negative."),
                io.Float.Input("cfg", default=7.5, min=1.0, max=30.0, step=0.1, round=0.01, optional=True,
                               tooltip="null_text only: the guidance the edit will use (the tuned embeddings "
                                       "make the source retrace the inversion at this CFG; reference 7.5)."),
                # Last: a saved workflow keeps its widget values by position.
                io.Boolean.Input("predicted_stop", default=True, optional=True,
                                 tooltip="anderson only: accept a step's next iterate without the UNet pass that "
                                         "would only verify it, when the residual predicted from the step's own "
                                         "contraction is under the tolerance (one pass a step saved; the residual "
                                         "recorded for such a step is the prediction); a step max_iters cuts "
                                         "short likewise takes its last proposal where it is predicted better. "
                                         "Off: every accepted latent is evaluated."),
            ],
            outputs=[
                Inversion.Output(display_name="inversion",
                                 tooltip="The whole trajectory, grid, per-step residuals and settings."),
                io.Latent.Output(display_name="noise", tooltip="The inverted noise as a LATENT (a KSampler with "
                                 "add_noise off, euler + ddim_uniform, CFG 1 and the source prompt rebuilds the "
                                 "photo from it)."),
            ],
        )

    @classmethod
    def execute(cls, model, source, latent, steps, method, solver, max_iters, lr, delta, rel_tol,
                measure_residual, sigmas=None, grid="auto", dci_rate=0.0, predicted_stop=True, negative=None,
                cfg=7.5) -> io.NodeOutput:
        tune_null = protocol_of(method).tuned_null
        if tune_null and negative is None:
            raise ValueError("negative: null_text inversion tunes the empty prompt's embedding; connect "
                             "CLIPTextEncode with no text (and the same to the edit sampler's negative)")
        settings = InversionSettings(method=protocol_of(method).trajectory, solver=solver, max_iters=max_iters,
                                     lr=lr, delta=delta, rel_tol=rel_tol, measure_ddim_residual=measure_residual,
                                     dci_rate=dci_rate, predicted_stop=predicted_stop)
        samples = latent_of_rank(model, latent["samples"])
        check_latent_channels(model, samples, "latent")
        if sigmas is None:
            sigmas = sampling_grid(model.get_model_object("model_sampling"), grid, steps, Family.of(model).grid)
        else:
            sigmas = sigmas.detach().float().cpu()
            try:
                validate_sampling_grid(sigmas)
            except ValueError as e:
                raise ValueError(f"sigmas: {e}") from None
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(at_photo_size(source, samples, model),
                         at_photo_size(negative, samples, model) if tune_null else [])
        guider.set_cfg(1.0)
        needs_grad = (settings.method == "spdinv" and solver == "adamw") or tune_null

        def routine(guider, extra_args, _start, x0, grid, progress):
            if needs_grad:
                make_weights_autograd_safe(guider.inner_model)
            sampling = guider.inner_model.model_sampling
            scale = input_scale_of(sampling)
            result = invert(denoiser(guider, extra_args), x0, grid.float(), settings, input_scale=scale,
                            callback=progress, skip=skip_of(sampling))
            nulls = None
            if tune_null:
                nulls = optimise_null_text(denoiser(guider, extra_args), null_denoiser(guider, extra_args),
                                           result.latents, grid.float(), negative[0][0].to(x0.device),
                                           NullTextSettings(cfg=cfg), input_scale=scale, callback=progress)
            return result.noise, (result, nulls)

        noise, (result, nulls) = run_in_guider(guider, routine, torch.zeros_like(samples), samples, sigmas,
                                               len(sigmas) - 1)
        result = result.to(comfy.model_management.intermediate_device())
        payload = InversionPayload.create(result, samples, model, source, method,
                                          None if nulls is None else NullText(nulls.embeddings.cpu(), cfg))
        return io.NodeOutput(payload, {"samples": noise})
