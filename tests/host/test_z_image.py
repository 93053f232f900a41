"""Z-Image inside real ComfyUI 0.33: inverted, and edited with mutual attention installed as one model-wide attention
override (Z-Image's layers have neither ComfyUI's pre-attention hook nor ``dit`` block patches).

ComfyUI's loader cannot build a small Z-Image: its detection takes a model for Z-Image only at width 3840 (30 heads,
two noise and two context refiners), 909 M parameters with a single layer. The model here is built bypassing
detection: ``comfy.supported_models.ZImage(unet_config).get_model({})`` with the detected Z-Image config reduced to
width 256 (two heads of 128, the RoPE axes' 32 + 48 + 48), 2 layers and 1 refiner of each kind, random weights, in a
ModelPatcher as the loader makes one; ``Family.of`` sees ComfyUI's real ``ZImage`` config class. Random Qwen3-4B-wide
encodings (2560, 8 tokens; ComfyUI derives ``num_tokens`` from them) stand in for its text encoder. The 12×12 latent
makes 36 image tokens, padded to 64: the image tokens are not the last ones. ComfyUI 0.3.64 has no Z-Image: those
tests skip there. A reduced Lumina 2 (Z-Image's parent config, the same transformer without pad tokens) runs on both.
"""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.attention_patches.families import Family
from spdinv_pack.attention_patches.registration import ModelAttentionOverride
from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.tests.host.factory import FLOW_TEST_MODELS
from spdinv_pack.tests.host.factory.cache import SEED
from spdinv_pack.tests.host.pack_calls import (
    AttentionProbe,
    bypassed_model,
    edit,
    invert,
    mutual,
    override_scene,
    probed_edit,
    reconstruction_psnr,
)

OVERRIDE = "optimized_attention_override"
Z_IMAGE_TEST = FLOW_TEST_MODELS["z-image"]
CAPTION, IMAGE, TOKENS = 32, (32, 32 + 36), 32 + 64
"""8 caption tokens padded to 32; 6×6 image tokens after them, padded to 64 (28 pad tokens last)."""
STEPS = 6


@pytest.fixture(scope="module")
def zimage(comfy_env):
    """The reduced random Z-Image MODEL."""
    import comfy.supported_models

    if not hasattr(comfy.supported_models, "ZImage"):
        pytest.skip("this ComfyUI has no Z-Image (0.3.64)")
    with bypassed_model(*Z_IMAGE_TEST.bypass) as model:
        yield model


@pytest.fixture(scope="module")
def photo_latent():
    """A 96² photo's Z-Image latent (16 channels, 12×12), smooth as image latents are."""
    return Z_IMAGE_TEST.photo(96)


prompt = Z_IMAGE_TEST.prompt
"""A stand-in for a Z-Image prompt's CONDITIONING (8 tokens of Qwen3-4B's width)."""


@pytest.fixture(scope="module")
def scene(run_node, pack_nodes, zimage, photo_latent):
    """The latent inverted in 6 steps with the source prompt, the options the base MODEL had, and its plain edit."""
    return override_scene(run_node, pack_nodes, zimage, prompt, photo_latent, STEPS)


@pytest.fixture(scope="module")
def probed(run_node, pack_nodes, zimage, scene):
    """An edit (CFG 1) with the engine at its defaults on a clone that carries another node's override, every
    attention call recorded (:class:`AttentionProbe`)."""
    return probed_edit(run_node, pack_nodes, zimage, scene, {"layers.0": "layer 0", "layers.1": "layer 1"})


def test_z_image_is_detected_and_spdinv_reconstructs_far_better_than_plain_flow_inversion(
        run_node, pack_nodes, zimage, photo_latent):
    assert type(zimage.model.model_config).__name__ == "ZImage" and Family.of(zimage).name == "Z-Image"
    for steps in (10, 28):
        psnr = reconstruction_psnr(run_node, pack_nodes, zimage, prompt(0), photo_latent, steps, "Z-Image")
        assert psnr["spdinv"] >= psnr["ddim"] + 10


def test_the_engine_is_one_model_wide_override_chained_onto_another_nodes(probed):
    calls, installed, _, _, earlier = probed
    override = installed[OVERRIDE]
    assert isinstance(override, ModelAttentionOverride) and override.engine.start_block == 1  # depth 0.5 of 2
    assert override.previous == earlier
    assert not {"patches", "patches_replace"} & set(installed)  # no hook, no block patch: the override alone
    assert len(calls) == 4 * STEPS  # context refiner, noise refiner, two layers: one model call per step at CFG 1
    assert all("k_out" in call for call in calls)  # the other node's override saw every attention


def test_mutual_attention_shares_only_the_image_tokens_of_the_layers_from_the_start_block(probed):
    calls, *_ = probed
    image = slice(*IMAGE)
    shared = [c for c in calls if c["block"] == "layer 1"]
    assert len(shared) == STEPS and all(c["k_in"].shape[2] == TOKENS for c in shared)
    for c in shared:  # q/k/v [rows (source, target), heads, tokens, dim]
        for given, got in ((c["k_in"], c["k_out"]), (c["v_in"], c["v_out"])):
            assert torch.equal(got[1, :, image], given[0, :, image])  # the target's image tokens: the source's
            assert torch.equal(got[1, :, :IMAGE[0]], given[1, :, :IMAGE[0]])  # its own caption tokens
            assert torch.equal(got[1, :, IMAGE[1]:], given[1, :, IMAGE[1]:])  # and its own pad tokens
            assert torch.equal(got[0], given[0])
    assert any(not torch.equal(c["k_in"][1, :, image], c["k_in"][0, :, image]) for c in shared)  # not vacuous
    assert all(not torch.equal(c["k_in"][1, :, :CAPTION], c["k_in"][0, :, :CAPTION]) for c in shared)
    earlier = [c for c in calls if c["block"] == "layer 0"]
    assert len(earlier) == STEPS
    assert all(torch.equal(c["k_out"], c["k_in"]) and torch.equal(c["v_out"], c["v_in"]) for c in earlier)


def test_the_refiners_are_not_touched(probed):
    calls, *_ = probed
    refiners = [c for c in calls if c["block"] is None]
    assert len(refiners) == 2 * STEPS
    assert {c["k_in"].shape[2] for c in refiners} == {CAPTION, 64}  # the context refiner's, the noise refiner's
    assert all(torch.equal(c["k_out"], c["k_in"]) and torch.equal(c["v_out"], c["v_in"]) for c in refiners)


def test_the_edit_changes_the_target_and_an_identity_edit_is_exact(run_node, pack_nodes, zimage, scene, probed):
    inversion, source, _, _, plain = scene
    _, _, edited, recon, _ = probed
    assert not torch.equal(edited["samples"], plain[0]["samples"])
    assert torch.equal(recon["samples"], plain[1]["samples"])  # the source branch is untouched
    print(f"\n[host] Z-Image edit vs reconstruction: plain {latent_psnr(plain[0]['samples'], plain[1]['samples']):.2f}"
          f" dB, mutual attention {latent_psnr(edited['samples'], recon['samples']):.2f} dB")
    patched = mutual(run_node, pack_nodes, zimage)
    same, recon_same, _ = edit(run_node, pack_nodes, patched, inversion, source, source, cfg=1.0)
    assert torch.equal(same["samples"], recon_same["samples"])


def test_the_base_model_is_untouched_after_an_edit_and_after_an_error_mid_run(run_node, pack_nodes, zimage, scene):
    inversion, source, target, options, plain = scene
    calls = {"n": 0}

    def failing(func, q, k, v, *rest, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4 * 2 + 3:  # the third step's first layer
            raise RuntimeError("stopped mid-run")
        return func(q, k, v, *rest, **kwargs)

    chained = zimage.clone()
    chained.model_options.setdefault("transformer_options", {})[OVERRIDE] = failing
    with pytest.raises(RuntimeError, match="stopped mid-run"):
        edit(run_node, pack_nodes, mutual(run_node, pack_nodes, chained), inversion, source, target, cfg=1.0)
    assert zimage.model_options == options
    unet = zimage.get_model_object("diffusion_model")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())
    again = edit(run_node, pack_nodes, zimage, inversion, source, target, cfg=1.0)
    assert all(torch.equal(a["samples"], b["samples"]) for a, b in zip(again[:2], plain[:2], strict=True))


LUMINA2 = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=192, cap_feat_dim=2304, n_layers=2,
               n_refiner_layers=1, n_heads=2, n_kv_heads=1, qk_norm=True, axes_dims=[32, 32, 32],
               axes_lens=[300, 512, 512], ffn_dim_multiplier=4.0)
"""ComfyUI's detected Lumina 2 config (width 2304, 24 heads, 8 key/value heads) at width 192: 2 heads, 1 key/value
head, 2 layers, 1 refiner each."""


def test_lumina2_the_same_transformer_unpadded_is_z_image_like_and_shares_its_last_tokens(
        run_node, pack_nodes, comfy_env, photo_latent):
    """Lumina 2 (ComfyUI's ``Lumina2`` config, Z-Image's parent, Gemma-2-2B's 2304-wide text) runs the same NextDiT
    without pad tokens: matched by structure, the engine shares its last 36 tokens, behind 8 caption tokens. Its
    conditioning carries Gemma's attention mask, from which ComfyUI 0.3.64 reads the caption length."""
    with bypassed_model("Lumina2", LUMINA2, SEED + 11) as lumina:
        assert Family.of(lumina).name == "Lumina2 (Z-Image-like)"
        source, target = ([[torch.randn(1, 8, 2304, generator=torch.Generator().manual_seed(seed)),
                            {"attention_mask": torch.ones(1, 8, dtype=torch.int64)}]] for seed in (0, 1))
        inversion, _ = invert(run_node, pack_nodes, lumina, source, photo_latent, steps=4, rel_tol=0.01)
        probe = AttentionProbe(lumina, {"layers.0": "layer 0", "layers.1": "layer 1"})
        chained = lumina.clone()
        chained.model_options.setdefault("transformer_options", {})[OVERRIDE] = probe.earlier
        patched = mutual(run_node, pack_nodes, chained)
        probe.wrap(patched)
        with probe:
            edit(run_node, pack_nodes, patched, inversion, source, target, cfg=1.0)
    shared = [c for c in probe.calls if c["block"] == "layer 1"]
    assert len(probe.calls) == 4 * 4 and len(shared) == 4
    for c in shared:
        assert c["k_in"].shape[2] == 8 + 36
        assert torch.equal(c["k_out"][1, :, 8:], c["k_in"][0, :, 8:]) and torch.equal(c["v_out"][1, :, 8:],
                                                                                      c["v_in"][0, :, 8:])
        assert torch.equal(c["k_out"][1, :, :8], c["k_in"][1, :, :8])
    assert all(torch.equal(c["k_out"], c["k_in"]) for c in probe.calls if c["block"] != "layer 1")
