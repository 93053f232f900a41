"""Flux.2 inside real ComfyUI: a random Flux.2-Klein-class diffusion model (2 double- and 2 single-stream blocks of
width 128, 128 latent channels at patch 1) that ComfyUI 0.33's diffusion-model loader detects as ``Flux2``, inverted
and edited with mutual attention installed through ComfyUI's own pre-attention hook (``attn1_patch``).

Random weights stand in for Flux.2, which cannot be downloaded here, and random encodings of Klein's text width
(three Qwen3-4B layers, 7680) stand in for its 4 B-parameter text encoder. ComfyUI 0.3.64 has no Flux.2: the
module skips there.
"""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.attention_patches.families import Family
from spdinv_pack.attention_patches.registration import PreAttentionPatch
from spdinv_pack.tests.host.factory import FLOW_TEST_MODELS, flux2_model_path
from spdinv_pack.tests.host.pack_calls import diffusion_model, edit, invert, mutual, reconstruction_psnr


@pytest.fixture(scope="module")
def flux2(comfy_env):
    """The random Flux.2-Klein-class MODEL as ComfyUI's diffusion-model loader loads it."""
    import comfy.supported_models

    if not hasattr(comfy.supported_models, "Flux2"):
        pytest.skip("this ComfyUI has no Flux.2 (0.3.64)")
    with diffusion_model(flux2_model_path()) as model:
        yield model


@pytest.fixture(scope="module")
def photo_latent():
    """An 8×8 Flux.2 latent (a 128² photo) with unit statistics, smooth as image latents are."""
    return FLOW_TEST_MODELS["flux2"].photo(128)


def prompt(seed: int) -> list:
    """A stand-in for a Flux.2 Klein prompt's CONDITIONING (16 tokens of width 7680; ComfyUI pads to 512)."""
    return FLOW_TEST_MODELS["flux2"].prompt(seed)


def test_the_loader_detects_flux2_and_spdinv_reconstructs_far_better_than_plain_flow_inversion(
        run_node, pack_nodes, flux2, photo_latent):
    family = Family.of(flux2)
    assert type(flux2.model.model_config).__name__ == "Flux2" and family.name == "Flux.2"
    assert not family.guidance_distilled(flux2.get_model_object("diffusion_model"))  # Klein: no guidance_in
    psnr = reconstruction_psnr(run_node, pack_nodes, flux2, prompt(0), photo_latent, 10, "Flux.2")
    assert psnr["spdinv"] >= psnr["ddim"] + 10


def test_mutual_attention_rides_comfyuis_pre_attention_hook_and_chains_with_another_one(
        run_node, pack_nodes, flux2, photo_latent):
    """One ``attn1_patch`` on a clone, after another node's: the other one still sees every block's call, and the
    keys it passes on show the target's image tokens taking the source's in the controlled blocks only."""
    source, target = prompt(0), prompt(1)
    inversion, _ = invert(run_node, pack_nodes, flux2, source, photo_latent, steps=6, rel_tol=0.01)
    seen = []

    def later(q, k, v, pe=None, attn_mask=None, extra_options=None):
        start, stop = extra_options["img_slice"]
        if k.shape[0] == 2:  # an edit call at CFG 1: [source, target]; keys taken over, queries their own
            image = (slice(None), slice(start, stop))
            shared = torch.equal(k[1][image], k[0][image]) and not torch.equal(q[1][image], q[0][image])
            seen.append((extra_options["block_type"], extra_options["block_index"], shared))
        return {}

    patched = mutual(run_node, pack_nodes, flux2)  # depth 0.65 of 4 blocks: the last single-stream block
    patched.set_model_attn1_patch(later)
    hooks = patched.model_options["transformer_options"]["patches"]["attn1_patch"]
    assert isinstance(hooks[0], PreAttentionPatch) and sorted(hooks[0].site) == [("single_block", 1)]
    assert "dit" not in patched.model_options["transformer_options"].get("patches_replace", {})
    edited, recon, _ = edit(run_node, pack_nodes, patched, inversion, source, target, cfg=1.0)
    assert len(seen) == 4 * 6
    assert {(kind, index) for kind, index, shared in seen if shared} == {("single", 1)}
    assert sum(shared for *_, shared in seen) == 6
    same, recon_same, _ = edit(run_node, pack_nodes, patched, inversion, source, source, cfg=1.0)
    assert torch.equal(same["samples"], recon_same["samples"])
    plain, _, _ = edit(run_node, pack_nodes, flux2, inversion, source, target, cfg=1.0)
    assert not torch.equal(plain["samples"], edited["samples"])
    assert "patches" not in flux2.model_options.get("transformer_options", {})
