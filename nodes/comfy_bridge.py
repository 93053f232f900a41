"""Runs the core's loops inside ComfyUI's own sampling context.

Every model call goes through a ``CFGGuider`` (model loading, LoRA and other weight patches, wrappers,
``pre_run``/``cleanup``, ``process_latent_in/out``), with the core routine plugged in as a
``comfy.samplers.Sampler``. Nothing here does maths; it adapts ComfyUI objects to ``spdinv/``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import comfy.model_management
import comfy.samplers
import latent_preview
import torch

from ..attention_patches.registration import STEP_KEY
from ..spdinv.guidance import BranchCFG

Routine = Callable[..., torch.Tensor]


class RoutineSampler(comfy.samplers.Sampler):
    """A ComfyUI sampler that hands a ready ``denoise`` callable to a core routine.

    ``routine(denoise, guider, start, latent_image, sigmas, progress)`` returns the latent that the guider
    turns into the sampler's output; anything else it produces it keeps for the node to read.
    """

    def __init__(self, routine: Routine):
        self.routine = routine

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        def denoise(x: torch.Tensor, sigma: float, step: int | None = None) -> torch.Tensor:
            comfy.model_management.throw_exception_if_processing_interrupted()
            if step is not None:
                model_wrap.step = step
            sigma_t = x.new_full((x.shape[0],), sigma)
            return model_wrap(x, sigma_t, **extra_args)

        def progress(step: int, total: int, x: torch.Tensor, preview: torch.Tensor | None = None) -> None:
            if callback is not None:
                callback(step, x if preview is None else preview, x, total)

        return self.routine(denoise, model_wrap, noise, latent_image, sigmas, progress)


class BranchGuider(comfy.samplers.CFGGuider):
    """CFG with one scale per editing branch: predicts cond and uncond for the stacked branches in one batch
    and lets a core guidance rule (``guide``/``needs_uncond``) mix them. ``step`` is set by the sampler and
    passed to attention patches as ``transformer_options[STEP_KEY]``; ``edit_mask`` is the rule's mask of
    the last step (or ``None``)."""

    def __init__(self, model_patcher, guidance: BranchCFG):
        super().__init__(model_patcher)
        self.guidance = guidance
        self.step = 0
        self.edit_mask: torch.Tensor | None = None

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - ComfyUI's signature
        uncond = self.conds.get("negative") if self.guidance.needs_uncond(self.step) else None
        options = {**model_options, "transformer_options": {**model_options.get("transformer_options", {}),
                                                            STEP_KEY: self.step}}
        cond_den, uncond_den = comfy.samplers.calc_cond_batch(
            self.inner_model, [self.conds.get("positive"), uncond], x, timestep, options
        )
        denoised, self.edit_mask = self.guidance.guide(self.step, x, float(timestep[0]), cond_den,
                                                       uncond_den if uncond is not None else None)
        return denoised


def run_in_guider(
    guider: comfy.samplers.CFGGuider,
    routine: Routine,
    start: torch.Tensor,
    latent_image: torch.Tensor,
    sigmas: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """Run ``routine`` through ``guider.sample``; returns the output LATENT tensor (``process_latent_out``-ed).

    ``start`` is handed to the routine untouched (model space); ``latent_image`` is the raw LATENT, which
    ComfyUI scales into model space before the routine sees it.
    """
    callback = latent_preview.prepare_callback(guider.model_patcher, steps)
    return guider.sample(start, latent_image, RoutineSampler(routine), sigmas, callback=callback,
                         disable_pbar=True, seed=0)


def input_scale_of(model_sampling: Any) -> Callable[[float], float]:
    """``input_scale(sigma)`` of the loaded model: the factor ``calculate_input`` applies to the latent
    (``1/sqrt(1+sigma^2)`` for EPS and v-prediction models, 1 for flow models)."""

    def scale(sigma: float) -> float:
        one = torch.ones(1, 1)
        return float(model_sampling.calculate_input(torch.tensor([sigma]), one).flatten()[0])

    return scale


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


def stack_branches(conditionings: list[tuple[str, list]], rows: int) -> list:
    """One CONDITIONING whose batch holds each branch's prompt ``rows`` times, in order.

    ``conditionings`` are ``(input name, CONDITIONING)`` pairs; the name goes into errors. Token lengths
    that differ are matched by repetition to their least common multiple, as ComfyUI batches conds.
    """
    tensors, pooled, extras = [], [], None
    for name, cond in conditionings:
        if not cond:
            raise ValueError(f"{name}: the conditioning is empty; connect a CLIPTextEncode output")
        if len(cond) != 1:
            raise ValueError(f"{name}: has {len(cond)} conditioning entries (combined or area conditioning); "
                             "the edit sampler needs one text encoding per prompt")
        tensor, meta = cond[0]
        if tensor.shape[0] not in (1, rows):
            raise ValueError(f"{name}: batch of {tensor.shape[0]} does not match the {rows} image(s) inverted")
        tensors.append(tensor.expand(rows, *tensor.shape[1:]) if tensor.shape[0] == 1 else tensor)
        p = meta.get("pooled_output")
        pooled.append(None if p is None else (p.expand(rows, *p.shape[1:]) if p.shape[0] == 1 else p))
        extras = extras or {k: v for k, v in meta.items() if k != "pooled_output"}
    length = math.lcm(*(t.shape[1] for t in tensors))
    tensors = [t.repeat(1, length // t.shape[1], 1) for t in tensors]
    meta = dict(extras or {})
    if all(p is not None for p in pooled):
        meta["pooled_output"] = torch.cat(pooled)
    return [[torch.cat(tensors), meta]]
