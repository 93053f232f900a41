"""Residual plot: per-step fixed-point residual and solver iterations, as an RGB image array.

Drawn with Pillow (always present in ComfyUI) so the pack needs no plotting library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Series:
    """One inversion to plot: residual and iterations per inversion step (first step = lowest sigma);
    ``predicted``: per step, whether its residual is the solver's prediction rather than a measurement (drawn
    hollow)."""

    label: str
    residual: np.ndarray
    iterations: np.ndarray
    color: tuple[int, int, int]
    predicted: np.ndarray | None = None


PALETTE = [(220, 80, 60), (60, 120, 220), (60, 170, 90), (170, 90, 200)]


def render_residual_plot(series: list[Series], delta: float, width: int = 768, height: int = 512) -> np.ndarray:
    """Residual (log scale, lines) and iterations (bars) against inversion step; ``delta`` dashed.

    Returns ``uint8 [height, width, 3]``.
    """
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 70, width - 50, 40, height - 50
    steps = max(len(s.residual) for s in series)
    values = [v for s in series for v in s.residual if np.isfinite(v) and v > 0] + ([delta] if delta > 0 else [])
    lo = math.floor(math.log10(min(values))) if values else -8
    hi = math.ceil(math.log10(max(values))) if values else 0
    hi = max(hi, lo + 1)
    max_iter = max([1] + [int(v) for s in series for v in s.iterations])

    def px(step: float) -> float:
        return left + (right - left) * (step + 0.5) / steps

    def py(value: float) -> float:
        return bottom - (bottom - top) * (math.log10(value) - lo) / (hi - lo)

    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    for e in range(lo, hi + 1):
        y = py(10.0**e)
        draw.line([left, y, right, y], fill=(230, 230, 230))
        draw.text((5, y - 6), f"1e{e}", fill=(0, 0, 0), font=font)
    for k in range(0, max_iter + 1, max(1, max_iter // 5)):
        y = bottom - (bottom - top) * k / max_iter
        draw.text((right + 5, y - 6), str(k), fill=(120, 120, 120), font=font)
    tick = max(1, steps // 10)
    for s in range(0, steps, tick):
        draw.text((px(s) - 4, bottom + 5), str(s + 1), fill=(0, 0, 0), font=font)
    bar_w = (right - left) / steps / (len(series) + 1)
    for n, s in enumerate(series):
        light = tuple(int(c + (255 - c) * 0.6) for c in s.color)
        for k, it in enumerate(s.iterations):
            if it > 0:
                x0 = px(k) - (right - left) / steps / 2 + bar_w * (n + 0.5)
                draw.rectangle([x0, bottom - (bottom - top) * it / max_iter, x0 + bar_w, bottom], fill=light)
    if delta > 0:
        y = py(delta)
        for x in range(left, right, 12):
            draw.line([x, y, min(x + 6, right), y], fill=(0, 0, 0), width=1)
        draw.text((left + 4, y - 12), f"delta {delta:.0e}", fill=(0, 0, 0), font=font)
    for s in series:
        steps_drawn = [k for k, v in enumerate(s.residual) if np.isfinite(v) and v > 0]
        pts = [(px(k), py(s.residual[k])) for k in steps_drawn]
        if len(pts) > 1:
            draw.line(pts, fill=s.color, width=2)
        for k, (x, y) in zip(steps_drawn, pts, strict=True):
            if s.predicted is not None and s.predicted[k]:
                draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(255, 255, 255), outline=s.color, width=2)
            else:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=s.color)
    if any(s.predicted is not None and s.predicted.any() for s in series):
        draw.text((left + 4, bottom - 14), "hollow: residual predicted by the solver, not measured",
                  fill=(0, 0, 0), font=font)
    draw.text((left, 10), "fixed-point residual (lines, log) and iterations (bars) per inversion step",
              fill=(0, 0, 0), font=font)
    draw.text((right - 40, top - 14), "iterations", fill=(120, 120, 120), font=font)
    draw.text(((left + right) // 2 - 60, height - 25), "inversion step (low sigma -> high)", fill=(0, 0, 0),
              font=font)
    for n, s in enumerate(series):
        y = top + 8 + 14 * n
        draw.rectangle([right - 230, y, right - 220, y + 8], fill=s.color)
        draw.text((right - 214, y - 2), s.label, fill=(0, 0, 0), font=font)
    return np.array(img, dtype=np.uint8)


@dataclass
class Line:
    """One method's points on a panel, joined in the order given; ``dashed`` for a reference line."""

    label: str
    x: list[float]
    y: list[float]
    color: tuple[int, int, int]
    dashed: bool = False


@dataclass
class Panel:
    """One chart of a grid: a title and its lines, on a log-x axis."""

    title: str
    lines: list[Line]
    y_label: str = ""
    y_cap: float | None = None
    """Values above it are drawn at it as upward triangles (off the chart's top), so one far-off method does
    not squash the others."""


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 (or no FreeType): the fixed bitmap font
        return ImageFont.load_default()


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks from ``lo`` to ``hi`` (both > 0)."""
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        ticks += [m * 10.0**e for m in (1, 2, 5) if lo <= m * 10.0**e <= hi]
    return ticks


def render_line_panels(panels: list[Panel], columns: int, title: str = "", x_label: str = "",
                       panel_size: tuple[int, int] = (560, 400)) -> np.ndarray:
    """A grid of line charts (log x, linear y), ``columns`` panels a row, with one shared legend of every line
    label under ``title``. Points at x <= 0 or NaN are left out, and +inf too unless the panel has a ``y_cap``.
    Returns ``uint8 [H, W, 3]``."""
    from PIL import Image, ImageDraw

    font, small, big = _font(15), _font(13), _font(18)
    labels: dict[str, tuple[tuple[int, int, int], bool]] = {}
    for p in panels:
        for line in p.lines:
            labels.setdefault(line.label, (line.color, line.dashed))
    pw, ph = panel_size
    width = pw * columns
    spots, x, y = [], 14, 38  # the legend flows left to right, wrapping at the image's width
    for label in labels:
        w = 42 + font.getlength(label) + 24
        if x > 14 and x + w > width - 14:
            x, y = 14, y + 22
        spots.append((x, y))
        x += w
    head = y + 34
    rows = math.ceil(len(panels) / columns)
    img = Image.new("RGB", (width, head + ph * rows), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((12, 8), title, fill=(0, 0, 0), font=big)
    for (x, y), (label, (color, dashed)) in zip(spots, labels.items(), strict=True):
        _segment(draw, [(x, y + 8), (x + 34, y + 8)], color, dashed, 3)
        draw.text((x + 42, y), label, fill=(0, 0, 0), font=font)

    def dashed_line(pts: list[tuple[float, float]], color: tuple[int, int, int], width: int) -> None:
        for a, b in zip(pts, pts[1:], strict=False):
            _segment(draw, [a, b], color, True, width)

    for k, p in enumerate(panels):
        ox, oy = (k % columns) * pw, head + (k // columns) * ph
        left, right, top, bottom = ox + 62, ox + pw - 16, oy + 30, oy + ph - 46
        cap = math.inf if p.y_cap is None else p.y_cap
        pts = [(x, min(y, cap)) for line in p.lines for x, y in zip(line.x, line.y, strict=True)
               if x > 0 and math.isfinite(min(y, cap))]
        draw.text((left, oy + 6), p.title, fill=(0, 0, 0), font=font)
        draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
        if not pts:
            continue
        x_lo, x_hi = min(x for x, _ in pts) / 1.3, max(x for x, _ in pts) * 1.3
        y_lo, y_hi = min(y for _, y in pts), max(y for _, y in pts)
        step = 5 if y_hi - y_lo <= 40 else 10 if y_hi - y_lo <= 100 else 20
        y_lo, y_hi = step * math.floor(y_lo / step - 0.2), step * math.ceil(y_hi / step + 0.2)

        def px(x: float, lo: float = x_lo, hi: float = x_hi, a: int = left, b: int = right) -> float:
            return a + (b - a) * (math.log10(x) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

        def py(y: float, lo: float = y_lo, hi: float = y_hi, a: int = top, b: int = bottom) -> float:
            return b - (b - a) * (y - lo) / (hi - lo)

        for t in _log_ticks(x_lo, x_hi):
            draw.line([px(t), top, px(t), bottom], fill=(228, 228, 228))
            text = f"{t:g}"
            draw.text((px(t) - 4 * len(text), bottom + 5), text, fill=(0, 0, 0), font=small)
        for v in range(int(y_lo), int(y_hi) + 1, step):
            draw.line([left, py(v), right, py(v)], fill=(228, 228, 228))
            draw.text((left - 8 - 8 * len(str(v)), py(v) - 8), str(v), fill=(0, 0, 0), font=small)
        draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
        draw.text(((left + right) // 2 - 4 * len(x_label), bottom + 24), x_label, fill=(0, 0, 0), font=small)
        draw.text((ox + 4, top - 18), p.y_label, fill=(0, 0, 0), font=small)
        for line in p.lines:
            kept = [(x, y) for x, y in zip(line.x, line.y, strict=True) if x > 0 and math.isfinite(min(y, cap))]
            xy = [(px(x), py(min(y, cap))) for x, y in kept]
            if line.dashed:
                dashed_line(xy, line.color, 2)
                continue
            if len(xy) > 1:
                draw.line(xy, fill=line.color, width=3)
            for (x, y), (_, value) in zip(xy, kept, strict=True):
                if value > cap:
                    draw.polygon([(x, y - 7), (x - 6, y + 4), (x + 6, y + 4)], fill=line.color)
                else:
                    draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=line.color)
    return np.array(img, dtype=np.uint8)


def _segment(draw, ends: list[tuple[float, float]], color: tuple[int, int, int], dashed: bool, width: int) -> None:
    """A straight segment, solid or dashed (8 px on, 6 px off)."""
    (x0, y0), (x1, y1) = ends
    if not dashed:
        draw.line([x0, y0, x1, y1], fill=color, width=width)
        return
    length = math.hypot(x1 - x0, y1 - y0)
    pos = 0.0
    while pos < length:
        end = min(pos + 8, length)
        a, b = pos / length, end / length
        draw.line([x0 + (x1 - x0) * a, y0 + (y1 - y0) * a, x0 + (x1 - x0) * b, y0 + (y1 - y0) * b], fill=color,
                  width=width)
        pos += 14
