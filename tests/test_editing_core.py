"""Branch guidance rules in the core: per-branch CFG, ProxEdit's proximal rule and its edit mask."""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.spdinv.guidance import BranchCFG, EditRecipe, ProximalCFG


def test_branch_cfg_scales_each_branch_separately():
    cond = torch.ones(4, 1, 1, 1)
    uncond = torch.zeros(4, 1, 1, 1)
    out = BranchCFG((1.0, 7.5)).combine(0, cond, 1.0, cond, uncond)
    assert out.flatten().tolist() == [1.0, 1.0, 7.5, 7.5]
    assert BranchCFG((1.0, 1.0)).needs_uncond(0) is False
    assert torch.equal(BranchCFG((1.0, 7.5)).combine(0, cond, 1.0, cond, None), cond)


def test_proximal_guidance_soft_thresholds_at_the_batch_quantile_and_marks_the_edit():
    cond = torch.zeros(2, 1, 5, 5)
    uncond = torch.zeros(2, 1, 5, 5)
    cond[1, 0, 2, 2] = 1.0
    cond[1, 0, 0, 0] = 0.2
    guidance = ProximalCFG((1.0, 7.5), quantile=0.98)
    threshold = torch.quantile(cond.flatten(), 0.98)
    out, mask = guidance.guide(0, cond, 1.0, cond, uncond)
    assert torch.equal(out[0], cond[0])
    assert out[1, 0, 2, 2] == pytest.approx(7.5 * (1.0 - float(threshold)))
    assert out[1, 0, 0, 0] == 0.0
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[1:4, 1:4] = True
    assert torch.equal(mask[1, 0], expected) and not mask[0].any()
    plain, plain_mask = ProximalCFG((1.0, 7.5), quantile=0.98, shrink=False).guide(0, cond, 1.0, cond, uncond)
    assert torch.equal(plain, BranchCFG((1.0, 7.5)).combine(0, cond, 1.0, cond, uncond))
    assert torch.equal(plain_mask, mask)


def test_edit_recipe_builds_the_guidance_it_names():
    assert type(EditRecipe().guidance(7.5)) is BranchCFG
    recipe = EditRecipe(proximal_quantile=0.7, shrink=False, pin_below=0.4)
    guidance = recipe.guidance(7.5)
    assert isinstance(guidance, ProximalCFG) and guidance.scales == (1.0, 7.5) and not guidance.shrink


def test_proximal_guidance_on_the_target_only_leaves_the_source_rows_plain():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 2, 4, 4, generator=g), torch.randn(2, 2, 4, 4, generator=g)
    out, _ = ProximalCFG((1.0, 7.5), quantile=0.6, target_only=True).guide(0, cond, 1.0, cond, uncond)
    torch.testing.assert_close(out[0], cond[0])
    d = cond[1] - uncond[1]
    threshold = torch.quantile(d.abs().flatten(), 0.6)
    torch.testing.assert_close(out[1], uncond[1] + 7.5 * (d - d.clamp(-threshold, threshold)))


def test_proximal_guidance_thresholds_each_image_of_a_batch_on_its_own():
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(4, 2, 4, 4, generator=g), torch.randn(4, 2, 4, 4, generator=g)
    cond[[1, 3]] *= 10.0
    for target_only in (False, True):
        rule = ProximalCFG((1.0, 7.5), quantile=0.7, target_only=target_only)
        both, both_mask = rule.guide(0, cond, 1.0, cond, uncond)
        for image in (0, 1):
            rows = [image, 2 + image]
            alone, alone_mask = rule.guide(0, cond[rows], 1.0, cond[rows], uncond[rows])
            torch.testing.assert_close(both[rows], alone)
            assert torch.equal(both_mask[rows], alone_mask)
