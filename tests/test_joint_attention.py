"""MM-DiT mutual attention (``attention_patches/joint_attention.py``) on plain tensors: which rows and tokens
the target takes from the source, and when."""

from __future__ import annotations

import pytest
import torch
from engine_calls import edit_run

from spdinv_pack.attention_patches.attention_call import AttentionCall
from spdinv_pack.attention_patches.dit_blocks import DiTBlock, block_from
from spdinv_pack.attention_patches.joint_attention import JointMutualAttention
from spdinv_pack.spdinv.branches import Chunks

TEXT, IMAGE = 3, 5
RUN = edit_run(10)


def seen(q, k, v):
    """An 'attention' that returns what it was given, to inspect the keys and values."""
    return torch.stack([k, v])


def qkv(rows: int, token_dim: int = 1):
    shape = (rows, TEXT + IMAGE, 4) if token_dim == 1 else (rows, 2, TEXT + IMAGE, 2)
    return (torch.randn(shape) for _ in range(3))


def joint(engine, q, k, v, step, chunks, block, token_dim=1, run=RUN, image=(TEXT, TEXT + IMAGE)):
    """One joint attention call at ``block`` (its order) of ``run``, its image tokens at ``image``."""
    call = AttentionCall(q, k, v, 2, "joint", DiTBlock("double_block", block, block), run, chunks, seen,
                         image=image, token_dim=token_dim, step=step)
    return engine.attention(call)


@pytest.mark.parametrize("token_dim", [1, 2])
def test_target_image_tokens_take_the_source_keys_and_values_in_every_chunk(token_dim):
    engine = JointMutualAttention(0.2, 1)
    q, k, v = qkv(4, token_dim)  # chunks (cond, uncond), each [source, target]
    out_k, out_v = joint(engine, q, k, v, 5, Chunks([0, 1]), 2, token_dim)
    image = [slice(None)] * token_dim + [slice(TEXT, None)]
    text = [slice(None)] * token_dim + [slice(0, TEXT)]
    for source, target in ((0, 1), (2, 3)):
        for got, given in ((out_k, k), (out_v, v)):
            assert torch.equal(got[target][tuple(image[1:])], given[source][tuple(image[1:])])
            assert torch.equal(got[target][tuple(text[1:])], given[target][tuple(text[1:])])  # own prompt kept
            assert torch.equal(got[source], given[source])


def test_values_only_keeps_the_targets_keys():
    engine = JointMutualAttention(0.0, 0, share="values")
    q, k, v = qkv(2)
    out_k, out_v = joint(engine, q, k, v, 0, Chunks([0]), 0)
    assert torch.equal(out_k, k) and torch.equal(out_v[1, TEXT:], v[0, TEXT:])


def test_shared_source_chunk_takes_the_conditional_source_rows():
    engine = JointMutualAttention(0.0, 0)
    q, k, v = qkv(3)  # cond [source, target] + uncond [target] only
    out_k, _ = joint(engine, q, k, v, 0, Chunks([0, 1], shared_source=True), 0)
    assert torch.equal(out_k[2, TEXT:], k[0, TEXT:]) and torch.equal(out_k[2, :TEXT], k[2, :TEXT])


def test_before_the_start_step_in_earlier_blocks_and_outside_a_run_attention_is_plain():
    engine = JointMutualAttention(0.5, 2)
    q, k, v = qkv(2)
    assert torch.equal(joint(engine, q, k, v, None, Chunks([0]), 3, run=None)[0], k)  # no run
    assert torch.equal(joint(engine, q, k, v, 4, Chunks([0]), 3)[0], k)  # step 4 < 5
    assert torch.equal(joint(engine, q, k, v, 5, Chunks([0]), 1)[0], k)  # block 1 < 2
    assert not torch.equal(joint(engine, q, k, v, 5, Chunks([0]), 2)[0], k)


def test_image_only_attention_shares_all_its_tokens():
    engine = JointMutualAttention(0.0, 0)
    q, k, v = (t[:, TEXT:] for t in qkv(2))
    out_k, _ = joint(engine, q, k, v, 0, Chunks([0]), 0, image=(0, IMAGE))  # as the override gives it
    assert torch.equal(out_k[1], k[0])


def test_block_choice_by_relative_depth_and_bad_inputs_name_the_input():
    assert [block_from(d, 57) for d in (0.0, 0.5, 0.65, 1.0)] == [0, 28, 37, 56]
    with pytest.raises(ValueError, match="start_block"):
        block_from(1.5, 4)
    with pytest.raises(ValueError, match="share"):
        JointMutualAttention(0.1, 0, share="queries")
    with pytest.raises(ValueError, match="start_step"):
        JointMutualAttention(2.0, 0)
    with pytest.raises(ValueError, match="start_block: the model has 4 joint blocks"):
        JointMutualAttention(0.1, 4).check_sites([DiTBlock("double_block", i, i) for i in range(4)])
