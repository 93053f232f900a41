"""Chroma inside real ComfyUI: a random Chroma diffusion model that ComfyUI's diffusion-model loader detects as
``Chroma``, inverted and edited with mutual attention: through ComfyUI's pre-attention hook (``attn1_patch``) on
0.33, through ``dit`` block patches on 0.3.64, whose blocks have no such hook.

ComfyUI fixes Chroma's width at 3072 (its distilled-guidance approximator, 0.28 B parameters, makes every block's
modulations that wide) and reads only the depth from the keys: the test model has Chroma's full width and 1 double-
and 1 single-stream block (0.63 B parameters). Random weights stand in for Chroma (8.9 B parameters), and random
T5-XXL-shaped encodings ([1, L, 4096], no pooled output) stand in for its 4.7 B-parameter T5-XXL text encoder.
"""

from __future__ import annotations

import copy
import inspect
import logging

import pytest
import torch
from safetensors import safe_open

from spdinv_pack.attention_patches.dit_blocks import block_from
from spdinv_pack.attention_patches.families import Family
from spdinv_pack.tests.host.factory import FLOW_TEST_MODELS, chroma_model_path, sd_like_latent
from spdinv_pack.tests.host.pack_calls import RowCount, diffusion_model, edit, invert, reconstruction_psnr

EDIT_STEPS = 4
"""Steps of the inversion the edit tests start from (plain inversion: the edits' claims do not need SPDInv's)."""


@pytest.fixture(scope="module")
def chroma(comfy_env):
    """The random Chroma MODEL as ComfyUI's diffusion-model loader loads it, unloaded after the module."""
    with diffusion_model(chroma_model_path()) as model:
        yield model


@pytest.fixture(scope="module")
def photo_latent():
    """A 128² photo's latent in Flux's latent format (Chroma's: 16 channels), smooth as image latents are."""
    return {"samples": sd_like_latent(128, channels=16, scale=0.3611, shift=0.1159)}


def prompt(seed: int) -> list:
    """A stand-in for a Chroma prompt's CONDITIONING: 16 T5-XXL-shaped tokens and no pooled output (``None``, as
    CLIPTextEncode gives for T5; ComfyUI 0.3.64 reads the key)."""
    return FLOW_TEST_MODELS["chroma"].prompt(seed)


@pytest.fixture(scope="module")
def inversion(run_node, pack_nodes, chroma, photo_latent):
    """The photo inverted by plain flow inversion in :data:`EDIT_STEPS` steps with the source prompt."""
    return invert(run_node, pack_nodes, chroma, prompt(0), photo_latent, method="ddim", steps=EDIT_STEPS)[0]


def test_the_loader_detects_chroma_and_the_edit_runs_real_cfg_without_the_distilled_guidance_warning(
        run_node, pack_nodes, chroma, inversion, caplog):
    import comfy.model_base

    family = Family.of(chroma)
    diffusion = chroma.get_model_object("diffusion_model")
    assert type(chroma.model.model_config).__name__ == "Chroma" and isinstance(chroma.model, comfy.model_base.Chroma)
    assert family.name == "Chroma" and not family.guidance_distilled(diffusion)
    with safe_open(str(chroma_model_path()), "pt") as f:  # every parameter comes from the file
        keys = dict.fromkeys(f.keys())
    assert set(chroma.model.model_config.process_unet_state_dict(keys)) == set(diffusion.state_dict())
    with caplog.at_level(logging.WARNING), RowCount(chroma) as rows:
        edit(run_node, pack_nodes, chroma, inversion, prompt(0), prompt(1), cfg=4.0)
    assert "guidance-distilled" not in caplog.text
    assert rows.rows == 3 * EDIT_STEPS  # source, target and the target's unconditional row: real CFG


def test_spdinv_reconstructs_chroma_far_better_than_plain_flow_inversion(run_node, pack_nodes, chroma, photo_latent):
    psnr = reconstruction_psnr(run_node, pack_nodes, chroma, prompt(0), photo_latent, 10, "Chroma")
    assert psnr["spdinv"] >= psnr["ddim"] + 10


def test_mutual_attention_takes_this_comfyuis_route_on_the_default_blocks_and_leaves_the_model_untouched(
        run_node, pack_nodes, chroma, inversion):
    """Installed through the pre-attention hook where Chroma's blocks call it, else block patches, on the blocks
    from the family's default start depth: the keys an earlier attention override sees show the target's image
    tokens carrying the source's there only; identity stays exact and another target changes the edit."""
    before = copy.deepcopy(chroma.model_options)
    source, target = prompt(0), prompt(1)
    family = Family.of(chroma)
    diffusion = chroma.get_model_object("diffusion_model")
    blocks = family.sites(diffusion)
    expected = [(b.kind, b.index) for b in blocks[block_from(family.default("mmdit_start_block"), len(blocks)):]]
    assert 0 < len(expected) < len(blocks)
    seen = []

    def recorder(func, q, k, v, *rest, **kwargs):
        """Records whether the target's image keys are the source's while its queries are its own (at the first
        step the first block sees the same noise and, Chroma having no pooled prompt, the same modulation)."""
        tokens = 2 if kwargs.get("skip_reshape") else 1
        qi, ki = (t.narrow(tokens, t.shape[tokens] - 64, 64) for t in (q, k))  # 8×8 image tokens (16×16 latent)
        seen.append((k.shape[0], bool(torch.equal(ki[1], ki[0])) and not torch.equal(qi[1], qi[0])))
        return func(q, k, v, *rest, **kwargs)

    recorded = chroma.clone()
    recorded.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = recorder
    patched = run_node(pack_nodes.MMDiTMutualAttention, model=recorded, start_step=0.0, start_block=-1.0,
                       share="keys and values").result[0]
    options = patched.model_options["transformer_options"]
    hooks = options.get("patches", {}).get("attn1_patch", [])
    hooked = "attn1_patch" in inspect.getsource(inspect.getmodule(type(diffusion.single_blocks[0])))
    assert bool(hooks) == hooked  # 0.33: ComfyUI's pre-attention hook; 0.3.64: dit block patches
    assert bool(hooks) != ("dit" in options.get("patches_replace", {}))
    assert sorted(hooks[0].site if hooks else options["patches_replace"]["dit"]) == expected
    edited, recon, _ = edit(run_node, pack_nodes, patched, inversion, source, target, cfg=1.0)
    assert {rows for rows, _ in seen} == {2}  # CFG 1: [source, target], no unconditional chunk
    assert len(seen) == len(blocks) * EDIT_STEPS and sum(shared for _, shared in seen) == len(expected) * EDIT_STEPS
    plain, _, _ = edit(run_node, pack_nodes, chroma, inversion, source, target, cfg=1.0)
    assert not torch.equal(edited["samples"], plain["samples"]) and not torch.equal(edited["samples"], recon["samples"])
    same, recon_same, _ = edit(run_node, pack_nodes, patched, inversion, source, source, cfg=1.0)
    assert torch.equal(same["samples"], recon_same["samples"])
    assert chroma.model_options == before
