"""Registers an engine's attention rules as ComfyUI patches on a ``ModelPatcher`` clone.

Duck-typed on ComfyUI's ``ModelPatcher`` (``clone``, ``get_model_object``, ``set_model_attn1_replace``,
``set_model_attn2_replace``, ``model_options``): nothing here imports ComfyUI. The engine object is stored
in ``transformer_options`` next to its patches, so a later ``clone()`` deep-copies both together and each
clone keeps its own consistent engine state; the edit sampler finds it there.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from .prompt_to_prompt import Attend, PromptToPrompt
from .unet_layers import TransformerLayer, transformer_layers

log = logging.getLogger(__name__)

ENGINE_KEY = "spdinv_engine"
"""``transformer_options`` key holding the engine that the patches of this model belong to."""
STEP_KEY = "spdinv_step"
"""``transformer_options`` key the edit sampler sets to the current step index for each model call."""


def engine_of(model_patcher: Any) -> Any | None:
    """The SPDInv engine attached to this MODEL, if any."""
    return model_patcher.model_options.get("transformer_options", {}).get(ENGINE_KEY)


def _host_attention(attend: Attend, extra_options: dict) -> Attend:
    precision = extra_options.get("attn_precision")
    return functools.partial(attend, attn_precision=precision) if precision is not None else attend


class CrossAttentionPatch:
    """``attn2`` replace patch of one layer, forwarding to the engine with the layer's level and size."""

    def __init__(self, engine: PromptToPrompt, layer: TransformerLayer, attend: Attend):
        self.engine, self.level, self.attend = engine, layer.level, attend

    def __call__(self, q, k, v, extra_options: dict):
        shape = extra_options["activations_shape"]
        return self.engine.cross_attention(
            q, k, v, extra_options["n_heads"], extra_options.get(STEP_KEY), extra_options["cond_or_uncond"],
            self.level, (shape[-2], shape[-1]), _host_attention(self.attend, extra_options),
        )


class SelfAttentionPatch:
    """``attn1`` replace patch of one layer."""

    def __init__(self, engine: PromptToPrompt, layer: TransformerLayer, attend: Attend):
        self.engine, self.level, self.attend = engine, layer.level, attend

    def __call__(self, q, k, v, extra_options: dict):
        return self.engine.self_attention(
            q, k, v, extra_options["n_heads"], extra_options.get(STEP_KEY), extra_options["cond_or_uncond"],
            self.level, _host_attention(self.attend, extra_options),
        )


def _replaced(model_patcher: Any, kind: str, layer: TransformerLayer) -> bool:
    replace = model_patcher.model_options.get("transformer_options", {}).get("patches_replace", {}).get(kind, {})
    return layer.key in replace or layer.key[:2] in replace


def attach_prompt_to_prompt(model_patcher: Any, engine: PromptToPrompt, attend: Attend) -> Any:
    """A clone of ``model_patcher`` with P2P on every cross-attention layer and on the self-attention
    layers at ``engine.self_min_level`` and below. Other patches on the model are kept; a layer whose
    attention another node already replaced is left to that node, with a warning."""
    if engine_of(model_patcher) is not None:
        raise ValueError("model: this MODEL already carries an SPDInv editing engine; connect the model from "
                         "before that engine node (engines do not stack)")
    try:
        layers = transformer_layers(model_patcher.get_model_object("diffusion_model"))
    except ValueError as e:
        raise ValueError(f"model: {e}") from None
    if not any(layer.cross_attention for layer in layers):
        raise ValueError("model: no cross-attention layers found; Prompt-to-Prompt needs a text-conditioned UNet "
                         "(SD1.x, SD2.x, SDXL)")
    patched = model_patcher.clone()
    skipped = []
    for layer in layers:
        wanted = [("attn2", CrossAttentionPatch, patched.set_model_attn2_replace)] if layer.cross_attention else []
        if layer.self_attention and layer.level >= engine.self_min_level:
            wanted.append(("attn1", SelfAttentionPatch, patched.set_model_attn1_replace))
        for kind, patch_type, register in wanted:
            if _replaced(patched, kind, layer):
                skipped.append(f"{kind} {layer.key}")
                continue
            register(patch_type(engine, layer, attend), *layer.key)
    if skipped:
        log.warning("P2P: attention already replaced by another node at %s; those layers are left uncontrolled",
                    ", ".join(skipped))
    patched.model_options.setdefault("transformer_options", {})[ENGINE_KEY] = engine
    return patched
