"""Prompt-to-Prompt cross-attention maps as one RGB grid image: a row per prompt, a panel per token.

Drawn with Pillow (always present in ComfyUI) so the pack needs no plotting library. Layout, in pixels:
``MARGIN`` around the grid; each row is a title strip (``TITLE_H``), then the panels (``panel`` square),
then a label strip (``LABEL_H``); rows are ``ROW_GAP`` apart and panels ``GAP`` apart. The grid has as
many columns as the row with the most panels (the optional blend mask is one extra panel on the last
row), at least one, so the width is ``2 * MARGIN + columns * (panel + GAP) - GAP``. Text that does not
fit is truncated; empty cells stay white.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MARGIN = 8
GAP = 6
ROW_GAP = 8
TITLE_H = 16
LABEL_H = 16

BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
MASK_LABEL = "blend mask"
MASK_OUTLINE = (150, 150, 150)
"""Grey frame around the mask panel, so an all-white (everything blended) mask stays visible."""

# Black -> purple -> orange -> yellow: brightness rises monotonically, so hot tokens read at a glance.
_STOPS = np.array([0.0, 0.35, 0.7, 1.0])
_COLOURS = np.array([(0, 0, 0), (110, 30, 150), (235, 110, 40), (255, 245, 110)], dtype=np.float64)
COLORMAP = np.stack(
    [np.interp(np.linspace(0.0, 1.0, 256), _STOPS, _COLOURS[:, c]) for c in range(3)], axis=-1
).round().astype(np.uint8)


@dataclass
class MapRow:
    """One prompt's maps: a title (e.g. 'source: a photo of a cat'), maps [T, h, w] (float, any scale, one per
    token), labels (T strings)."""

    title: str
    maps: np.ndarray
    labels: list[str]


def _token_count(row: MapRow) -> int:
    """Tokens in a row; rejects maps whose shape disagrees with the labels, since panels would be mislabelled."""
    maps = np.asarray(row.maps)
    n = len(row.labels)
    if n == 0 and maps.size == 0:
        return 0
    if maps.ndim != 3 or maps.shape[0] != n:
        raise ValueError(f"row {row.title!r}: maps must be [T, h, w] with T = {n} labels, got shape {maps.shape}")
    return n


def _columns(rows: list[MapRow], has_mask: bool) -> int:
    """Panels in the widest row, the mask counted on the last row; at least one so titles have room."""
    counts = [_token_count(r) for r in rows]
    if has_mask and counts:
        counts[-1] += 1
    return max([1, *counts])


def grid_layout(rows: list[MapRow], panel: int = 96, has_mask: bool = False) -> tuple[int, int]:
    """(height, width) of the image ``render_attention_grid`` draws, without drawing it."""
    if panel < 1:
        raise ValueError(f"panel must be positive, got {panel}")
    n = len(rows)
    height = 2 * MARGIN + n * (TITLE_H + panel + LABEL_H) + max(n - 1, 0) * ROW_GAP
    width = 2 * MARGIN + _columns(rows, has_mask) * (panel + GAP) - GAP
    return height, width


def panel_origin(row: int, column: int, panel: int = 96) -> tuple[int, int]:
    """(y, x) of the top-left pixel of a panel, so callers and tests can find it in the image."""
    y = MARGIN + row * (TITLE_H + panel + LABEL_H + ROW_GAP) + TITLE_H
    x = MARGIN + column * (panel + GAP)
    return y, x


def _finite(values: np.ndarray) -> np.ndarray:
    """float64 copy with NaN/Inf as 0, scaled into [-1, 1] so a later max - min cannot overflow."""
    m = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    scale = np.abs(m).max() if m.size else 0.0
    return m / scale if scale > 0 else np.zeros_like(m)


def _normalise(values: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant (or empty) map becomes all zeros instead of dividing by zero."""
    m = _finite(values)
    if m.size == 0:
        return m
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def _upsample(m: np.ndarray, panel: int) -> np.ndarray:
    """Nearest-neighbour resize to panel x panel: keeps the blocky look of 8x8 or 16x16 attention maps."""
    h, w = m.shape
    if h == 0 or w == 0:
        return np.zeros((panel, panel))
    ys = np.arange(panel) * h // panel
    xs = np.arange(panel) * w // panel
    return m[ys][:, xs]


def _mask_values(mask: np.ndarray) -> np.ndarray:
    """Mask as [h, w] in [0, 1] (leading size-1 dims dropped): kept as is when already in range, so an all-ones
    mask stays white, else min-max."""
    m = np.asarray(mask)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"mask must be [h, w], got shape {np.asarray(mask).shape}")
    f = np.nan_to_num(m.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if f.size and (f.min() < 0 or f.max() > 1):
        return _normalise(f)
    return f


def _fit(draw, text: str, font, width: int) -> str:
    """Text made drawable by the default font and cut (with '..') to at most ``width`` pixels."""
    text = text.replace("\n", " ").encode("latin-1", "replace").decode("latin-1")
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".." if text else ""


def render_attention_grid(rows: list[MapRow], panel: int = 96, mask: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H, W, 3]: one row of panels per MapRow, one panel per token, the token text under each panel, the
    row title above the row.

    Each map is min-max normalised on its own and coloured black -> purple -> orange -> yellow; ``mask`` (e.g. the
    local-blend mask) is one extra grey-scale panel labelled "blend mask" at the end of the last row.
    """
    from PIL import Image, ImageDraw, ImageFont

    height, width = grid_layout(rows, panel, mask is not None)
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    labels: list[tuple[int, int, str]] = []
    outlines: list[tuple[int, int]] = []
    for r, row in enumerate(rows):
        if _token_count(row) == 0:
            continue
        for t, (m, label) in enumerate(zip(np.asarray(row.maps), row.labels, strict=True)):
            y, x = panel_origin(r, t, panel)
            index = np.rint(_upsample(_normalise(m), panel) * 255).astype(np.uint8)
            canvas[y : y + panel, x : x + panel] = COLORMAP[index]
            labels.append((y + panel, x, str(label)))
    if mask is not None and rows:
        column = _token_count(rows[-1])
        y, x = panel_origin(len(rows) - 1, column, panel)
        grey = np.rint(_upsample(_mask_values(mask), panel) * 255).astype(np.uint8)
        canvas[y : y + panel, x : x + panel] = grey[..., None]
        labels.append((y + panel, x, MASK_LABEL))
        outlines.append((x, y))

    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for r, row in enumerate(rows):
        y, x = panel_origin(r, 0, panel)
        draw.text((x, y - TITLE_H + 2), _fit(draw, str(row.title), font, width - 2 * MARGIN), fill=TEXT, font=font)
    for y, x, label in labels:
        draw.text((x, y + 2), _fit(draw, label, font, panel), fill=TEXT, font=font)
    for x, y in outlines:
        draw.rectangle((x - 1, y - 1, x + panel, y + panel), outline=MASK_OUTLINE)
    return np.array(img, dtype=np.uint8)
