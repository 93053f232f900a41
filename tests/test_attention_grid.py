"""The attention grid shows each token's map in its own panel, in order, and survives degenerate maps."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

pytest.importorskip("PIL")

from spdinv_pack.spdinv.attention_grid import (  # noqa: E402
    COLORMAP,
    MASK_LABEL,
    MapRow,
    grid_layout,
    panel_origin,
    render_attention_grid,
)

PANEL = 32


@contextmanager
def _no_warnings() -> Iterator[None]:
    """Turns any warning (division, invalid value, overflow, casting) into a test failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def hot_spot_maps(spots: list[tuple[int, int]], size: int = 4) -> np.ndarray:
    """[T, size, size] maps that are zero except 1 at one cell each."""
    maps = np.zeros((len(spots), size, size))
    for t, (i, j) in enumerate(spots):
        maps[t, i, j] = 1.0
    return maps


def cell(img: np.ndarray, row: int, column: int, i: int, j: int, size: int = 4) -> np.ndarray:
    """Pixels of map cell (i, j) of one panel (a size x size map drawn over a PANEL x PANEL panel)."""
    y, x = panel_origin(row, column, PANEL)
    step = PANEL // size
    return img[y + i * step : y + (i + 1) * step, x + j * step : x + (j + 1) * step]


def panel_pixels(img: np.ndarray, row: int, column: int) -> np.ndarray:
    y, x = panel_origin(row, column, PANEL)
    return img[y : y + PANEL, x : x + PANEL]


def test_colormap_rises_in_luminance_from_black_to_yellow():
    luminance = COLORMAP.astype(float) @ np.array([0.299, 0.587, 0.114])
    assert tuple(COLORMAP[0]) == (0, 0, 0)
    assert np.all(np.diff(luminance) > -1.0)
    assert luminance[255] - luminance[0] > 200
    r, g, b = COLORMAP[-1].astype(int)
    assert r > 200 and g > 200 and b < r


def test_each_token_panel_is_bright_at_its_hot_spot_and_dark_elsewhere_in_token_order():
    spots = [(0, 0), (1, 2), (3, 3)]
    row = MapRow("source: a photo of a cat", hot_spot_maps(spots) * 7.5 + 3.0, ["a", "photo", "cat"])
    img = render_attention_grid([row], panel=PANEL)
    assert img.shape == (*grid_layout([row], PANEL, False), 3) and img.dtype == np.uint8
    for t in range(len(spots)):
        for i in range(4):
            for j in range(4):
                pixels = cell(img, 0, t, i, j)
                if (i, j) == spots[t]:
                    assert (pixels == COLORMAP[-1]).all()
                else:
                    assert (pixels == 0).all()


def test_width_follows_the_row_with_most_tokens_and_short_rows_leave_white_cells():
    long = MapRow("target: a photo of a tiger", hot_spot_maps([(0, 0)] * 5), [f"t{k}" for k in range(5)])
    short = MapRow("source: cat", hot_spot_maps([(2, 2)] * 2), ["a", "cat"])
    img = render_attention_grid([short, long], panel=PANEL)
    height, width = grid_layout([short, long], PANEL, False)
    assert img.shape == (height, width, 3)
    assert grid_layout([long], PANEL, False)[1] == width > grid_layout([short], PANEL, False)[1]
    assert (cell(img, 0, 1, 2, 2) == COLORMAP[-1]).all()
    assert (panel_pixels(img, 0, 2) == 255).all() and (panel_pixels(img, 0, 4) == 255).all()
    assert (cell(img, 1, 4, 0, 0) == COLORMAP[-1]).all()


def test_constant_nan_and_inf_maps_render_black_without_warnings():
    maps = np.stack([np.full((4, 4), 0.3), np.full((4, 4), np.nan), np.zeros((4, 4)), np.full((4, 4), np.inf)])
    spiky = np.zeros((1, 4, 4))
    spiky[0, 1, 1], spiky[0, 2, 2] = np.nan, 5.0
    rows = [MapRow("flat", maps, ["c", "nan", "zero", "inf"]), MapRow("spiky", spiky, ["x"])]
    with np.errstate(all="raise"), _no_warnings():
        img = render_attention_grid(rows, panel=PANEL)
    for t in range(4):
        assert (panel_pixels(img, 0, t) == 0).all()
    assert (cell(img, 1, 0, 2, 2) == COLORMAP[-1]).all() and (cell(img, 1, 0, 1, 1) == 0).all()


def test_huge_float_range_does_not_overflow():
    maps = np.array([[[-1e308, 1e308], [0.0, 1e308]]])
    with np.errstate(all="raise"), _no_warnings():
        img = render_attention_grid([MapRow("huge", maps, ["x"])], panel=PANEL)
    assert (cell(img, 0, 0, 0, 0, size=2) == 0).all() and (cell(img, 0, 0, 0, 1, size=2) == COLORMAP[-1]).all()


def test_row_without_tokens_renders_only_its_title():
    empty = MapRow("target: (no tokens)", np.zeros((0, 4, 4)), [])
    img = render_attention_grid([empty], panel=PANEL)
    assert img.shape == (*grid_layout([empty], PANEL, False), 3)
    assert (panel_pixels(img, 0, 0) == 255).all()
    y, _ = panel_origin(0, 0, PANEL)
    assert (img[:y] < 128).any()


def test_mask_adds_one_grey_panel_at_the_end_of_the_last_row_only_when_given():
    rows = [MapRow("source", hot_spot_maps([(0, 0)] * 3), ["a", "b", "c"]),
            MapRow("target", hot_spot_maps([(0, 0)] * 3), ["a", "b", "d"])]
    mask = np.zeros((4, 4), dtype=bool)
    mask[:, 2:] = True
    plain = render_attention_grid(rows, panel=PANEL)
    masked = render_attention_grid(rows, panel=PANEL, mask=mask)
    assert plain.shape == (*grid_layout(rows, PANEL, False), 3)
    assert masked.shape == (*grid_layout(rows, PANEL, True), 3)
    assert masked.shape[1] == plain.shape[1] + PANEL + 6
    assert (panel_pixels(masked, 0, 3) == 255).all()
    assert (cell(masked, 1, 3, 0, 3) == 255).all() and (cell(masked, 1, 3, 0, 0) == 0).all()
    soft = render_attention_grid(rows, panel=PANEL, mask=np.full((1, 4, 4), 0.5))
    grey = panel_pixels(soft, 1, 3)
    assert (grey == grey[0, 0]).all() and grey[0, 0, 0] in (127, 128)


def test_mask_fits_beside_a_short_last_row_without_widening_the_grid():
    rows = [MapRow("source", hot_spot_maps([(0, 0)] * 4), list("abcd")),
            MapRow("target", hot_spot_maps([(1, 1)]), ["x"])]
    assert grid_layout(rows, PANEL, True) == grid_layout(rows, PANEL, False)
    img = render_attention_grid(rows, panel=PANEL, mask=np.ones((4, 4)))
    assert (panel_pixels(img, 1, 1) == 255).all() and (panel_pixels(img, 1, 2) == 255).all()


def test_labels_are_drawn_under_the_panels_and_long_ones_stay_inside_their_cell():
    row = MapRow("t", hot_spot_maps([(0, 0), (0, 0)]), ["x" * 200, ""])
    img = render_attention_grid([row], panel=PANEL)
    y, x0 = panel_origin(0, 0, PANEL)
    _, x1 = panel_origin(0, 1, PANEL)
    strip = img[y + PANEL : y + PANEL + 16]
    assert (strip[:, x0 : x0 + PANEL] < 128).any()
    assert (strip[:, x0 + PANEL : x1] == 255).all()
    assert (strip[:, x1:] == 255).all()
    masked = render_attention_grid([row], panel=PANEL, mask=np.ones((2, 2)))
    _, xm = panel_origin(0, 2, PANEL)
    assert (masked[y + PANEL : y + PANEL + 16, xm : xm + PANEL] < 128).any(), MASK_LABEL


def test_77_token_rows_render_at_the_size_grid_layout_predicts():
    rng = np.random.default_rng(0)
    rows = [MapRow(name, rng.random((77, 16, 16)), [f"tok{k}" for k in range(77)]) for name in ("source", "target")]
    img = render_attention_grid(rows, panel=16, mask=rng.random((16, 16)) > 0.5)
    assert img.shape == (*grid_layout(rows, 16, True), 3)


def test_maps_disagreeing_with_labels_are_rejected():
    with pytest.raises(ValueError, match="labels"):
        grid_layout([MapRow("bad", np.zeros((3, 4, 4)), ["a", "b"])], PANEL, False)
