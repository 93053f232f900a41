"""The equal-work benchmark's claim check: DDIM's curve interpolated at SPDInv's budgets, the margin judged there,
and at every budget of a range for the best SPDInv point within it."""

from __future__ import annotations

import json
import math

import pytest

from spdinv_pack.benchmarks.bench_equal_work import (
    baseline_at_budget,
    best_within,
    check_budgets,
    check_margin,
    interpolate_log_x,
    load_base,
    merged,
    parse_args,
    verdict,
)

DDIM = [(10, 15.0), (1000, 35.0), (100, 25.0)]  # unsorted on purpose: PSNR 15, 25, 35 dB at 10, 100, 1000 rows


def test_interpolation_is_linear_in_log_rows_and_never_extrapolates():
    """Halfway between 10 and 100 rows in log terms is 10**1.5 ≈ 31.6 rows, not 55; outside the measured rows
    there is no value; equal rows average; unusable points (inf, rows 0) are ignored."""
    assert interpolate_log_x(DDIM, 10**1.5) == pytest.approx(20.0)
    assert interpolate_log_x(DDIM, 55) == pytest.approx(15 + 10 * math.log10(5.5))
    assert interpolate_log_x(DDIM, 100) == pytest.approx(25.0)
    assert interpolate_log_x(DDIM, 9.9) is None and interpolate_log_x(DDIM, 1001) is None
    assert interpolate_log_x([(10, 10.0), (10, 20.0), (0, 99.0), (20, math.inf)], 10) == pytest.approx(15.0)
    assert interpolate_log_x([], 10) is None


def test_margin_is_judged_against_the_interpolated_baseline():
    """A point 20 dB above the curve holds, 19.9 dB does not, one outside the curve is not judged; the verdict
    fails on any judged miss and has none when nothing was judged."""
    checks = check_margin(DDIM, [(10**1.5, 40.0), (100, 44.9), (5, 90.0)], margin=20.0)
    assert [c["holds"] for c in checks] == [True, False, None]
    assert checks[0]["baseline_db"] == pytest.approx(20.0) and checks[1]["gap_db"] == pytest.approx(19.9)
    assert verdict(checks) is False
    assert verdict(checks[:1] + checks[2:]) is True
    assert verdict(checks[2:]) is None


def test_best_within_a_budget_is_the_highest_psnr_at_or_under_it():
    """Only points costing at most the budget count; the best of them wins, the cheaper on a tie."""
    pts = [(14, 70.0), (22, 69.0), (41, 73.0), (30, 73.0)]
    assert best_within(pts, 13) is None
    assert best_within(pts, 22) == (14, 70.0)
    assert best_within(pts, 41) == (30, 73.0)


def test_baseline_at_a_budget_keeps_a_cheaper_point_that_did_better():
    """Random weights can make more DDIM steps worse: the budget still buys the cheaper, better point."""
    ddim = [(5, 17.0), (10, 15.0), (20, 16.5)]
    assert baseline_at_budget(ddim, 10) == pytest.approx(17.0)
    assert baseline_at_budget(ddim, 20) == pytest.approx(17.0)
    assert baseline_at_budget(DDIM, 10**1.5) == pytest.approx(20.0)
    assert baseline_at_budget(ddim, 21) is None


def test_every_budget_is_judged_at_the_worst_case_of_each_stretch():
    """With SPDInv points at 20 rows (44 dB) and 100 rows (60 dB) against DDIM 15 → 25 dB over 10 → 100 rows:
    the budget just under 100 rows still has only the 44 dB point against DDIM's ~25 dB there, so it fails
    although both points hold at their own rows; a budget below the first point fails for want of one."""
    spd = [(20, 44.0), (100, 60.0)]
    assert all(c["holds"] for c in check_margin(DDIM, spd, margin=20.0))
    checks = check_budgets(DDIM, spd, 20.0, 10, 300)
    by_budget = {c["budget"]: c for c in checks}
    assert sorted(by_budget) == [10, 19, 20, 99, 100, 300]
    assert by_budget[10]["holds"] is False and by_budget[10]["best_rows"] is None
    assert by_budget[20]["holds"] is True and by_budget[20]["best_rows"] == 20
    assert by_budget[99]["holds"] is False
    assert by_budget[99]["gap_db"] == pytest.approx(44 - (15 + 10 * math.log10(9.9)))
    assert by_budget[100]["holds"] is True
    assert verdict(checks) is False
    assert verdict(check_budgets(DDIM, spd + [(50, 70.0)], 20.0, 20, 300)) is True


def test_budgets_beyond_the_baselines_rows_are_not_judged():
    """The range's top is capped at DDIM's largest measured rows; a range wholly above it judges nothing."""
    checks = check_budgets([(5, 10.0), (50, 20.0)], [(20, 45.0)], 20.0, 20, 300)
    assert max(c["budget"] for c in checks) == 50
    assert check_budgets([(5, 10.0), (10, 12.0)], [(20, 45.0)], 20.0, 20, 300) == []


def _report(tmp_path, **meta):
    row = {"method": "ddim", "label": "ddim", "steps": 5, "invert_row_evals": 5, "edit_row_evals": 15,
           "recon_psnr_db": None, "background_psnr_db": 12.0}
    report = {"meta": {"resolution": 128, "prompt": "a photo of a cat", "target_prompt": "a photo of a dog", **meta},
              "models": [{"model": "sd3", "meta": {"checkpoint": "x"}, "rows": [row]}]}
    path = tmp_path / "equal-work.json"
    path.write_text(json.dumps(report))
    return path


def test_points_added_to_a_report_follow_its_rows_of_the_same_model(tmp_path):
    """--add-to: the recorded rows stay first (an exact reconstruction read back as inf), the new rows follow, the
    recorded model meta is kept, a point measured again replaces its row; the report is rewritten where it lies
    unless --out says otherwise."""
    args = parse_args(["--models", "sd3", "--points", "spdinv@3", "--add-to", str(_report(tmp_path))])
    base = load_base(args)
    assert args.out == tmp_path / "equal-work"
    assert base["models"][0]["rows"][0]["recon_psnr_db"] == math.inf
    new = {"model": "sd3", "meta": {"checkpoint": "y"}, "rows": [{"label": "spdinv", "steps": 3}]}
    table = merged(base, new)
    assert [r["label"] for r in table["rows"]] == ["ddim", "spdinv"] and table["meta"] == {"checkpoint": "x"}
    assert merged(base, {**new, "model": "sd15"})["rows"] == new["rows"]
    again = {**new, "rows": [{"label": "ddim", "steps": 5, "recon_psnr_db": 30.0}]}
    assert merged(base, again)["rows"] == again["rows"]  # a point measured again replaces its recorded row


def test_adding_to_a_report_of_another_measurement_is_refused_naming_the_difference(tmp_path):
    args = parse_args(["--points", "spdinv@3", "--resolution", "256", "--add-to", str(_report(tmp_path))])
    with pytest.raises(SystemExit, match="resolution 128 there, 256 here"):
        load_base(args)
    with pytest.raises(SystemExit, match="is not a file"):
        load_base(parse_args(["--add-to", str(tmp_path / "missing.json")]))
