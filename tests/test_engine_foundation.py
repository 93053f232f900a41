"""The engines' foundation: branch layout, the run as a value and its step windows, the step read from ComfyUI's
sigmas, and attention chained onto another node's replacement (no ComfyUI)."""

from __future__ import annotations

import pytest
import torch
from engine_calls import attention_call, edit_run

from spdinv_pack.attention_patches.attention_call import AttentionCall
from spdinv_pack.attention_patches.attention_math import apply_probs, attention_probs, plain_attention
from spdinv_pack.attention_patches.engine import EditEngine
from spdinv_pack.attention_patches.mutual_self_attention import MutualSelfAttention
from spdinv_pack.attention_patches.plug_and_play import PlugAndPlay
from spdinv_pack.attention_patches.prompt_to_prompt import PromptToPrompt, ReplaceMapping
from spdinv_pack.attention_patches.run import RUN_KEY, EditRun, steps_for
from spdinv_pack.attention_patches.unet_layers import TransformerLayer
from spdinv_pack.spdinv.branches import BranchLayout

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


def test_a_call_finds_its_run_and_reads_its_step_from_comfyuis_sigmas_on_the_runs_grid():
    run = EditRun(torch.tensor([14.6, 7.0, 3.0, 0.5, 0.0]), (1, 4, 8, 8))
    assert run.steps == 4
    assert run.step_at(torch.tensor([3.0, 3.0])) == 2 and run.step_at(torch.tensor([14.6])) == 0
    assert run.step_at(torch.tensor([2.0])) is None and run.step_at(None) is None  # not on this grid
    q = torch.zeros(2, 3, 4)

    def call(options):
        return AttentionCall.of(q, q, q, 1, "self", None, options, lambda q, k, v: q)

    inside = call(run.into({"transformer_options": {"x": 1}})["transformer_options"] | {"sigmas": torch.tensor([7.0])})
    assert inside.run is run and inside.step == 1 and inside.in_run
    outside = call({"sigmas": torch.tensor([7.0]), "cond_or_uncond": [0]})
    assert outside.run is None and outside.step is None and not outside.in_run


def test_per_call_copies_of_a_run_share_its_records():
    run = EditRun(torch.tensor([1.0, 0.0]))
    marked = run.for_call(shared_source=True, image_tokens=16)
    assert marked.shared_source and not run.shared_source and marked.records is run.records
    options = run.into({"transformer_options": {"a": 1}, "b": 2})
    assert options["transformer_options"] == {"a": 1, RUN_KEY: run} and options["b"] == 2
    assert EditRun.of(options["transformer_options"]) is run and EditRun.of({RUN_KEY: "other"}) is None


def test_windows_follow_the_run_and_round_down_like_the_reference():
    q = torch.zeros(2, 3, 4)

    def call(run, step):
        return attention_call("self", q, q, q, 1, None, run, step)

    run = edit_run(50)
    assert steps_for(0.8, 50) == 40 and steps_for(0.08, 50) == 4
    assert call(run, 39).within(0.8) and not call(run, 40).within(0.8) and not call(run, None).within(0.8)
    assert call(run, 4).from_(0.08) and not call(run, 3).from_(0.08)
    assert not call(None, 0).within(1.0) and not call(None, 49).from_(0.0)  # outside a run


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

    def inner(q, k, v):
        calls.append(q.shape[0])
        rows = q.shape[0]
        return plain_attention(q, k, v, HEADS) + 0.5 * plain_attention(q, k_extra.expand(rows, -1, -1),
                                                                       v_extra.expand(rows, -1, -1), HEADS)

    return inner, calls


def test_p2p_cross_attention_chained_on_an_additive_replacement_keeps_both_effects():
    q, k, v = qkv(4, 9, TOKENS, seed=1)
    k_img, v_img = qkv(1, 3, 3, seed=2)[1:]
    inner, calls = additive_inner(k_img, v_img)
    p2p = PromptToPrompt(ReplaceMapping(torch.eye(TOKENS)), cross_fraction=1.0)
    run, chunks = edit_run(10), (1, 0)
    chained = p2p.attention(attention_call("cross", q, k, v, HEADS, layer(), run, 0, chunks, inner=inner,
                                           spatial=(3, 3)))
    alone = p2p.attention(attention_call("cross", q, k, v, HEADS, layer(), run, 0, chunks, spatial=(3, 3)))
    image_part = 0.5 * plain_attention(q, k_img.expand(4, -1, -1), v_img.expand(4, -1, -1), HEADS)
    torch.testing.assert_close(chained, alone + image_part)
    assert calls == [4]  # the inner attention saw the whole call, as ComfyUI made it
    # the target's text attention is the source's maps (identity word swap) over its own values
    source_probs = attention_probs(q[2:3], k[2:3], HEADS)
    torch.testing.assert_close(alone[3:4], apply_probs(source_probs, v[3:4]))


def test_self_attention_engines_call_the_inner_replacement_with_their_edited_keys():
    q, k, v = qkv(4, 9, 9, seed=3)
    k_img, v_img = qkv(1, 3, 3, seed=4)[1:]
    inner, calls = additive_inner(k_img, v_img)
    masa = MutualSelfAttention(start_step=0.0, start_layer=0)
    run, chunks = edit_run(10, (1, 4, 3, 3)), (1, 0)
    chained = masa.attention(attention_call("self", q, k, v, HEADS, layer(), run, 0, chunks, inner=inner,
                                            spatial=(3, 3)))
    alone = masa.attention(attention_call("self", q, k, v, HEADS, layer(), run, 0, chunks, spatial=(3, 3)))
    torch.testing.assert_close(chained, alone + 0.5 * plain_attention(q, k_img.expand(4, -1, -1),
                                                                      v_img.expand(4, -1, -1), HEADS))
    assert calls == [4]
