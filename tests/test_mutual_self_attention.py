"""MasaCtrl mutual self-attention rules on hand-made q/k/v tensors (no ComfyUI, no model)."""

from __future__ import annotations

import pytest
import torch
from engine_calls import attention_call, edit_run

from spdinv_pack.attention_patches.attention_math import (
    apply_probs,
    attention_probs,
    masked_attention,
    plain_attention,
)
from spdinv_pack.attention_patches.mutual_self_attention import AutoMask, MutualSelfAttention
from spdinv_pack.attention_patches.unet_layers import TransformerLayer

HEADS, DIM = 2, 4
STEPS = 50
SIDE = 4


def layer(order: int, level: int = 0) -> TransformerLayer:
    return TransformerLayer("output", order, 0, order, level, self_attention=True, cross_attention=True)


def qkv(rows: int, n: int = SIDE * SIDE, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(rows, n, HEADS * DIM, generator=g) for _ in range(3))


RUN = edit_run(STEPS, (1, 4, SIDE, SIDE))


def masa(**kw) -> MutualSelfAttention:
    return MutualSelfAttention(**kw)


def self_attn(engine, q, k, v, step, order=12, chunks=(1, 0), run=RUN):
    return engine.attention(attention_call("self", q, k, v, HEADS, layer(order), run, step, chunks,
                                           spatial=(SIDE, SIDE)))


def test_plain_attention_before_the_start_step_and_below_the_start_layer():
    q, k, v = qkv(4)
    engine = masa(start_step=0.08, start_layer=10)
    plain = plain_attention(q, k, v, HEADS)
    torch.testing.assert_close(self_attn(engine, q, k, v, step=3), plain)
    torch.testing.assert_close(self_attn(engine, q, k, v, step=4, order=9), plain)
    torch.testing.assert_close(self_attn(engine, q, k, v, step=None), plain)
    torch.testing.assert_close(self_attn(engine, q, k, v, step=4, run=None), plain)
    assert not torch.allclose(self_attn(engine, q, k, v, step=4), plain)


@pytest.mark.parametrize("chunks", [(1, 0), (0,), (0, 1)])
def test_target_queries_attend_to_source_keys_and_values_in_every_chunk(chunks):
    rows = 2 * len(chunks)
    q, k, v = qkv(rows, seed=1)
    out = self_attn(masa(), q, k, v, step=10, chunks=chunks)
    plain = plain_attention(q, k, v, HEADS)
    for c in range(len(chunks)):
        src, tgt = 2 * c, 2 * c + 1
        torch.testing.assert_close(out[src], plain[src])
        expected = apply_probs(attention_probs(q[tgt:tgt + 1], k[src:src + 1], HEADS), v[src:src + 1])
        torch.testing.assert_close(out[tgt:tgt + 1], expected)


def test_mask_keeps_foreground_and_background_apart():
    mask = torch.zeros(SIDE, SIDE)
    mask[:2] = 1.0
    fg = mask.flatten().bool()
    q, k, v = qkv(2, seed=2)
    engine = masa(mask=mask)
    out = self_attn(engine, q, k, v, step=10, chunks=(0,))
    probs = attention_probs(q[1:], k[:1], HEADS)
    fg_probs = probs * fg[None, None, None, :]
    bg_probs = probs * ~fg[None, None, None, :]
    fg_probs = fg_probs / fg_probs.sum(-1, keepdim=True)
    bg_probs = bg_probs / bg_probs.sum(-1, keepdim=True)
    expected = torch.where(fg[None, :, None], apply_probs(fg_probs, v[:1]), apply_probs(bg_probs, v[:1]))
    torch.testing.assert_close(out[1:], expected)
    torch.testing.assert_close(out[:1], plain_attention(q[:1], k[:1], v[:1], HEADS))
    v2 = v.clone()
    v2[0, ~fg] += 10.0
    changed = self_attn(engine, q, k, v2, step=10, chunks=(0,))
    torch.testing.assert_close(changed[1, fg], out[1, fg])
    assert not torch.allclose(changed[1, ~fg], out[1, ~fg])


def test_an_empty_mask_falls_back_to_plain_mutual_attention_without_nan():
    q, k, v = qkv(2, seed=3)
    out = masked_attention(q, k, v, HEADS, torch.zeros(1, SIDE * SIDE, dtype=torch.bool),
                           torch.zeros(1, SIDE * SIDE, dtype=torch.bool))
    torch.testing.assert_close(out[:1], plain_attention(q[:1], k[:1], v[:1], HEADS))
    assert torch.isfinite(out).all()


def test_automatic_masks_come_from_this_steps_cross_attention_of_the_chosen_tokens():
    tokens = 5
    engine = masa(auto=AutoMask(source_positions=(2,), target_positions=(3,), threshold=0.1))
    run = edit_run(STEPS, (1, 4, SIDE, SIDE))
    g = torch.Generator().manual_seed(4)
    cq = torch.randn(2, 4, HEADS * DIM, generator=g)
    ck = torch.randn(2, tokens, HEADS * DIM, generator=g)
    cv = torch.randn(2, tokens, HEADS * DIM, generator=g)
    engine.attention(attention_call("cross", cq, ck, cv, HEADS, layer(4, level=2), run, 10, spatial=(2, 2)))
    maps = attention_probs(cq, ck, HEADS).mean(1).reshape(2, 2, 2, tokens)

    def binary(m):
        m = (m - m.min()) / (m.max() - m.min())
        return torch.nn.functional.interpolate((m >= 0.1).float()[None, None], size=(SIDE, SIDE)).flatten().bool()

    key_mask, query_mask = binary(maps[0, ..., 2]), binary(maps[1, ..., 3])
    q, k, v = qkv(2, seed=5)
    out = self_attn(engine, q, k, v, step=10, chunks=(0,), run=run)
    expected = masked_attention(q[1:], k[:1], v[:1], HEADS, key_mask[None], query_mask[None])
    torch.testing.assert_close(out[1:], expected)
    other_run = self_attn(engine, q, k, v, step=10, chunks=(0,))
    stale = self_attn(engine, q, k, v, step=11, chunks=(0,), run=run)
    plain_mutual = apply_probs(attention_probs(q[1:], k[:1], HEADS), v[:1])
    torch.testing.assert_close(stale[1:], plain_mutual)
    torch.testing.assert_close(other_run[1:], plain_mutual)  # another run has no maps of its own yet


def test_bad_settings_name_the_input():
    layers = [layer(i) for i in range(16)]
    with pytest.raises(ValueError, match="start_layer: the model has 16"):
        MutualSelfAttention(start_layer=16).check_sites(layers)
    with pytest.raises(ValueError, match="mask: 32x32 does not match the image"):
        MutualSelfAttention(mask=torch.ones(32, 32)).check_run(edit_run(50, (1, 4, 8, 8)))
    MutualSelfAttention(mask=torch.ones(64, 64)).check_run(edit_run(50, (1, 4, 8, 8)))
    with pytest.raises(ValueError, match="start_step"):
        MutualSelfAttention(start_step=2.0)


def test_a_model_without_self_attention_from_the_start_layer_is_refused():
    cross_only = [TransformerLayer("output", i, 0, i, 0, self_attention=False, cross_attention=True)
                  for i in range(16)]
    with pytest.raises(ValueError, match="^model: no self-attention layers"):
        MutualSelfAttention().check_sites(cross_only)
