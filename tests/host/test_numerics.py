"""Numerical safety inside real ComfyUI: NaN from the UNet during the fixed-point search, and UNets that
compute in fp16 or bf16 (as ComfyUI runs them with --force-fp16 / --bf16-unet or ModelComputeDtype) while the
solver keeps its state in fp32."""

from __future__ import annotations

import math

import pytest
import torch

from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.tests.host.factory import sd_like_latent
from spdinv_pack.tests.host.pack_calls import edit, invert, reconstruct

STEPS = 4


def p2p(run_node, pack_nodes, model, clip) -> tuple:
    """A word-swap P2P model with local blend and the full recipe, and its two conditionings."""
    return run_node(
        pack_nodes.P2PAttentionControl, model=model, clip=clip, source_text="a photo of a cat",
        target_text="a photo of a dog", mode="word swap", cross_replace=0.8, self_replace=0.6,
        blend_source_words="cat", blend_target_words="dog", blend_threshold=0.3, blend_start=0.2, reweight="",
        proximal_guidance=True, proximal_quantile=0.7, inversion_guidance=True).result


@pytest.fixture(scope="module")
def scene(comfy_env, sd15, run_node, pack_nodes):
    model, clip, _ = sd15
    p2p_model, source, target = p2p(run_node, pack_nodes, model, clip)
    return model, clip, {"samples": sd_like_latent(64)}, source, target, p2p_model


@pytest.mark.parametrize("solver", ["anderson", "adamw"])
def test_nan_from_the_unet_keeps_the_last_finite_iterate_warns_once_and_the_edit_finishes(
        run_node, pack_nodes, scene, solver):
    model, _, latent, source, target, p2p_model = scene
    calls = {"n": 0}

    def poisoning(apply_model, args):
        calls["n"] += 1
        out = apply_model(args["input"], args["timestep"], **args["c"])
        return torch.full_like(out, math.nan) if calls["n"] in (2, 5, 6) else out

    patched = model.clone()
    patched.set_model_unet_function_wrapper(poisoning)
    with pytest.warns(UserWarning, match="NaN/Inf") as record:
        inversion, noise = invert(run_node, pack_nodes, patched, source, latent, solver=solver, steps=STEPS,
                                  max_iters=4, rel_tol=0.01)
    assert calls["n"] > 6
    assert sum("NaN/Inf" in str(w.message) for w in record) == 1
    assert torch.isfinite(inversion.result.latents).all() and torch.isfinite(noise["samples"]).all()
    edited, recon, _ = edit(run_node, pack_nodes, p2p_model, inversion, source, target)
    assert torch.isfinite(edited["samples"]).all() and torch.isfinite(recon["samples"]).all()


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_unets_invert_and_edit_with_fp32_solver_state(run_node, pack_nodes, scene, comfy_env,
                                                                     dtype):
    """The UNet computes in ``dtype``; residuals, Anderson history and the trajectory stay fp32. SPDInv still
    reconstructs far better than DDIM inversion on the same half-precision UNet, and P2P edits run."""
    import comfy_extras.nodes_model_advanced as advanced

    model, clip, latent, source, _, _ = scene
    (half,) = advanced.ModelComputeDtype().patch(model, dtype)
    ddim, _ = invert(run_node, pack_nodes, half, source, latent, method="ddim", steps=STEPS)
    spd, _ = invert(run_node, pack_nodes, half, source, latent, steps=STEPS, rel_tol=0.01)
    adamw, _ = invert(run_node, pack_nodes, half, source, latent, solver="adamw", steps=2, max_iters=2)
    for result in (ddim.result, spd.result, adamw.result):
        assert result.latents.dtype == torch.float32 and torch.isfinite(result.latents).all()
    assert int(adamw.result.backwards.sum()) > 0
    psnr = {name: latent_psnr(reconstruct(run_node, pack_nodes, half, inv, source)[1]["samples"], latent["samples"])
            for name, inv in (("ddim", ddim), ("spdinv", spd))}
    print(f"\n[host] {dtype} UNet: reconstruction PSNR ddim {psnr['ddim']:.1f} dB, spdinv {psnr['spdinv']:.1f} dB, "
          f"steps under delta {spd.result.steps_under_delta()}/{STEPS}")
    assert psnr["spdinv"] > psnr["ddim"] + 10
    p2p_half, p2p_source, p2p_target = p2p(run_node, pack_nodes, half, clip)
    edited, recon, _ = edit(run_node, pack_nodes, p2p_half, spd, p2p_source, p2p_target)
    assert torch.isfinite(edited["samples"]).all() and torch.isfinite(recon["samples"]).all()
