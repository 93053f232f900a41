"""The core edit loop (``spdinv.edit_loop.run_edit``) on a toy denoiser: every per-step rule, no ComfyUI."""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.spdinv.edit_loop import pinned_steps, reconstruction_trajectory, run_edit
from spdinv_pack.spdinv.guidance import EditRecipe
from spdinv_pack.spdinv.inversion import InversionSettings, invert
from spdinv_pack.tests.sampling_helpers import ddim_sample, ddim_uniform_sigmas

from toy_model import ToyDenoiser, toy_latent

STEPS = 8


def inverted(batch: int = 1):
    model = ToyDenoiser()
    x0 = torch.cat([toy_latent(seed=s) for s in range(batch)])
    sigmas = ddim_uniform_sigmas(model.train_sigmas, STEPS)
    return model, sigmas, invert(model, x0, sigmas, InversionSettings(rel_tol=0.01))


def timesteps_of(model: ToyDenoiser, sigmas: torch.Tensor) -> list[float]:
    return [float(model.timestep(float(s))) for s in sigmas[:-1]]


def prompt_predictor(model: ToyDenoiser, target_shift: float = 0.0, calls: list | None = None):
    """Stands in for two prompts: the target's conditional prediction is shifted by ``target_shift`` in the
    upper-left quarter (where "the prompts differ"); uncond (= the source prompt) equals the source's cond."""

    def predict(x, sigma, with_uncond):
        if calls is not None:
            calls.append((x.clone(), sigma, with_uncond))
        cond = model(x, sigma)
        half = x.shape[0] // 2
        if target_shift:
            h, w = x.shape[-2:]
            cond = cond.clone()
            cond[half:, :, : h // 2, : w // 2] += target_shift
        return cond, model(x, sigma) if with_uncond else None

    return predict


def test_an_identity_edit_gives_the_reconstruction_on_both_branches():
    """Target = source prompt: cond and uncond coincide, so the target at CFG 7.5 equals the source branch,
    which equals plain DDIM sampling from the noise; with inversion guidance the edit mask is empty, so both
    branches end pinned on the photo's latent."""
    model, sigmas, inv = inverted()
    out = run_edit(prompt_predictor(model), inv.latents, sigmas, EditRecipe(proximal_quantile=0.7), 7.5,
                   timesteps_of(model, sigmas))
    recon = ddim_sample(model, inv.noise, sigmas)
    torch.testing.assert_close(out.reconstruction, recon, atol=2e-6, rtol=0)
    torch.testing.assert_close(out.edited, recon, atol=1e-5, rtol=0)
    pinned = run_edit(prompt_predictor(model), inv.latents, sigmas, EditRecipe(proximal_quantile=0.7, pin_below=0.4),
                      7.5, timesteps_of(model, sigmas))
    assert torch.equal(pinned.reconstruction, inv.latents[-1]) and torch.equal(pinned.edited, inv.latents[-1])


def test_plain_cfg_skips_the_unconditional_prediction_when_every_branch_is_at_cfg_1():
    model, sigmas, inv = inverted()
    calls: list = []
    run_edit(prompt_predictor(model, calls=calls), inv.latents, sigmas, EditRecipe(), 1.0, timesteps_of(model, sigmas))
    assert len(calls) == STEPS and not any(c[2] for c in calls)
    calls.clear()
    run_edit(prompt_predictor(model, calls=calls), inv.latents, sigmas, EditRecipe(), 7.5, timesteps_of(model, sigmas))
    assert all(c[2] for c in calls) and [c[1] for c in calls] == [float(s) for s in sigmas[:-1]]


def test_pinned_steps_are_those_below_the_timestep_threshold():
    assert pinned_steps([999.0, 700.0, 400.0, 399.0, 10.0], 0.4) == (3, 4)
    assert pinned_steps([999.0, 10.0], None) == ()


def test_pinning_sets_the_latent_outside_the_edit_mask_to_the_trajectory_on_pinned_steps_only():
    model, sigmas, inv = inverted()
    timesteps = timesteps_of(model, sigmas)
    recipe = EditRecipe(proximal_quantile=0.8, shrink=False, pin_below=0.4)
    seen: list[tuple[int, torch.Tensor]] = []

    def engine_step(i, x):
        seen.append((i, x.clone()))
        return x

    out = run_edit(prompt_predictor(model, target_shift=3.0), inv.latents, sigmas, recipe, 7.5, timesteps,
                   engine_step=engine_step)
    expected = pinned_steps(timesteps, 0.4)
    assert out.pinned_steps == expected and 0 < len(expected) < STEPS
    for i, x in seen:
        stored = inv.latents[i + 1]
        source, target = x[:1], x[1:]
        if i in expected:
            assert torch.equal(source, stored)  # the source has no edit: pinned whole
            outside = ~((target - stored).abs() > 0)
            assert outside.float().mean() > 0.3  # most of the image is the photo's trajectory
            h, w = x.shape[-2:]
            assert not torch.equal(target[..., : h // 2, : w // 2], stored[..., : h // 2, : w // 2])
        elif i < min(expected):
            assert not torch.equal(target, stored)
    torch.testing.assert_close(out.reconstruction, inv.latents[-1])


def test_without_pinning_the_unedited_source_branch_is_free():
    model, sigmas, inv = inverted()
    recipe = EditRecipe(proximal_quantile=0.9, shrink=False)
    out = run_edit(prompt_predictor(model, 3.0), inv.latents, sigmas, recipe, 7.5, timesteps_of(model, sigmas))
    assert out.pinned_steps == ()
    torch.testing.assert_close(out.reconstruction, ddim_sample(model, inv.noise, sigmas), atol=2e-6, rtol=0)


def test_replay_feeds_the_source_rows_the_stored_trajectory_before_each_prediction():
    model, sigmas, inv = inverted()
    calls: list = []
    recipe = EditRecipe(source_from_inversion=True)
    out = run_edit(prompt_predictor(model, 1.0, calls), inv.latents, sigmas, recipe, 7.5, timesteps_of(model, sigmas))
    for i, (x, _, _) in enumerate(calls):
        assert torch.equal(x[:1], inv.latents[i])
    assert torch.equal(out.reconstruction, inv.latents[-1])  # the last step ends on the photo's latent too


def test_ddim_pnp_replays_the_reconstruction_path_not_the_inversion():
    """PnPInversion's DDIM + PnP: the source branch is fed the DDIM reconstruction from the inverted noise (the
    inversion's prompt at CFG 1), whose latents differ from the stored inversion's on a toy model whose DDIM
    inversion is not exact; the replayed source is that path at every step, ending on its last latent."""
    model, sigmas, inv = inverted()
    path = reconstruction_trajectory(model, inv.noise, sigmas)
    assert path.shape == inv.latents.shape and torch.equal(path[0], inv.noise.float())
    torch.testing.assert_close(path[-1], ddim_sample(model, inv.noise, sigmas), atol=1e-6, rtol=0)
    assert (path[1:-1] - inv.latents[1:-1]).abs().max() > 1e-4  # another path than the inversion's
    calls: list = []
    recipe = EditRecipe(source_from_inversion=True, source_from_reconstruction=True)
    out = run_edit(prompt_predictor(model, 1.0, calls), path, sigmas, recipe, 7.5, timesteps_of(model, sigmas))
    for i, (x, _, _) in enumerate(calls):
        assert torch.equal(x[:1], path[i])
    assert torch.equal(out.reconstruction, path[-1])
    with pytest.raises(ValueError, match="set source_from_inversion"):
        EditRecipe(source_from_reconstruction=True)


def test_replay_corrects_the_source_before_the_local_blend_so_the_background_is_the_photo():
    """DirectInversion + P2P (PnPInversion's ``p2p_guidance_forward``): the source is set back onto the inversion
    after each step, then the local blend copies it outside the mask; the edit's background ends as the photo's
    latent exactly, where a blend of the free DDIM source would end elsewhere."""
    model, sigmas, inv = inverted()
    outside = torch.ones_like(inv.latents[0], dtype=torch.bool)
    outside[..., : outside.shape[-2] // 2, : outside.shape[-1] // 2] = False
    seen: list[bool] = []

    def local_blend(i, x):
        seen.append(torch.equal(x[:1], inv.latents[i + 1]))
        return torch.cat([x[:1], torch.where(outside, x[:1], x[1:])])

    ends = {}
    for replay in (True, False):
        out = run_edit(prompt_predictor(model, 3.0), inv.latents, sigmas, EditRecipe(source_from_inversion=replay),
                       7.5, timesteps_of(model, sigmas), engine_step=local_blend)
        ends[replay] = out.edited
    assert seen[:STEPS] == [True] * STEPS
    assert torch.equal(ends[True][outside], inv.latents[-1][outside])
    assert not torch.allclose(ends[True][~outside], inv.latents[-1][~outside], atol=1e-3)  # the edit is inside
    assert not torch.allclose(ends[False][outside], inv.latents[-1][outside], atol=1e-4)


def test_the_engine_hook_runs_after_each_step_on_the_stacked_latent_and_its_result_is_kept():
    model, sigmas, inv = inverted()
    order: list[int] = []

    def engine_step(i, x):
        order.append(i)
        assert x.shape[0] == 2
        return torch.cat([x[:1], x[:1]])  # a "blend" that keeps the source everywhere

    out = run_edit(prompt_predictor(model, 2.0), inv.latents, sigmas, EditRecipe(), 7.5, timesteps_of(model, sigmas),
                   engine_step=engine_step)
    assert order == list(range(STEPS))
    assert torch.equal(out.edited, out.reconstruction)


def test_a_batch_of_images_edits_each_image_as_alone():
    model, sigmas, inv = inverted(batch=2)
    recipe = EditRecipe(proximal_quantile=0.7, pin_below=0.4)
    timesteps = timesteps_of(model, sigmas)
    both = run_edit(prompt_predictor(model, 2.0), inv.latents, sigmas, recipe, 7.5, timesteps)
    for image in range(2):
        alone = run_edit(prompt_predictor(model, 2.0), inv.latents[:, image:image + 1], sigmas, recipe, 7.5, timesteps)
        torch.testing.assert_close(both.edited[image:image + 1], alone.edited, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(both.reconstruction[image:image + 1], alone.reconstruction, atol=1e-5, rtol=1e-5)


def test_progress_sees_every_step_with_the_guided_prediction():
    model, sigmas, inv = inverted()
    seen: list[tuple[int, int]] = []
    run_edit(prompt_predictor(model), inv.latents, sigmas, EditRecipe(), 7.5, timesteps_of(model, sigmas),
             progress=lambda i, n, x, d: seen.append((i, n)))
    assert seen == [(i, STEPS) for i in range(STEPS)]


def test_a_trajectory_that_does_not_match_the_grid_is_refused():
    model, sigmas, inv = inverted()
    with pytest.raises(ValueError, match="trajectory"):
        run_edit(prompt_predictor(model), inv.latents[1:], sigmas, EditRecipe(), 7.5, timesteps_of(model, sigmas))
