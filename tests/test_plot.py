"""The residual plot renders an image that shows the series it was given."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PIL")

from spdinv_pack.spdinv.plot import PALETTE, Series, render_residual_plot  # noqa: E402


def _curve(img: np.ndarray, color: tuple[int, int, int]) -> dict[int, float]:
    """Column -> median row of the pixels drawn in ``color`` (the legend's swatch is a few columns of these)."""
    rows, cols = np.nonzero(np.abs(img.astype(int) - np.array(color)).sum(-1) < 10)
    return {int(c): float(np.median(rows[cols == c])) for c in np.unique(cols)}


def test_residual_plot_draws_each_series_as_a_curve_at_its_residuals():
    """Each series is a connected curve across the steps in its colour, at heights on one log scale: a constant
    residual is level, and a residual falling 1e-3 -> 1e-5 falls two thirds of the way to a 1e-6 series."""
    steps, width = 12, 640
    spd = Series("spdinv", np.full(steps, 1e-6), np.full(steps, 3), PALETTE[0])
    ddim = Series("ddim", np.geomspace(1e-3, 1e-5, steps), np.zeros(steps), PALETTE[1])
    img = render_residual_plot([spd, ddim], delta=5e-6, width=width, height=400)
    assert img.shape == (400, 640, 3) and img.dtype == np.uint8
    curves = {}
    for s in (spd, ddim):
        curve = _curve(img, s.color)
        first, last = min(curve), max(curve)
        assert last - first > 0.6 * width, f"{s.label}: drawn over columns {first}..{last} only"
        assert set(range(first, last + 1)) <= set(curve), f"{s.label}: the curve has gaps"
        curves[s.label] = (curve[first], curve[last])
    (spd_first, spd_last), (ddim_first, ddim_last) = curves["spdinv"], curves["ddim"]
    assert abs(spd_last - spd_first) <= 1
    assert ddim_first < ddim_last < spd_first  # image rows grow downwards: larger residuals are higher up
    assert (ddim_last - ddim_first) / (spd_first - ddim_first) == pytest.approx(2 / 3, abs=0.03)


def test_residual_plot_survives_missing_residuals():
    nan = Series("ddim (not measured)", np.full(5, np.nan), np.zeros(5), PALETTE[1])
    img = render_residual_plot([nan], delta=5e-6)
    assert img.std() > 0
