"""The other inversions SPDInvInvert offers, as what each asks of the edit (toy denoiser, no ComfyUI)."""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.spdinv.ddim import ddim_step
from spdinv_pack.spdinv.edit_loop import run_edit
from spdinv_pack.spdinv.guidance import EditRecipe
from spdinv_pack.spdinv.inversion import InversionSettings, invert
from spdinv_pack.spdinv.inversion_methods import INVERSION_METHODS, edit_recipe, protocol_of
from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.tests.sampling_helpers import ddim_uniform_sigmas

from toy_model import ToyDenoiser, toy_latent

STEPS = 8


def null_guided_predictor(model: ToyDenoiser, calls: list):
    """Stands in for a prompt pair against a null prompt: cond = the model, uncond (the null prompt) = the model
    with its prediction pulled 20 % towards the latent (a different prediction, as "" gives)."""

    def predict(x, sigma, with_uncond):
        calls.append(x.clone())
        cond = model(x, sigma)
        return cond, (0.8 * cond + 0.2 * x) if with_uncond else None

    return predict


def test_each_method_inverts_with_the_trajectory_it_names_and_guides_the_source_as_its_reference():
    assert set(INVERSION_METHODS) == {"spdinv", "ddim", "negative_prompt", "null_text", "direct_inversion"}
    assert protocol_of("spdinv").trajectory == "spdinv"
    assert {protocol_of(m).trajectory for m in INVERSION_METHODS if m != "spdinv"} == {"ddim"}
    nti = protocol_of("null_text")
    assert nti.guided and nti.tuned_null and not nti.replay
    direct = protocol_of("direct_inversion")
    assert direct.guided and direct.replay and not direct.source_is_negative
    assert protocol_of("negative_prompt").source_is_negative and not protocol_of("negative_prompt").guided
    assert protocol_of("ddim", "like target").guided and not protocol_of("ddim").guided
    recipe = edit_recipe(EditRecipe(proximal_quantile=0.7), direct, 7.5)
    assert recipe.source_cfg == 7.5 and recipe.source_from_inversion and recipe.proximal_quantile == 0.7
    assert edit_recipe(EditRecipe(), protocol_of("spdinv"), 7.5) == EditRecipe()
    with pytest.raises(ValueError, match="source_guidance"):
        protocol_of("negative_prompt", "like target")
    with pytest.raises(ValueError, match="method"):
        protocol_of("null")


def test_direct_inversion_keeps_the_guided_source_branch_on_the_ddim_trajectory():
    """Guided at CFG 7.5 against the null prompt, a DDIM-inverted source branch leaves the trajectory (the
    paper's DDIM baseline); DirectInversion's replay sets it back onto the stored latent after every step (the
    reference's step-end offset), so each step's source input is the trajectory's and it ends on the photo's
    latent, where the free guided step from the last stored latent would not."""
    model = ToyDenoiser()
    x0 = toy_latent()
    sigmas = ddim_uniform_sigmas(model.train_sigmas, STEPS)
    inv = invert(model, x0, sigmas, InversionSettings(method="ddim"))
    timesteps = [float(model.timestep(float(s))) for s in sigmas[:-1]]
    runs = {}
    for method in ("ddim", "direct_inversion"):
        calls: list = []
        recipe = edit_recipe(EditRecipe(), protocol_of(method, "like target"), 7.5)
        runs[method] = run_edit(null_guided_predictor(model, calls), inv.latents, sigmas, recipe, 7.5, timesteps), calls
    baseline, _ = runs["ddim"]
    direct, calls = runs["direct_inversion"]
    for i, x in enumerate(calls):
        assert torch.equal(x[:1], inv.latents[i])
    cond = model(inv.latents[STEPS - 1], float(sigmas[STEPS - 1]))
    free = ddim_step(inv.latents[STEPS - 1], 0.8 * cond + 0.2 * inv.latents[STEPS - 1]
                     + 7.5 * (cond - 0.8 * cond - 0.2 * inv.latents[STEPS - 1]), float(sigmas[STEPS - 1]), 0.0)
    assert torch.equal(direct.reconstruction, inv.latents[STEPS])
    assert not torch.allclose(free, inv.latents[STEPS], atol=1e-3)
    assert latent_psnr(direct.reconstruction, x0) > latent_psnr(baseline.reconstruction, x0) + 10
