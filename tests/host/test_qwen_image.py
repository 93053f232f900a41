"""Qwen-Image inside real ComfyUI: a random one-block Qwen-Image diffusion model (ComfyUI fixes the width at 3072
and reads the block count from the keys) that the diffusion-model loader detects as ``QwenImage``, inverted and
edited with mutual attention: through ComfyUI's pre-attention hook on 0.33, through block patches on 0.3.64.

Random weights stand in for Qwen-Image (20 B parameters), and random encodings of Qwen2.5-VL-7B's width (3584)
for its text encoder. Qwen-Image's latents are 5-D (``[B, 16, 1, H, W]``, Wan's VAE), as the tests give them.
"""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.attention_patches.families import Family
from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.tests.host.factory import FLOW_TEST_MODELS, qwen_image_model_path
from spdinv_pack.tests.host.pack_calls import diffusion_model, edit, invert, reconstruction_psnr


@pytest.fixture(scope="module")
def qwen(comfy_env):
    """The random one-block Qwen-Image MODEL as ComfyUI's diffusion-model loader loads it."""
    with diffusion_model(qwen_image_model_path()) as model:
        yield model


@pytest.fixture(scope="module")
def photo_latent():
    """A 128² photo's Qwen-Image latent (16 channels, one frame), smooth as image latents are."""
    return FLOW_TEST_MODELS["qwen-image"].photo(128)


def prompt(seed: int) -> list:
    """A stand-in for a Qwen-Image prompt's CONDITIONING (8 tokens of Qwen2.5-VL's width)."""
    return FLOW_TEST_MODELS["qwen-image"].prompt(seed)


def test_the_loader_detects_qwen_image_and_spdinv_reconstructs_far_better_than_plain_flow_inversion(
        run_node, pack_nodes, qwen, photo_latent):
    assert type(qwen.model.model_config).__name__ == "QwenImage" and Family.of(qwen).name == "Qwen-Image"
    psnr = reconstruction_psnr(run_node, pack_nodes, qwen, prompt(0), photo_latent, 10, "Qwen-Image")
    assert psnr["spdinv"] >= psnr["ddim"] + 10


def test_mutual_attention_edits_the_target_keeps_identity_exact_and_leaves_the_model_untouched(
        run_node, pack_nodes, qwen, photo_latent):
    source, target = prompt(0), prompt(1)
    inversion, _ = invert(run_node, pack_nodes, qwen, source, photo_latent, steps=6, rel_tol=0.01)
    patched = run_node(pack_nodes.MMDiTMutualAttention, model=qwen, start_step=0.0, start_block=-1.0,
                       share="keys and values").result[0]
    options = patched.model_options["transformer_options"]
    hooked = options.get("patches", {}).get("attn1_patch", [])
    blocks = hooked[0].site if hooked else options["patches_replace"]["dit"]
    assert sorted(blocks) == [("double_block", 0)]
    plain, recon, _ = edit(run_node, pack_nodes, qwen, inversion, source, target, cfg=4.0)
    edited, recon_m, _ = edit(run_node, pack_nodes, patched, inversion, source, target, cfg=4.0)
    assert not torch.equal(edited["samples"], plain["samples"])
    assert (recon_m["samples"] - recon["samples"]).abs().max().item() < 1e-3  # the source branch is untouched
    print(f"\n[host] Qwen-Image edit vs reconstruction: plain {latent_psnr(plain['samples'], recon['samples']):.2f} "
          f"dB, mutual attention {latent_psnr(edited['samples'], recon['samples']):.2f} dB")
    same, recon_same, _ = edit(run_node, pack_nodes, patched, inversion, source, source, cfg=4.0)
    assert torch.equal(same["samples"], recon_same["samples"])
    assert not {"patches", "patches_replace"} & set(qwen.model_options.get("transformer_options", {}))
