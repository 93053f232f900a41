"""DDIM inversion and SPDInv's fixed-point inversion on a sigma grid.

Each inversion step goes from ``x_a`` at ``sigma_a`` up to ``sigma_b`` and must satisfy the DDIM
fixed point ``x_b = x_a + (sigma_b - sigma_a) * eps(x_b, sigma_b)``. Plain DDIM inversion evaluates
``eps`` at the old latent instead; SPDInv (Li et al., ECCV 2024) starts from that guess and searches the
fixed point. Residuals are the per-element mean square of ``z - f(z)`` on the VP scale
(``z = x * input_scale(sigma)``), which is where the official code measures its threshold delta.

The map's Jacobian has a linear part from the denoiser's skip connection: ``denoised = c_skip * x + ...`` gives
``lambda = (1 - sigma_a / sigma_b) * (1 - c_skip(sigma_b))``. It is 0 for eps and flow models (``c_skip = 1``),
but for v-prediction at high sigma ``c_skip -> 0``, and on the last step of a zero-terminal-SNR grid (sigma 14.6
to 4500 on SD2.x) ``lambda`` is 0.997: the map barely contracts. Anderson therefore iterates the relaxed map
``z + omega * (f(z) - z)`` with ``omega = 1 / (1 - lambda)`` (see :func:`step_relaxation`), which cancels that
part and leaves the same fixed point; ``omega`` is 1 wherever ``c_skip`` is 1, so eps models run unchanged.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from .ddim import eps_from_denoised
from .schedules import validate_sampling_grid, vp_input_scale

Denoiser = Callable[..., torch.Tensor]
"""``denoise(x, sigma, items=None) -> denoised``: the model's clean-latent prediction for ``x`` at ``sigma``.

``items`` (a bool mask over the batch, passed only when some items of a batch have converged) names the rows
whose predictions the solver will read; a denoiser may skip the others, returning any finite value there, so
a batch's converged photos stop costing UNet rows."""

SkipScale = Callable[[float], float]
"""``c_skip(sigma)``: the weight of ``x`` in the model's denoised prediction (1 for eps and flow models,
``sigma_data^2 / (sigma^2 + sigma_data^2)`` for v-prediction)."""

StepCallback = Callable[[int, int, torch.Tensor], None]
"""``callback(step, total, latent)`` after each inversion step (progress, cancel)."""

METHODS = ("spdinv", "ddim")
SOLVERS = ("anderson", "adamw")
WARM_STARTS = ("ddim", "reference")
BLOWUP = 10.0
"""Anderson restarts an item whose residual exceeds this multiple of its best."""
PATIENCE = 3
"""Anderson restarts an item whose best residual has not improved for this many evaluations."""
MAX_RESTARTS = 3
"""Anderson gives an item up (keeping its best iterate) after this many restarts: it has stalled."""
PROGRESS_WINDOW = 4
"""Evaluations over which Anderson's ``min_progress`` is measured."""


@dataclass(frozen=True)
class InversionSettings:
    """How to invert. Defaults of ``adamw`` follow the paper's code (K 25, lr 1e-3, delta 5e-6)."""

    method: str = "spdinv"
    solver: str = "anderson"
    max_iters: int = 25
    lr: float = 1e-3
    delta: float = 5e-6
    rel_tol: float = 0.0
    """Also require the residual to fall to ``rel_tol`` times the DDIM guess's (0 = off)."""
    memory: int = 3
    """Anderson history length."""
    damping: float = 1.0
    """Anderson mixing factor (1 = undamped)."""
    warm_start: str = "ddim"
    """Anderson's start: ``ddim``, a DDIM step with the eps measured at the previous step's accepted latent
    (free: its last evaluation measured it), and on the first step the clean latent itself (no eps yet: the
    solver's first evaluation measures it), or ``reference``, the paper's guess (one UNet pass a step). On
    random SD1.5 at 20 steps ``ddim`` saved 19 of 69 passes for 2 dB of a 45 dB reconstruction; extrapolating
    eps linearly in sigma started farther and lost 7 dB (at 4 steps, half that extrapolation: no pass saved)."""
    measure_ddim_residual: bool = True
    """For ``method="ddim"``: spend one extra forward per step to record the residual."""
    relax: bool = True
    """Anderson: relax each step by :func:`step_relaxation` (False: iterate the plain map, for comparison)."""
    dci_rate: float = 0.0
    """DCI's correction (Dual-Conditional Inversion, arXiv 2506.02560): each eps the map evaluates is pulled
    towards the clean latent, ``eps + dci_rate * (z0 - eps) / ||z0 - eps||`` (a step of ``dci_rate`` down the
    gradient of ``||z0 - eps||``, the norm over each photo's whole latent), so the solvers find the corrected
    fixed point. Its code uses 1.0 with the paper's AdamW settings; 0 = off (plain SPDInv)."""
    predicted_stop: bool = True
    """Anderson: accept a step's next iterate without evaluating it when its residual, predicted as the last
    residual times the step's last measured contraction ratio (two evaluations of the same step), is under the
    tolerance. Saves the pass that would only verify it (the next step's warm start then uses the eps of the
    last evaluated iterate); the recorded residual of such a step is the prediction (``predicted``). Likewise a
    step that ``max_iters`` cuts short takes the proposal its last evaluation made where that is predicted better
    than its best evaluated iterate (or after a single evaluation: the proposal is then one application of the
    map, where the evaluated iterate is only the warm start, and the recorded residual is the evaluated
    iterate's, a bound where the map contracts). Such steps are flagged ``predicted`` too. False:
    every accepted latent was evaluated."""
    min_progress: float = 2.0
    """Anderson: stop a step whose best residual fell by less than this factor over the last
    ``PROGRESS_WINDOW`` evaluations (1 = off: only the stall rule and K stop it). A step that converges does so
    far faster; this bounds the work of steps that cannot reach delta (few-step grids, latents unlike a VAE's).
    On random SD1.5 (4 steps, the random VAE's latents) it cut 84 UNet passes to 52 for 1.7 of 19.7 dB gained
    over DDIM; on SD-like latents at 4, 8 and 20 steps it changed nothing."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.max_iters < 1:
            raise ValueError(f"max_iters (K) must be at least 1, got {self.max_iters}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not self.delta >= 0:
            raise ValueError(f"delta must be >= 0, got {self.delta}")
        if not 0 <= self.rel_tol < 1:
            raise ValueError(f"rel_tol must be in [0, 1), got {self.rel_tol}")
        if self.memory < 0:
            raise ValueError(f"memory must be >= 0, got {self.memory}")
        if not 0 < self.damping <= 1:
            raise ValueError(f"damping must be in (0, 1], got {self.damping}")
        if not self.dci_rate >= 0:
            raise ValueError(f"dci_rate must be >= 0, got {self.dci_rate}")
        if not self.min_progress >= 1:
            raise ValueError(f"min_progress must be >= 1, got {self.min_progress}")
        if self.warm_start not in WARM_STARTS:
            raise ValueError(f"warm_start must be one of {WARM_STARTS}, got {self.warm_start!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class InversionResult:
    """The whole inversion, aligned with the sampling grid.

    ``latents[i]`` is the latent at ``sigmas[i]`` (``latents[-1]`` is the input, ``latents[0]`` the final
    noise). Per-step arrays are indexed the same way: entry ``i`` describes how ``latents[i]`` was found
    from ``latents[i + 1]``. Residuals are NaN where they were not measured.
    """

    sigmas: torch.Tensor
    latents: torch.Tensor
    residual: torch.Tensor
    guess_residual: torch.Tensor
    iterations: torch.Tensor
    forwards: torch.Tensor
    backwards: torch.Tensor
    settings: InversionSettings
    predicted: torch.Tensor | None = None
    """``[steps, batch]`` bool: the step's accepted latent was not evaluated and its ``residual`` is the
    solver's prediction (:attr:`InversionSettings.predicted_stop`); ``None`` where no step was."""

    @property
    def steps(self) -> int:
        return int(self.sigmas.numel()) - 1

    @property
    def noise(self) -> torch.Tensor:
        """The final inverted latent at the highest sigma."""
        return self.latents[0]

    def steps_under_delta(self, delta: float | None = None) -> int:
        """Number of steps whose recorded residual is below ``delta`` for every batch item."""
        d = self.settings.delta if delta is None else delta
        return int((self.residual < d).all(dim=1).sum())

    def to(self, device: torch.device | str) -> InversionResult:
        return InversionResult(
            self.sigmas.to(device), self.latents.to(device), self.residual, self.guess_residual,
            self.iterations, self.forwards, self.backwards, self.settings, self.predicted,
        )


@dataclass
class _StepOutcome:
    latent: torch.Tensor
    residual: torch.Tensor
    guess_residual: torch.Tensor
    iterations: int
    forwards: int
    backwards: int
    mapped: torch.Tensor | None = None
    """``f(latent)`` when the solver evaluated it at the accepted latent (free eps for a warm start)."""
    nonfinite: bool = False
    """An evaluation gave NaN/Inf; the solver kept its last finite iterate."""
    predicted: torch.Tensor | None = None
    """Per item: the latent was accepted on a predicted residual, unevaluated (``mapped`` is then ``f`` at the
    item's last evaluated iterate)."""


def dci_corrected(eps: torch.Tensor, anchor: torch.Tensor, rate: float) -> torch.Tensor:
    """``eps - rate * grad_eps ||anchor - eps||`` per batch item: a step of length ``rate`` towards ``anchor``."""
    gap = anchor - eps
    norm = gap.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (eps.dim() - 1)))
    return eps + rate * gap / norm


class _FixedPointMap:
    """``f(z) = s_b * (x_a + (sigma_b - sigma_a) * eps(z / s_b, sigma_b))`` on the VP scale of ``sigma_b``, with
    eps DCI-corrected towards ``anchor`` when ``dci_rate`` is set."""

    def __init__(self, denoise: Denoiser, x_a: torch.Tensor, sigma_a: float, sigma_b: float, scale_b: float,
                 anchor: torch.Tensor | None = None, dci_rate: float = 0.0):
        self.denoise, self.x_a, self.sigma_a, self.sigma_b, self.scale_b = denoise, x_a, sigma_a, sigma_b, scale_b
        self.anchor, self.dci_rate = anchor, dci_rate

    def __call__(self, z: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """``f(z)``; with ``items`` (bool, per batch item) only those rows are evaluated and the others are
        returned as ``z`` (zero residual)."""
        x = z / self.scale_b
        if items is None or bool(items.all()):
            denoised = self.denoise(x, self.sigma_b)
        else:
            denoised = self.denoise(x, self.sigma_b, items=items)
        eps = eps_from_denoised(x, denoised.float(), self.sigma_b)
        if self.dci_rate and self.anchor is not None:
            eps = dci_corrected(eps, self.anchor, self.dci_rate)
        mapped = self.scale_b * (self.x_a + (self.sigma_b - self.sigma_a) * eps)
        if items is None:
            return mapped
        return torch.where(items.view(-1, *([1] * (z.dim() - 1))), mapped, z)

    def eps_of(self, mapped: torch.Tensor) -> torch.Tensor:
        """The eps that produced ``mapped = f(z)``, recovered without a UNet pass."""
        return (mapped / self.scale_b - self.x_a) / (self.sigma_b - self.sigma_a)


def mean_square(t: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of squares over all non-batch dimensions (the reference's ``F.mse_loss``)."""
    return t.float().square().flatten(1).mean(dim=1)


def unit_skip(_sigma: float) -> float:
    """``c_skip`` of eps-prediction and flow models: the denoised prediction is ``x - sigma * model(x)``."""
    return 1.0


def step_relaxation(sigma_a: float, sigma_b: float, skip_b: float) -> float:
    """Relaxation ``omega = 1 / (1 - lambda)`` of the step from ``sigma_a`` to ``sigma_b``, where
    ``lambda = (1 - sigma_a / sigma_b) * (1 - skip_b)`` is the eigenvalue of its map's skip-connection part.

    1 for eps and flow models; ``sigma_b / sigma_a`` where ``c_skip`` vanishes (v-prediction at zero terminal
    SNR), i.e. the step is solved in its denoised form ``x_b = (x_a - (1 - r) * denoised(x_b)) / r``.
    """
    lam = (1.0 - sigma_a / sigma_b) * (1.0 - skip_b)
    return 1.0 / (1.0 - lam)


def _threshold(settings: InversionSettings, guess_residual: torch.Tensor) -> torch.Tensor:
    thr = torch.full_like(guess_residual, settings.delta)
    if settings.rel_tol > 0:
        thr = torch.minimum(thr, settings.rel_tol * guess_residual)
    return thr


def _anderson(f: _FixedPointMap, z0: torch.Tensor, settings: InversionSettings,
              relaxation: float = 1.0, start_is_guess: bool = True) -> _StepOutcome:
    """Forward-only Anderson-accelerated fixed-point iteration, per batch item.

    Type-II Anderson mixing over the last ``memory`` secant pairs, with mixing factor
    ``relaxation * damping`` (Anderson on the relaxed map ``z + relaxation * (f(z) - z)``: the same secant
    fit, a scaled step; the stopping residual stays ``f``'s). A growing residual is normal for
    Anderson and its pair is kept (it carries curvature information), but the safeguard restarts an item
    from its best iterate, without history and with half the mixing factor, when its residual blows up
    (more than ``BLOWUP`` times its best, or non-finite) or its best has not improved for ``PATIENCE``
    evaluations, and stops an item that stalls through ``MAX_RESTARTS`` restarts. Converged items are left out
    of later evaluations (:data:`Denoiser`'s ``items``). The accepted latent is
    each item's best iterate, whose residual was measured by the same evaluation that produced the next
    proposal, so the stopping test costs no extra forward; with ``predicted_stop`` an item whose next proposal
    is predicted under the tolerance (last residual times its last contraction ratio) accepts that proposal
    without the evaluation that would only have verified it, and an item cut short by ``max_iters`` takes its
    last proposal where that is predicted better than its best evaluated iterate.

    ``rel_tol`` is relative to the residual of the DDIM guess: ``z0``'s, or, with ``start_is_guess`` false (the
    first step, started from the clean latent), the second evaluation's, since ``f(z0)`` is that step's DDIM guess.
    """
    batch = z0.shape[0]
    view = (-1, *([1] * (z0.dim() - 1)))
    z = z0
    r = f(z) - z
    res = mean_square(r)
    nonfinite = not bool(torch.isfinite(res).all())
    if nonfinite:
        r = torch.where(torch.isfinite(res).view(view), r, torch.zeros_like(r))
    guess_res = res.clone()
    thr = _threshold(settings, guess_res)
    best_z, best_r, best_res = z.clone(), r.clone(), res.clone()
    done = (res < thr) | ~torch.isfinite(res)
    mixing = settings.damping * relaxation
    beta = torch.full((batch,), mixing, dtype=torch.float64, device=z.device)
    hist_dz: list[torch.Tensor] = []
    hist_dr: list[torch.Tensor] = []
    valid_from = torch.zeros(batch, dtype=torch.long, device=z.device)
    stale = torch.zeros(batch, dtype=torch.long, device=z.device)
    best_history = [best_res.clone()]
    evals = 1
    ratio = torch.full_like(res, math.inf)
    """Each item's last contraction ratio ``res_k / res_(k-1)`` within this step (inf until measured)."""
    predicted = torch.zeros(batch, dtype=torch.bool, device=z.device)
    last_mapped = z + r

    def proposal() -> torch.Tensor:
        """The Anderson step from ``z``: the mixed residual less the secant history's correction."""
        step = beta.view(view).to(z.dtype) * r
        if hist_dz and settings.memory > 0:
            dz = torch.stack([h.flatten(1) for h in hist_dz], dim=-1).double()
            dr = torch.stack([h.flatten(1) for h in hist_dr], dim=-1).double()
            cols = torch.arange(len(hist_dz), device=z.device)
            keep = (cols.unsqueeze(0) >= valid_from.unsqueeze(1)).double().unsqueeze(1)
            dz.mul_(keep)  # in place, here and below: the float64 history is 4·memory latents' worth (video)
            dr.mul_(keep)
            gram = dr.transpose(1, 2) @ dr
            reg = 1e-10 * gram.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-30)
            gram = gram + reg.view(-1, 1, 1) * torch.eye(gram.shape[-1], dtype=gram.dtype, device=z.device)
            rhs = dr.transpose(1, 2) @ r.flatten(1).double().unsqueeze(-1)
            gamma = torch.linalg.solve(gram, rhs)
            correction = (dr.mul_(beta.view(-1, 1, 1)).add_(dz) @ gamma).squeeze(-1)
            del dz, dr
            step = step - correction.view_as(z).to(z.dtype)
        return step

    while not bool(done.all()) and evals < settings.max_iters:
        step = proposal()
        if settings.predicted_stop:
            accept = ~done & (res * ratio < thr)
            if bool(accept.any()):
                best_z = torch.where(accept.view(view), z + step, best_z)
                best_res = torch.where(accept, res * ratio, best_res)
                predicted, done = predicted | accept, done | accept
                if bool(done.all()):
                    break
        active = (~done).view(view)
        z_new = torch.where(active, z + step, z)
        r_new = f(z_new, ~done) - z_new
        evals += 1
        res_new = mean_square(r_new)
        finite = torch.isfinite(res_new)
        nonfinite = nonfinite or not bool(finite.all())
        res_new = torch.where(finite, res_new, torch.full_like(res_new, math.inf))
        ok = finite.view(view) & active
        hist_dz.append(torch.where(ok, z_new - z, torch.zeros_like(z)))
        hist_dr.append(torch.where(ok, r_new - r, torch.zeros_like(z)))
        if len(hist_dz) > settings.memory:
            hist_dz.pop(0)
            hist_dr.pop(0)
            valid_from = (valid_from - 1).clamp_min(0)
        if not start_is_guess and evals == 2:
            guess_res = torch.where(active.view(-1), res_new, guess_res)
            thr = _threshold(settings, guess_res)
        improved = (res_new < best_res) & ~done
        best_z = torch.where(improved.view(view), z_new, best_z)
        best_r = torch.where(improved.view(view), r_new, best_r)
        best_res = torch.where(improved, res_new, best_res)
        stale = torch.where(improved, torch.zeros_like(stale), stale + 1)
        restart = ~done & ((res_new > BLOWUP * best_res) | (stale >= PATIENCE))
        if bool(restart.any()):
            r4 = restart.view(view)
            z_new, r_new = torch.where(r4, best_z, z_new), torch.where(r4, best_r, r_new)
            res_new = torch.where(restart, best_res, res_new)
            beta = torch.where(restart, beta * 0.5, beta)
            stale = torch.where(restart, torch.zeros_like(stale), stale)
            valid_from = torch.where(restart, torch.full_like(valid_from, len(hist_dz)), valid_from)
        measured = ~done & ~restart & (res > 0)
        ratio = torch.where(measured, res_new / torch.where(measured, res, torch.ones_like(res)), ratio)
        ratio = torch.where(restart, torch.full_like(ratio, math.inf), ratio)
        last_mapped = torch.where(active, z_new + r_new, last_mapped)
        z, r, res = z_new, r_new, torch.where(done, res, res_new)
        done = done | (best_res < thr) | (beta < mixing * 0.5**MAX_RESTARTS)
        best_history.append(best_res.clone())
        if settings.min_progress > 1 and len(best_history) > PROGRESS_WINDOW:
            done = done | (best_res * settings.min_progress > best_history[-1 - PROGRESS_WINDOW])
    cut = ~done & torch.isfinite(res)
    """Items still iterating when ``max_iters`` ran out."""
    if settings.predicted_stop and bool(cut.any()):
        # The last evaluation already proposed the next iterate; take it where it is predicted better than the
        # best evaluated one, and after a single evaluation (the proposal is then one application of the map, the
        # reference's guess, where the evaluated iterate is only the warm start, on the first step the clean latent).
        expected = res * ratio
        take = cut & ((expected < best_res) | (evals == 1))
        if bool(take.any()):
            best_z = torch.where(take.view(view), z + proposal(), best_z)
            best_res = torch.where(take, torch.where(torch.isfinite(expected), expected, res), best_res)
            predicted = predicted | take
    mapped = torch.where(predicted.view(view), last_mapped, best_z + best_r)
    return _StepOutcome(best_z, best_res, guess_res, evals, evals, 0, mapped, nonfinite, predicted)


def _adamw(f: _FixedPointMap, z0: torch.Tensor, settings: InversionSettings) -> _StepOutcome:
    """The paper's solver as the official code runs it: AdamW (lr, weight decay 0.01) on the VP latent,
    loss = mean squared fixed-point residual, gradient through the frozen UNet, at most K iterations,
    stop after the step whose pre-step loss fell below the threshold (that step is still applied).

    Gradients are taken with ``torch.autograd.grad`` with respect to the latent only, so no weight gradient
    is ever accumulated. Items of a batch are independent: a converged item stops moving and is left out of
    later evaluations.
    """
    batch = z0.shape[0]
    shape4 = (-1, *([1] * (z0.dim() - 1)))
    with torch.inference_mode(False):
        z = torch.nn.Parameter(z0.detach().clone(), requires_grad=True)
        opt = torch.optim.AdamW([z], lr=settings.lr)
        done = torch.zeros(batch, dtype=torch.bool, device=z0.device)
        last_res = torch.full((batch,), math.nan, device=z0.device)
        guess_res = last_res.clone()
        thr = None
        iters = 0
        nonfinite = False
        for k in range(settings.max_iters):
            with torch.enable_grad():
                res_items = mean_square(z - f(z, ~done))
                (grad,) = torch.autograd.grad(res_items.sum(), z)
            res_items = res_items.detach()
            iters = k + 1
            if k == 0:
                guess_res = res_items.clone()
                thr = _threshold(settings, guess_res)
            if not bool(torch.isfinite(res_items).all()):
                nonfinite = True
                break
            frozen = z.detach().clone()
            z.grad = grad
            opt.step()
            with torch.no_grad():
                z.copy_(torch.where(done.view(shape4), frozen, z))
            last_res = torch.where(done, last_res, res_items)
            done = done | (res_items < thr)
            if bool(done.all()):
                break
        latent = z.detach().clone()
    return _StepOutcome(latent, last_res, guess_res, iters, iters, iters, nonfinite=nonfinite)


def _ddim(f: _FixedPointMap, z0: torch.Tensor, settings: InversionSettings) -> _StepOutcome:
    if not settings.measure_ddim_residual:
        nan = torch.full((z0.shape[0],), math.nan, device=z0.device)
        return _StepOutcome(z0, nan, nan.clone(), 0, 0, 0)
    res = mean_square(f(z0) - z0)
    return _StepOutcome(z0, res, res.clone(), 0, 1, 0)


_SOLVERS = {"anderson": _anderson, "adamw": _adamw}


def invert(
    denoise: Denoiser,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    settings: InversionSettings | None = None,
    input_scale: Callable[[float], float] = vp_input_scale,
    callback: StepCallback | None = None,
    skip: SkipScale = unit_skip,
) -> InversionResult:
    """Invert the clean latent ``x0`` up the descending sampling grid ``sigmas`` (which ends at 0).

    ``input_scale(sigma)`` maps ComfyUI's latent to the model's input scale (``1/sqrt(1+sigma^2)`` for EPS
    models, 1 for flow models); ``skip(sigma)`` is the model's ``c_skip`` (:data:`SkipScale`), from which
    Anderson relaxes each step (:func:`step_relaxation`). Every ``adamw`` step and
    ``warm_start="reference"`` start
    from the reference's guess: the previous latent, as the model saw it, evaluated at the new sigma (one
    UNet pass). Anderson's warm start instead takes a DDIM step with the eps already measured at the previous
    step's accepted latent (no pass), and starts the first step from the clean latent (no pass: the
    solver's first evaluation is the reference's guess, and its secant pair is kept). NaN/Inf from the model
    never reaches the trajectory: a step keeps its
    last finite iterate (a non-finite guess falls back to the previous latent) and one warning is issued.
    """
    settings = settings or InversionSettings()
    validate_sampling_grid(sigmas)
    grid = [float(s) for s in sigmas]
    n = len(grid) - 1
    x0 = x0.float()
    batch = x0.shape[0]
    latents = torch.empty((n + 1, *x0.shape), dtype=torch.float32, device=x0.device)
    latents[n] = x0
    residual = torch.full((n, batch), math.nan)
    guess_residual = torch.full((n, batch), math.nan)
    iterations = torch.zeros(n, dtype=torch.long)
    predicted = torch.zeros((n, batch), dtype=torch.bool)
    forwards = torch.zeros(n, dtype=torch.long)
    backwards = torch.zeros(n, dtype=torch.long)
    solve = _ddim if settings.method == "ddim" else _SOLVERS[settings.solver]
    anderson = settings.method == "spdinv" and settings.solver == "anderson"
    warm = anderson and settings.warm_start != "reference"
    spd = settings.method == "spdinv"
    anchor = x0 * input_scale(grid[-1])
    """The clean latent on the model's input scale: DCI's reference for its correction."""
    x = x0
    eps_accepted: torch.Tensor | None = None
    """The eps measured at the previous step's accepted latent (for the warm start)."""
    nonfinite_steps = 0
    for j in range(n):
        i = n - 1 - j
        sigma_a, sigma_b = grid[i + 1], grid[i]
        scale_b = input_scale(sigma_b)
        f = _FixedPointMap(denoise, x, sigma_a, sigma_b, scale_b, anchor, settings.dci_rate if spd else 0.0)
        if warm:
            z0 = scale_b * (x if eps_accepted is None else x + (sigma_b - sigma_a) * eps_accepted)
            guess_forwards = 0
        else:
            # The reference's guess is one application of the map to the previous VP latent: the model sees
            # the old latent at the new sigma (the paper's and null-text inversion's convention).
            z0 = f(x * input_scale(sigma_a))
            guess_forwards = 1
        finite_guess = torch.isfinite(z0.flatten(1)).all(dim=1).view(-1, *([1] * (z0.dim() - 1)))
        if not bool(finite_guess.all()):
            nonfinite_steps += 1
            z0 = torch.where(finite_guess, z0, x * scale_b)
        if anderson:
            relaxation = step_relaxation(sigma_a, sigma_b, skip(sigma_b)) if settings.relax else 1.0
            outcome = _anderson(f, z0, settings, relaxation, start_is_guess=not warm or eps_accepted is not None)
        else:
            outcome = solve(f, z0, settings)
        nonfinite_steps += int(outcome.nonfinite and bool(finite_guess.all()))
        x = outcome.latent / scale_b
        latents[i] = x
        eps_accepted = None if outcome.mapped is None else f.eps_of(outcome.mapped)
        residual[i] = outcome.residual.float().cpu()
        if outcome.predicted is not None:
            predicted[i] = outcome.predicted.cpu()
        guess_residual[i] = outcome.guess_residual.float().cpu()
        iterations[i], backwards[i] = outcome.iterations, outcome.backwards
        forwards[i] = outcome.forwards + guess_forwards
        if callback is not None:
            callback(j, n, x)
    if nonfinite_steps:
        warnings.warn(f"SPDInv: the UNet gave NaN/Inf at {nonfinite_steps} of {n} inversion steps; each kept its "
                      "last finite iterate. Check the model (fp16 overflow?) and the input latent.", stacklevel=2)
    return InversionResult(sigmas.detach().float().cpu(), latents, residual, guess_residual, iterations,
                           forwards, backwards, settings, predicted if bool(predicted.any()) else None)


def fixed_point_residual(
    denoise: Denoiser,
    result: InversionResult,
    input_scale: Callable[[float], float] = vp_input_scale,
) -> torch.Tensor:
    """Measure the residual of every stored latent afresh (one forward per step); ``[steps, batch]``.

    Independent of what a solver recorded, so benchmarks can compare methods on the same footing.
    """
    grid = [float(s) for s in result.sigmas]
    out = torch.empty(result.steps, result.latents.shape[1])
    for i in range(result.steps):
        scale_b = input_scale(grid[i])
        f = _FixedPointMap(denoise, result.latents[i + 1], grid[i + 1], grid[i], scale_b)
        z = result.latents[i] * scale_b
        out[i] = mean_square(f(z) - z).cpu()
    return out
