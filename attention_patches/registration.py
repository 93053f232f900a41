"""Installs an engine as ComfyUI patches on a ``ModelPatcher`` clone: one :func:`attach_engine` for every family.

Duck-typed on ComfyUI's ``ModelPatcher`` (``clone``, ``get_model_object``, ``set_model_attn1_replace``,
``set_model_attn2_replace``, ``set_model_patch_replace``, ``add_wrapper_with_key``, ``model_options``): nothing
here imports ComfyUI. UNet engines become ``attn1``/``attn2`` replace patches (:class:`AttentionPatch`), DiT
engines ``dit`` block replace patches that set an attention override for the block (:class:`JointBlockPatch`);
both hand the engine one :class:`~.attention_call.AttentionCall`. Where the family and this ComfyUI have the DiT
pre-attention hook (``attn1_patch``), the engine is installed through it instead (:class:`PreAttentionPatch`; other
nodes' hooks in the same list run before or after it). Families with neither (Z-Image, HiDream) get one attention
override for the whole model (:class:`ModelAttentionOverride`), told the running block by the call wrapper. Video
blocks (Wan) get ``dit`` block patches whose override hands the block's self-attention and, to engines that control
it, its cross-attention to the engine (:class:`SelfAttentionBlockPatch`). Another
node's patch or override already on a site stays as that site's inner attention, so both act. The patches hold only
the (immutable) engine and their site: clones may share them (ComfyUI after 0.3.64 copies only dicts and lists), and
the run (and, for the model-wide override, the running block) comes with each call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..spdinv.branches import Chunks
from .attention_call import AttentionCall
from .dit_blocks import DiTBlock, ImageTokens, block_paths, calls_pre_attention_patch
from .engine import EditEngine
from .families import OVERRIDE, SELF_ATTENTION, Family
from .run import RUN_KEY, EditRun
from .unet_layers import TransformerLayer

ENGINE_KEY = "spdinv_engine"
"""``transformer_options`` key holding the engine a MODEL carries (:func:`engine_of`)."""
WRAPPER_KEY = "spdinv"
"""Key of the pack's ``DIFFUSION_MODEL`` wrapper (:class:`EditCallWrapper`)."""
BLOCK_KEY = "spdinv_block"
"""Entry of a model call's own ``transformer_options`` naming the block running now (:class:`ModelAttentionOverride`),
set by the :class:`EditCallWrapper`'s block pre-hooks for that call only; ``None`` outside the blocks."""
SEEN_KEY = "spdinv_override_seen"
"""Entry of a model call's own ``transformer_options`` that :class:`ModelAttentionOverride` sets when it sees a block's
attention: without it the call wrapper knows that another node's override replaced the engine's."""

HostAttention = Callable[..., torch.Tensor]
"""The host's attention, ``attend(q, k, v, heads, **options)`` (ComfyUI's ``optimized_attention``)."""


def engine_of(model_patcher: Any) -> EditEngine | None:
    """The SPDInv engine attached to this MODEL, if any."""
    return model_patcher.model_options.get("transformer_options", {}).get(ENGINE_KEY)


class EnginePatch:
    """A patch of one site: the engine, the site, and ``inner``, the patch another node had put there first."""

    def __init__(self, engine: EditEngine, site: Any, inner: Any = None):
        self.engine, self.site, self.inner = engine, site, inner


class AttentionPatch(EnginePatch):
    """``attn1``/``attn2`` replace patch of one UNet transformer layer."""

    def __init__(self, engine: EditEngine, layer: TransformerLayer, kind: str, host: HostAttention,
                 inner: Any = None):
        super().__init__(engine, layer, inner)
        self.kind, self.host = kind, host

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        heads = extra_options["n_heads"]
        precision = extra_options.get("attn_precision")
        extra = {} if precision is None else {"attn_precision": precision}
        inner = None if self.inner is None else (lambda q, k, v: self.inner(q, k, v, extra_options))
        shape = extra_options["activations_shape"]
        call = AttentionCall.of(q, k, v, heads, "self" if self.kind == "attn1" else "cross", self.site,
                                extra_options, lambda q, k, v: self.host(q, k, v, heads, **extra), inner,
                                spatial=(shape[-2], shape[-1]))
        return self.engine.attention(call)


class JointAttentionOverride:
    """``optimized_attention_override`` for the attention calls of one DiT block: hands q, k, v to the engine,
    which attends through an override that was there before (another node's) or the host's attention. The call's
    tokens end with the ``image_tokens`` of the noisy image, then ``reference_tokens`` of reference images."""

    def __init__(self, engine: EditEngine, block: DiTBlock, image_tokens: int, previous: Any = None,
                 reference_tokens: int = 0):
        self.engine, self.block, self.image_tokens, self.previous = engine, block, image_tokens, previous
        self.reference_tokens = reference_tokens

    def __call__(self, func: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        q, k, v, *rest = args
        heads = rest[0] if rest else kwargs.get("heads", 1)

        def plain(q, k, v):
            return func(q, k, v, *rest, **kwargs)

        inner = None if self.previous is None else (lambda q, k, v: self.previous(func, q, k, v, *rest, **kwargs))
        token_dim = 2 if kwargs.get("skip_reshape") else 1
        stop = k.shape[token_dim] - self.reference_tokens
        call = AttentionCall.of(q, k, v, heads, "joint", self.block, kwargs.get("transformer_options") or {},
                                plain, inner, image=(stop - min(self.image_tokens, stop), stop),
                                token_dim=token_dim)
        return self.engine.attention(call)


class JointBlockPatch(EnginePatch):
    """``dit`` block replace patch: runs the block (or another node's patch of it) with the engine's attention
    override in the block's ``transformer_options``."""

    def __call__(self, args: dict, extra: dict) -> Any:
        options = dict(args.get("transformer_options") or {})
        run = EditRun.of(options)
        tokens = run.image_tokens if run is not None and run.image_tokens is not None else args["img"].shape[1]
        options["optimized_attention_override"] = JointAttentionOverride(
            self.engine, self.site, tokens, options.get("optimized_attention_override"),
            0 if run is None else run.reference_tokens)
        args = {**args, "transformer_options": options}
        if self.inner is not None:
            return self.inner(args, extra)
        return extra["original_block"](args)


def video_grid(latent_shape: tuple[int, ...], patch_size: tuple[int, ...]) -> tuple[int, int, int] | None:
    """A video DiT's token grid ``(frames, h, w)`` for latents ``[B, C, T, H, W]`` in patches of ``patch_size``
    (Wan: ``(1, 2, 2)``), or ``None`` for latents of another rank."""
    if len(latent_shape) != 5:
        return None
    return tuple(-(-n // p) for n, p in zip(latent_shape[2:], patch_size, strict=True))


class SelfAttentionOverride:
    """``optimized_attention_override`` for one call of a video DiT block (Wan), made fresh for that call. The block's
    first attention call is its self-attention over the clip's tokens (every token is the clip's): it goes to the
    engine as a ``self`` call where the engine controls ``self`` or ``joint`` attention there. The second is the
    cross-attention to the prompt's tokens (an image-to-video model's: to its image tokens first): it goes to the
    engine as a ``cross`` call where the engine controls ``cross``. Others go unchanged to the override that was
    there before (``previous``, another node's) or the host's attention. ``grid``: the clip's token grid
    ``(frames, h, w)``, given to the engine as ``spatial`` ``(frames·h, w)`` (frames stacked along the height).
    ``calls`` counts the attention calls of this one block call."""

    def __init__(self, engine: EditEngine, block: DiTBlock, previous: Any = None,
                 grid: tuple[int, int, int] | None = None):
        self.engine, self.block, self.previous, self.grid, self.calls = engine, block, previous, grid, 0
        self.kinds = set(engine.controls(block))

    def __call__(self, func: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        q, k, v, *rest = args

        def plain(q, k, v):
            return func(q, k, v, *rest, **kwargs)

        inner = None if self.previous is None else (lambda q, k, v: self.previous(func, q, k, v, *rest, **kwargs))
        self.calls += 1
        kind = {1: "self" if self.kinds & {"self", "joint"} else None,
                2: "cross" if "cross" in self.kinds else None}.get(self.calls)
        if kind is None:
            return (plain if inner is None else inner)(q, k, v)
        token_dim = 2 if kwargs.get("skip_reshape") else 1
        tokens = q.shape[token_dim]
        if kind == "self" and k.shape[token_dim] != tokens:
            raise ValueError(f"model: the first attention of {self.block.kind} {self.block.index} attends "
                             f"{tokens} queries to {k.shape[token_dim]} keys, not a self-attention; "
                             f"{self.engine.node} runs on Wan blocks (self-attention first)")
        spatial = None
        if self.grid is not None and self.grid[0] * self.grid[1] * self.grid[2] == tokens:
            spatial = (self.grid[0] * self.grid[1], self.grid[2])
        heads = rest[0] if rest else kwargs.get("heads", 1)
        call = AttentionCall.of(q, k, v, heads, kind, self.block, kwargs.get("transformer_options") or {}, plain,
                                inner, image=(0, tokens) if kind == "self" else None, token_dim=token_dim,
                                spatial=spatial)
        return self.engine.attention(call)


class SelfAttentionBlockPatch(EnginePatch):
    """``dit`` block replace patch of a video DiT block (Wan: self-attention over the clip, then cross-attention to
    the prompt; ComfyUI's ``attn1_patch`` there runs after the attention, too late to change keys and values): in an
    edit run the block runs with a fresh :class:`SelfAttentionOverride` in its ``transformer_options``; outside one
    it runs as it is. ``patch_size``: the model's ``(frames, h, w)`` patch, for the clip's token grid."""

    def __init__(self, engine: EditEngine, site: Any, inner: Any = None, patch_size: tuple[int, ...] = (1, 2, 2)):
        super().__init__(engine, site, inner)
        self.patch_size = tuple(patch_size)

    def __call__(self, args: dict, extra: dict) -> Any:
        options = dict(args.get("transformer_options") or {})
        run = EditRun.of(options)
        if run is not None:
            options["optimized_attention_override"] = SelfAttentionOverride(
                self.engine, self.site, options.get("optimized_attention_override"),
                video_grid(run.latent_shape, self.patch_size))
            args = {**args, "transformer_options": options}
        if self.inner is not None:
            return self.inner(args, extra)
        return extra["original_block"](args)


class ModelAttentionOverride:
    """``optimized_attention_override`` of a whole model whose blocks have neither the pre-attention hook nor ``dit``
    block patches (Z-Image, HiDream). In an edit call, an attention of a block the engine controls goes to the engine
    with the image tokens' range (``image``: where they lie, the latent's token count from the run); every other
    attention (Z-Image's refiners, which run before the first block, calls outside an edit, other blocks) goes
    unchanged to the override that was there before (``previous``, another node's) or the host's attention. The
    running block comes from the call's own ``transformer_options`` (:data:`BLOCK_KEY`), so this object holds only
    configuration and clones may share it."""

    def __init__(self, engine: EditEngine, image: ImageTokens, previous: Any = None):
        self.engine, self.image, self.previous = engine, image, previous

    def __call__(self, func: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        q, k, v, *rest = args
        options = kwargs.get("transformer_options") or {}

        def plain(q, k, v):
            return func(q, k, v, *rest, **kwargs)

        inner = None if self.previous is None else (lambda q, k, v: self.previous(func, q, k, v, *rest, **kwargs))
        block, run = options.get(BLOCK_KEY), EditRun.of(options)
        if block is not None:
            options[SEEN_KEY] = True
        if block is None or run is None or run.image_tokens is None or not self.engine.controls(block):
            return (plain if inner is None else inner)(q, k, v)
        heads = rest[0] if rest else kwargs.get("heads", 1)
        token_dim = 2 if kwargs.get("skip_reshape") else 1
        try:
            image = self.image.span(k.shape[token_dim], run.image_tokens)
        except ValueError as e:
            raise ValueError(f"model: {e}") from None
        call = AttentionCall.of(q, k, v, heads, "joint", block, options, plain, inner, image=image,
                                token_dim=token_dim)
        return self.engine.attention(call)


class PreAttentionPatch(EnginePatch):
    """ComfyUI's DiT pre-attention hook (``attn1_patch``, Flux/Flux.2/Chroma/Qwen-Image blocks since ComfyUI 0.3.7x):
    one patch for the whole model, called by every block with ``q``, ``k``, ``v`` ``[B, heads, tokens, dim]`` (text
    tokens first, then the image, then reference images) before RoPE; returns the tensors to replace. ``site`` maps
    ``(block_type, block_index)`` to the engine's blocks."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pe: Any = None, attn_mask: Any = None,
                 extra_options: dict | None = None) -> dict[str, torch.Tensor]:
        options = extra_options or {}
        block = self.site.get((f"{options.get('block_type')}_block", options.get("block_index")))
        if block is None or EditRun.of(options) is None:
            return {}
        start, stop = options.get("img_slice", (0, k.shape[2]))
        stop -= sum(options.get("reference_image_num_tokens", ()))
        call = AttentionCall.of(q, k, v, q.shape[1], "joint", block, options, None, image=(start, stop), token_dim=2)
        return self.engine.pre_attention(call)


def call_options(args: tuple, kwargs: dict) -> dict | None:
    """The ``transformer_options`` dict of a diffusion-model call: passed by keyword (UNet, SD3) or by position
    (Flux); the fresh per-call dict ComfyUI's sampling filled (``cond_or_uncond``, ``sigmas``)."""
    options = kwargs.get("transformer_options")
    if isinstance(options, dict):
        return options
    return next((a for a in args if isinstance(a, dict) and ("sigmas" in a or "cond_or_uncond" in a)), None)


class EditCallWrapper:
    """``DIFFUSION_MODEL`` wrapper for the calls of an edit run: tells the run how many image tokens the call's
    latent makes (patches of ``patch_size``; a single-stream block sees text and image tokens concatenated), and
    while the model runs, forward hooks let the engine rewrite the outputs of the modules it taps, and forward
    pre-hooks on ``blocks`` (module path → block) name the running block in the call's ``transformer_options``
    (:data:`BLOCK_KEY`, for :class:`ModelAttentionOverride`). The hooks are removed when the call ends, even on error
    or Cancel, so nothing stays on the shared model. A call with one of the model inputs in ``refuses`` is refused
    before it runs, and one in whose blocks the engine's override never ran (another node's override replaced it
    rather than chaining onto it) after it ran."""

    def __init__(self, engine: EditEngine, patch_size: int | None = None, blocks: Mapping[str, DiTBlock] | None = None,
                 refuses: tuple[str, ...] = ()):
        self.engine, self.patch_size, self.blocks, self.refuses = engine, patch_size, dict(blocks or {}), refuses

    def check_inputs(self, executor: Any, args: tuple, kwargs: dict) -> None:
        """Refuse a call that has an input of ``refuses`` (read by name from the wrapped forward's signature)."""
        if not self.refuses:
            return
        try:
            given = inspect.signature(executor.original).bind_partial(*args, **kwargs).arguments
        except (AttributeError, TypeError, ValueError):
            given = kwargs
        for name in self.refuses:
            if given.get(name) is not None or kwargs.get(name) is not None:
                raise ValueError(f"model: the model is called with {name} (a reference image), whose image tokens "
                                 f"{self.engine.name} cannot tell from the photo's on this model; edit without it, "
                                 f"or without the {self.engine.node} node")

    def tokens_of(self, latent: torch.Tensor) -> int:
        """Tokens a latent ``[B, C, (frames,) h, w]`` makes: patches of ``patch_size`` (padded), per frame."""
        h, w = latent.shape[-2:]
        frames = latent.shape[2] if latent.dim() == 5 else 1
        return frames * -(-h // self.patch_size) * -(-w // self.patch_size)

    def __call__(self, executor: Any, *args: Any, **kwargs: Any) -> Any:
        options = call_options(args, kwargs)
        run = EditRun.of(options)
        if run is None:
            return executor(*args, **kwargs)
        self.check_inputs(executor, args, kwargs)
        if self.patch_size is not None:
            run = run.for_call(image_tokens=self.tokens_of(args[0]),
                               reference_tokens=sum(self.tokens_of(ref) for ref in kwargs.get("ref_latents") or ()))
            options[RUN_KEY] = run
        step = run.step_at(options.get("sigmas"))
        chunks = Chunks(options.get("cond_or_uncond", [0]), run.shared_source)
        handles = []
        try:
            for path, tap in self.engine.feature_taps().items():
                module = executor.class_obj.get_submodule(path)
                handles.append(module.register_forward_hook(
                    lambda _m, _i, out, tap=tap: tap(out, run, step, chunks), prepend=True))
            if self.blocks:
                options[BLOCK_KEY] = None
            for path, block in self.blocks.items():
                module = executor.class_obj.get_submodule(path)
                handles.append(module.register_forward_pre_hook(
                    lambda _m, _a, block=block: options.__setitem__(BLOCK_KEY, block)))
            out = executor(*args, **kwargs)
            if self.blocks and not options.get(SEEN_KEY):
                raise ValueError(f"model: {self.engine.node}'s attention override did not run: a node applied after "
                                 "it replaced it; apply that node before the engine node")
            return out
        finally:
            for handle in handles:
                handle.remove()
            if self.blocks:
                options.pop(BLOCK_KEY, None)
                options.pop(SEEN_KEY, None)


def _inner_attention(model_patcher: Any, kind: str, layer: TransformerLayer) -> Any:
    """The replace patch ComfyUI would run at ``layer`` (its own key first, then its block's), if any."""
    replace = model_patcher.model_options.get("transformer_options", {}).get("patches_replace", {}).get(kind, {})
    return replace.get(layer.key, replace.get(layer.key[:2]))


def attach_engine(model_patcher: Any, engine: EditEngine, host_attention: HostAttention | None,
                  wrapper_type: str) -> Any:
    """A clone of ``model_patcher`` with ``engine`` on the sites of its family that the engine ``controls``.

    Other patches on the model are kept; where another node already patched a site (e.g. IP-Adapter), the engine
    runs on top of it. ``host_attention`` is the host's attention for UNet layers; ``wrapper_type`` ComfyUI's
    ``WrappersMP.DIFFUSION_MODEL``, for the :class:`EditCallWrapper` that DiT engines and feature taps need.
    """
    if engine_of(model_patcher) is not None:
        raise ValueError("model: this MODEL already carries an SPDInv editing engine; connect the model from "
                         "before that engine node (engines do not stack)")
    family = Family.of(model_patcher)
    family.require(engine.node)
    diffusion_model = model_patcher.get_model_object("diffusion_model")
    try:
        sites = family.sites(diffusion_model)
    except ValueError as e:
        raise ValueError(f"model: {e}") from None
    engine.check_sites(sites)
    patched = model_patcher.clone()
    if family.is_unet:
        register = {"attn1": patched.set_model_attn1_replace, "attn2": patched.set_model_attn2_replace}
        for layer in sites:
            for kind in engine.controls(layer):
                inner = _inner_attention(patched, kind, layer)
                register[kind](AttentionPatch(engine, layer, kind, host_attention, inner), *layer.key)
    elif family.hook == "attn1_patch" and calls_pre_attention_patch(diffusion_model, family.blocks):
        patched.set_model_attn1_patch(PreAttentionPatch(engine, {(b.kind, b.index): b for b in sites
                                                                 if engine.controls(b)}))
    elif family.hook == OVERRIDE:
        options = patched.model_options.setdefault("transformer_options", {})
        options["optimized_attention_override"] = ModelAttentionOverride(
            engine, family.image_tokens(diffusion_model), options.get("optimized_attention_override"))
    else:
        existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
        for block in sites:
            if engine.controls(block):
                inner = existing.get((block.kind, block.index))
                video_patch = getattr(diffusion_model, "patch_size", (1, 2, 2))
                patch = (SelfAttentionBlockPatch(engine, block, inner, video_patch) if family.hook == SELF_ATTENTION
                         else JointBlockPatch(engine, block, inner))
                patched.set_model_patch_replace(patch, "dit", block.kind, block.index)
    patch_size = None if family.is_unet or family.hook == SELF_ATTENTION else int(getattr(diffusion_model,
                                                                                          "patch_size", 2))
    blocks = block_paths(family.blocks, sites) if family.hook == OVERRIDE else {}
    refuses = family.refuses if family.hook == OVERRIDE else ()
    if patch_size is not None or engine.feature_taps():
        patched.add_wrapper_with_key(wrapper_type, WRAPPER_KEY, EditCallWrapper(engine, patch_size, blocks, refuses))
    patched.model_options.setdefault("transformer_options", {})[ENGINE_KEY] = engine
    return patched
