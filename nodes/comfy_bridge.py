"""Runs the core's loops inside ComfyUI's own sampling context.

Every model call goes through a ``CFGGuider`` (model loading, LoRA and other weight patches, wrappers,
``pre_run``/``cleanup``, ``process_latent_in/out``), with the core routine plugged in as a
``comfy.samplers.Sampler``. Nothing here does maths; it adapts ComfyUI objects to ``spdinv/``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import comfy.model_management
import comfy.model_sampling
import comfy.samplers
import latent_preview
import torch

from ..attention_patches.run import EditRun
from ..spdinv.edit_loop import BranchPredictor
from ..spdinv.inversion import Denoiser
from ..spdinv.null_text import NullDenoiser
from ..spdinv.schedules import reference_sigmas
from .null_embedding import NullEmbedding
from .row_selection import OnlyItems
from .shared_source import SharedSourceRows, can_share_source

Routine = Callable[..., tuple[torch.Tensor, Any]]
"""``routine(guider, extra_args, noise, latent_image, sigmas, progress) -> (latent, output)``."""


class RoutineSampler(comfy.samplers.Sampler):
    """A ComfyUI sampler that runs a core routine inside the guider's sampling context.

    The routine receives the guider (conds processed, model loaded), the sampler's ``extra_args`` (model
    options with ComfyUI's ``sample_sigmas``), the start and image latents in model space, the grid and a
    progress function; it returns the latent ComfyUI should return and its own output, which
    :func:`run_in_guider` hands back to the caller.
    """

    def __init__(self, routine: Routine):
        self.routine = routine
        self.output: Any = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        def progress(step: int, total: int, x: torch.Tensor, preview: torch.Tensor | None = None) -> None:
            if callback is not None:
                callback(step, x if preview is None else preview, x, total)

        latent, self.output = self.routine(model_wrap, extra_args, noise, latent_image, sigmas, progress)
        return latent


def denoiser(guider: comfy.samplers.CFGGuider, extra_args: dict) -> Denoiser:
    """``denoise(x, sigma, items=None)``: the guider's CFG prediction (all of ComfyUI's CFG hooks and wrappers);
    with ``items`` the UNet evaluates only those photos' rows (:class:`.row_selection.OnlyItems`)."""

    def denoise(x: torch.Tensor, sigma: float, items: torch.Tensor | None = None) -> torch.Tensor:
        comfy.model_management.throw_exception_if_processing_interrupted()
        args = extra_args
        if items is not None:
            options = args["model_options"]
            wrapper = OnlyItems(items, options.get("model_function_wrapper"))
            args = {**args, "model_options": {**options, "model_function_wrapper": wrapper}}
        return guider(x, x.new_full((x.shape[0],), sigma), **args)

    return denoise


def null_denoiser(guider: comfy.samplers.CFGGuider, extra_args: dict) -> NullDenoiser:
    """``uncond(x, sigma, embedding)``: the model on the guider's ``negative`` conds with ``embedding`` as their
    text (:class:`.null_embedding.NullEmbedding`), differentiable in ``embedding``."""
    model_options = extra_args["model_options"]

    def uncond(x: torch.Tensor, sigma: float, embedding: torch.Tensor) -> torch.Tensor:
        comfy.model_management.throw_exception_if_processing_interrupted()
        wrapper = NullEmbedding(lambda _sigma: embedding, model_options.get("model_function_wrapper"))
        options = {**model_options, "model_function_wrapper": wrapper}
        _, out = comfy.samplers.calc_cond_batch(guider.inner_model, [None, guider.conds.get("negative")], x,
                                                x.new_full((x.shape[0],), sigma), options)
        return out

    return uncond


def branch_predictor(guider: comfy.samplers.CFGGuider, extra_args: dict, run: EditRun, share_source: bool = True,
                     null_embedding: Callable[[float], torch.Tensor] | None = None) -> BranchPredictor:
    """The core's ``predict(x, sigma, with_uncond)``: conditional and unconditional denoised predictions of
    the guider's ``positive``/``negative`` conds in one ``calc_cond_batch`` (patches, wrappers, ControlNets
    and other cond extras apply as in any sampler); the core's guidance rule mixes them. With
    ``share_source`` (and a model that allows it) the calls leave out the source's unconditional rows
    (:mod:`.shared_source`). ``null_embedding(sigma)`` puts null-text inversion's tuned embeddings into the
    unconditional rows. Every call carries ``run``, where the engines' patches find it."""
    model_options = run.into(extra_args["model_options"])
    if null_embedding is not None:
        wrapper = NullEmbedding(null_embedding, model_options.get("model_function_wrapper"))
        model_options = {**model_options, "model_function_wrapper": wrapper}
    elif share_source and can_share_source(model_options):
        model_options = {**model_options, "model_function_wrapper": SharedSourceRows()}

    def predict(x: torch.Tensor, sigma: float, with_uncond: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        comfy.model_management.throw_exception_if_processing_interrupted()
        uncond = guider.conds.get("negative") if with_uncond else None
        cond_out, uncond_out = comfy.samplers.calc_cond_batch(
            guider.inner_model, [guider.conds.get("positive"), uncond], x, x.new_full((x.shape[0],), sigma),
            model_options)
        return cond_out, uncond_out if with_uncond else None

    return predict


def run_in_guider(
    guider: comfy.samplers.CFGGuider,
    routine: Routine,
    start: torch.Tensor,
    latent_image: torch.Tensor,
    sigmas: torch.Tensor,
    steps: int,
) -> tuple[torch.Tensor, Any]:
    """Run ``routine`` through ``guider.sample``: returns the output LATENT tensor (``process_latent_out``-ed)
    and the routine's own output.

    ``start`` is handed to the routine untouched (model space); ``latent_image`` is the raw LATENT, which
    ComfyUI scales into model space before the routine sees it.
    """
    callback = latent_preview.prepare_callback(guider.model_patcher, steps)
    sampler = RoutineSampler(routine)
    latent = guider.sample(start, latent_image, sampler, sigmas, callback=callback, disable_pbar=True, seed=0)
    return latent, sampler.output


def is_flow(model_sampling: Any) -> bool:
    """True for rectified-flow models (ComfyUI's ``CONST`` parameterisation: SD3.x, Flux, ...)."""
    return isinstance(model_sampling, comfy.model_sampling.CONST)


def sampling_grid(model_sampling: Any, grid: str, steps: int, family_grid: str | None = None) -> torch.Tensor:
    """The descending sigma grid (ending at 0) that an inversion runs on, on the CPU.

    ``auto``: the family's grid (``family_grid``; for a model of no known family ComfyUI's ``ddim_uniform`` for
    discrete-time models and the model's own schedule, ``simple``, for flow models: it carries the flow shift and
    starts at sigma 1, pure noise); ``ddim_uniform``, ``simple``: those schedulers; ``reference``: the official
    SPDInv code's DDIM grid (discrete-time models only).
    """
    flow = is_flow(model_sampling)
    if grid == "reference":
        if flow:
            raise ValueError("grid: 'reference' is the official SD code's DDIM grid; a flow model inverts on its own "
                             "schedule: choose 'auto' (or 'simple')")
        return reference_sigmas(model_sampling.sigmas.float().cpu(), steps)
    if grid == "auto":
        grid = family_grid or ("simple" if flow else "ddim_uniform")
    return comfy.samplers.calculate_sigmas(model_sampling, grid, steps).float().cpu()


def input_scale_of(model_sampling: Any) -> Callable[[float], float]:
    """``input_scale(sigma)`` of the loaded model: the factor ``calculate_input`` applies to the latent
    (``1/sqrt(1+sigma^2)`` for EPS and v-prediction models, 1 for flow models)."""

    def scale(sigma: float) -> float:
        one = torch.ones(1, 1)
        return float(model_sampling.calculate_input(torch.tensor([sigma]), one).flatten()[0])

    return scale


def skip_of(model_sampling: Any) -> Callable[[float], float]:
    """``c_skip(sigma)`` of the loaded model: the weight of the latent in ``calculate_denoised`` (1 for EPS and
    flow models, ``sigma_data^2 / (sigma^2 + sigma_data^2)`` for v-prediction, 0 for x0 models)."""

    def skip(sigma: float) -> float:
        one = torch.ones(1, 1)
        return float(model_sampling.calculate_denoised(torch.tensor([sigma]), torch.zeros_like(one), one)
                     .flatten()[0])

    return skip


def make_weights_autograd_safe(module: torch.nn.Module) -> None:
    """Let autograd run through a model that ComfyUI loaded under ``torch.inference_mode()``.

    Inference-mode parameters cannot be saved for backward, so each one is replaced by a normal,
    frozen copy (``requires_grad=False``: the paper's UNet is frozen). Idempotent; values are unchanged,
    so later sampling is bit-identical. Must run after the model is loaded (loading re-creates them).
    """
    with torch.inference_mode(False):
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None and (p.is_inference() or p.requires_grad):
                    data = p.detach().clone() if p.is_inference() else p.detach()
                    sub._parameters[name] = torch.nn.Parameter(data, requires_grad=False)
            for name, b in list(sub._buffers.items()):
                if b is not None and b.is_inference():
                    sub._buffers[name] = b.clone()
