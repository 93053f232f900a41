"""Prompt-to-Prompt controller rules on hand-made q/k/v tensors (no ComfyUI, no model)."""

from __future__ import annotations

import pytest
import torch
from engine_calls import attention_call, edit_run

from spdinv_pack.attention_patches.attention_math import apply_probs, attention_probs, plain_attention
from spdinv_pack.attention_patches.prompt_to_prompt import (
    LocalBlend,
    PromptToPrompt,
    RefineMapping,
    ReplaceMapping,
)
from spdinv_pack.attention_patches.unet_layers import TransformerLayer

HEADS, DIM, TOKENS = 2, 8, 6
STEPS = 10


def qkv(rows: int, nq: int, nk: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(rows, n, HEADS * DIM, generator=g) for n in (nq, nk, nk))


def swap_matrix() -> torch.Tensor:
    """Token 2 of the source feeds tokens 2 and 3 of the target half each; token 3 feeds token 4; rest identity."""
    m = torch.zeros(TOKENS, TOKENS)
    for w, n in ((0, 0), (1, 1), (3, 4), (4, 5), (5, 5)):
        m[w, n] = 1.0
    m[2, 2] = m[2, 3] = 0.5
    return m


def layer(level: int) -> TransformerLayer:
    return TransformerLayer("output", 3, 0, 7, level, self_attention=True, cross_attention=True)


def controller(mapping=None, **kw) -> PromptToPrompt:
    return PromptToPrompt(mapping if mapping is not None else ReplaceMapping(swap_matrix()), **kw)


def cross(p2p: PromptToPrompt, q, k, v, step, cond_or_uncond=(1, 0), level=0, spatial=(2, 2), run="new"):
    """One cross-attention call in ``run`` (a fresh run of STEPS steps by default; ``None``: outside an edit)."""
    run = edit_run(STEPS) if run == "new" else run
    return p2p.attention(attention_call("cross", q, k, v, HEADS, layer(level), run, step, cond_or_uncond,
                                        spatial=spatial))


@pytest.mark.parametrize("images", [1, 2])
def test_word_swap_maps_the_source_maps_through_the_token_mapping_in_the_cond_chunk_only(images):
    rows = 2 * images
    q, k, v = qkv(2 * rows, 4, TOKENS)
    p2p = controller()
    out = cross(p2p, q, k, v, step=0)
    plain = plain_attention(q, k, v, HEADS)
    uncond, cond = slice(0, rows), slice(rows, 2 * rows)
    torch.testing.assert_close(out[uncond], plain[uncond])
    src, tgt = slice(rows, rows + images), slice(rows + images, 2 * rows)
    torch.testing.assert_close(out[src], plain[src])
    probs = attention_probs(q[src], k[src], HEADS)
    expected = apply_probs(torch.einsum("bhpw,wn->bhpn", probs, swap_matrix()), v[tgt])
    torch.testing.assert_close(out[tgt], expected)
    assert not torch.allclose(out[tgt], plain[tgt])
    assert out[cond].shape == plain[cond].shape


def test_refine_keeps_aligned_tokens_from_the_source_and_inserted_tokens_from_the_target():
    index = torch.tensor([0, 1, 0, 2, 3, 4])
    alphas = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    q, k, v = qkv(2, 4, TOKENS, seed=1)
    p2p = controller(RefineMapping(index, alphas))
    out = cross(p2p, q, k, v, step=0, cond_or_uncond=(0,))
    probs = attention_probs(q, k, HEADS)
    expected = probs[1].clone()
    expected[..., [0, 1, 3, 4, 5]] = probs[0][..., [0, 1, 2, 3, 4]]
    torch.testing.assert_close(out[1:], apply_probs(expected[None], v[1:]))


def test_reweight_scales_exactly_the_named_target_tokens():
    eq = torch.ones(TOKENS)
    eq[3] = 2.0
    identity = ReplaceMapping(torch.eye(TOKENS))
    q, k, v = qkv(2, 4, TOKENS, seed=2)
    out = cross(controller(identity, equalizer=eq), q, k, v, step=0, cond_or_uncond=(0,))
    probs = attention_probs(q, k, HEADS)
    expected = probs[0].clone()
    expected[..., 3] *= 2.0
    torch.testing.assert_close(out[1:], apply_probs(expected[None], v[1:]))


def test_cross_attention_is_plain_after_the_cross_replace_window_and_outside_a_run():
    q, k, v = qkv(4, 4, TOKENS, seed=3)
    p2p = controller(cross_fraction=0.8)
    plain = plain_attention(q, k, v, HEADS)
    assert not torch.allclose(cross(p2p, q, k, v, step=7), plain)
    torch.testing.assert_close(cross(p2p, q, k, v, step=8), plain)
    torch.testing.assert_close(cross(p2p, q, k, v, step=None), plain)
    torch.testing.assert_close(cross(p2p, q, k, v, step=0, run=None), plain)


def test_self_attention_replacement_only_on_the_chosen_layers_and_steps():
    q, k, v = qkv(4, 9, 9, seed=4)
    p2p = controller(self_fraction=0.6, self_min_level=1)
    plain = plain_attention(q, k, v, HEADS)

    def run(step, level):
        return p2p.attention(attention_call("self", q, k, v, HEADS, layer(level), edit_run(STEPS), step, (1, 0),
                                            spatial=(3, 3)))

    torch.testing.assert_close(run(step=0, level=0), plain)
    torch.testing.assert_close(run(step=6, level=1), plain)
    out = run(step=5, level=1)
    torch.testing.assert_close(out[:3], plain[:3])
    probs = attention_probs(q[2:3], k[2:3], HEADS)
    torch.testing.assert_close(out[3:], apply_probs(probs, v[3:]))


def test_maps_are_recorded_at_the_map_level_before_editing_and_averaged_for_the_preview():
    q, k, v = qkv(2, 4, TOKENS, seed=5)
    p2p, run = controller(cross_fraction=0.2, map_level=2), edit_run(STEPS)
    cross(p2p, q, k, v, step=0, cond_or_uncond=(0,), level=1, run=run)
    assert p2p.recorded_maps(run).maps is None
    for step in range(3):
        cross(p2p, q, k, v, step=step, cond_or_uncond=(0,), level=2, run=run)
    expected = attention_probs(q, k, HEADS).mean(1).reshape(2, 2, 2, TOKENS)
    torch.testing.assert_close(p2p.recorded_maps(run).maps, expected)
    torch.testing.assert_close(p2p.record(run).blend_sum, 3 * expected)
    assert p2p.recorded_maps(edit_run(STEPS)).maps is None  # another run records its own


def test_edited_maps_are_recorded_as_the_official_code_stores_them():
    """``blend_maps="edited"``: inside the cross-replace window the target rows record the source's maps mapped
    and reweighted (what the edit wrote into the reference's store); after it, their own maps."""
    q, k, v = qkv(2, 4, TOKENS, seed=7)
    eq = torch.ones(TOKENS)
    eq[4] = 2.0
    own = attention_probs(q, k, HEADS).mean(1).reshape(2, 2, 2, TOKENS)
    mapped = torch.einsum("bhpw,wn->bhpn", attention_probs(q[:1], k[:1], HEADS), swap_matrix()) * eq
    edited = torch.cat([own[:1], mapped.mean(1).reshape(1, 2, 2, TOKENS)])
    p2p = controller(cross_fraction=0.2, map_level=2, equalizer=eq, blend_maps="edited")
    target = controller(cross_fraction=0.2, map_level=2, equalizer=eq)
    runs = {p2p: edit_run(STEPS), target: edit_run(STEPS)}
    for engine, run in runs.items():
        for step in range(3):
            cross(engine, q, k, v, step=step, cond_or_uncond=(0,), level=2, run=run)
    torch.testing.assert_close(p2p.record(runs[p2p]).blend_sum, 2 * edited + own)
    torch.testing.assert_close(p2p.recorded_maps(runs[p2p]).maps, edited)
    torch.testing.assert_close(target.record(runs[target]).blend_sum, 3 * own)
    with pytest.raises(ValueError, match="blend_maps"):
        PromptToPrompt(ReplaceMapping(swap_matrix()), blend_maps="own")


def test_local_blend_keeps_the_source_outside_the_union_of_word_masks():
    p2p = controller(blend=LocalBlend(source_positions=(1,), target_positions=(2,), threshold=0.3, start=0.2))
    maps = torch.zeros(2, 4, 4, TOKENS)
    maps[0, 0, 0, 1] = 1.0
    maps[1, 3, 3, 2] = 1.0
    run = edit_run(STEPS)
    p2p.record(run).blend_sum = maps
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(p2p.after_step(run, 1, x), x)
    out = p2p.after_step(run, 2, x)
    mask = p2p.recorded_maps(run).blend_mask[0, 0]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[0:4, 0:4] = True
    expected[4:8, 4:8] = True
    assert torch.equal(mask, expected)
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1][:, ~mask], x[0][:, ~mask])
    assert torch.equal(out[1][:, mask], x[1][:, mask])


def test_fractions_outside_zero_one_are_refused():
    with pytest.raises(ValueError, match="cross_fraction"):
        PromptToPrompt(ReplaceMapping(torch.eye(TOKENS)), cross_fraction=1.5)


def test_an_odd_chunk_is_refused_with_a_hint_to_use_the_edit_sampler():
    q, k, v = qkv(3, 4, TOKENS)
    with pytest.raises(ValueError, match="Edit Sampler"):
        cross(controller(), q, k, v, step=0, cond_or_uncond=(0,))


def test_a_context_repeated_to_batch_with_a_longer_one_is_mapped_copy_by_copy():
    q, k, v = qkv(2, 4, TOKENS, seed=6)
    p2p = controller()
    once = cross(p2p, q, k, v, step=0, cond_or_uncond=(0,))
    twice = cross(p2p, q, k.repeat(1, 2, 1), v.repeat(1, 2, 1), step=0, cond_or_uncond=(0,))
    torch.testing.assert_close(twice, once)
    with pytest.raises(ValueError, match="IP-Adapter"):
        cross(p2p, q, k[:, :4], v[:, :4], step=0, cond_or_uncond=(0,))
