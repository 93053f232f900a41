"""The wavelet colour fix keeps the edit's details and the source's low frequencies."""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.spdinv.color_fix import wavelet_color_fix, wavelet_decompose


def _image(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_decomposition_reconstructs_the_image():
    image = _image(2, 3, 40, 52)
    high, low = wavelet_decompose(image)
    assert high.shape == low.shape == image.shape
    torch.testing.assert_close(high + low, image, atol=1e-5, rtol=0)


def test_constant_image_is_all_low_frequency():
    image = torch.full((1, 3, 24, 24), 0.37)
    high, low = wavelet_decompose(image)
    torch.testing.assert_close(low, image, atol=1e-6, rtol=0)
    assert high.abs().max() < 1e-6


def _photo(colour: tuple[float, float, float], seed: int) -> torch.Tensor:
    """A flat colour with a gradient (low frequencies) and a seeded texture (high frequencies)."""
    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    return torch.tensor(colour).view(1, 3, 1, 1) + 0.2 * (x - y) + 0.15 * _image(1, 3, 64, 64, seed=seed)


def test_fix_has_source_low_and_edit_high_frequencies():
    edit, source = _photo((0.7, 0.2, 0.2), seed=1), _photo((0.2, 0.2, 0.7), seed=2)
    fixed_high, fixed_low = wavelet_decompose(wavelet_color_fix(edit, source))
    edit_high, edit_low = wavelet_decompose(edit)
    source_high, source_low = wavelet_decompose(source)
    # Re-decomposing is not an exact projection, so allow a small leak but require a clear separation.
    assert (fixed_low - source_low).abs().mean() < 0.01 < (fixed_low - edit_low).abs().mean()
    assert (fixed_high - edit_high).abs().mean() < 0.01 < (fixed_high - source_high).abs().mean()


def test_fix_of_an_image_with_itself_is_the_image():
    image = _image(2, 3, 32, 48)
    torch.testing.assert_close(wavelet_color_fix(image, image), image, atol=1e-5, rtol=0)


def test_small_image_survives_dilations_larger_than_itself():
    image = _image(1, 3, 16, 16)
    high, low = wavelet_decompose(image, levels=5)
    torch.testing.assert_close(high + low, image, atol=1e-5, rtol=0)
    assert torch.isfinite(wavelet_color_fix(image, _image(1, 3, 16, 16, seed=3))).all()


def test_mismatched_shapes_are_rejected_with_both_shapes():
    with pytest.raises(ValueError, match=r"\(1, 3, 16, 16\).*\(1, 3, 16, 20\)"):
        wavelet_color_fix(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 20))
    with pytest.raises(ValueError, match="channels"):
        wavelet_color_fix(torch.zeros(1, 3, 16, 16), torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match="batch"):
        wavelet_color_fix(torch.zeros(3, 3, 16, 16), torch.zeros(2, 3, 16, 16))


def test_batch_one_source_is_broadcast_to_the_edit_batch():
    edit, source = _image(3, 3, 20, 20, seed=4), _image(1, 3, 20, 20, seed=5)
    fixed = wavelet_color_fix(edit, source)
    assert fixed.shape == edit.shape
    for i in range(3):
        torch.testing.assert_close(fixed[i : i + 1], wavelet_color_fix(edit[i : i + 1], source))
