"""The preservation rule (``spdinv.preservation`` in ``run_edit``): outside the edit region the target ends on the
photo's latent exactly, inside it edits; the automatic region is where the branches' predictions differ."""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.spdinv.edit_loop import run_edit
from spdinv_pack.spdinv.guidance import EditRecipe
from spdinv_pack.spdinv.inversion import InversionSettings, invert
from spdinv_pack.spdinv.preservation import (
    Preservation,
    grow_region,
    mask_to_cells,
    region_of_gap,
    snap_to_cells,
)
from spdinv_pack.tests.sampling_helpers import ddim_uniform_sigmas

from toy_model import ToyDenoiser, toy_latent

STEPS = 8


@pytest.fixture(scope="module")
def scene():
    model = ToyDenoiser()
    sigmas = ddim_uniform_sigmas(model.train_sigmas, STEPS)
    inv = invert(model, toy_latent(seed=3), sigmas, InversionSettings(rel_tol=0.01))
    timesteps = [float(model.timestep(float(s))) for s in sigmas[:-1]]
    return model, sigmas, inv, timesteps


def instruction(model: ToyDenoiser, shift: float):
    """Two prompts that differ in the upper-left quarter only: the target's prediction is shifted there."""

    def predict(x, sigma, with_uncond):
        cond = model(x, sigma).clone()
        h, w = x.shape[-2:]
        cond[x.shape[0] // 2:, :, : h // 2, : w // 2] += shift
        return cond, model(x, sigma) if with_uncond else None

    return predict


def quarter(shape: tuple[int, ...]) -> torch.Tensor:
    region = torch.zeros(shape[0], 1, *shape[2:], dtype=torch.bool)
    region[..., : shape[-2] // 2, : shape[-1] // 2] = True
    return region


def edit(scene, shift: float, preserve: Preservation | None):
    model, sigmas, inv, timesteps = scene
    return run_edit(instruction(model, shift), inv.latents, sigmas, EditRecipe(), 4.0, timesteps, preserve=preserve)


def test_outside_a_given_region_the_target_ends_on_the_photos_latent_exactly_and_edits_inside(scene):
    photo = scene[2].latents[-1]
    region = quarter(tuple(photo.shape))
    free = edit(scene, 0.3, None)
    kept = edit(scene, 0.3, Preservation(mask=region.float(), grow=0))
    assert (free.edited - photo)[~region.expand_as(photo)].abs().max() > 1e-3  # without the rule it drifts
    assert torch.equal(kept.edited[~region.expand_as(photo)], photo[~region.expand_as(photo)])
    inside = (kept.edited - kept.reconstruction)[region.expand_as(photo)].abs().mean()
    assert inside > 0.05
    assert torch.equal(kept.region, region)


def test_the_automatic_region_is_where_the_instruction_changes_the_prediction(scene):
    photo = scene[2].latents[-1]
    out = edit(scene, 0.3, Preservation(threshold=0.5, grow=0))
    assert torch.equal(out.region, quarter(tuple(photo.shape)))
    outside = ~out.region.expand_as(photo)
    assert torch.equal(out.edited[outside], photo[outside])


def test_the_identity_instruction_finds_no_region_and_gives_the_photo_exactly(scene):
    photo = scene[2].latents[-1]
    out = edit(scene, 0.0, Preservation())
    assert not out.region.any()
    assert torch.equal(out.edited, photo)


def test_the_region_is_estimated_over_the_first_steps_before_it_pins():
    rule = Preservation(estimate_for=0.25)
    gap = torch.zeros(1, 1, 4, 4)
    gap[..., 0, 0] = 1.0
    assert rule.estimate_steps(8) == 2 and rule.estimate_steps(2) == 1
    assert rule.region_at(0, 8, gap, None) is None
    assert rule.region_at(1, 8, gap, None)[..., 0, 0].all()


def test_regions_grow_by_whole_cells_and_snap_to_the_patch_grid():
    region = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    region[..., 2, 2] = True
    grown = grow_region(region, 1)
    assert grown.sum() == 9 and grown[..., 1:4, 1:4].all()
    snapped = snap_to_cells(region, (2, 2))
    assert snapped.sum() == 4 and snapped[..., 2:4, 2:4].all()
    odd = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    odd[..., 4, 4] = True
    assert snap_to_cells(odd, (2, 2)).shape == odd.shape


def test_the_found_region_is_cut_per_token():
    gap = torch.zeros(1, 1, 4, 4)
    gap[..., 0, 0] = 1.0  # one cell of the first 2x2 token
    gap[..., 2:4, 2:4] = 0.6  # a whole token: less per cell, more per token
    rule = Preservation(threshold=0.5, estimate_for=1.0, grow=0, cell=(2, 2))
    region = rule.region_at(0, 1, gap, None)
    assert region[..., 2:4, 2:4].all() and not region[..., 0:2, 0:2].any()


def test_a_flat_gap_marks_no_region_and_a_varying_one_is_cut_at_the_threshold():
    assert not region_of_gap(torch.full((1, 1, 3, 3), 0.7), 0.5).any()
    gap = torch.linspace(0, 1, 9).reshape(1, 1, 3, 3)
    assert region_of_gap(gap, 0.5).sum() == 4


def test_a_pixel_mask_becomes_cells_touched_by_any_masked_pixel_per_image_and_per_frame():
    mask = torch.zeros(1, 64, 64)
    mask[0, 10, 50] = 1.0
    cells = mask_to_cells(mask, (8, 8))
    assert cells.shape == (1, 1, 8, 8) and cells[0, 0, 1, 6] == 1 and cells.sum() == 1
    frames = torch.zeros(3, 16, 16)
    frames[1, 0, 0] = 1.0
    per_frame = mask_to_cells(frames, (3, 2, 2))
    assert per_frame.shape == (1, 1, 3, 2, 2) and per_frame[0, 0, 1, 0, 0] == 1 and per_frame.sum() == 1
    assert mask_to_cells(mask, (3, 8, 8)).shape == (1, 1, 3, 8, 8)


def test_a_mask_that_does_not_fit_the_latent_names_the_input():
    with pytest.raises(ValueError, match="mask: .*cells"):
        Preservation(mask=torch.ones(1, 1, 4, 4)).given_region((1, 4, 8, 8))
    with pytest.raises(ValueError, match="threshold"):
        Preservation(threshold=2.0)


def test_a_clips_mask_per_frame_is_packed_into_latent_frames_as_wans_vae_packs_them():
    mask = torch.zeros(9, 32, 32)
    mask[0, :8, :8] = 1.0  # frame 0: the top-left latent cell
    mask[6, 31, 31] = 1.0  # one pixel of frame 6 (latent frame 2: frames 5-8): the bottom-right cell
    region = mask_to_cells(mask, (3, 4, 4))
    assert region.shape == (1, 1, 3, 4, 4)
    assert region[0, 0, 0].nonzero().tolist() == [[0, 0]] and not region[0, 0, 1].any()
    assert region[0, 0, 2].nonzero().tolist() == [[3, 3]]
    assert torch.equal(mask_to_cells(mask[:1], (3, 4, 4))[0, 0], region[0, 0, :1].expand(3, 4, 4))
    with pytest.raises(ValueError, match="^mask: 5 frames cannot be matched to the clip's 3 latent frames; give one "
                                         "mask, 3 \\(one per latent frame\\) or 9 \\(one per frame of the clip\\)"):
        mask_to_cells(torch.ones(5, 32, 32), (3, 4, 4))
