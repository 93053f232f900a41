"""Inversion and every engine on the families beyond SD1.x inside real ComfyUI, each from a random-weight
checkpoint that ComfyUI's own loader detects:

* ``sdxl``: an SDXL-class model in the Segmind Vega layout (CLIP-L + CLIP-G, pooled and size conditioning, no
  middle-block attention), loaded as ``SDXL``;
* ``sd2-v``: SD2.x in the 768-v layout (OpenCLIP-H, 1024-d context, linear projections), detected as
  v-prediction; the core ``ModelSamplingDiscrete`` node switches it to eps and to zero terminal SNR.

Random weights stand in for real checkpoints, which cannot be downloaded here; the checks are the ones that
hold for any weights (exactness, what is controlled, what stays untouched).
"""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.tests.host.factory import sd_like_latent
from spdinv_pack.tests.host.pack_calls import (
    check_local_blend,
    edit,
    invert,
    inverted_photo,
    reconstruct,
)

SOURCE, TARGET = "a photo of a cat", "a photo of a dog"

MASACTRL_DEFAULT_LAYERS = {
    "sdxl": [("output", 1, 1), ("output", 2, 0), ("output", 2, 1), ("output", 3, 0), ("output", 4, 0),
             ("output", 5, 0)],
    "sd2-v": [("output", block, 0) for block in range(6, 12)],
}
"""A third into the decoder: the last 6 of 9 decoder transformer layers on both (as SD1.5's layer 10)."""
PNP_FEATURE_BLOCK = {"sdxl": 1, "sd2-v": 4}
"""The decoder block at 1/32 of the image whose ResBlock features PnP injects."""


@pytest.fixture(scope="module")
def scene(comfy_env, family, run_node, pack_nodes):
    """``(family name, (model, clip, latent, source, inversion))``: a 128² photo (16×16 latent, 4×4 at 1/32 of
    the image) inverted with the source prompt in 10 steps."""
    name, checkpoint = family
    return name, inverted_photo(comfy_env, checkpoint, run_node, pack_nodes, SOURCE, 128, 10)


def encode(comfy_env, run_node, clip, text):
    return run_node(comfy_env.nodes.CLIPTextEncode, text=text, clip=clip)[0]


def p2p(run_node, pack_nodes, model, clip, target, **kw):
    return run_node(pack_nodes.P2PAttentionControl, model=model, clip=clip, source_text=SOURCE, target_text=target,
                    **kw).result


def masactrl(run_node, pack_nodes, model):
    return run_node(pack_nodes.MasaCtrlMutualAttention, model=model).result[0]


def test_the_loader_detects_each_family(family):
    import comfy.model_base

    name, (model, clip, _) = family
    if name == "sdxl":
        assert isinstance(model.model, comfy.model_base.SDXL) and sorted(clip.tokenize("a cat")) == ["g", "l"]
    else:
        assert model.model.model_type == comfy.model_base.ModelType.V_PREDICTION
        assert sorted(clip.tokenize("a cat")) == ["h"]


@pytest.mark.parametrize("steps", [10, 20])
def test_spdinv_reconstructs_far_better_than_ddim(run_node, pack_nodes, comfy_env, family, steps):
    name, (model, clip, _) = family
    source = encode(comfy_env, run_node, clip, SOURCE)
    latent = {"samples": sd_like_latent(64)}
    psnr = {}
    for method in ("ddim", "spdinv"):
        inversion, _ = invert(run_node, pack_nodes, model, source, latent, method=method, steps=steps)
        _, recon = reconstruct(run_node, pack_nodes, model, inversion, source)
        psnr[method] = latent_psnr(recon["samples"], latent["samples"])
    print(f"\n[host] {name}, {steps} steps: reconstruction PSNR ddim {psnr['ddim']:.1f} dB, "
          f"spdinv {psnr['spdinv']:.1f} dB")
    assert psnr["spdinv"] >= psnr["ddim"] + 10


def test_identity_p2p_edit_is_exact(run_node, pack_nodes, scene):
    name, (model, clip, _, _, inversion) = scene
    patched, source, target = p2p(run_node, pack_nodes, model, clip, SOURCE)
    edited, recon, _ = edit(run_node, pack_nodes, patched, inversion, source, target)
    diff = (edited["samples"] - recon["samples"]).abs().max().item()
    print(f"\n[host] {name} identity P2P edit vs reconstruction: max abs latent difference {diff:.2e}")
    assert diff == 0.0


@pytest.mark.parametrize("mode,target", [("word swap", TARGET), ("refine", "a photo of a fluffy dog")])
def test_local_blend_keeps_the_source_outside_its_mask(run_node, pack_nodes, scene, mode, target):
    """Random weights attend almost uniformly (at threshold 0.99 the random SD2.x's refine mask was full): the
    threshold is high so the mask is neither empty nor full."""
    name, (model, clip, _, _, inversion) = scene
    patched, source, target_cond = p2p(run_node, pack_nodes, model, clip, target, mode=mode,
                                       blend_source_words="cat", blend_target_words="dog", blend_threshold=0.999)
    edited, recon, attention = edit(run_node, pack_nodes, patched, inversion, source, target_cond)
    coverage = check_local_blend(edited, recon, attention)
    print(f"\n[host] {name} {mode}: blend mask covers {coverage:.0%} of the latent")


def test_the_model_given_to_the_engines_samples_bit_identically_after_edits(run_node, pack_nodes, comfy_env,
                                                                            scene):
    _, (model, clip, latent, source, inversion) = scene
    ksampler = dict(seed=0, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal", positive=source,
                    negative=source, latent_image=latent, denoise=1.0)
    (before,) = run_node(comfy_env.nodes.KSampler, model=model, **ksampler)
    patched, src, tgt = p2p(run_node, pack_nodes, model, clip, TARGET, blend_source_words="cat",
                            blend_target_words="dog")
    edit(run_node, pack_nodes, patched, inversion, src, tgt)
    target = encode(comfy_env, run_node, clip, TARGET)
    edit(run_node, pack_nodes, masactrl(run_node, pack_nodes, model), inversion, source, target)
    pnp = run_node(pack_nodes.PNPInjection, model=model, feature_fraction=0.8, attention_fraction=0.5).result[0]
    edit(run_node, pack_nodes, pnp, inversion, source, target)
    (after,) = run_node(comfy_env.nodes.KSampler, model=model, **ksampler)
    assert torch.equal(before["samples"], after["samples"])
    assert "patches_replace" not in model.model_options.get("transformer_options", {})


def test_masactrl_default_controls_the_last_two_thirds_of_the_decoder(run_node, pack_nodes, comfy_env, scene):
    name, (model, clip, _, source, inversion) = scene
    target, empty = (encode(comfy_env, run_node, clip, t) for t in (TARGET, ""))
    masa = masactrl(run_node, pack_nodes, model)
    controlled = sorted(masa.model_options["transformer_options"]["patches_replace"]["attn1"])
    assert controlled == MASACTRL_DEFAULT_LAYERS[name]
    plain_edit, plain_recon, _ = edit(run_node, pack_nodes, model, inversion, source, target, negative=empty)
    edited, recon, _ = edit(run_node, pack_nodes, masa, inversion, source, target, negative=empty)
    assert torch.equal(recon["samples"], plain_recon["samples"])
    assert not torch.equal(edited["samples"], plain_edit["samples"])


def test_pnp_injects_the_decoder_block_at_a_32nd_of_the_image(run_node, pack_nodes, comfy_env, scene):
    name, (model, clip, _, _, inversion) = scene
    empty, target = (encode(comfy_env, run_node, clip, t) for t in ("", TARGET))
    unet = model.get_model_object("diffusion_model")
    tapped = unet.output_blocks[PNP_FEATURE_BLOCK[name]][0].out_layers[-1]
    seen: list[torch.Tensor] = []
    handle = tapped.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    try:
        injected = run_node(pack_nodes.PNPInjection, model=model, feature_fraction=0.5,
                            attention_fraction=0.5).result[0]
        edited, _, _ = edit(run_node, pack_nodes, injected, inversion, empty, target, negative=empty)
    finally:
        handle.remove()
    assert seen[0].shape[-1] == 4, "the tapped block works at 1/32 of the 128-px photo"
    # 3 rows a call (the source's unconditional row is shared); injected, every target row holds the source's
    assert {out.shape[0] for out in seen} == {3}
    same = [all(torch.equal(out[0], row) for row in out[1:]) for out in seen]
    assert same == [True] * 5 + [False] * 5
    assert torch.isfinite(edited["samples"]).all()
