"""CI's judgement of a ComfyUI version's host tests (.ci/host_summary.py and the host part of .ci/run): a run that
tested nothing, fewer tests than the floor, a required module that skipped, or a tree that is absent or empty
fails with a line that says so."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = ROOT / ".ci" / "host_summary.py"


def junit(path: Path, cases: list[tuple[str, str]]) -> Path:
    """A JUnit XML file with one test case per ``(classname, outcome)``; outcome passed, skipped or failed."""
    body = {"passed": "", "skipped": '<skipped type="pytest.skip" message="why"/>', "failed": '<failure message="x"/>'}
    xml = "".join(f'<testcase classname="{c}" name="t{n}" time="0.1">{body[o]}</testcase>'
                  for n, (c, o) in enumerate(cases))
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{xml}</testsuite></testsuites>')
    return path


def summary(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SUMMARY), *args], capture_output=True, text=True)


def test_a_run_where_every_host_module_skipped_fails(tmp_path):
    """What an empty or broken ComfyUI tree gives: each host module one skip, the core tests passing."""
    xml = junit(tmp_path / "h.xml", [("tests.test_plot", "passed")] * 5 + [("tests.host", "skipped")] * 30)
    run = summary("0.33.0", str(xml), "220")
    assert run.returncode == 1
    assert run.stdout.splitlines()[0] == "host tests on ComfyUI 0.33.0: 0 passed, 30 skipped (floor 220)"
    assert "fewer than the floor of 220" in run.stdout


def test_a_run_at_the_floor_passes_and_one_below_fails(tmp_path):
    cases = [("tests.host.test_p2p_nodes", "passed")] * 44 + [("tests.host.test_workflows", "skipped")]
    assert summary("0.3.64", str(junit(tmp_path / "a.xml", cases)), "44").returncode == 0
    below = summary("0.3.64", str(junit(tmp_path / "b.xml", cases[1:])), "44")
    assert below.returncode == 1 and "43 passed, 1 skipped (floor 44)" in below.stdout


def test_a_failed_host_test_fails_the_run(tmp_path):
    cases = [("tests.host.test_p2p_nodes", "passed")] * 10 + [("tests.host.test_pnp_nodes", "failed")]
    run = summary("0.33.0", str(junit(tmp_path / "f.xml", cases)), "5")
    assert run.returncode == 1 and "10 passed, 0 skipped, 1 failed" in run.stdout


def test_a_required_module_that_skipped_or_did_not_run_fails(tmp_path):
    cases = [("tests.host.test_p2p_nodes", "passed")] * 10
    require = ("--require", "tests.host.test_frontend")
    skipped = summary("0.33.0", str(junit(tmp_path / "s.xml", cases + [("tests.host.test_frontend", "skipped")])),
                      "5", *require)
    assert skipped.returncode == 1 and "tests.host.test_frontend: 1 of 1 tests did not pass" in skipped.stdout
    absent = summary("0.33.0", str(junit(tmp_path / "n.xml", cases)), "5", *require)
    assert absent.returncode == 1 and "tests.host.test_frontend: no tests ran" in absent.stdout
    ran = summary("0.33.0", str(junit(tmp_path / "r.xml", cases + [("tests.host.test_frontend", "passed")] * 3)),
                  "5", *require)
    assert ran.returncode == 0, ran.stdout


def test_a_missing_results_file_fails(tmp_path):
    run = summary("0.33.0", str(tmp_path / "none.xml"), "1")
    assert run.returncode == 1 and "cannot read" in run.stdout


def ci_host(trees: Path, version: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``.ci/run``'s ``host`` function alone, with ``trees`` as ../shared/comfyui; the environment builder is a
    stand-in that records that it was called."""
    function = subprocess.run(["sed", "-n", "/^host() {/,/^}/p", str(ROOT / ".ci" / "run")], capture_output=True,
                              text=True, check=True).stdout
    assert function.startswith("host() {")
    (tmp_path / ".ci").mkdir(exist_ok=True)
    (tmp_path / ".ci" / "comfyui-env").write_text("#!/bin/sh\necho ENV BUILT; exit 1\n")
    (tmp_path / ".ci" / "comfyui-env").chmod(0o755)
    script = f"set -euo pipefail\ntrees={trees}\n{function}\nhost {version} 4150 220 - tests/host\n"
    return subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True)


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sed") is None, reason="needs bash and sed")
@pytest.mark.parametrize("layout", ["absent", "empty"])
def test_ci_fails_a_version_whose_tree_is_absent_or_empty(tmp_path, layout):
    trees = tmp_path / "comfyui"
    trees.mkdir()
    if layout == "empty":
        (trees / "0.33.0").mkdir()
    run = ci_host(trees, "0.33.0", tmp_path)
    assert run.returncode == 1
    assert "ENV BUILT" not in run.stdout
    expected = "is absent" if layout == "absent" else "is not a ComfyUI tree"
    assert f"host tests on ComfyUI 0.33.0: FAILED: {trees / '0.33.0'} {expected}" in run.stdout
