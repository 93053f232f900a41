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


def test_residual_plot_draws_a_predicted_residual_hollow_and_says_so():
    """A step whose residual the solver predicted is a ring in the series' colour (white inside), a measured one a
    filled dot; the plot names the hollow marks."""
    steps, width, height = 4, 640, 400
    predicted = np.array([False, False, True, False])
    spd = Series("spdinv", np.full(steps, 1e-6), np.full(steps, 3), PALETTE[0], predicted)
    img = render_residual_plot([spd], delta=5e-6, width=width, height=height)
    plain = render_residual_plot([Series("spdinv", spd.residual, spd.iterations, PALETTE[0])], delta=5e-6,
                                 width=width, height=height)
    row = int(np.median(np.nonzero(np.abs(img.astype(int) - np.array(PALETTE[0])).sum(-1) < 10)[0]))

    def centre(step: int) -> np.ndarray:
        x = int(70 + (width - 50 - 70) * (step + 0.5) / steps)
        return img[row - 1:row + 2, x - 1:x + 2].reshape(-1, 3)

    assert (centre(2) == 255).all()  # the ring's inside
    assert (np.abs(centre(1).astype(int) - np.array(PALETTE[0])).sum(-1) < 10).any()  # a filled dot
    assert (img != plain).any(axis=-1)[height - 70:height - 50].sum() > 50  # the note under the curves


def test_residual_plot_survives_missing_residuals():
    nan = Series("ddim (not measured)", np.full(5, np.nan), np.zeros(5), PALETTE[1])
    img = render_residual_plot([nan], delta=5e-6)
    assert img.std() > 0



def test_line_panels_put_points_on_a_log_x_axis_and_cap_far_values():
    """Points at x = 10, 100, 1000 are equally spaced across a panel (log x) and y = 20, 30, 40 equally spaced
    up it (linear y); a panel's ``y_cap`` (50) draws an infinite value at 50, one more step up, instead of
    stretching the axis."""
    from spdinv_pack.spdinv.plot import Line, Panel, render_line_panels

    colors = [(60, 120, 220), (220, 80, 60), (60, 170, 90), (170, 90, 200)]
    points = [(10, 20.0), (100, 30.0), (1000, 40.0), (100, float("inf"))]
    lines = [Line(f"p{k}", [x], [y], c) for k, ((x, y), c) in enumerate(zip(points, colors, strict=True))]
    img = render_line_panels([Panel("panel", lines, y_cap=50.0)], columns=1, panel_size=(600, 400))
    plot = img[70:]  # below the title and the legend's swatches

    def centre(color: tuple[int, int, int]) -> tuple[float, float]:
        rows, cols = np.nonzero(np.abs(plot.astype(int) - np.array(color)).sum(-1) < 10)
        assert len(rows), f"{color} not drawn"
        return float(cols.mean()), float(rows.mean())

    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = (centre(c) for c in colors)
    assert x2 - x0 > 300, "the points span the panel"
    assert x1 - x0 == pytest.approx(x2 - x1, abs=2)
    assert y0 - y1 == pytest.approx(y1 - y2, abs=2) and y1 < y0  # image rows grow downwards
    assert y2 - y3 == pytest.approx(y1 - y2, abs=3) and x3 == pytest.approx(x1, abs=2)
