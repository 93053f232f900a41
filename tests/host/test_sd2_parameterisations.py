"""SPDInv on SD2.x under each parameterisation inside real ComfyUI (random-weight SD2.x 768-v checkpoint, see
``test_model_families.py``): eps and v-prediction through the core ``ModelSamplingDiscrete`` node, and zero
terminal SNR on a grid that reaches the terminal sigma."""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.spdinv.inversion import step_relaxation
from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.tests.host.factory import sd_like_latent
from spdinv_pack.tests.host.pack_calls import invert, reconstruct
from spdinv_pack.tests.sampling_helpers import step_contraction

pytestmark = pytest.mark.parametrize("family", ["sd2-v"], indirect=True, scope="module")

SOURCE = "a photo of a cat"
STEPS = 10


def first_step_contraction(model, source, latent, inversion) -> tuple[float, float]:
    """Spectral radius of the fixed-point map of the step into the highest sigma at the solution found:
    plain and relaxed as the Anderson solver iterates it."""
    import comfy.samplers

    from spdinv_pack.nodes.comfy_bridge import denoiser, input_scale_of, run_in_guider, skip_of

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(source, [])
    guider.set_cfg(1.0)
    result = inversion.result

    def routine(guider, extra_args, _start, x0, _grid, _progress):
        sampling = guider.inner_model.model_sampling
        sigma_b, sigma_a = (float(s) for s in result.sigmas[:2])
        omega = step_relaxation(sigma_a, sigma_b, skip_of(sampling)(sigma_b))
        denoise, on_device, scale = denoiser(guider, extra_args), result.to(x0.device), input_scale_of(sampling)
        return x0, [float(step_contraction(denoise, on_device, 0, scale, relaxation=w).max()) for w in (1.0, omega)]

    with torch.inference_mode():
        _, radii = run_in_guider(guider, routine, torch.zeros_like(latent), latent, result.sigmas, result.steps)
    return radii[0], radii[1]


@pytest.mark.parametrize("sampling,zsnr,scheduler", [
    ("eps", False, "ddim_uniform"),
    ("v_prediction", False, "ddim_uniform"),
    ("v_prediction", True, "simple"),
], ids=["eps", "v", "v-zsnr-terminal"])
def test_spdinv_reconstructs_far_better_than_ddim(run_node, pack_nodes, comfy_env, comfy_extra_nodes, family,
                                                  sampling, zsnr, scheduler):
    _, (model, clip, _) = family
    (model,) = run_node(comfy_extra_nodes["ModelSamplingDiscrete"], model=model, sampling=sampling, zsnr=zsnr)
    (sigmas,) = run_node(comfy_extra_nodes["BasicScheduler"], model=model, scheduler=scheduler, steps=STEPS,
                         denoise=1.0)
    (source,) = run_node(comfy_env.nodes.CLIPTextEncode, text=SOURCE, clip=clip)
    latent = {"samples": sd_like_latent(64)}
    psnr, results, inversions = {}, {}, {}
    for method in ("ddim", "spdinv"):
        inversion, _ = invert(run_node, pack_nodes, model, source, latent, method=method, sigmas=sigmas)
        _, recon = reconstruct(run_node, pack_nodes, model, inversion, source)
        psnr[method] = latent_psnr(recon["samples"], latent["samples"])
        results[method], inversions[method] = inversion.result, inversion
    spd = results["spdinv"]
    plain, relaxed = first_step_contraction(model, source, latent["samples"], inversions["spdinv"])
    print(f"\n[host] SD2.x {sampling}{' zsnr' if zsnr else ''} ({scheduler}, sigmas {float(sigmas[1]):.1f} -> "
          f"{float(sigmas[0]):.1f}): reconstruction PSNR ddim {psnr['ddim']:.1f} dB, spdinv {psnr['spdinv']:.1f} dB; "
          f"last step: contraction {plain:.3f} plain, {relaxed:.3f} relaxed, "
          f"residual {float(spd.residual[0].max()):.1e} after {int(spd.forwards[0])} passes; "
          f"passes per step {spd.forwards.tolist()}; residual per step "
          f"{[f'{r:.0e}' for r in spd.residual[:, 0].tolist()]}")
    assert psnr["spdinv"] >= psnr["ddim"] + 10
    assert relaxed <= plain + 1e-3


def test_the_zero_terminal_snr_step_is_solved_relaxed(run_node, pack_nodes, comfy_extra_nodes, comfy_env, family,
                                                      monkeypatch):
    """With the node's tolerance (rel_tol 0.01) the terminal step must be solved, not just guessed: relaxed,
    it meets the tolerance in no more passes than the plain map needs (compared through the node's settings)."""
    import spdinv_pack.nodes.invert as invert_node
    from spdinv_pack.spdinv.inversion import InversionSettings

    _, (model, clip, _) = family
    (model,) = run_node(comfy_extra_nodes["ModelSamplingDiscrete"], model=model, sampling="v_prediction", zsnr=True)
    (sigmas,) = run_node(comfy_extra_nodes["BasicScheduler"], model=model, scheduler="simple", steps=STEPS,
                         denoise=1.0)
    (source,) = run_node(comfy_env.nodes.CLIPTextEncode, text=SOURCE, clip=clip)
    latent = {"samples": sd_like_latent(64)}
    runs = {}
    for relax in (True, False):
        monkeypatch.setattr(invert_node, "InversionSettings",
                            lambda **kw: InversionSettings(**kw, relax=relax))  # noqa: B023
        inversion, _ = invert(run_node, pack_nodes, model, source, latent, sigmas=sigmas, rel_tol=0.01)
        _, recon = reconstruct(run_node, pack_nodes, model, inversion, source)
        result = inversion.result
        runs[relax] = result
        print(f"\n[host] SD2.x v zsnr, rel_tol 0.01, {'relaxed' if relax else 'plain'}: reconstruction PSNR "
              f"{latent_psnr(recon['samples'], latent['samples']):.1f} dB, {int(result.forwards.sum())} passes "
              f"{result.forwards.tolist()}; terminal step residual {float(result.residual[0, 0]):.1e} "
              f"(guess {float(result.guess_residual[0, 0]):.1e})")
    relaxed, plain = runs[True], runs[False]
    assert float(relaxed.residual[0, 0]) <= 0.01 * float(relaxed.guess_residual[0, 0])
    assert int(relaxed.forwards[0]) <= int(plain.forwards[0])
