"""The model-wide attention-override route (``ModelAttentionOverride``, ``EditCallWrapper``'s block pre-hooks) of
Z-Image and HiDream, and where their calls hold the image tokens (``ImageTokens``), on stand-ins without ComfyUI.

The stand-ins call ``transformer_options["optimized_attention_override"]`` as ComfyUI's ``wrap_attn`` does:
``override(func, q, k, v, heads, ..., transformer_options=...)``; Z-Image-like with q/k/v ``[B, heads, N, dim]``
and ``skip_reshape=True``, caption tokens first and refiners that run before the layers; HiDream-like with
``[B, N, heads·dim]``, image tokens first. The host tests run the real models.
"""

from __future__ import annotations

import pytest
import torch
from engine_calls import FakePatcher, edit_run
from torch import nn

from spdinv_pack.attention_patches.dit_blocks import DiTBlock, ImageTokens, block_paths
from spdinv_pack.attention_patches.families import FAMILIES, MMDIT, Family
from spdinv_pack.attention_patches.joint_attention import JointMutualAttention
from spdinv_pack.attention_patches.registration import (
    BLOCK_KEY,
    SEEN_KEY,
    WRAPPER_KEY,
    EditCallWrapper,
    ModelAttentionOverride,
    attach_engine,
)
from spdinv_pack.attention_patches.run import RUN_KEY

OVERRIDE = "optimized_attention_override"


def config(name: str) -> object:
    return type(name, (), {})()


def host_attention(q, k, v, heads, *rest, **kwargs):
    """ComfyUI's attention as the override receives it (``func``): here it returns the keys it attends to."""
    return k


class Attends(nn.Module):
    """A block (or refiner) that runs one attention through the override in its ``transformer_options``; its call's
    tokens are ``x``'s. ``skip_reshape``: q/k/v ``[B, heads, N, dim]`` (Z-Image), else ``[B, N, heads·dim]``."""

    def __init__(self, name: str, log: list, skip_reshape: bool):
        super().__init__()
        self.name, self.log, self.skip_reshape = name, log, skip_reshape

    def forward(self, x: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        qkv = x.unsqueeze(1) if self.skip_reshape else x
        extra = {"skip_reshape": True} if self.skip_reshape else {}
        override = transformer_options.get(OVERRIDE)
        k = (override(host_attention, qkv, qkv, qkv, 1, transformer_options=transformer_options, **extra)
             if override is not None else qkv)
        self.log.append((self.name, k.squeeze(1) if self.skip_reshape else k))
        return x


class ZImageLike(nn.Module):
    """Two refiners, then three layers, caption and image tokens padded to multiples of 4."""

    patch_size, pad_tokens_multiple = 2, 4

    def __init__(self):
        super().__init__()
        self.log: list = []
        self.noise_refiner = nn.ModuleList([Attends("noise_refiner", self.log, True)])
        self.context_refiner = nn.ModuleList([Attends("context_refiner", self.log, True)])
        self.layers = nn.ModuleList(Attends(f"layers.{i}", self.log, True) for i in range(3))

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        for module in (*self.context_refiner, *self.noise_refiner, *self.layers):
            module(tokens, transformer_options)
        return x


class HiDreamLike(nn.Module):
    """One double-stream and two single-stream blocks."""

    patch_size = 2

    def __init__(self):
        super().__init__()
        self.log: list = []
        self.double_stream_blocks = nn.ModuleList([Attends("double", self.log, False)])
        self.single_stream_blocks = nn.ModuleList(Attends(f"single.{i}", self.log, False) for i in range(2))

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, transformer_options: dict,
                image_cond: torch.Tensor | None = None) -> torch.Tensor:
        for block in (*self.double_stream_blocks, *self.single_stream_blocks):
            block(tokens, transformer_options)
        return x


class Executor:
    """ComfyUI's wrapper executor: ``class_obj`` is the diffusion model, ``original`` its forward."""

    def __init__(self, model: nn.Module):
        self.class_obj, self.original = model, model.forward

    def __call__(self, *args, **kwargs):
        return self.original(*args, **kwargs)


def run_call(patched: FakePatcher, latent: torch.Tensor, tokens: torch.Tensor, step: int = 1,
             with_run: bool = True, **inputs) -> dict:
    """One model call of a two-row edit batch [source, target] the way ComfyUI makes it: a fresh
    ``transformer_options`` from the model's, through the pack's wrapper."""
    run = edit_run(4)
    options = {**patched.model_options["transformer_options"], "sigmas": run.grid[step:step + 1],
               "cond_or_uncond": [0]}
    if with_run:
        options[RUN_KEY] = run
    (wrapper,) = options["wrappers"]["wrapper"][WRAPPER_KEY]
    model = patched.get_model_object("diffusion_model")
    wrapper(Executor(model), latent, tokens, options, **inputs)
    return options


def test_image_tokens_lie_last_padded_or_first():
    zimage = ImageTokens(pad_multiple=32)
    assert zimage.span(32 + 32, 30) == (32, 62)  # caption 7 → 32, image 5×6 = 30 → 32: two pads after it
    assert zimage.span(64 + 96, 64) == (96, 160)  # no pads when the image fills its multiple
    assert zimage.span(32 + 32 + 64 + 32, 30) == (128, 158)  # Z-Image omni: reference images before the photo
    assert ImageTokens().span(12, 5) == (7, 12)  # SD3/Flux: the last tokens
    assert ImageTokens(first=True, pad_multiple=1).span(49, 30) == (0, 30)  # HiDream: image, T5, Llama
    with pytest.raises(ValueError, match="a call of 31 tokens cannot hold 30 image tokens \\(32 padded\\)"):
        ImageTokens(pad_multiple=32).span(31, 30)
    with pytest.raises(ValueError, match="pad_multiple"):
        ImageTokens(pad_multiple=0)


def test_z_image_and_hidream_are_found_by_config_or_distinctive_structure():
    zimage = Family.of(FakePatcher(ZImageLike(), config("ZImage")))
    assert zimage.name == "Z-Image" and zimage.hook == OVERRIDE and MMDIT in zimage.engines
    assert zimage.image_tokens(ZImageLike()) == ImageTokens(pad_multiple=4)
    assert [(b.kind, b.index, b.order) for b in zimage.sites(ZImageLike())] == [
        ("double_block", 0, 0), ("double_block", 1, 1), ("double_block", 2, 2)]
    assert Family.of(FakePatcher(ZImageLike(), config("Lumina2"))).name == "Lumina2 (Z-Image-like)"
    only_layers = nn.Module()
    only_layers.layers = nn.ModuleList([nn.Identity()])  # a common attribute: not enough to be Z-Image-like
    assert Family.of(FakePatcher(only_layers, config("Other"))).engines == ()
    hidream = Family.of(FakePatcher(HiDreamLike(), config("HiDream")))
    assert hidream.name == "HiDream" and hidream.image_tokens(HiDreamLike()) == ImageTokens(first=True)
    sites = hidream.sites(HiDreamLike())
    assert block_paths(hidream.blocks, sites) == {
        "double_stream_blocks.0": DiTBlock("double_block", 0, 0),
        "single_stream_blocks.0": DiTBlock("single_block", 0, 1),
        "single_stream_blocks.1": DiTBlock("single_block", 1, 2)}
    for family in (zimage, hidream):
        assert 0 < family.default("mmdit_start_block") < 1
    assert {f.name for f in FAMILIES if f.hook == OVERRIDE} == {"Z-Image", "HiDream"}


def test_the_engine_is_one_override_chained_onto_the_one_there_before_on_a_clone_only():
    base = FakePatcher(ZImageLike(), config("ZImage"))
    theirs = []

    def earlier(func, q, k, v, *rest, **kwargs):
        theirs.append(k.shape)
        return func(q, k, v, *rest, **kwargs)

    base.model_options["transformer_options"][OVERRIDE] = earlier
    patched = attach_engine(base, JointMutualAttention(0.0, 1), None, "wrapper")
    override = patched.model_options["transformer_options"][OVERRIDE]
    assert isinstance(override, ModelAttentionOverride) and override.previous is earlier
    assert base.model_options["transformer_options"] == {OVERRIDE: earlier}
    assert not {"patches", "patches_replace"} & set(patched.model_options["transformer_options"])
    (wrapper,) = patched.model_options["transformer_options"]["wrappers"]["wrapper"][WRAPPER_KEY]
    assert sorted(wrapper.blocks) == ["layers.0", "layers.1", "layers.2"] and wrapper.refuses == ("ref_latents",)
    tokens = torch.randn(2, 4 + 8, 3)  # caption 3 → 4, image 2×3 = 6 → 8 (two pads)
    run_call(patched, torch.zeros(2, 16, 4, 6), tokens)
    assert len(theirs) == 5  # every attention still reaches the earlier override, refiners included


def test_z_image_shares_the_image_range_of_the_controlled_layers_and_leaves_refiners_alone():
    model = ZImageLike()
    patched = attach_engine(FakePatcher(model, config("ZImage")), JointMutualAttention(0.0, 1), None, "wrapper")
    tokens = torch.randn(2, 4 + 8, 3)
    options = run_call(patched, torch.zeros(2, 16, 4, 6), tokens)
    keys = dict(model.log)
    for name in ("context_refiner", "noise_refiner", "layers.0"):
        assert torch.equal(keys[name], tokens)  # refiners and the block before the start block: their own
    for name in ("layers.1", "layers.2"):
        k = keys[name]
        assert torch.equal(k[1, 4:10], tokens[0, 4:10])  # the target's image tokens are the source's
        assert torch.equal(k[1, :4], tokens[1, :4]) and torch.equal(k[1, 10:], tokens[1, 10:])  # caption, pads
        assert torch.equal(k[0], tokens[0])
    assert not {BLOCK_KEY, SEEN_KEY} & set(options) and not any(m._forward_pre_hooks for m in model.modules())
    model.log.clear()
    run_call(patched, torch.zeros(2, 16, 4, 6), tokens, with_run=False)  # a call outside an edit: plain
    assert all(torch.equal(k, tokens) for _, k in model.log)


def test_hidream_shares_the_first_tokens_and_refuses_a_reference_image():
    model = HiDreamLike()
    patched = attach_engine(FakePatcher(model, config("HiDream")), JointMutualAttention(0.0, 1), None, "wrapper")
    tokens = torch.randn(2, 6 + 5, 4)  # image 2×3, then 5 text tokens
    run_call(patched, torch.zeros(2, 16, 4, 6), tokens)
    keys = dict(model.log)
    assert torch.equal(keys["double"], tokens)
    for name in ("single.0", "single.1"):
        assert torch.equal(keys[name][1, :6], tokens[0, :6]) and torch.equal(keys[name][1, 6:], tokens[1, 6:])
    with pytest.raises(ValueError, match="^model: the model is called with image_cond .*without the SPDInv MM-DiT"):
        run_call(patched, torch.zeros(2, 16, 4, 6), tokens, image_cond=torch.zeros(2, 16, 4, 6))
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_the_block_comes_with_the_call_and_hooks_go_even_when_the_call_fails():
    model = HiDreamLike()
    wrapper = EditCallWrapper(JointMutualAttention(0.0, 0), 2, block_paths(
        Family.of(FakePatcher(model, config("HiDream"))).blocks, [DiTBlock("double_block", 0, 0)]))
    seen = []

    def failing(x, tokens, options):
        seen.append(options[BLOCK_KEY])
        model.double_stream_blocks[0](tokens, {})
        seen.append(options[BLOCK_KEY])
        raise RuntimeError("cancelled")

    executor = Executor(model)
    executor.original = failing
    run = edit_run(4)
    options = {RUN_KEY: run, "sigmas": run.grid[1:2], "cond_or_uncond": [0]}
    with pytest.raises(RuntimeError, match="cancelled"):
        wrapper(executor, torch.zeros(2, 16, 4, 4), torch.zeros(2, 4, 2), options)
    assert seen == [None, DiTBlock("double_block", 0, 0)]
    assert BLOCK_KEY not in options and not any(m._forward_pre_hooks for m in model.modules())


def test_an_edit_call_in_which_the_engines_override_never_ran_is_refused():
    model = HiDreamLike()
    patched = attach_engine(FakePatcher(model, config("HiDream")), JointMutualAttention(0.0, 1), None, "wrapper")
    tokens = torch.randn(2, 6 + 5, 4)
    chained = patched.clone()
    ours = chained.model_options["transformer_options"][OVERRIDE]
    chained.model_options["transformer_options"][OVERRIDE] = lambda func, *a, **kw: ours(func, *a, **kw)
    run_call(chained, torch.zeros(2, 16, 4, 6), tokens)  # a later node's override that chains: fine
    replaced = patched.clone()
    replaced.model_options["transformer_options"][OVERRIDE] = lambda func, *a, **kw: func(*a, **kw)
    with pytest.raises(ValueError, match="^model: SPDInv MM-DiT Mutual Attention's attention override did not run: "
                                         "a node applied after it replaced it; apply that node before the engine"):
        run_call(replaced, torch.zeros(2, 16, 4, 6), tokens)
    options = run_call(replaced, torch.zeros(2, 16, 4, 6), tokens, with_run=False)  # outside an edit: no matter
    assert not {BLOCK_KEY, SEEN_KEY} & set(options)
