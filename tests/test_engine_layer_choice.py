"""Each engine chooses its layers from the UNet's structure: SD1.5's reference choice, and the same rules
on an SDXL-style layout (SPEC §4). The family-default choices are read from the functions the nodes call
(``pnp_sites``, ``auto_start_layer``), so they are what a user of the node gets."""

from __future__ import annotations

import pytest
import torch
from unet_standins import sd15_like, sdxl_like

from spdinv_pack.attention_patches.families import FAMILIES
from spdinv_pack.attention_patches.mutual_self_attention import MutualSelfAttention, auto_start_layer
from spdinv_pack.attention_patches.plug_and_play import PlugAndPlay, pnp_attention_layers, pnp_sites
from spdinv_pack.attention_patches.prompt_to_prompt import PromptToPrompt, ReplaceMapping
from spdinv_pack.attention_patches.unet_layers import (
    decoder_stage_at_level,
    resblock_output_path,
    transformer_layers,
)


def family(name):
    return next(f for f in FAMILIES if f.name == name)


def controlled(engine, layers, kind):
    return [layer for layer in layers if kind in engine.controls(layer)]


def test_sd15_gets_the_reference_layers():
    layers = transformer_layers(sd15_like())
    p2p = PromptToPrompt(ReplaceMapping(torch.eye(77)))
    assert len(controlled(p2p, layers, "attn2")) == 16 and len(controlled(p2p, layers, "attn1")) == 11
    assert [(la.block, la.block_id) for la in layers if la.level == 2] == [
        ("input", 7), ("input", 8), ("output", 3), ("output", 4), ("output", 5)]
    masa = MutualSelfAttention(start_layer=10)
    masa.check_sites(layers)
    assert [la.block_id for la in controlled(masa, layers, "attn1")] == list(range(6, 12))
    pnp = PlugAndPlay(resblock_output_path(sd15_like(), 1, 1), qk_layers=pnp_attention_layers(layers))
    pnp.check_sites(layers)
    assert pnp.feature_path == "output_blocks.4.0.out_layers.3"
    assert sorted(key[1] for key in pnp.qk_layers) == list(range(4, 12))


def test_sdxl_layout_gets_the_same_rules():
    unet = sdxl_like()
    layers = transformer_layers(unet)
    assert len(layers) == 70
    assert {(la.block, la.block_id): la.level for la in layers if la.index == 0} == {
        ("input", 4): 1, ("input", 5): 1, ("input", 7): 2, ("input", 8): 2, ("middle", 0): 2,
        ("output", 0): 2, ("output", 1): 2, ("output", 2): 2, ("output", 3): 1, ("output", 4): 1, ("output", 5): 1}
    p2p = PromptToPrompt(ReplaceMapping(torch.eye(77)), self_min_level=family("SDXL").default("p2p_self_min_level"))
    assert len(controlled(p2p, layers, "attn1")) == 70
    path, qk_layers = pnp_sites(family("SDXL"), unet)
    assert path == "output_blocks.1.0.out_layers.3"
    assert len(qk_layers) == 26 and not any(key[1] == 0 for key in qk_layers)
    with pytest.raises(ValueError, match="the model has 70 transformer layers"):
        MutualSelfAttention(start_layer=70).check_sites(layers)


def test_masactrl_auto_start_is_sd15s_layer_and_a_third_into_sdxls_decoder():
    assert auto_start_layer(family("SD1.x"), sd15_like()) == 10
    sdxl = sdxl_like()
    start = auto_start_layer(family("SDXL"), sdxl)
    controlled_layers = [la for la in transformer_layers(sdxl) if la.order >= start]
    assert start == 46 and len(controlled_layers) == 24
    assert {la.block for la in controlled_layers} == {"output"}


def test_pnp_node_choice_is_the_reference_block_on_sd15():
    path, qk_layers = pnp_sites(family("SD1.x"), sd15_like())
    assert path == "output_blocks.4.0.out_layers.3"
    assert sorted(key[1] for key in qk_layers) == list(range(4, 12))


def test_pnp_feature_block_sits_at_a_32nd_of_the_image_on_every_family():
    sd15, sdxl = sd15_like(), sdxl_like()
    assert resblock_output_path(sd15, decoder_stage_at_level(sd15, 2), 1) == "output_blocks.4.0.out_layers.3"
    assert resblock_output_path(sdxl, decoder_stage_at_level(sdxl, 2), 1) == "output_blocks.1.0.out_layers.3"
    with pytest.raises(ValueError, match="no decoder stage at 1/256"):
        decoder_stage_at_level(sdxl, 5)
