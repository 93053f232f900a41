"""Mutual attention on a video DiT (Wan): ``dit`` block patches whose override hands the engine each block's
self-attention only, on a stand-in without ComfyUI.

The stand-in's blocks run as Wan's do under ComfyUI: the model calls ``patches_replace["dit"][("double_block", i)]``
with ``{"img", "txt", "transformer_options"}`` and ``{"original_block"}``, and a block calls
``transformer_options["optimized_attention_override"]`` first for its self-attention over the clip's tokens, then
for its cross-attention to the prompt's tokens (``override(func, q, k, v, heads=..., transformer_options=...)`` on
``[B, N, heads·dim]``). The host tests run the real model.
"""

from __future__ import annotations

import sys

import pytest
import torch
from engine_calls import FakePatcher, edit_run
from torch import nn

from spdinv_pack.attention_patches import prompt_to_prompt
from spdinv_pack.attention_patches.families import MMDIT, P2P, SELF_ATTENTION, Family
from spdinv_pack.attention_patches.joint_attention import JointMutualAttention
from spdinv_pack.attention_patches.prompt_to_prompt import (
    PROBABILITIES_PER_BLOCK,
    LocalBlend,
    PromptToPrompt,
    ReplaceMapping,
    query_blocks,
)
from spdinv_pack.attention_patches.registration import SelfAttentionBlockPatch, attach_engine
from spdinv_pack.attention_patches.run import RUN_KEY

OVERRIDE = "optimized_attention_override"


def config(name: str) -> object:
    return type(name, (), {})()


def host_attention(q, k, v, *rest, **kwargs):
    """ComfyUI's attention as the override receives it (``func``): here it returns the values it attends to."""
    return v


class WanBlockLike(nn.Module):
    """Self-attention over ``x`` then cross-attention of ``x`` to ``context``; logs what each attention received."""

    def __init__(self, log: list, cross_first: bool = False):
        super().__init__()
        self.log, self.cross_first = log, cross_first

    def forward(self, x: torch.Tensor, context: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        override = transformer_options.get(OVERRIDE)

        def attend(q, k, v):
            if override is None:
                return host_attention(q, k, v)
            return override(host_attention, q, k, v, heads=1, transformer_options=transformer_options)

        order = (("cross", context), ("self", x)) if self.cross_first else (("self", x), ("cross", context))
        for kind, kv in order:
            self.log.append((kind, kv, attend(x, kv, kv)))
        return x


class WanLike(nn.Module):
    """Three Wan blocks, called through their ``dit`` replace patches where there are some."""

    patch_size = (1, 2, 2)

    def __init__(self, cross_first: bool = False):
        super().__init__()
        self.log: list = []
        self.patch_embedding, self.text_embedding, self.time_projection = nn.Identity(), nn.Identity(), nn.Identity()
        self.blocks = nn.ModuleList(WanBlockLike(self.log, cross_first) for _ in range(3))

    def forward(self, x: torch.Tensor, context: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        replace = transformer_options.get("patches_replace", {}).get("dit", {})
        for i, block in enumerate(self.blocks):
            if ("double_block", i) in replace:
                def original(args, block=block):
                    return {"img": block(args["img"], args["txt"], args["transformer_options"])}

                x = replace[("double_block", i)]({"img": x, "txt": context, "transformer_options": transformer_options},
                                                 {"original_block": original})["img"]
            else:
                x = block(x, context, transformer_options)
        return x


def call(patched: FakePatcher, x: torch.Tensor, context: torch.Tensor, step: int = 1, with_run: bool = True) -> list:
    """One model call of a two-row edit batch [source, target] as ComfyUI makes it; the attentions' log."""
    run = edit_run(4, (1, 16, 3, 8, 8))
    options = {**patched.model_options["transformer_options"], "sigmas": run.grid[step:step + 1],
               "cond_or_uncond": [0]}
    if with_run:
        options[RUN_KEY] = run
    model = patched.get_model_object("diffusion_model")
    model.log.clear()
    model(x, context, options)
    return list(model.log)


def tokens(seed: int, n: int) -> torch.Tensor:
    return torch.randn(2, n, 8, generator=torch.Generator().manual_seed(seed))


def test_wan_and_its_children_are_the_wan_family_and_run_mutual_attention_through_block_patches():
    for name in ("WAN21_T2V", "WAN22_T2V"):
        parent = type("WAN21_T2V", (), {})
        cls = parent if name == "WAN21_T2V" else type(name, (parent,), {})
        family = Family.of(FakePatcher(WanLike(), cls()))
        assert family.name == "Wan" and family.hook == SELF_ATTENTION and MMDIT in family.engines
    assert Family.of(FakePatcher(WanLike(), config("NewVideo"))).name == "NewVideo (Wan-like)"
    assert Family.of(FakePatcher(nn.Module(), config("NewVideo"))).engines == ()  # "blocks" alone is no Wan
    patched = attach_engine(FakePatcher(WanLike(), config("WAN21_T2V")), JointMutualAttention(0.0, 1), None, "w")
    replace = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert sorted(replace) == [("double_block", 1), ("double_block", 2)]
    assert all(isinstance(p, SelfAttentionBlockPatch) for p in replace.values())
    assert "wrappers" not in patched.model_options["transformer_options"]  # no call wrapper needed


def test_the_target_takes_the_sources_self_attention_values_and_keeps_its_own_cross_attention():
    base = FakePatcher(WanLike(), config("WAN21_T2V"))
    patched = attach_engine(base, JointMutualAttention(0.0, 1), None, "w")
    x, context = tokens(0, 48), tokens(1, 512)
    log = call(patched, x, context)
    assert [kind for kind, _, _ in log] == ["self", "cross"] * 3
    for block, ((_, given, out), (_, text, cross)) in enumerate(zip(log[0::2], log[1::2], strict=True)):
        assert torch.equal(cross, text)  # cross-attention: the target's own prompt
        assert torch.equal(out[0], given[0])  # the source row: its own
        expected = given[0] if block >= 1 else given[1]
        assert torch.equal(out[1], expected)  # the target row: the source's from the start block on
    assert not torch.equal(x[0], x[1])  # not vacuous


def test_outside_an_edit_and_before_the_start_step_every_attention_is_plain():
    patched = attach_engine(FakePatcher(WanLike(), config("WAN21_T2V")), JointMutualAttention(0.5, 0), None, "w")
    x, context = tokens(0, 48), tokens(1, 512)
    for log in (call(patched, x, context, with_run=False), call(patched, x, context, step=1)):
        assert all(torch.equal(out, given) for _, given, out in log)
    assert any(not torch.equal(out, given) for _, given, out in call(patched, x, context, step=3))


def test_a_block_whose_first_attention_is_not_a_self_attention_is_refused_naming_the_block():
    patched = attach_engine(FakePatcher(WanLike(cross_first=True), config("WAN21_T2V")), JointMutualAttention(0.0, 0),
                            None, "w")
    with pytest.raises(ValueError, match="^model: the first attention of double_block 0 attends 48 queries to 512 "
                                         "keys, not a self-attention"):
        call(patched, tokens(0, 48), tokens(1, 512))


def test_an_override_already_on_the_model_still_runs_and_the_base_model_is_untouched():
    seen = []

    def earlier(func, q, k, v, *rest, **kwargs):
        seen.append(k.shape[1])
        return func(q, k, v, *rest, **kwargs)

    base = FakePatcher(WanLike(), config("WAN21_T2V"))
    base.model_options["transformer_options"][OVERRIDE] = earlier
    before = dict(base.model_options["transformer_options"])
    patched = attach_engine(base, JointMutualAttention(0.0, 0), None, "w")
    log = call(patched, tokens(0, 48), tokens(1, 512))
    assert seen == [48, 512] * 3
    assert all(torch.equal(out[1], given[0]) for kind, given, out in log if kind == "self")
    assert base.model_options["transformer_options"] == before


def attention(q, k, v, *rest, heads=1, **kwargs):
    """Real scaled dot-product attention as ComfyUI's host attention computes it (one head)."""
    return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, -1) @ v


@pytest.fixture
def real_attention(monkeypatch):
    """The stand-in's blocks attend with real attention instead of returning their values."""
    monkeypatch.setattr(sys.modules[__name__], "host_attention", attention)


def p2p(**settings) -> PromptToPrompt:
    return PromptToPrompt(ReplaceMapping(torch.eye(512)), **{"cross_fraction": 0.5, "self_fraction": 0.5, **settings})


def test_prompt_to_prompt_runs_on_wan_blocks_controlling_every_self_and_cross_attention():
    family = Family.of(FakePatcher(WanLike(), config("WAN21_T2V")))
    assert P2P in family.engines
    patched = attach_engine(FakePatcher(WanLike(), config("WAN21_T2V")), p2p(), None, "w")
    replace = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert sorted(replace) == [("double_block", i) for i in range(3)]


def test_on_wan_the_targets_cross_attention_follows_the_sources_maps_reweighted_inside_its_window(real_attention):
    scale = torch.ones(512)
    scale[2] = 3.0
    patched = attach_engine(FakePatcher(WanLike(), config("WAN21_T2V")), p2p(equalizer=scale), None, "w")
    x, context = tokens(0, 48), tokens(1, 512)
    inside, outside = call(patched, x, context, step=1), call(patched, x, context, step=3)
    source_maps = torch.softmax(x[0] @ context[0].T * 8 ** -0.5, -1)
    for kind, given, out in inside:
        if kind == "cross":
            assert torch.allclose(out[0], attention(x[0], given[0], given[0]), atol=1e-6)  # the source: its own
            assert torch.allclose(out[1], (source_maps * scale) @ given[1], atol=1e-5)  # source maps, reweighted
    for kind, given, out in outside:
        if kind == "cross":
            assert torch.allclose(out[1], attention(x[1], given[1], given[1]), atol=1e-6)
    assert not torch.allclose(attention(x[1], context[1], context[1]), source_maps @ context[1], atol=1e-3)


def test_on_wan_the_targets_self_attention_takes_the_sources_queries_and_keys_inside_its_window(real_attention):
    patched = attach_engine(FakePatcher(WanLike(), config("WAN21_T2V")), p2p(), None, "w")
    x, context = tokens(0, 48), tokens(1, 512)
    inside = [out for kind, _, out in call(patched, x, context, step=1) if kind == "self"]
    outside = [out for kind, _, out in call(patched, x, context, step=3) if kind == "self"]
    assert all(torch.allclose(out[1], attention(x[0], x[0], x[1]), atol=1e-6) for out in inside)
    assert all(torch.allclose(out[1], attention(x[1], x[1], x[1]), atol=1e-6) for out in outside)
    assert not torch.allclose(attention(x[0], x[0], x[1]), attention(x[1], x[1], x[1]), atol=1e-3)


def test_on_wan_maps_lie_over_the_clips_frames_and_local_blend_keeps_the_source_outside_the_words_region(
        real_attention):
    blend = LocalBlend((4,), (4,), threshold=0.5, start=0.0)
    engine = p2p(blend=blend)
    patched = attach_engine(FakePatcher(WanLike(), config("WAN21_T2V")), engine, None, "w")
    x, context = tokens(0, 48), tokens(1, 512)
    context[:, 4] *= 0.0
    context[:, 4, :] += x[:, :16].mean(1) * 6  # token 4 attends to the first latent frame's tokens
    run = edit_run(4, (1, 16, 3, 8, 8))
    model = patched.get_model_object("diffusion_model")
    model(x, context, {**patched.model_options["transformer_options"], "sigmas": run.grid[1:2],
                       "cond_or_uncond": [0], RUN_KEY: run})
    maps = engine.recorded_maps(run).maps
    assert maps.shape == (2, 3 * 4, 4, 512)  # rows, frames·h, w, tokens (3 latent frames of 4×4 patches)
    latent = torch.randn(2, 16, 3, 8, 8)
    blended = engine.after_step(run, 1, latent)
    mask = engine.record(run).blend_mask
    assert mask.shape == (1, 1, 3, 8, 8) and mask.any() and not mask.all()
    assert mask[:, :, 0].float().mean() > mask[:, :, 1:].float().mean()
    assert torch.equal(blended[1], torch.where(mask[0], latent[1], latent[0]))
    assert torch.equal(blended[0], latent[0])


def test_query_blocks_cover_every_query_once_within_the_limit_and_a_unet_layer_is_one_block():
    blocks = query_blocks(100, 7, 50)
    assert [i for b in blocks for i in range(b.start, b.stop)] == list(range(100))
    assert all((b.stop - b.start) * 7 <= 50 for b in blocks) and len(blocks) == 15
    assert query_blocks(4096, 2 * 8 * 77, PROBABILITIES_PER_BLOCK) == [slice(0, 4096)]  # SD1.5 512², 64×64 layer


def test_on_wan_a_clip_in_query_blocks_gives_the_same_edit_and_maps_as_all_queries_at_once(real_attention,
                                                                                          monkeypatch):
    x, context = tokens(0, 48), tokens(1, 512)
    results, blocks = [], []

    def spied(*args):
        blocks.append(len(query_blocks(*args)))
        return query_blocks(*args)

    monkeypatch.setattr(prompt_to_prompt, "query_blocks", spied)
    for limit in (PROBABILITIES_PER_BLOCK, 2 * 512 * 10):  # 10 queries a block: 5 blocks for 48 tokens
        monkeypatch.setattr(prompt_to_prompt, "PROBABILITIES_PER_BLOCK", limit)
        engine = p2p(blend=LocalBlend((4,), (4,), threshold=0.5, start=0.0))
        patched = attach_engine(FakePatcher(WanLike(), config("WAN21_T2V")), engine, None, "w")
        run = edit_run(4, (1, 16, 3, 8, 8))
        model = patched.get_model_object("diffusion_model")
        model.log.clear()
        model(x, context, {**patched.model_options["transformer_options"], "sigmas": run.grid[1:2],
                           "cond_or_uncond": [0], RUN_KEY: run})
        results.append(([out for kind, _, out in model.log if kind == "cross"], engine.recorded_maps(run).maps))
    (outs, maps), (block_outs, block_maps) = results
    assert set(blocks[:3]) == {1} and set(blocks[3:]) == {5}  # 3 blocks' cross-attention a run
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(outs, block_outs, strict=True))
    assert torch.allclose(maps, block_maps, atol=1e-7)
