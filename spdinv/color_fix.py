"""Wavelet colour fix for Plug-and-Play edits: the edit's details on the source photo's colours.

A stationary (à-trous) wavelet decomposition splits an image into a low-pass part (colours, lighting,
broad shapes) and the sum of its detail bands. Recombining the edit's details with the source's low
pass restores the photo's colours and background tones, at the cost of undoing colour edits.
"""

from __future__ import annotations

import torch


def _blur_axis(image: torch.Tensor, dim: int, dilation: int) -> torch.Tensor:
    """Binomial [1, 2, 1] / 4 along one axis with taps ``dilation`` apart and replicate borders.

    Replicate padding is done by clamping the tap indices to the image, so it stays exact (and does
    not fail) when the dilation is as large as or larger than the image along that axis.
    """
    size = image.shape[dim]
    centre = torch.arange(size, device=image.device)
    before = image.index_select(dim, (centre - dilation).clamp(min=0))
    after = image.index_select(dim, (centre + dilation).clamp(max=size - 1))
    return (before + 2.0 * image + after) * 0.25


def _blur(image: torch.Tensor, dilation: int) -> torch.Tensor:
    """Depthwise 3x3 binomial [[1,2,1],[2,4,2],[1,2,1]]/16 blur of ``[B, C, H, W]``, as two separable passes."""
    return _blur_axis(_blur_axis(image, -2, dilation), -1, dilation)


def wavelet_decompose(image: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``[B, C, H, W]`` into (high, low) with ``levels`` à-trous levels (dilations 1, 2, 4, ...).

    ``high`` is the sum of the detail bands and ``low`` the final blurred image, so ``high + low``
    equals the image up to float rounding.
    """
    if image.dim() != 4:
        raise ValueError(f"expected an image [B, C, H, W], got shape {tuple(image.shape)}")
    if levels < 1:
        raise ValueError(f"levels must be at least 1, got {levels}")
    high = torch.zeros_like(image)
    low = image
    for i in range(levels):
        blurred = _blur(low, 2**i)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(edit: torch.Tensor, source: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Return the edit's high frequencies on the source's low frequencies, ``[B, C, H, W]``.

    A source with batch 1 is used for every image of the edit's batch; otherwise the batches must match.
    """
    if edit.dim() != 4 or source.dim() != 4 or edit.shape[1:] != source.shape[1:]:
        raise ValueError(f"edit and source must have the same channels and size, got edit "
                         f"{tuple(edit.shape)} and source {tuple(source.shape)}")
    if source.shape[0] not in (1, edit.shape[0]):
        raise ValueError(f"source batch must be 1 or the edit's batch, got edit {tuple(edit.shape)} and "
                         f"source {tuple(source.shape)}")
    source = source.to(device=edit.device, dtype=edit.dtype)
    high, _ = wavelet_decompose(edit, levels)
    _, low = wavelet_decompose(source, levels)
    return high + low.expand_as(high)
