"""The engines' foundation: branch layout, run lifecycle and step windows, the step read from ComfyUI's
sigmas, and attention chained onto another node's replacement (no ComfyUI)."""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.attention_patches.attention_math import LayerAttention, apply_probs, attention_probs, plain_attention
from spdinv_pack.attention_patches.engine import EditEngine, step_of, steps_for
from spdinv_pack.attention_patches.mutual_self_attention import MutualSelfAttention
from spdinv_pack.attention_patches.plug_and_play import PlugAndPlay
from spdinv_pack.attention_patches.prompt_to_prompt import PromptToPrompt, ReplaceMapping
from spdinv_pack.attention_patches.unet_layers import TransformerLayer
from spdinv_pack.spdinv.branches import BranchLayout
from spdinv_pack.spdinv.guidance import EditRecipe

HEADS, DIM, TOKENS = 2, 4, 5


def qkv(rows: int, nq: int, nk: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(rows, n, HEADS * DIM, generator=g) for n in (nq, nk, nk))


def layer(order: int = 12, level: int = 2) -> TransformerLayer:
    return TransformerLayer("output", 6, 0, order, level, self_attention=True, cross_attention=True)


def test_layout_of_a_call_names_source_and_target_rows_of_every_chunk():
    layout = BranchLayout.of_call(8, [1, 0], "test")
    assert layout.images == 2 and layout.chunk_rows == 4 and layout.rows == 8
    assert layout.source_rows().tolist() == [0, 1, 4, 5] and layout.target_rows().tolist() == [2, 3, 6, 7]
    assert layout.cond_chunks() == [slice(4, 8)] and layout.uncond_chunks() == [slice(0, 4)]
    t = torch.arange(8.0)
    assert layout.source_to_target(t).tolist() == [0, 1, 0, 1, 4, 5, 4, 5]


def test_a_batch_that_is_not_source_and_target_rows_in_each_chunk_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="MasaCtrl .* Edit Sampler"):
        BranchLayout.of_call(3, [0], "MasaCtrl")
    with pytest.raises(ValueError, match="Edit Sampler"):
        BranchLayout.of_call(6, [0, 1], "P2P")  # 3 rows a chunk


def test_split_and_join_are_inverse_on_the_stacked_latent():
    layout = BranchLayout.of_batch(4)
    x = torch.arange(4.0)
    source, target = layout.split(x)
    assert source.tolist() == [0, 1] and target.tolist() == [2, 3]
    assert torch.equal(layout.join(source, target), x)
    with pytest.raises(ValueError, match="one chunk"):
        BranchLayout.of_call(4, [0, 1], "t").split(x)


def test_the_step_is_read_from_comfyuis_sigmas_in_the_runs_grid():
    grid = torch.tensor([14.6, 7.0, 3.0, 0.5, 0.0])
    assert step_of({"sample_sigmas": grid, "sigmas": torch.tensor([3.0, 3.0])}) == 2
    assert step_of({"sample_sigmas": grid, "sigmas": torch.tensor([14.6])}) == 0
    assert step_of({"sample_sigmas": grid, "sigmas": torch.tensor([2.0])}) is None  # not on this grid
    assert step_of({"sigmas": torch.tensor([3.0])}) is None and step_of({}) is None


def test_windows_follow_the_run_and_round_down_like_the_reference():
    engine = EditEngine(EditRecipe())
    assert not engine.within(0, 1.0)  # no run yet
    engine.begin_run(50)
    assert steps_for(0.8, 50) == 40 and steps_for(0.08, 50) == 4
    assert engine.within(39, 0.8) and not engine.within(40, 0.8) and not engine.within(None, 0.8)
    assert engine.from_(4, 0.08) and not engine.from_(3, 0.08)
    engine.end_run()
    assert not engine.within(0, 1.0) and not engine.from_(49, 0.0)


def test_every_engine_is_an_edit_engine_with_its_own_recipe_and_fraction_checks():
    for make in (lambda f: PromptToPrompt(ReplaceMapping(torch.eye(TOKENS)), cross_fraction=f),
                 lambda f: MutualSelfAttention(start_step=f),
                 lambda f: PlugAndPlay("x", feature_fraction=f)):
        assert isinstance(make(0.5), EditEngine)
        with pytest.raises(ValueError, match="between 0 and 1"):
            make(1.5)


def additive_inner(k_extra: torch.Tensor, v_extra: torch.Tensor):
    """An IP-Adapter-style replacement: text attention plus attention to extra (image) keys and values."""
    calls = []

    def inner(q, k, v, extra_options):
        calls.append(list(extra_options["cond_or_uncond"]))
        rows = q.shape[0]
        return plain_attention(q, k, v, HEADS) + 0.5 * plain_attention(q, k_extra.expand(rows, -1, -1),
                                                                       v_extra.expand(rows, -1, -1), HEADS)

    return inner, calls


def test_p2p_cross_attention_chained_on_an_additive_replacement_keeps_both_effects():
    q, k, v = qkv(4, 9, TOKENS, seed=1)
    k_img, v_img = qkv(1, 3, 3, seed=2)[1:]
    inner, calls = additive_inner(k_img, v_img)
    p2p = PromptToPrompt(ReplaceMapping(torch.eye(TOKENS)), cross_fraction=1.0)
    p2p.begin_run(10)
    chunks = [1, 0]
    options = {"cond_or_uncond": chunks}
    chained = p2p.cross_attention(q, k, v, HEADS, 0, chunks, layer(), (3, 3),
                                  LayerAttention(plain_attention, inner, options))
    alone = p2p.cross_attention(q, k, v, HEADS, 0, chunks, layer(), (3, 3), LayerAttention(plain_attention))
    image_part = 0.5 * plain_attention(q, k_img.expand(4, -1, -1), v_img.expand(4, -1, -1), HEADS)
    torch.testing.assert_close(chained, alone + image_part)
    assert calls == [chunks]  # the inner attention saw the whole call, as ComfyUI made it
    # the target's text attention is the source's maps (identity word swap) over its own values
    source_probs = attention_probs(q[2:3], k[2:3], HEADS)
    torch.testing.assert_close(alone[3:4], apply_probs(source_probs, v[3:4]))


def test_self_attention_engines_call_the_inner_replacement_with_their_edited_keys():
    q, k, v = qkv(4, 9, 9, seed=3)
    k_img, v_img = qkv(1, 3, 3, seed=4)[1:]
    inner, calls = additive_inner(k_img, v_img)
    masa = MutualSelfAttention(start_step=0.0, start_layer=0)
    masa.begin_run(10, (1, 4, 3, 3))
    chunks = [1, 0]
    chained = masa.self_attention(q, k, v, HEADS, 0, chunks, layer(), (3, 3),
                                  LayerAttention(plain_attention, inner, {"cond_or_uncond": chunks}))
    alone = masa.self_attention(q, k, v, HEADS, 0, chunks, layer(), (3, 3), LayerAttention(plain_attention))
    torch.testing.assert_close(chained, alone + 0.5 * plain_attention(q, k_img.expand(4, -1, -1),
                                                                      v_img.expand(4, -1, -1), HEADS))
    assert calls == [chunks]
