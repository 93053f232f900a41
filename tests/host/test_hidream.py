"""HiDream (I1) inside real ComfyUI (0.33 and 0.3.64): inverted, and edited with mutual attention installed as one
model-wide attention override (HiDream's blocks have neither ComfyUI's pre-attention hook nor ``dit`` block patches,
nor a block index in their options: the pack's call wrapper names the running block).

ComfyUI's loader cannot build a small HiDream: its detection hard-codes everything (16 double- and 32 single-stream
blocks of 20 heads, 48 Llama layers), 17 B parameters. The model here is built bypassing detection:
``comfy.supported_models.HiDream(unet_config).get_model({})`` with the detected config reduced to 2 double- and 2
single-stream blocks of one head of 128 (the RoPE axes' 64 + 32 + 32) reading 4 of Llama's layers, random weights, in
a ModelPatcher as the loader makes one; ``Family.of`` sees ComfyUI's real ``HiDream`` config class. The text inputs
have their real shapes, random values: T5-XXL ``[1, 8, 4096]``, all 32 Llama-3.1 layers ``[1, 32, 8, 4096]``, the
CLIP-L ⊕ CLIP-G pooled vector ``[1, 2048]``. The 12×12 latent makes 36 image tokens, the first of every call.
"""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.attention_patches.families import Family
from spdinv_pack.attention_patches.registration import ModelAttentionOverride
from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.tests.host.factory import FLOW_TEST_MODELS
from spdinv_pack.tests.host.pack_calls import (
    bypassed_model,
    edit,
    mutual,
    override_scene,
    probed_edit,
    reconstruction_psnr,
)

OVERRIDE = "optimized_attention_override"
HIDREAM_TEST = FLOW_TEST_MODELS["hidream"]
IMAGE, TEXT = 36, 8 + 8 + 8
"""6×6 image tokens first; then T5 and the last Llama layer (and, in a double block's text stream or a single block,
that block's Llama layer)."""
BLOCKS = {"double_stream_blocks.0": "double 0", "double_stream_blocks.1": "double 1",
          "single_stream_blocks.0": "single 0", "single_stream_blocks.1": "single 1"}
STEPS = 6


@pytest.fixture(scope="module")
def hidream(comfy_env):
    """The reduced random HiDream MODEL."""
    with bypassed_model(*HIDREAM_TEST.bypass) as model:
        yield model


@pytest.fixture(scope="module")
def photo_latent():
    """A 96² photo's HiDream latent (16 channels, 12×12), smooth as image latents are."""
    return HIDREAM_TEST.photo(96)


prompt = HIDREAM_TEST.prompt
"""A stand-in for a HiDream prompt's CONDITIONING: T5-XXL tokens, every Llama-3.1 layer, the pooled CLIPs."""


@pytest.fixture(scope="module")
def scene(run_node, pack_nodes, hidream, photo_latent):
    """The latent inverted in 6 steps with the source prompt, the options the base MODEL had, and its plain edit."""
    return override_scene(run_node, pack_nodes, hidream, prompt, photo_latent, STEPS)


@pytest.fixture(scope="module")
def probed(run_node, pack_nodes, hidream, scene):
    """An edit (CFG 1) with the engine at its defaults on a clone that carries another node's override, every
    attention call recorded (:class:`AttentionProbe`)."""
    return probed_edit(run_node, pack_nodes, hidream, scene, BLOCKS)


def test_hidream_is_detected_and_spdinv_reconstructs_far_better_than_plain_flow_inversion(
        run_node, pack_nodes, hidream, photo_latent):
    assert type(hidream.model.model_config).__name__ == "HiDream" and Family.of(hidream).name == "HiDream"
    for steps in (10, 28):
        psnr = reconstruction_psnr(run_node, pack_nodes, hidream, prompt(0), photo_latent, steps, "HiDream")
        assert psnr["spdinv"] >= psnr["ddim"] + 10


def test_the_engine_is_one_model_wide_override_chained_onto_another_nodes(probed):
    calls, installed, _, _, earlier = probed
    override = installed[OVERRIDE]
    assert isinstance(override, ModelAttentionOverride) and override.previous == earlier
    assert override.engine.start_block == 3  # depth 0.65 of 4 blocks: the last single-stream block
    assert not {"patches", "patches_replace"} & set(installed)
    assert len(calls) == 4 * STEPS  # one attention per block, one model call per step at CFG 1
    assert [c["block"] for c in calls[:4]] == list(BLOCKS.values())
    assert all("k_out" in call for call in calls)  # the other node's override saw every attention


def test_mutual_attention_shares_only_the_image_tokens_of_the_blocks_from_the_start_block(probed):
    calls, *_ = probed
    shared = [c for c in calls if c["block"] == "single 1"]
    assert len(shared) == STEPS and all(c["k_in"].shape[1] == IMAGE + TEXT for c in shared)
    for c in shared:  # q/k/v [rows (source, target), tokens, heads·dim], image tokens first
        for given, got in ((c["k_in"], c["k_out"]), (c["v_in"], c["v_out"])):
            assert torch.equal(got[1, :IMAGE], given[0, :IMAGE])  # the target's image tokens: the source's
            assert torch.equal(got[1, IMAGE:], given[1, IMAGE:])  # its own text tokens
            assert torch.equal(got[0], given[0])
    assert any(not torch.equal(c["k_in"][1, :IMAGE], c["k_in"][0, :IMAGE]) for c in shared)  # not vacuous
    assert all(not torch.equal(c["k_in"][1, IMAGE:], c["k_in"][0, IMAGE:]) for c in shared)
    others = [c for c in calls if c["block"] != "single 1"]
    assert len(others) == 3 * STEPS
    assert all(torch.equal(c["k_out"], c["k_in"]) and torch.equal(c["v_out"], c["v_in"]) for c in others)


def test_the_edit_changes_the_target_and_an_identity_edit_is_exact(run_node, pack_nodes, hidream, scene, probed):
    inversion, source, _, _, plain = scene
    _, _, edited, recon, _ = probed
    assert not torch.equal(edited["samples"], plain[0]["samples"])
    assert torch.equal(recon["samples"], plain[1]["samples"])  # the source branch is untouched
    print(f"\n[host] HiDream edit vs reconstruction: plain {latent_psnr(plain[0]['samples'], plain[1]['samples']):.2f}"
          f" dB, mutual attention {latent_psnr(edited['samples'], recon['samples']):.2f} dB")
    patched = mutual(run_node, pack_nodes, hidream)
    same, recon_same, _ = edit(run_node, pack_nodes, patched, inversion, source, source, cfg=1.0)
    assert torch.equal(same["samples"], recon_same["samples"])


def test_the_base_model_is_untouched_after_an_edit_and_after_an_error_mid_run(run_node, pack_nodes, hidream, scene):
    inversion, source, target, options, plain = scene
    calls = {"n": 0}

    def failing(func, q, k, v, *rest, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4 * 2 + 3:  # the third step's first single-stream block
            raise RuntimeError("stopped mid-run")
        return func(q, k, v, *rest, **kwargs)

    chained = hidream.clone()
    chained.model_options.setdefault("transformer_options", {})[OVERRIDE] = failing
    with pytest.raises(RuntimeError, match="stopped mid-run"):
        edit(run_node, pack_nodes, mutual(run_node, pack_nodes, chained), inversion, source, target, cfg=1.0)
    assert hidream.model_options == options
    unet = hidream.get_model_object("diffusion_model")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())
    again = edit(run_node, pack_nodes, hidream, inversion, source, target, cfg=1.0)
    assert all(torch.equal(a["samples"], b["samples"]) for a, b in zip(again[:2], plain[:2], strict=True))


def test_a_reference_image_hidream_e1_concatenates_is_refused_by_name(run_node, pack_nodes, hidream, scene,
                                                                        photo_latent):
    inversion, source, target, options, _ = scene

    def with_reference(cond: list) -> list:  # what InstructPixToPixConditioning adds for HiDream E1
        return [[c, {**extra, "concat_latent_image": photo_latent["samples"]}] for c, extra in cond]

    with pytest.raises(ValueError, match="^model: the model is called with image_cond .* SPDInv MM-DiT Mutual "
                                         "Attention node$"):
        edit(run_node, pack_nodes, mutual(run_node, pack_nodes, hidream), inversion, with_reference(source),
             with_reference(target), cfg=1.0)
    assert hidream.model_options == options
