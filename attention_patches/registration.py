"""Registers an engine's attention rules as ComfyUI patches on a ``ModelPatcher`` clone.

Duck-typed on ComfyUI's ``ModelPatcher`` (``clone``, ``get_model_object``, ``set_model_attn1_replace``,
``set_model_attn2_replace``, ``model_options``): nothing here imports ComfyUI. The engine object is stored
in ``transformer_options`` next to its patches, so a later ``clone()`` deep-copies both together and each
clone keeps its own consistent engine state; the edit sampler finds it there. A replacement that another
node put on a layer before the engine is kept as that layer's inner attention (:class:`LayerAttention`).
"""

from __future__ import annotations

import functools
from typing import Any

from ..spdinv.branches import Chunks
from .attention_math import Attend, LayerAttention, Replacement
from .engine import EditEngine, step_of
from .unet_layers import TransformerLayer, transformer_layers

ENGINE_KEY = "spdinv_engine"
"""``transformer_options`` key holding the engine that the patches of this model belong to."""
SHARED_SOURCE_KEY = "spdinv_shared_source"
"""``transformer_options`` key the edit sampler sets (True) on a UNet call whose unconditional chunks carry
target rows only (:class:`~..spdinv.branches.Chunks`)."""


def call_chunks(options: dict) -> Chunks:
    """The CFG chunks of the UNet call whose ``transformer_options`` are ``options``."""
    return Chunks(options.get("cond_or_uncond", [0]), bool(options.get(SHARED_SOURCE_KEY, False)))


def engine_of(model_patcher: Any) -> Any | None:
    """The SPDInv engine attached to this MODEL, if any."""
    return model_patcher.model_options.get("transformer_options", {}).get(ENGINE_KEY)


def _host_attention(attend: Attend, extra_options: dict) -> Attend:
    precision = extra_options.get("attn_precision")
    return functools.partial(attend, attn_precision=precision) if precision is not None else attend


class AttentionPatch:
    """``attn1``/``attn2`` replace patch of one layer: hands projected q/k/v to the engine with the layer,
    its spatial size, the call's step and the layer's attention (the host's, or ``inner``: the replacement
    another node had put on this layer)."""

    def __init__(self, engine: EditEngine, layer: TransformerLayer, kind: str, attend: Attend,
                 inner: Replacement | None = None):
        self.engine, self.layer, self.kind, self.attend, self.inner = engine, layer, kind, attend, inner

    def __call__(self, q, k, v, extra_options: dict):
        shape = extra_options["activations_shape"]
        method = self.engine.self_attention if self.kind == "attn1" else self.engine.cross_attention
        attention = LayerAttention(_host_attention(self.attend, extra_options), self.inner, extra_options)
        return method(q, k, v, extra_options["n_heads"], step_of(extra_options), call_chunks(extra_options),
                      self.layer, (shape[-2], shape[-1]), attention)


class FeatureTapWrapper:
    """``DIFFUSION_MODEL`` wrapper: while the UNet runs, forward hooks let the engine rewrite the outputs of
    the modules it taps (``engine.feature_taps()``: module path → ``fn(output, step, cond_or_uncond)``).

    The engine is looked up in the call's ``transformer_options`` (ComfyUI shares wrapper objects between
    clones but deep-copies ``model_options``), and the hooks are removed when the call ends, even on error
    or Cancel, so nothing stays on the shared UNet.
    """

    def __call__(self, executor, *args, **kwargs):
        options = kwargs.get("transformer_options", args[5] if len(args) > 5 else {})
        engine = options.get(ENGINE_KEY)
        taps = engine.feature_taps() if hasattr(engine, "feature_taps") else {}
        step, chunks = step_of(options), call_chunks(options)
        handles = []
        try:
            for path, rewrite in taps.items():
                module = executor.class_obj.get_submodule(path)
                handles.append(module.register_forward_hook(
                    lambda _m, _i, out, rewrite=rewrite: rewrite(out, step, chunks), prepend=True))
            return executor(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()


def _replacement(model_patcher: Any, kind: str, layer: TransformerLayer) -> Replacement | None:
    """The replace patch ComfyUI would run at ``layer`` (its own key first, then its block's), if any."""
    replace = model_patcher.model_options.get("transformer_options", {}).get("patches_replace", {}).get(kind, {})
    return replace.get(layer.key, replace.get(layer.key[:2]))


def attach_engine(model_patcher: Any, engine: EditEngine, attend: Attend, name: str,
                  feature_wrapper_type: str | None = None) -> Any:
    """A clone of ``model_patcher`` with ``engine`` on the attention layers it ``controls``. Other patches
    on the model are kept; where another node already replaced a layer's attention (e.g. IP-Adapter), the
    engine runs on top of it: that replacement becomes the layer's inner attention, so both act. ``name``
    (e.g. "P2P") is for messages. An engine with ``feature_taps`` also gets a :class:`FeatureTapWrapper` of
    ``feature_wrapper_type`` (ComfyUI's ``WrappersMP.DIFFUSION_MODEL``)."""
    if engine_of(model_patcher) is not None:
        raise ValueError("model: this MODEL already carries an SPDInv editing engine; connect the model from "
                         "before that engine node (engines do not stack)")
    try:
        layers = transformer_layers(model_patcher.get_model_object("diffusion_model"))
    except ValueError as e:
        raise ValueError(f"model: {e}") from None
    engine.check_layers(layers)
    patched = model_patcher.clone()
    register = {"attn1": patched.set_model_attn1_replace, "attn2": patched.set_model_attn2_replace}
    for layer in layers:
        for kind in engine.controls(layer):
            inner = _replacement(patched, kind, layer)
            register[kind](AttentionPatch(engine, layer, kind, attend, inner), *layer.key)
    if hasattr(engine, "feature_taps"):
        if feature_wrapper_type is None:
            raise ValueError(f"{name} taps module outputs and needs the host's diffusion-model wrapper type")
        patched.add_wrapper_with_key(feature_wrapper_type, ENGINE_KEY, FeatureTapWrapper())
    patched.model_options.setdefault("transformer_options", {})[ENGINE_KEY] = engine
    return patched
