"""UNet calls without the source's unconditional rows (no ComfyUI): the layout of such a call, and every
engine giving the kept rows exactly what it gives them in the full call, whose dropped rows repeat the
conditional chunk's source rows."""

from __future__ import annotations

import pytest
import torch
from engine_calls import attention_call, edit_run

from spdinv_pack.attention_patches.mutual_self_attention import AutoMask, MutualSelfAttention
from spdinv_pack.attention_patches.plug_and_play import PlugAndPlay
from spdinv_pack.attention_patches.prompt_to_prompt import LocalBlend, PromptToPrompt, ReplaceMapping
from spdinv_pack.attention_patches.run import EditRun
from spdinv_pack.attention_patches.unet_layers import TransformerLayer
from spdinv_pack.spdinv.branches import BranchLayout, Chunks

HEADS, DIM, TOKENS, IMAGES = 2, 4, 5, 2


def layer(order: int = 12, level: int = 2) -> TransformerLayer:
    return TransformerLayer("output", 6, 0, order, level, self_attention=True, cross_attention=True)


@pytest.mark.parametrize("kinds,cond,uncond,sources,targets", [
    ([0, 1], slice(0, 4), slice(4, 6), [0, 1, 0, 1], [2, 3, 4, 5]),
    ([1, 0], slice(2, 6), slice(0, 2), [2, 3, 2, 3], [0, 1, 4, 5]),
], ids=["cond-first", "uncond-first"])
def test_a_shared_source_call_has_target_rows_only_in_its_unconditional_chunk(kinds, cond, uncond, sources,
                                                                                targets):
    layout = BranchLayout.of_call(6, Chunks(kinds, shared_source=True), "test")
    assert (layout.images, layout.rows) == (2, 6)
    assert layout.cond_chunks() == [cond] and layout.uncond_chunks() == [uncond]
    assert layout.source_rows().tolist() == sources and layout.target_rows().tolist() == targets
    t = torch.arange(6.0)
    expected = t.clone()
    expected[targets] = t[sources]
    assert torch.equal(layout.source_to_target(t), expected)


def test_without_a_conditional_chunk_there_is_no_source_to_share():
    layout = BranchLayout.of_call(4, Chunks([1], shared_source=True), "test")
    assert (layout.images, layout.shared_source) == (2, False)
    with pytest.raises(ValueError, match="Edit Sampler"):
        BranchLayout.of_call(5, Chunks([0, 1], shared_source=True), "P2P")
    assert Chunks([0, 1]) == (0, 1) and list(Chunks([1, 0], True)) == [1, 0]


def full_and_shared(nq: int, nk: int, seed: int, kinds=(0, 1)):
    """q, k, v of a full call ``kinds`` (each chunk ``[source, target]``, the unconditional chunk's source rows
    equal to the conditional chunk's) and the row indices a shared-source call keeps, in order."""
    g = torch.Generator().manual_seed(seed)
    full = BranchLayout.of_call(2 * IMAGES * len(kinds), list(kinds), "test")
    tensors = [torch.randn(full.rows, n, HEADS * DIM, generator=g) for n in (nq, nk, nk)]
    cond = full.cond_chunks()[0]
    keep = []
    for i, kind in enumerate(kinds):
        rows = full.chunk(i)
        if kind == 0:
            keep += range(rows.start, rows.stop)
        else:
            for t in tensors:
                t[rows.start:rows.start + IMAGES] = t[cond.start:cond.start + IMAGES]
            keep += range(rows.start + IMAGES, rows.stop)
    return tensors, torch.tensor(keep)


def same_on_kept_rows(method, nq: int, nk: int, seed: int, kinds=(0, 1)) -> None:
    (q, k, v), keep = full_and_shared(nq, nk, seed, kinds)
    full = method(q, k, v, list(kinds), False)
    shared = method(q[keep], k[keep], v[keep], list(kinds), True)
    torch.testing.assert_close(shared, full[keep], rtol=1e-5, atol=1e-6)


def hook(engine, kind: str, run: EditRun):
    """``method(q, k, v, chunks, shared_source)``: the engine's attention at step 0 of ``run``."""
    return lambda q, k, v, c, shared: engine.attention(attention_call(kind, q, k, v, HEADS, layer(), run, 0, c, shared,
                                                                      spatial=(3, 3)))


@pytest.mark.parametrize("kinds", [(0, 1), (1, 0)], ids=["cond-first", "uncond-first"])
def test_p2p_gives_the_kept_rows_what_the_full_call_gives_them(kinds):
    p2p = PromptToPrompt(ReplaceMapping(torch.eye(TOKENS).roll(1, 0)), cross_fraction=1.0, self_fraction=1.0,
                         blend=LocalBlend((1,), (2,)))
    same_on_kept_rows(hook(p2p, "cross", edit_run(10)), 9, TOKENS, 1, kinds)
    same_on_kept_rows(hook(p2p, "self", edit_run(10)), 9, 9, 2, kinds)


@pytest.mark.parametrize("masks", ["none", "mask", "auto"])
def test_masactrl_gives_the_kept_rows_what_the_full_call_gives_them(masks):
    mask = torch.zeros(3, 3)
    mask[1:, 1:] = 1
    masa = MutualSelfAttention(start_step=0.0, start_layer=0, mask=mask if masks == "mask" else None,
                               auto=AutoMask((1,), (2,), threshold=0.3) if masks == "auto" else None)
    run = edit_run(10, (IMAGES, 4, 3, 3))
    if masks == "auto":  # this step's maps, recorded from the conditional chunk of a full call
        (q, k, v), _ = full_and_shared(9, TOKENS, 3)
        hook(masa, "cross", run)(q, k, v, [0, 1], False)
    same_on_kept_rows(hook(masa, "self", run), 9, 9, 4)


def test_pnp_gives_the_kept_rows_what_the_full_call_gives_them():
    pnp = PlugAndPlay("x", feature_fraction=1.0, attention_fraction=1.0, qk_layers=frozenset({layer().key}))
    run = edit_run(10)
    same_on_kept_rows(hook(pnp, "self", run), 9, 9, 5)
    same_on_kept_rows(lambda q, k, v, c, shared: pnp.inject_features(q, run, 0, Chunks(c, shared)), 9, 9, 6)
