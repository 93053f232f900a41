"""Layer discovery from a UNet's structure and P2P patch registration on a ModelPatcher stand-in.

The stand-ins mimic the parts of ComfyUI's openaimodel UNet and ModelPatcher these modules read (module
names and the attn replace API); the real ones are exercised by the host tests.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from engine_calls import FakePatcher
from torch import nn
from unet_standins import sd15_like

from spdinv_pack.attention_patches.prompt_to_prompt import PromptToPrompt, ReplaceMapping
from spdinv_pack.attention_patches.registration import ENGINE_KEY, AttentionPatch, attach_engine, engine_of
from spdinv_pack.attention_patches.unet_layers import transformer_layers


def test_layers_come_in_forward_order_with_their_resolution_level():
    layers = transformer_layers(sd15_like())
    assert len(layers) == 16
    assert [layer.order for layer in layers] == list(range(16))
    assert [(layer.block, layer.block_id) for layer in layers[:7]] == [
        ("input", 1), ("input", 2), ("input", 4), ("input", 5), ("input", 7), ("input", 8), ("middle", 0)]
    assert [layer.level for layer in layers] == [0, 0, 1, 1, 2, 2, 3, 2, 2, 2, 1, 1, 1, 0, 0, 0]


def test_a_model_without_unet_blocks_is_refused():
    with pytest.raises(ValueError, match="SD1.x"):
        transformer_layers(nn.Linear(2, 2))


def engine() -> PromptToPrompt:
    return PromptToPrompt(ReplaceMapping(torch.eye(77)), self_min_level=1)


def attach_p2p(model, p2p, attend):
    return attach_engine(model, p2p, attend, "diffusion_model_wrapper")


def test_p2p_patches_every_cross_attention_and_self_attention_at_level_one_and_below_on_a_clone():
    base = FakePatcher(sd15_like())
    patched = attach_p2p(base, engine(), attend=lambda q, k, v, heads: q)
    assert base.model_options == {"transformer_options": {}}
    replace = patched.model_options["transformer_options"]["patches_replace"]
    assert len(replace["attn2"]) == 16
    assert len(replace["attn1"]) == 11  # 32x32, 16x16 and 8x8 at 512²: input 4,5,7,8, middle, output 3..8
    assert ("input", 1, 0) not in replace["attn1"] and ("output", 11, 0) not in replace["attn1"]
    assert engine_of(patched) is patched.model_options["transformer_options"][ENGINE_KEY]


def test_clones_share_one_immutable_engine_and_its_patches_hold_no_run_state():
    patched = attach_p2p(FakePatcher(sd15_like()), engine(), attend=lambda q, k, v, heads: q)
    again = patched.clone()  # as ComfyUI >= 0.14 clones: dicts and lists copied, patch objects shared
    mine = engine_of(again)
    assert mine is engine_of(patched)
    patches = again.model_options["transformer_options"]["patches_replace"]
    assert all(p.engine is mine for kind in ("attn1", "attn2") for p in patches[kind].values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        mine.cross_fraction = 0.1
    assert all(set(vars(p)) == {"engine", "site", "inner", "kind", "host"} for p in patches["attn2"].values())


def test_attention_replaced_by_another_node_becomes_the_inner_attention_and_engines_do_not_stack():
    base = FakePatcher(sd15_like())
    calls = []

    def theirs(q, k, v, extra_options):
        calls.append(extra_options["block"])
        return q + 1.0

    base.set_model_attn2_replace(theirs, "output", 3, 0)
    patched = attach_p2p(base, engine(), attend=lambda q, k, v, heads: q)
    ours = patched.model_options["transformer_options"]["patches_replace"]["attn2"][("output", 3, 0)]
    assert isinstance(ours, AttentionPatch) and ours.inner is theirs
    q = torch.zeros(2, 4, 8)
    options = {"activations_shape": (2, 8, 2, 2), "n_heads": 2, "cond_or_uncond": [0], "block": ("output", 3)}
    assert torch.equal(ours(q, q, q, options), q + 1.0)  # outside a run the engine is plain: theirs runs
    assert calls == [("output", 3)]
    others = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert all(p.inner is None for key, p in others.items() if key != ("output", 3, 0))
    with pytest.raises(ValueError, match="already carries"):
        attach_p2p(patched, engine(), attend=lambda q, k, v, heads: q)


def test_p2p_on_a_model_without_unet_attention_names_the_model_input():
    with pytest.raises(ValueError, match="^model: .*SD1.x"):
        attach_p2p(FakePatcher(nn.Linear(2, 2)), engine(), attend=lambda q, k, v, heads: q)
