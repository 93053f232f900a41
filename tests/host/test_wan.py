"""Wan 2.1 inside real ComfyUI: a random Wan 2.1 T2V-class diffusion model (width 128, one head, 2 blocks; ComfyUI
reads width, depth and FFN width from the keys) that the diffusion-model loader detects as ``WAN21_T2V`` (shift 8),
a 9-frame 64² clip's latent ``[1, 16, 3, 8, 8]`` inverted and edited with mutual attention on the blocks'
self-attention (``dit`` block patches, on 0.33 and 0.3.64 alike).

Random weights stand in for Wan 2.1 T2V 1.3B, and random encodings in umT5-XXL's shape (512 tokens of 4096) for its
text encoder. The clip's 3 latent frames of 4×4 patches make 48 tokens, which every block's self-attention sees
together; its cross-attention sees the prompt's 512.
"""

from __future__ import annotations

import copy

import pytest
import torch

from spdinv_pack.attention_patches.families import Family
from spdinv_pack.attention_patches.registration import SelfAttentionBlockPatch
from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.tests.host.factory import FLOW_TEST_MODELS, wan21_model_path
from spdinv_pack.tests.host.pack_calls import (
    check_local_blend,
    diffusion_model,
    edit,
    edit_region,
    invert,
    mutual,
    reconstruction_psnr,
)

WAN = FLOW_TEST_MODELS["wan"]
OVERRIDE = "optimized_attention_override"
CLIP_TOKENS, TEXT_TOKENS = 3 * 4 * 4, 512
STEPS = 6
prompt = WAN.prompt
"""A stand-in for a Wan prompt's CONDITIONING (umT5-XXL's 512 tokens of 4096)."""


@pytest.fixture(scope="module")
def wan(comfy_env):
    """The random Wan 2.1 T2V-class MODEL as ComfyUI's diffusion-model loader loads it."""
    with diffusion_model(wan21_model_path()) as model:
        yield model


@pytest.fixture(scope="module")
def clip_latent():
    """A 9-frame 64² clip's Wan latent (16 channels, 3 latent frames of 8×8), smooth in space and time."""
    return WAN.photo(64)


@pytest.fixture(scope="module")
def scene(run_node, pack_nodes, wan, clip_latent):
    """The clip inverted in 6 steps with prompt 0, the options the base MODEL had, and a plain edit to prompt 1
    (CFG 5, Wan's usual, the source prompt as negative)."""
    options = copy.deepcopy(wan.model_options)
    source, target = prompt(0), prompt(1)
    inversion, _ = invert(run_node, pack_nodes, wan, source, clip_latent, steps=STEPS, rel_tol=0.01)
    plain = edit(run_node, pack_nodes, wan, inversion, source, target, cfg=5.0)
    return inversion, source, target, options, plain


def test_the_loader_detects_wan_and_spdinv_reconstructs_a_clip_far_better_than_plain_flow_inversion(
        run_node, pack_nodes, wan, clip_latent):
    assert type(wan.model.model_config).__name__ == "WAN21_T2V" and Family.of(wan).name == "Wan"
    assert wan.get_model_object("model_sampling").shift == 8.0
    assert clip_latent["samples"].shape == (1, 16, 3, 8, 8)
    psnr = reconstruction_psnr(run_node, pack_nodes, wan, prompt(0), clip_latent, 10, "Wan (9 frames, 64²)")
    assert psnr["spdinv"] >= psnr["ddim"] + 10


def test_self_attention_of_every_frame_is_shared_from_the_start_block_and_cross_attention_is_not(
        run_node, pack_nodes, wan, scene):
    inversion, source, target, _, _ = scene
    calls, running = [], {}

    def earlier(func, q, k, v, *rest, **kwargs):  # another node's override, run under the engine's
        calls.append(dict(block=running["block"], k=k.clone(), v=v.clone()))
        return func(q, k, v, *rest, **kwargs)

    chained = wan.clone()
    chained.model_options.setdefault("transformer_options", {})[OVERRIDE] = earlier
    patched = mutual(run_node, pack_nodes, chained)
    replace = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert sorted(replace) == [("double_block", 1)] and isinstance(replace[("double_block", 1)],
                                                                  SelfAttentionBlockPatch)
    blocks = wan.get_model_object("diffusion_model").blocks
    handles = [block.register_forward_pre_hook(lambda _m, _a, i=i: running.update(block=i))
               for i, block in enumerate(blocks)]  # 0.3.64 does not name the block in the options
    try:
        edit(run_node, pack_nodes, patched, inversion, source, target, cfg=1.0)
    finally:
        for handle in handles:
            handle.remove()
    assert len(calls) == 2 * 2 * STEPS  # two blocks, self- then cross-attention, one call a step at CFG 1
    by_kind = {"self": [c for c in calls if c["k"].shape[1] == CLIP_TOKENS],
               "cross": [c for c in calls if c["k"].shape[1] == TEXT_TOKENS]}
    assert len(by_kind["self"]) == len(by_kind["cross"]) == 2 * STEPS
    shared = [c for c in by_kind["self"] if c["block"] == 1]
    assert all(torch.equal(c["k"][1], c["k"][0]) and torch.equal(c["v"][1], c["v"][0]) for c in shared)  # rows:
    # source, target. Block 0 sees the rows' own latents (equal at the first step: the prompt enters at the
    # cross-attention)
    assert any(not torch.equal(c["k"][1], c["k"][0]) for c in by_kind["self"] if c["block"] == 0)
    assert all(not torch.equal(c["k"][1], c["k"][0]) for c in by_kind["cross"])  # each row its own prompt


def test_mutual_attention_edits_the_target_keeps_the_source_and_an_identity_edit_is_exact(
        run_node, pack_nodes, wan, scene):
    inversion, source, target, options, plain = scene
    patched = mutual(run_node, pack_nodes, wan)
    edited, recon, _ = edit(run_node, pack_nodes, patched, inversion, source, target, cfg=5.0)
    assert edited["samples"].shape == (1, 16, 3, 8, 8)
    assert not torch.equal(edited["samples"], plain[0]["samples"])
    assert torch.equal(recon["samples"], plain[1]["samples"])  # the source branch is untouched
    print(f"\n[host] Wan edit vs reconstruction: plain {latent_psnr(plain[0]['samples'], plain[1]['samples']):.2f} "
          f"dB, mutual attention {latent_psnr(edited['samples'], recon['samples']):.2f} dB")
    same, recon_same, _ = edit(run_node, pack_nodes, patched, inversion, source, source, cfg=5.0)
    assert torch.equal(same["samples"], recon_same["samples"])
    assert wan.model_options == options


def test_cancel_mid_edit_leaves_the_model_untouched_and_the_edit_runs_again(run_node, pack_nodes, wan, scene):
    import comfy.model_management as mm

    inversion, source, target, options, plain = scene
    calls = {"n": 0}

    def interrupting(apply_model, args):
        calls["n"] += 1
        if calls["n"] == 3:
            mm.interrupt_current_processing(True)
        return apply_model(args["input"], args["timestep"], **args["c"])

    wrapped = wan.clone()
    wrapped.set_model_unet_function_wrapper(interrupting)
    with pytest.raises(mm.InterruptProcessingException):
        edit(run_node, pack_nodes, mutual(run_node, pack_nodes, wrapped), inversion, source, target, cfg=5.0)
    assert calls["n"] == 3 and not mm.processing_interrupted()
    assert wan.model_options == options
    unet = wan.get_model_object("diffusion_model")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())
    again = edit(run_node, pack_nodes, wan, inversion, source, target, cfg=5.0)
    assert all(torch.equal(a["samples"], b["samples"]) for a, b in zip(again[:2], plain[:2], strict=True))


def test_with_a_mask_over_the_frames_the_edit_keeps_the_clip_outside_it(run_node, pack_nodes, wan, clip_latent,
                                                                          scene):
    """SPDInv Preserve Outside Edit with one mask per frame of the clip: the mask packed into latent frames as Wan's
    VAE packs frames; outside it the edit is the clip's latent, inside it edits."""
    inversion, source, target, _, plain = scene
    mask = torch.zeros(9, 64, 64)
    mask[4:, :, 32:] = 1.0  # the right half, from the 5th frame on: latent frames 1 and 2
    (rule,) = run_node(pack_nodes.SPDInvPreservation, mask=mask, threshold=0.5, estimate_for=0.25, grow=0).result
    patched = mutual(run_node, pack_nodes, wan)
    edited, recon, _, region = edit_region(run_node, pack_nodes, patched, inversion, source, target, cfg=5.0,
                                           preserve=rule)
    inside = torch.zeros(1, 16, 3, 8, 8, dtype=torch.bool)
    inside[:, :, 1:, :, 4:] = True
    assert region.shape == (3, 64, 64) and not region[0].any() and region[1:, :, 32:].all()
    assert (edited["samples"] - clip_latent["samples"])[~inside].abs().max() < 1e-5
    assert not torch.equal(edited["samples"][inside], recon["samples"][inside])
    (bad,) = run_node(pack_nodes.SPDInvPreservation, mask=mask[:5], threshold=0.5, estimate_for=0.25, grow=0).result
    with pytest.raises(ValueError, match="^preserve: mask: 5 frames cannot be matched to the clip's 3 latent frames"):
        edit(run_node, pack_nodes, patched, inversion, source, target, preserve=bad)


SOURCE_TEXT, TARGET_TEXT = "a cat walks on the grass", "a dog walks on the grass"


@pytest.fixture(scope="module")
def umt5():
    """A CLIP with ComfyUI's umT5 tokenizer classes (stand-in vocabulary and encodings, see ``UMT5ClipStandIn``)."""
    from spdinv_pack.tests.host.text_encoder_stand_in import UMT5ClipStandIn

    return UMT5ClipStandIn()


def p2p(run_node, pack_nodes, model, clip, source_text=SOURCE_TEXT, target_text=TARGET_TEXT, **kw):
    """SPDInv Prompt-to-Prompt on ``model``: (patched MODEL, source, target CONDITIONING)."""
    return run_node(pack_nodes.P2PAttentionControl, model=model, clip=clip, source_text=source_text,
                    target_text=target_text, **kw).result


@pytest.fixture(scope="module")
def p2p_scene(run_node, pack_nodes, wan, umt5, clip_latent):
    """The clip inverted in 6 steps with the source text's encoding."""
    _, source, _ = p2p(run_node, pack_nodes, wan, umt5)
    inversion, _ = invert(run_node, pack_nodes, wan, source, clip_latent, steps=STEPS, rel_tol=0.01)
    return inversion, source


def test_prompt_to_prompt_on_wan_edits_the_target_from_the_sources_maps_and_an_identity_edit_is_exact(
        run_node, pack_nodes, wan, umt5, p2p_scene):
    inversion, source = p2p_scene
    options = copy.deepcopy(wan.model_options)
    patched, source_p2p, target = p2p(run_node, pack_nodes, wan, umt5, mode="word swap")
    assert torch.equal(source_p2p[0][0], source[0][0]) and source[0][0].shape == (1, TEXT_TOKENS, 4096)
    edited, recon, attention = edit(run_node, pack_nodes, patched, inversion, source, target, cfg=5.0)
    plain, plain_recon, _ = edit(run_node, pack_nodes, wan, inversion, source, target, cfg=5.0)
    assert edited["samples"].shape == (1, 16, 3, 8, 8) and torch.isfinite(edited["samples"]).all()
    assert not torch.equal(edited["samples"], recon["samples"])
    assert not torch.equal(edited["samples"], plain["samples"])  # the maps changed the edit
    print(f"\n[host] Wan P2P word swap: edit vs reconstruction {latent_psnr(edited['samples'], recon['samples']):.2f} "
          f"dB, plain edit {latent_psnr(plain['samples'], plain_recon['samples']):.2f} dB")
    assert attention.maps.shape == (2, 3 * 4, 4, TEXT_TOKENS)  # rows, frames·h, w, umT5 positions
    assert attention.first_token == 0 and attention.labels[1][1] == "dog"
    identity, _, _ = p2p(run_node, pack_nodes, wan, umt5, target_text=SOURCE_TEXT)
    same, same_recon, _ = edit(run_node, pack_nodes, identity, inversion, source, source, cfg=5.0)
    assert torch.equal(same["samples"], same_recon["samples"])
    assert wan.model_options == options


def test_prompt_to_prompt_on_wan_reweights_a_word_and_local_blend_keeps_the_reconstruction_outside_its_frames_mask(
        run_node, pack_nodes, wan, umt5, p2p_scene):
    inversion, source = p2p_scene
    _, _, target = p2p(run_node, pack_nodes, wan, umt5)
    plain = edit(run_node, pack_nodes, p2p(run_node, pack_nodes, wan, umt5)[0], inversion, source, target, cfg=5.0)
    reweighted = edit(run_node, pack_nodes, p2p(run_node, pack_nodes, wan, umt5, reweight="dog:4")[0], inversion,
                      source, target, cfg=5.0)
    assert not torch.equal(reweighted[0]["samples"], plain[0]["samples"])
    with pytest.raises(ValueError, match="^reweight: the phrase 'horse' was not found"):
        p2p(run_node, pack_nodes, wan, umt5, reweight="horse:2")
    blended = p2p(run_node, pack_nodes, wan, umt5, blend_source_words="cat", blend_target_words="dog",
                  blend_threshold=0.5, blend_start=0.0)[0]
    edited, recon, attention = edit(run_node, pack_nodes, blended, inversion, source, target, cfg=5.0)
    assert attention.blend_mask.shape == (1, 1, 3, 8, 8)  # one mask per latent frame
    coverage = check_local_blend(edited, recon, attention)
    print(f"[host] Wan P2P local blend: mask covers {coverage:.0%} of the clip's latent")
    (maps, mask) = run_node(pack_nodes.SPDInvAttentionPreview, attention=attention, image_index=0,
                            panel_size=32).result
    assert maps.shape[0] == 1 and maps.shape[-1] == 3 and mask.shape == (1, 3 * 64, 64)  # frames stacked
