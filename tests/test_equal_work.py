"""The equal-work benchmark's claim check: DDIM's curve interpolated at SPDInv's budgets, the margin judged there."""

from __future__ import annotations

import math

import pytest

from spdinv_pack.benchmarks.bench_equal_work import check_margin, interpolate_log_x, verdict

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
