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


IMAGE_TOKENS_KEY = "spdinv_image_tokens"
"""``transformer_options`` key :class:`ImageTokensWrapper` sets: how many image tokens the call's latent makes."""


def dit_blocks(diffusion_model: Any) -> list[tuple[str, int]]:
    """An MM-DiT's blocks as ComfyUI's ``dit`` replace patches name them, in order: SD3's joint blocks, or
    Flux's double-stream then single-stream blocks."""
    if hasattr(diffusion_model, "joint_blocks"):
        return [("double_block", i) for i in range(len(diffusion_model.joint_blocks))]
    if hasattr(diffusion_model, "double_blocks"):
        return ([("double_block", i) for i in range(len(diffusion_model.double_blocks))]
                + [("single_block", i) for i in range(len(getattr(diffusion_model, "single_blocks", ())))])
    raise ValueError("not an MM-DiT (SD3.x, Flux): it has no joint blocks; on UNet models (SD1.x, SD2.x, SDXL) "
                     "use SPDInv MasaCtrl")


class ImageTokensWrapper:
    """``DIFFUSION_MODEL`` wrapper: puts the number of image tokens of the call's latent (patches of
    ``patch_size``) into the call's ``transformer_options``, where the block patches read it (a single-stream
    block sees text and image tokens concatenated).

    Models pass ``transformer_options`` by keyword (SD3) or by position (Flux); it is the dict argument that
    ComfyUI's sampling filled (``cond_or_uncond``, ``sigmas``), a fresh copy for every call, so it is written in
    place.
    """

    def __init__(self, patch_size: int):
        self.patch_size = patch_size

    def __call__(self, executor, *args, **kwargs):
        options = kwargs.get("transformer_options")
        if not isinstance(options, dict):
            options = next((a for a in args if isinstance(a, dict) and ("sigmas" in a or "cond_or_uncond" in a)),
                           None)
        if options is not None:
            h, w = args[0].shape[-2:]
            options[IMAGE_TOKENS_KEY] = -(-h // self.patch_size) * -(-w // self.patch_size)
        return executor(*args, **kwargs)


class JointAttentionOverride:
    """``optimized_attention_override`` for the calls of one block: hands q, k, v to the engine, which attends
    through an override that was there before (another node's) or the host's attention."""

    def __init__(self, engine: Any, block: int, image_tokens: int, previous: Any = None):
        self.engine, self.block, self.image_tokens, self.previous = engine, block, image_tokens, previous

    def __call__(self, func, *args, **kwargs):
        q, k, v, *rest = args
        options = kwargs.get("transformer_options") or {}

        def attend(q, k, v):
            if self.previous is not None:
                return self.previous(func, q, k, v, *rest, **kwargs)
            return func(q, k, v, *rest, **kwargs)

        return self.engine.joint_attention(q, k, v, step_of(options), call_chunks(options), self.block,
                                           self.image_tokens, 2 if kwargs.get("skip_reshape") else 1, attend)


class JointBlockPatch:
    """``dit`` block replace patch: runs the block (or the replacement another node had put on it) with the
    engine's attention override in the block's ``transformer_options``."""

    def __init__(self, engine: Any, block: int, inner: Any = None):
        self.engine, self.block, self.inner = engine, block, inner

    def __call__(self, args: dict, extra: dict):
        options = dict(args.get("transformer_options") or {})
        tokens = options.get(IMAGE_TOKENS_KEY, args["img"].shape[1])
        options["optimized_attention_override"] = JointAttentionOverride(
            self.engine, self.block, tokens, options.get("optimized_attention_override"))
        args = {**args, "transformer_options": options}
        if self.inner is not None:
            return self.inner(args, extra)
        return extra["original_block"](args)


def attach_joint_engine(model_patcher: Any, engine: Any, wrapper_type: str) -> Any:
    """A clone of ``model_patcher`` with ``engine`` (:class:`~.joint_attention.JointMutualAttention`) on the
    blocks it controls, chained onto any ``dit`` block patch or attention override already there."""
    if engine_of(model_patcher) is not None:
        raise ValueError("model: this MODEL already carries an SPDInv editing engine; connect the model from "
                         "before that engine node (engines do not stack)")
    diffusion_model = model_patcher.get_model_object("diffusion_model")
    try:
        blocks = dit_blocks(diffusion_model)
    except ValueError as e:
        raise ValueError(f"model: {e}") from None
    patched = model_patcher.clone()
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for order, (kind, index) in enumerate(blocks):
        if engine.controls_block(order):
            patched.set_model_patch_replace(JointBlockPatch(engine, order, existing.get((kind, index))), "dit", kind,
                                            index)
    patched.add_wrapper_with_key(wrapper_type, IMAGE_TOKENS_KEY,
                                 ImageTokensWrapper(int(getattr(diffusion_model, "patch_size", 2))))
    patched.model_options.setdefault("transformer_options", {})[ENGINE_KEY] = engine
    return patched
