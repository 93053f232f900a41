"""MasaCtrl inside real ComfyUI (random-weight SD1.5), node calls under inference mode."""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.tests.host.pack_calls import MASA_START_LAYER, edit, invert, photo

SOURCE, TARGET = "a photo of a cat sitting", "a photo of a cat standing"


@pytest.fixture(scope="module")
def masa_scene(comfy_env, sd15, run_node, pack_nodes):
    """A 128² photo inverted with the source prompt, and the three encodings MasaCtrl's recipe uses."""
    model, clip, vae = sd15
    (latent,) = run_node(comfy_env.nodes.VAEEncode, pixels=photo(128), vae=vae)
    conds = [run_node(comfy_env.nodes.CLIPTextEncode, text=t, clip=clip)[0] for t in (SOURCE, TARGET, "")]
    inversion, _ = invert(run_node, pack_nodes, model, conds[0], latent, steps=10)
    return model, clip, inversion, conds


def masactrl(run_node, pack_nodes, model, **kw):
    settings = {"start_layer": MASA_START_LAYER, **kw}
    return run_node(pack_nodes.MasaCtrlMutualAttention, model=model, **settings).result[0]


def masa_edit(run_node, pack_nodes, model, scene):
    _, _, inversion, (source, target, empty) = scene
    return edit(run_node, pack_nodes, model, inversion, source, target, negative=empty)


def test_masactrl_edits_and_keeps_the_source_branch(run_node, pack_nodes, masa_scene):
    model = masa_scene[0]
    plain_edit, plain_recon, _ = masa_edit(run_node, pack_nodes, model, masa_scene)
    edited, recon, _ = masa_edit(run_node, pack_nodes, masactrl(run_node, pack_nodes, model), masa_scene)
    recon_psnr = latent_psnr(recon["samples"], plain_recon["samples"])
    edit_psnr = latent_psnr(edited["samples"], plain_edit["samples"])
    print(f"\n[host] MasaCtrl: source vs engine-free reconstruction {recon_psnr:.1f} dB, "
          f"edit vs engine-free edit {edit_psnr:.1f} dB")
    assert recon_psnr > 40
    assert edit_psnr < 40 and torch.isfinite(edited["samples"]).all()


def test_start_step_past_the_last_step_equals_the_engine_free_edit_exactly(run_node, pack_nodes, masa_scene):
    model = masa_scene[0]
    plain_edit, plain_recon, _ = masa_edit(run_node, pack_nodes, model, masa_scene)
    idle = masactrl(run_node, pack_nodes, model, start_step=1.0, proximal_guidance=False)
    edited, recon, _ = masa_edit(run_node, pack_nodes, idle, masa_scene)
    assert torch.equal(edited["samples"], plain_edit["samples"])
    assert torch.equal(recon["samples"], plain_recon["samples"])


@pytest.mark.parametrize("mode", ["mask", "auto"])
def test_mask_guided_modes_run(run_node, pack_nodes, masa_scene, mode):
    model, clip = masa_scene[:2]
    if mode == "mask":
        mask = torch.zeros(1, 128, 128)
        mask[:, 32:96, 32:96] = 1.0
        kw = dict(mask=mask)
    else:
        kw = dict(clip=clip, source_text=SOURCE, target_text=TARGET, source_words="cat", target_words="cat")
    patched = masactrl(run_node, pack_nodes, model, mask_mode=mode, **kw)
    plain, _, _ = masa_edit(run_node, pack_nodes, masactrl(run_node, pack_nodes, model), masa_scene)
    edited, _, _ = masa_edit(run_node, pack_nodes, patched, masa_scene)
    assert torch.isfinite(edited["samples"]).all()
    assert not torch.equal(edited["samples"], plain["samples"])


def test_source_from_inversion_feeds_the_stored_trajectory(run_node, pack_nodes, masa_scene):
    model, _, inversion, _ = masa_scene
    fed = masactrl(run_node, pack_nodes, model, source_from_inversion=True)
    _, recon, _ = masa_edit(run_node, pack_nodes, fed, masa_scene)
    psnr = latent_psnr(recon["samples"], inversion.source_latent)
    print(f"\n[host] MasaCtrl source fed from the inversion: reconstruction {psnr:.1f} dB")
    assert psnr > 30


def test_the_model_given_to_masactrl_samples_bit_identically_after_an_edit(run_node, pack_nodes, masa_scene,
                                                                          comfy_env):
    model, _, inversion, (source, _, _) = masa_scene
    latent = {"samples": inversion.source_latent}
    ksampler = dict(seed=0, steps=2, cfg=7.5, sampler_name="euler", scheduler="normal", positive=source,
                    negative=source, latent_image=latent, denoise=1.0)
    (before,) = run_node(comfy_env.nodes.KSampler, model=model, **ksampler)
    masa_edit(run_node, pack_nodes, masactrl(run_node, pack_nodes, model, mask_mode="mask",
                                             mask=torch.ones(1, 128, 128)), masa_scene)
    (after,) = run_node(comfy_env.nodes.KSampler, model=model, **ksampler)
    assert torch.equal(before["samples"], after["samples"])


AUTO = dict(mask_mode="auto", source_text=SOURCE, target_text=TARGET, source_words="cat", target_words="cat")


@pytest.mark.parametrize("settings,with_clip,match", [
    (dict(start_layer=16), False, "start_layer: the model has 16 transformer layers"),
    (dict(mask_mode="mask"), False, "mask: mask_mode is 'mask' but no MASK"),
    (AUTO, False, "clip: "),
    ({**AUTO, "source_words": "dog"}, True, "source_words: .*dog.*a photo of a cat sitting"),
    ({**AUTO, "target_words": ""}, True, "target_words: "),
], ids=["start-layer", "no-mask", "no-clip", "missing-word", "no-word"])
def test_bad_masactrl_inputs_name_the_input(run_node, pack_nodes, masa_scene, settings, with_clip, match):
    model, clip = masa_scene[:2]
    with pytest.raises(ValueError, match=match):
        masactrl(run_node, pack_nodes, model, **settings, **({"clip": clip} if with_clip else {}))


def test_a_mask_of_another_size_is_refused_before_sampling(run_node, pack_nodes, masa_scene):
    model = masa_scene[0]
    patched = masactrl(run_node, pack_nodes, model, mask_mode="mask", mask=torch.ones(1, 64, 64))
    with pytest.raises(ValueError, match="mask: 64x64 does not match the image .128x128."):
        masa_edit(run_node, pack_nodes, patched, masa_scene)
