"""Behaviour of the inversion core on a small random-weight denoiser (no ComfyUI, no weights)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from spdinv_pack.spdinv.inversion import (
    InversionSettings,
    _adamw,
    _anderson,
    _FixedPointMap,
    dci_corrected,
    fixed_point_residual,
    invert,
    mean_square,
    step_relaxation,
)
from spdinv_pack.spdinv.metrics import latent_psnr
from spdinv_pack.spdinv.schedules import reference_sigmas, validate_sampling_grid, vp_input_scale
from spdinv_pack.tests.sampling_helpers import ddim_sample, ddim_uniform_sigmas, sd_train_sigmas, step_contraction

from toy_model import ToyDenoiser, ToyVDenoiser, toy_latent, v_skip

DELTA = 5e-6


def run(settings: InversionSettings, steps: int, batch: int = 1):
    model = ToyDenoiser()
    x0 = toy_latent(batch=batch)
    sigmas = ddim_uniform_sigmas(model.train_sigmas, steps)
    result = invert(model, x0, sigmas, settings)
    recon = ddim_sample(model, result.noise, sigmas)
    return result, latent_psnr(recon, x0), model


def test_ddim_uniform_grid_matches_comfyui_timesteps():
    train = sd_train_sigmas()
    grid = ddim_uniform_sigmas(train, 10)
    assert grid.shape == (11,)
    assert float(grid[-1]) == 0.0
    expected = torch.stack([train[t] for t in range(901, 0, -100)])
    assert torch.allclose(grid[:-1], expected)
    grid50 = ddim_uniform_sigmas(train, 50)
    assert torch.allclose(grid50[:-1], torch.stack([train[t] for t in range(981, 0, -20)]))
    assert abs(float(train[0]) - 0.0292) < 1e-3 and abs(float(train[-1]) - 14.6146) < 1e-3


def test_reference_grid_is_the_official_codes_timesteps_980_to_0():
    train = sd_train_sigmas()
    grid = reference_sigmas(train, 50)
    assert grid.shape == (51,) and float(grid[-1]) == 0.0
    assert torch.equal(grid[:-1], torch.stack([train[t] for t in range(980, -1, -20)]))
    validate_sampling_grid(grid)
    assert torch.equal(reference_sigmas(train, 10)[:-1], torch.stack([train[t] for t in range(900, -1, -100)]))


@pytest.mark.parametrize("solver", ["anderson", "adamw"])
def test_each_solver_reaches_delta_where_ddim_does_not(solver):
    ddim, _, _ = run(InversionSettings(method="ddim"), steps=10)
    spd, _, _ = run(InversionSettings(solver=solver), steps=20 if solver == "adamw" else 10)
    assert ddim.steps_under_delta() < ddim.steps // 2
    assert spd.steps_under_delta() >= math.ceil(0.9 * spd.steps)
    assert float(spd.residual.max()) < DELTA


def test_spdinv_reconstructs_far_better_than_ddim():
    _, ddim_psnr, _ = run(InversionSettings(method="ddim"), steps=10)
    _, anderson_psnr, _ = run(InversionSettings(solver="anderson"), steps=10)
    _, adamw_psnr, _ = run(InversionSettings(solver="adamw"), steps=10)
    assert anderson_psnr > ddim_psnr + 10
    assert adamw_psnr > ddim_psnr


def test_relative_tolerance_buys_reconstruction_where_delta_is_loose():
    """At 50 steps the paper's guess mostly meets delta already; a relative tolerance still converges."""
    _, ddim_psnr, _ = run(InversionSettings(method="ddim"), steps=50)
    _, loose_psnr, _ = run(InversionSettings(solver="anderson", warm_start="reference"), steps=50)
    tight, tight_psnr, _ = run(InversionSettings(solver="anderson", warm_start="reference", rel_tol=0.01), steps=50)
    assert loose_psnr < ddim_psnr + 3
    assert tight_psnr > ddim_psnr + 10
    assert bool((tight.residual <= 0.01 * tight.guess_residual + 1e-12).all())


def test_the_warm_start_skips_the_guess_pass_and_reaches_the_same_tolerance():
    """The warm start costs no UNet pass (after the first step the eps of the previous accepted latent was
    measured by its last evaluation; the first step starts from the clean latent, whose first evaluation is
    the reference's guess) and still meets the tolerance. Whether it starts closer depends on how
    smooth the model is in sigma (the toy's time embedding is not; see benchmarks/ for SD1.5)."""
    settings = InversionSettings(solver="anderson", rel_tol=0.0, delta=1e-9, predicted_stop=False)
    ref, _, _ = run(replace(settings, warm_start="reference"), steps=20)
    warm, _, model = run(replace(settings, warm_start="ddim"), steps=20)
    assert float(warm.residual.max()) < 1e-9 and float(ref.residual.max()) < 1e-9
    first = warm.steps - 1
    assert int(ref.forwards[first]) == int(ref.iterations[first]) + 1
    assert torch.equal(warm.forwards, warm.iterations)
    assert torch.equal(ref.forwards[:first], ref.iterations[:first] + 1)
    assert torch.allclose(fixed_point_residual(model, warm), warm.residual, rtol=1e-2, atol=1e-12)


def test_predicted_stop_skips_the_verifying_pass_and_its_prediction_holds():
    """With ``predicted_stop`` a step whose next proposal is predicted under the tolerance accepts it without
    the evaluation that would only verify it: fewer passes, the steps flagged, and re-measured afresh those
    steps are where the prediction said (within 2x, under 2 delta) with the same reconstruction (0.5 dB)."""
    for steps in (4, 10, 20):
        verified, verified_psnr, model = run(InversionSettings(predicted_stop=False), steps=steps)
        fast, fast_psnr, _ = run(InversionSettings(), steps=steps)
        assert verified.predicted is None
        assert fast.predicted is not None and bool(fast.predicted.any())
        assert int(fast.forwards.sum()) <= int(verified.forwards.sum()) - int(fast.predicted.sum())
        actual = fixed_point_residual(model, fast)
        flagged = fast.predicted
        assert bool((actual[flagged] < 2 * fast.residual[flagged] + 1e-12).all())
        assert bool((actual < 2 * DELTA).all())
        assert torch.allclose(actual[~flagged], fast.residual[~flagged], rtol=1e-3, atol=1e-12)
        assert fast_psnr > verified_psnr - 0.5


def test_trajectory_and_grid_shapes():
    result, _, _ = run(InversionSettings(), steps=5, batch=2)
    assert result.sigmas.shape == (6,)
    assert result.latents.shape == (6, 2, 4, 8, 8)
    assert result.residual.shape == result.guess_residual.shape == (5, 2)
    assert result.iterations.shape == result.forwards.shape == result.backwards.shape == (5,)
    assert torch.equal(result.latents[-1], toy_latent(batch=2))
    assert torch.equal(result.noise, result.latents[0])


def test_residual_is_measured_on_the_reference_vp_scale():
    """The recorded residual equals mean((z - C1 z_prev - C2 eps)^2) on VP latents, as in the official code."""
    model = ToyDenoiser()
    result, _, _ = run(InversionSettings(solver="anderson", predicted_stop=False), steps=5)
    recomputed = fixed_point_residual(model, result)
    assert torch.allclose(recomputed, result.residual, rtol=1e-3, atol=1e-12)
    grid = [float(s) for s in result.sigmas]
    for i in range(result.steps):
        s_a, s_b = grid[i + 1], grid[i]
        a_a, a_b = 1 / (1 + s_a**2), 1 / (1 + s_b**2)
        z_a, z_b = result.latents[i + 1] * math.sqrt(a_a), result.latents[i] * math.sqrt(a_b)
        eps = (z_b / math.sqrt(a_b) - model(z_b / math.sqrt(a_b), s_b)) / s_b
        c1 = math.sqrt(a_b / a_a)
        c2 = math.sqrt(1 - a_b) - math.sqrt(a_b * (1 - a_a) / a_a)
        vp = float((z_b - (c1 * z_a + c2 * eps)).square().mean())
        assert vp == pytest.approx(float(result.residual[i, 0]), rel=1e-3, abs=1e-12)


def test_adamw_early_stop_applies_the_step_and_stops():
    """With a threshold every guess meets, each step runs one AdamW update (still applied) and stops."""
    result, _, _ = run(InversionSettings(solver="adamw", delta=1.0), steps=4)
    assert result.iterations.tolist() == [1, 1, 1, 1]
    assert result.forwards.tolist() == [2, 2, 2, 2] and result.backwards.tolist() == [1, 1, 1, 1]
    capped, _, _ = run(InversionSettings(solver="adamw", delta=0.0, max_iters=3), steps=4)
    assert capped.iterations.tolist() == [3, 3, 3, 3]


def test_adamw_iterate_matches_a_hand_written_reference_step():
    """One iteration equals torch AdamW (lr 1e-3, weight decay 0.01) on the VP latent with the mse loss."""
    model = ToyDenoiser()
    x_a = toy_latent()
    s_a, s_b = 0.5, 0.9
    scale_b = 1 / math.sqrt(1 + s_b**2)
    f = _FixedPointMap(model, x_a, s_a, s_b, scale_b)
    z0 = x_a * scale_b
    out = _adamw(f, z0, InversionSettings(solver="adamw", delta=0.0, max_iters=1))
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.AdamW([z], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    loss = torch.nn.functional.mse_loss(z, f(z))
    loss.backward()
    opt.step()
    assert torch.allclose(out.latent, z.detach(), atol=1e-7)
    assert float(out.guess_residual[0]) == pytest.approx(float(loss.detach()), rel=1e-5)


def test_anderson_safeguard_recovers_from_a_diverging_map():
    """On f(z) = -1.5 z + c plain iteration diverges; the safeguard damps it back to the fixed point."""
    c = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))

    def f(z: torch.Tensor, _items: torch.Tensor | None = None) -> torch.Tensor:
        return -1.5 * z + c

    settings = InversionSettings(memory=0, max_iters=40, delta=1e-10)
    out = _anderson(f, torch.zeros_like(c), settings)
    assert float(out.residual[0]) < 1e-10
    assert torch.allclose(out.latent, c / 2.5, atol=1e-4)
    accelerated = _anderson(f, torch.zeros_like(c), InversionSettings(memory=3, max_iters=40, delta=1e-10))
    assert accelerated.iterations < out.iterations


def test_a_step_cut_short_by_max_iters_takes_its_last_proposal_where_it_is_predicted_better():
    """On the contraction f(z) = 0.8 z + c (fixed point 5c) with one evaluation the step takes f(z0), one
    application of the map, instead of the warm start it evaluated; cut after three it takes the proposal the
    third evaluation made, whose true residual is below every evaluated iterate's; the recorded residual is flagged
    as predicted. Without ``predicted_stop`` the best evaluated iterate is kept, as before."""
    c = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))

    def f(z: torch.Tensor, _items: torch.Tensor | None = None) -> torch.Tensor:
        return 0.8 * z + c

    def true_residual(z: torch.Tensor) -> float:
        return float(mean_square(f(z) - z)[0])

    z0 = torch.zeros_like(c)
    one = _anderson(f, z0, InversionSettings(max_iters=1, delta=1e-12, memory=0))
    assert torch.equal(one.latent, c) and bool(one.predicted[0])
    assert torch.equal(one.mapped, f(z0))  # the eps handed on is the evaluated one's
    kept = _anderson(f, z0, InversionSettings(max_iters=1, delta=1e-12, memory=0, predicted_stop=False))
    assert torch.equal(kept.latent, z0) and not bool(kept.predicted[0])
    cut = _anderson(f, z0, InversionSettings(max_iters=3, delta=1e-12, memory=0))
    plain = _anderson(f, z0, InversionSettings(max_iters=3, delta=1e-12, memory=0, predicted_stop=False))
    assert bool(cut.predicted[0]) and cut.iterations == plain.iterations == 3
    assert true_residual(cut.latent) < 0.7 * true_residual(plain.latent)
    assert float(cut.residual[0]) == pytest.approx(true_residual(cut.latent), rel=1e-3)


def test_rel_tol_of_a_step_started_from_the_clean_latent_is_relative_to_its_ddim_guess():
    """The first step starts at the clean latent, whose residual is far larger than the DDIM guess f(z0)'s; rel_tol
    must be relative to the guess (the second evaluation), or the first step is accepted ~100x too loose (on the
    random SD3 model at 50 steps that cost 15 dB of reconstruction)."""
    c = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))

    def f(z: torch.Tensor, _items: torch.Tensor | None = None) -> torch.Tensor:
        return 0.5 * z + c

    settings = InversionSettings(delta=1.0, rel_tol=0.01, memory=0, predicted_stop=False)
    z0 = torch.zeros_like(c)
    start = float(mean_square(f(z0) - z0)[0])
    guess = float(mean_square(f(f(z0)) - f(z0))[0])
    as_guess = _anderson(f, z0, settings)
    from_clean = _anderson(f, z0, settings, start_is_guess=False)
    assert float(as_guess.guess_residual[0]) == pytest.approx(start)
    assert float(from_clean.guess_residual[0]) == pytest.approx(guess)
    assert float(from_clean.residual[0]) < 0.01 * guess < float(as_guess.residual[0])


def test_anderson_keeps_the_last_finite_iterate_when_the_map_blows_up():
    c = torch.ones(1, 4, 2, 2)
    calls = {"n": 0}

    def f(z: torch.Tensor, _items: torch.Tensor | None = None) -> torch.Tensor:
        calls["n"] += 1
        return torch.full_like(z, math.nan) if calls["n"] == 2 else 0.5 * z + c

    out = _anderson(f, torch.zeros_like(c), InversionSettings(max_iters=30, delta=1e-12))
    assert out.nonfinite
    assert torch.isfinite(out.latent).all()
    assert float(out.residual[0]) < 1e-10


@pytest.mark.parametrize("solver", ["anderson", "adamw"])
def test_nan_from_the_unet_keeps_finite_iterates_and_warns_once(solver):
    """NaN at several evaluations, in several steps, including a step's first guess: one warning, every
    stored latent finite, and sampling back from the noise stays finite."""
    model = ToyDenoiser()
    poisoned = {3, 4, 9, 15}

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        out = model(x, sigma)
        return torch.full_like(out, math.nan) if model.forwards in poisoned else out

    sigmas = ddim_uniform_sigmas(model.train_sigmas, 6)
    settings = InversionSettings(solver=solver, rel_tol=0.01, max_iters=6)
    with pytest.warns(UserWarning, match="NaN/Inf") as record:
        result = invert(denoise, toy_latent(), sigmas, settings)
    assert len([w for w in record if "NaN/Inf" in str(w.message)]) == 1
    assert torch.isfinite(result.latents).all()
    assert torch.isfinite(ddim_sample(model, result.noise, sigmas)).all()


def test_batch_items_are_inverted_independently():
    both, _, _ = run(InversionSettings(solver="anderson"), steps=5, batch=2)
    model = ToyDenoiser()
    sigmas = ddim_uniform_sigmas(model.train_sigmas, 5)
    single = invert(model, toy_latent(batch=2)[1:], sigmas, InversionSettings(solver="anderson"))
    assert torch.allclose(both.latents[:, 1:], single.latents, atol=1e-5)


@pytest.mark.parametrize("solver", ["anderson", "adamw"])
def test_a_converged_batch_item_is_left_out_of_later_evaluations(solver):
    """A batch of an easy photo (small latent: near its fixed point at once) and a hard one costs the rows of
    the two inverted alone, not the hard one's passes times the batch; the results are those of the lone runs
    (AdamW's latents only to its own precision: its first step divides each gradient by its magnitude plus
    1e-8, which turns the batch's last-bit differences in near-zero gradients into visible ones)."""
    latents = torch.cat([0.05 * toy_latent(seed=3), 2.0 * toy_latent(seed=4)])
    settings = (InversionSettings(delta=1e-5, max_iters=12) if solver == "anderson" else
                InversionSettings(solver="adamw", lr=0.05, delta=1e-4, max_iters=12))
    sigmas = ddim_uniform_sigmas(ToyDenoiser().train_sigmas, 5)
    together, alone = ToyDenoiser(), [ToyDenoiser(), ToyDenoiser()]
    both = invert(together, latents, sigmas, settings)
    singles = [invert(model, latents[i:i + 1], sigmas, settings) for i, model in enumerate(alone)]
    assert singles[0].forwards.sum() < singles[1].forwards.sum()
    assert together.forwards == max(model.forwards for model in alone)
    assert together.rows == sum(model.rows for model in alone)
    for i, single in enumerate(singles):
        assert torch.allclose(both.residual[:, i:i + 1], single.residual, rtol=1e-3)
        if solver == "anderson":
            assert torch.allclose(both.latents[:, i:i + 1], single.latents, atol=1e-5)


def test_settings_are_validated_with_the_input_named():
    with pytest.raises(ValueError, match="solver"):
        InversionSettings(solver="newton")
    with pytest.raises(ValueError, match="max_iters"):
        InversionSettings(max_iters=0)
    with pytest.raises(ValueError, match="descending"):
        invert(ToyDenoiser(), toy_latent(), torch.tensor([0.0, 1.0]))


def test_anderson_gives_up_a_map_without_a_fixed_point_before_the_cap():
    """f(z) = z + c never reaches a fixed point; the stall rule stops it well before K evaluations."""
    c = torch.ones(1, 4, 2, 2)
    out = _anderson(lambda z, _items=None: z + c, torch.zeros_like(c), InversionSettings(max_iters=100, delta=1e-12))
    assert out.iterations < 30
    assert float(out.residual[0]) == pytest.approx(1.0)


def test_anderson_stops_a_step_whose_residual_no_longer_falls_fast_enough():
    """A map evaluated with noise (as a UNet in low precision is): its residual has a floor near 1e-6, so it
    soon stops falling by 2x in 4 evaluations and the step stops there instead of wandering on towards K,
    at a residual about as good as the wandering finds."""
    c = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.Generator().manual_seed(1)

    def f(z: torch.Tensor, _items: torch.Tensor | None = None) -> torch.Tensor:
        return 0.5 * z + c + 1e-3 * torch.randn(z.shape, generator=noise)

    bounded = _anderson(f, torch.zeros_like(c), InversionSettings(max_iters=60, delta=1e-12))
    unbounded = _anderson(f, torch.zeros_like(c), InversionSettings(max_iters=60, delta=1e-12, min_progress=1.0))
    assert bounded.iterations < unbounded.iterations
    assert float(bounded.residual[0]) < 10 * float(unbounded.residual[0])
    with pytest.raises(ValueError, match="min_progress"):
        InversionSettings(min_progress=0.5)


LINEAR_SKIP = 0.25
"""``denoised = c·x``: a denoiser that is all skip connection, with ``c_skip = c``."""
LINEAR_STEPS = [(10.0, 4.0), (4.0, 1.0)]
"""``(sigma_b, sigma_a)`` of the first two inversion steps of the grid below."""


def linear_denoiser_inversion():
    """The DDIM inversion of a random batch under ``denoised = c·x`` on the grid 10, 4, 1, 0."""
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    denoise = lambda x, sigma: LINEAR_SKIP * x  # noqa: E731
    return denoise, invert(denoise, x0, torch.tensor([10.0, 4.0, 1.0, 0.0]), InversionSettings(method="ddim"))


def test_step_contraction_measures_the_maps_rate():
    """For ``denoised = c·x`` the map's Jacobian is ``(1 - sigma_a/sigma_b)(1 - c)·I`` at every step."""
    c = LINEAR_SKIP
    denoise, result = linear_denoiser_inversion()
    for step, (sigma_b, sigma_a) in enumerate(LINEAR_STEPS):
        rate = step_contraction(denoise, result, step)
        assert torch.allclose(rate, torch.full((2,), (1 - sigma_a / sigma_b) * (1 - c)), rtol=1e-3)


def test_relaxation_cancels_the_skip_connections_part_of_the_map():
    """For ``denoised = c·x`` with ``c_skip = c`` the relaxed map is constant: its rate is 0 at every step."""
    denoise, result = linear_denoiser_inversion()
    for step, (sigma_b, sigma_a) in enumerate(LINEAR_STEPS):
        omega = step_relaxation(sigma_a, sigma_b, LINEAR_SKIP)
        rate = step_contraction(denoise, result, step, relaxation=omega)
        assert float(rate.max()) < 1e-3
    assert step_relaxation(1.0, 4.0, 1.0) == 1.0, "eps and flow models (c_skip 1) iterate the plain map"


ZSNR_SIGMAS = torch.tensor([4500.0, 14.6, 6.0, 2.5, 1.0, 0.4, 0.0])
"""A v-prediction grid that reaches zero terminal SNR: the last step multiplies sigma by 300."""


def test_v_prediction_terminal_step_converges_in_two_passes_relaxed():
    """The terminal step's plain map contracts at 0.997: plain iteration (memory 0, without the progress bound)
    spends the 25-pass cap and stays above its tolerance (with the bound it gives up after 5); relaxed, it meets
    it in 2 passes. Anderson copes either way (nearly linear there), but relaxed needs fewer passes in all."""
    model = ToyVDenoiser()
    x0 = toy_latent()
    runs = {}
    for memory in (0, 3):
        for relax in (False, True):
            settings = InversionSettings(rel_tol=0.01, memory=memory, relax=relax, min_progress=1.0)
            runs[memory, relax] = invert(model, x0, ZSNR_SIGMAS, settings, skip=v_skip)
    bounded = invert(model, x0, ZSNR_SIGMAS, InversionSettings(rel_tol=0.01, memory=0, relax=False), skip=v_skip)
    assert int(bounded.forwards[0]) == 5
    assert 0.99 < float(step_contraction(model, runs[0, False], 0)[0]) < 1.0
    plain, relaxed = runs[0, False], runs[0, True]
    threshold = 0.01 * float(plain.guess_residual[0, 0])
    assert int(plain.forwards[0]) == 25 and float(plain.residual[0, 0]) > threshold
    assert int(relaxed.forwards[0]) == 2 and float(relaxed.residual[0, 0]) < threshold
    assert int(runs[3, True].forwards.sum()) < int(runs[3, False].forwards.sum())
    for result in (relaxed, runs[3, True]):
        assert latent_psnr(ddim_sample(model, result.noise, ZSNR_SIGMAS), x0) > 55


def test_eps_models_invert_unrelaxed():
    model = ToyDenoiser()
    sigmas = ddim_uniform_sigmas(model.train_sigmas, 6)
    relaxed = invert(model, toy_latent(), sigmas, InversionSettings())
    plain = invert(model, toy_latent(), sigmas, InversionSettings(relax=False))
    assert torch.equal(relaxed.latents, plain.latents)


def test_dci_correction_is_a_step_down_the_gradient_of_the_distance_to_the_clean_latent():
    gen = torch.Generator().manual_seed(5)
    eps, anchor = torch.randn(2, 4, 6, 6, generator=gen), torch.randn(2, 4, 6, 6, generator=gen)
    probe = eps.clone().requires_grad_(True)
    (grads,) = torch.autograd.grad((anchor - probe).flatten(1).norm(dim=1).sum(), probe)
    assert torch.allclose(dci_corrected(eps, anchor, 0.7), eps - 0.7 * grads, atol=1e-6)
    assert torch.allclose((dci_corrected(eps, anchor, 0.7) - eps).flatten(1).norm(dim=1), torch.tensor(0.7))


@pytest.mark.parametrize("solver", ["anderson", "adamw"])
def test_dci_inversion_solves_the_corrected_fixed_point(solver):
    """With dci_rate the solvers meet the corrected map's fixed point (a different trajectory from SPDInv's;
    re-measured for Anderson, whose accepted latent is the one measured); at 0 the inversion is plain SPDInv's
    to the bit."""
    model = ToyDenoiser()
    x0 = toy_latent()
    sigmas = ddim_uniform_sigmas(model.train_sigmas, 5)
    extra = {} if solver == "anderson" else {"lr": 0.02, "max_iters": 40}
    dci = invert(model, x0, sigmas, InversionSettings(solver=solver, dci_rate=0.5, delta=1e-6, predicted_stop=False,
                                                      **extra))
    plain = invert(model, x0, sigmas, InversionSettings(solver=solver, delta=1e-6, **extra))
    off = invert(model, x0, sigmas, InversionSettings(solver=solver, delta=1e-6, dci_rate=0.0, **extra))
    assert torch.equal(off.latents, plain.latents)
    assert latent_psnr(dci.noise, plain.noise) < 60
    for i in range(dci.steps if solver == "anderson" else 0):  # adamw moves on after its last measured loss
        f = _FixedPointMap(model, dci.latents[i + 1], float(sigmas[i + 1]), float(sigmas[i]),
                           vp_input_scale(float(sigmas[i])), x0, 0.5)
        z = dci.latents[i] * vp_input_scale(float(sigmas[i]))
        assert float(mean_square(f(z) - z)) < 1.2 * float(dci.residual[i, 0]) + 1e-9
    assert float(dci.residual.max()) < 1e-4
    with pytest.raises(ValueError, match="dci_rate"):
        InversionSettings(dci_rate=-1.0)


@pytest.mark.parametrize("slope", [-0.95, -1.3])
def test_anderson_solves_a_flow_step_whose_plain_iteration_oscillates_or_diverges(slope):
    """A flow step (input scale 1) whose map ``z -> x_a + sigma_b * v(z)`` has slope ``slope``: plain fixed-point
    iteration alternates around the solution (FTEdit's problem on SD3.5, which it averages away; at -0.95 it is
    still far after K = 25 plain iterations); Anderson's history cancels the oscillation and meets delta in a
    few evaluations, also beyond -1, where plain iteration has no attracting fixed point."""
    sigma = 0.5
    target = toy_latent(seed=3)

    def denoise(x, s, items=None):  # velocity v(x) = (slope / sigma) (x - target) + target / sigma
        v = slope / sigma * (x - target) + target / sigma
        return x - s * v

    x0 = torch.zeros_like(target)
    grid = torch.tensor([sigma, 0.0])
    found = invert(denoise, x0, grid, InversionSettings(rel_tol=0.0), input_scale=lambda s: 1.0)
    assert float(found.residual[0].max()) < 5e-6 and int(found.iterations[0].max()) <= 6
    if slope > -1:
        picard = invert(denoise, x0, grid, InversionSettings(rel_tol=0.0, memory=0, min_progress=1.0),
                        input_scale=lambda s: 1.0)
        assert float(picard.residual[0].max()) > 1e-4
