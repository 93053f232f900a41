"""SPDInv nodes inside real ComfyUI (random-weight SD1.5), called under inference mode like the executor."""

from __future__ import annotations

import math

import pytest
import torch

from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.tests.host.factory import sd_like_latent
from spdinv_pack.tests.host.pack_calls import STEPS, invert, photo, reconstruct


@pytest.fixture(scope="module")
def scene(comfy_env, sd15, run_node):
    model, clip, vae = sd15
    (latent,) = run_node(comfy_env.nodes.VAEEncode, pixels=photo(), vae=vae)
    (source,) = run_node(comfy_env.nodes.CLIPTextEncode, text="a photo of a cat", clip=clip)
    (target,) = run_node(comfy_env.nodes.CLIPTextEncode, text="a photo of a dog", clip=clip)
    return model, clip, latent, source, target


def test_spdinv_inverts_and_reconstructs_better_than_ddim(run_node, pack_nodes, scene, comfy_env):
    """Measured on a latent with real SD latent statistics: the random VAE's latents are ~50x too small."""
    model, _, _, source, _ = scene
    latent = {"samples": sd_like_latent(64)}
    ddim, ddim_noise = invert(run_node, pack_nodes, model, source, latent, method="ddim")
    spd, spd_noise = invert(run_node, pack_nodes, model, source, latent)
    assert spd_noise["samples"].shape == latent["samples"].shape
    assert spd.result.latents.shape[0] == STEPS + 1
    assert spd.result.steps_under_delta() >= math.ceil(0.9 * STEPS)
    assert ddim.result.steps_under_delta() < spd.result.steps_under_delta()
    _, recon_ddim = reconstruct(run_node, pack_nodes, model, ddim, source)
    _, recon_spd = reconstruct(run_node, pack_nodes, model, spd, source)
    psnr_ddim = latent_psnr(recon_ddim["samples"], latent["samples"])
    psnr_spd = latent_psnr(recon_spd["samples"], latent["samples"])
    print(f"\n[host] reconstruction PSNR ddim {psnr_ddim:.1f} dB, spdinv/anderson {psnr_spd:.1f} dB")
    assert psnr_spd > psnr_ddim + 10


def test_the_reference_grid_is_the_official_codes_timesteps_and_reconstructs(run_node, pack_nodes, scene):
    """grid=reference: timesteps 900, 800, ..., 0 at 10 steps (ComfyUI's ddim_uniform: 901 ... 1), then 0."""
    model, _, _, source, _ = scene
    latent = {"samples": sd_like_latent(64)}
    spd, _ = invert(run_node, pack_nodes, model, source, latent, grid="reference")
    train = model.get_model_object("model_sampling").sigmas.float().cpu()
    expected = torch.cat([train[list(range(900, -1, -100))], torch.zeros(1)])
    assert torch.equal(spd.result.sigmas, expected)
    _, recon = reconstruct(run_node, pack_nodes, model, spd, source)
    psnr = latent_psnr(recon["samples"], latent["samples"])
    print(f"\n[host] reference grid: {spd.result.steps_under_delta()}/{STEPS} steps under delta, {psnr:.1f} dB")
    assert spd.result.steps_under_delta() >= math.ceil(0.9 * STEPS) and psnr > 30


def test_dci_rate_solves_the_corrected_fixed_point_and_is_labelled(run_node, pack_nodes, scene):
    """dci_rate on the node: another trajectory than plain SPDInv's, its steps under delta, named on the plot."""
    model, _, _, source, _ = scene
    latent = {"samples": sd_like_latent(64)}
    plain, _ = invert(run_node, pack_nodes, model, source, latent, steps=4)
    dci, _ = invert(run_node, pack_nodes, model, source, latent, steps=4, dci_rate=1.0)
    assert dci.result.settings.dci_rate == 1.0
    psnr = latent_psnr(dci.result.noise, plain.result.noise)
    print(f"\n[host] DCI 1.0: {dci.result.steps_under_delta()}/4 steps under delta, noise vs SPDInv's {psnr:.1f} dB")
    assert dci.result.steps_under_delta() == 4 and psnr < 60
    from spdinv_pack.nodes.residual_plot import _series

    assert "DCI 1" in _series(dci, (0, 0, 0)).label


def test_adamw_runs_autograd_after_a_lora_and_leaves_the_model_intact(run_node, pack_nodes, scene, sd15_lora,
                                                                       comfy_env):
    _, _, latent, source, _ = scene
    lora_model, _ = sd15_lora
    ksampler = dict(seed=0, steps=2, cfg=1.0, sampler_name="euler", scheduler="normal", positive=source,
                    negative=source, latent_image=latent, denoise=1.0)
    (before,) = run_node(comfy_env.nodes.KSampler, model=lora_model, **ksampler)
    inv, _ = invert(run_node, pack_nodes, lora_model, source, latent, solver="adamw", max_iters=3, steps=4)
    assert int(inv.result.backwards.sum()) > 0
    assert torch.isfinite(inv.result.latents).all()
    (after,) = run_node(comfy_env.nodes.KSampler, model=lora_model, **ksampler)
    assert torch.equal(before["samples"], after["samples"])
    assert not torch.is_inference_mode_enabled()


def test_noise_latent_rebuilds_the_photo_with_core_ksampler(run_node, pack_nodes, scene, comfy_env):
    """The noise output is a plain LATENT: KSamplerAdvanced (no added noise, euler, ddim_uniform, CFG 1)
    reconstructs the same latent as the edit sampler's source branch."""
    model, _, latent, source, _ = scene
    inv, noise = invert(run_node, pack_nodes, model, source, latent)
    _, recon = reconstruct(run_node, pack_nodes, model, inv, source)
    (core,) = run_node(comfy_env.nodes.KSamplerAdvanced, model=model, add_noise="disable", noise_seed=0,
                       steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="ddim_uniform", positive=source,
                       negative=source, latent_image=noise, start_at_step=0, end_at_step=10000,
                       return_with_leftover_noise="disable")
    assert torch.allclose(core["samples"], recon["samples"], atol=1e-3)


def test_edit_changes_the_target_and_keeps_the_reconstruction(run_node, pack_nodes, scene):
    model, _, latent, source, target = scene
    inv, _ = invert(run_node, pack_nodes, model, source, latent)
    edited, recon = reconstruct(run_node, pack_nodes, model, inv, source, target, cfg=7.5)
    _, recon_only = reconstruct(run_node, pack_nodes, model, inv, source)
    # Batches of 4 and 2 rows sum in different orders inside attention; a random UNet amplifies that
    # rounding over the steps, so "equal" means equal to well within the reconstruction error.
    assert latent_psnr(recon["samples"], recon_only["samples"]) > 40
    assert latent_psnr(edited["samples"], recon["samples"]) < 30
    identity, _ = reconstruct(run_node, pack_nodes, model, inv, source, source, cfg=7.5)
    assert latent_psnr(identity["samples"], recon["samples"]) > 40


def test_an_edit_whose_source_is_not_the_inverted_prompt_warns_naming_both_inputs(run_node, pack_nodes, scene,
                                                                                   caplog):
    """Without an engine (and with P2P, MasaCtrl, ELITE) the source branch must retrace the inversion; PnP
    replays the stored trajectory instead, so its empty-prompt source is fine."""
    model, _, latent, source, target = scene
    inv, _ = invert(run_node, pack_nodes, model, source, latent, steps=2)
    with caplog.at_level("WARNING"):
        reconstruct(run_node, pack_nodes, model, inv, source, target)
    assert not [r for r in caplog.records if "SPDInv Edit Sampler" in r.getMessage()]
    with caplog.at_level("WARNING"):
        reconstruct(run_node, pack_nodes, model, inv, target, target)
    (warning,) = [r.getMessage() for r in caplog.records if "SPDInv Edit Sampler" in r.getMessage()]
    assert "'source'" in warning and "SPDInv Invert" in warning
    caplog.clear()
    pnp = run_node(pack_nodes.PNPInjection, model=model, feature_fraction=0.8, attention_fraction=0.5).result[0]
    with caplog.at_level("WARNING"):
        reconstruct(run_node, pack_nodes, pnp, inv, target, target)
    assert not [r for r in caplog.records if "SPDInv Edit Sampler" in r.getMessage()]


def test_residual_plot_is_an_image(run_node, pack_nodes, scene):
    model, _, latent, source, _ = scene
    ddim, _ = invert(run_node, pack_nodes, model, source, latent, method="ddim", steps=4)
    spd, _ = invert(run_node, pack_nodes, model, source, latent, steps=4)
    (image,) = run_node(pack_nodes.SPDInvResidualPlot, inversion=spd, compare=ddim).result
    assert image.shape[0] == 1 and image.shape[-1] == 3 and image.shape[1] >= 256
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert float(image.std()) > 0.05


def test_bad_inputs_are_named(run_node, pack_nodes, scene, comfy_env):
    model, _, latent, source, target = scene
    inv, _ = invert(run_node, pack_nodes, model, source, latent, steps=2)
    combined = source + target
    with pytest.raises(Exception, match="target: has 2 conditioning entries"):
        reconstruct(run_node, pack_nodes, model, inv, source, combined)
    with pytest.raises(Exception, match="sigmas"):
        invert(run_node, pack_nodes, model, source, latent, sigmas=torch.tensor([0.0, 1.0, 2.0]))


@pytest.mark.parametrize("solver", ["anderson", "adamw"])
def test_cancel_stops_within_one_unet_call_and_leaves_no_state(run_node, pack_nodes, scene, comfy_env, solver):
    import comfy.model_management as mm

    model, _, latent, source, _ = scene
    calls = {"n": 0}

    def interrupting(apply_model, args):
        calls["n"] += 1
        if calls["n"] == 3:
            mm.interrupt_current_processing(True)
        return apply_model(args["input"], args["timestep"], **args["c"])

    patched = model.clone()
    patched.set_model_unet_function_wrapper(interrupting)
    grad_before = torch.is_grad_enabled()
    with pytest.raises(mm.InterruptProcessingException):
        invert(run_node, pack_nodes, patched, source, latent, solver=solver, steps=4, max_iters=3)
    assert calls["n"] == 3
    assert not mm.processing_interrupted()
    assert torch.is_grad_enabled() == grad_before and not torch.is_inference_mode_enabled()
    assert "model_function_wrapper" not in model.model_options
    inv, _ = invert(run_node, pack_nodes, model, source, latent, steps=2)
    assert torch.isfinite(inv.result.latents).all()
