"""Residual plot: per-step fixed-point residual and solver iterations, as an RGB image array.

Drawn with Pillow (always present in ComfyUI) so the pack needs no plotting library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Series:
    """One inversion to plot: residual and iterations per inversion step (first step = lowest sigma)."""

    label: str
    residual: np.ndarray
    iterations: np.ndarray
    color: tuple[int, int, int]


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
        pts = [(px(k), py(v)) for k, v in enumerate(s.residual) if np.isfinite(v) and v > 0]
        if len(pts) > 1:
            draw.line(pts, fill=s.color, width=2)
        for x, y in pts:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=s.color)
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
