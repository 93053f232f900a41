"""The residual plot renders an image that shows the series it was given."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PIL")

from spdinv_pack.spdinv.plot import PALETTE, Series, render_residual_plot  # noqa: E402


def test_residual_plot_draws_each_series_in_its_colour():
    steps = 12
    spd = Series("spdinv", np.full(steps, 1e-6), np.full(steps, 3), PALETTE[0])
    ddim = Series("ddim", np.geomspace(1e-3, 1e-5, steps), np.zeros(steps), PALETTE[1])
    img = render_residual_plot([spd, ddim], delta=5e-6, width=640, height=400)
    assert img.shape == (400, 640, 3) and img.dtype == np.uint8
    for color in (PALETTE[0], PALETTE[1]):
        assert (np.abs(img.astype(int) - np.array(color)).sum(-1) < 10).sum() > 50


def test_residual_plot_survives_missing_residuals():
    nan = Series("ddim (not measured)", np.full(5, np.nan), np.zeros(5), PALETTE[1])
    img = render_residual_plot([nan], delta=5e-6)
    assert img.std() > 0
