"""Judge one ComfyUI version's host tests from a pytest JUnit XML file and print one line about them.

``host_summary.py <version> <junit xml> <floor> [--require MODULE ...]`` prints
``host tests on ComfyUI <version>: N passed, M skipped (floor F)`` from the test cases under ``tests/host`` (the
same run also re-runs the core tests) and exits 1, naming the reason on further lines, when any host test failed or
errored, when fewer than ``floor`` host tests passed (a tree that is empty or does not import turns every host
module into one skip, so a run that tested nothing would otherwise look green), or when a required module
(e.g. ``tests.host.test_frontend``, which skips without Chromium) had a test that did not pass or had no tests.
A missing or unreadable XML file (pytest killed before writing it) fails too.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections import Counter


def outcome(case: ET.Element) -> str:
    """``passed``, ``skipped`` or ``failed`` (errors count as failed) of one JUnit test case."""
    if case.find("failure") is not None or case.find("error") is not None:
        return "failed"
    return "skipped" if case.find("skipped") is not None else "passed"


def judge(version: str, path: str, floor: int, required: list[str]) -> tuple[str, list[str]]:
    """The summary line and the reasons the run fails (none: it passes)."""
    try:
        cases = list(ET.parse(path).getroot().iter("testcase"))
    except (OSError, ET.ParseError) as e:
        return f"host tests on ComfyUI {version}: no results", [f"cannot read {path}: {e}"]
    host = [c for c in cases if c.get("classname", "").startswith("tests.host")]
    counts = Counter(outcome(c) for c in host)
    line = f"host tests on ComfyUI {version}: {counts['passed']} passed, {counts['skipped']} skipped"
    line += (f", {counts['failed']} failed" if counts["failed"] else "") + f" (floor {floor})"
    reasons = []
    if counts["failed"]:
        reasons.append(f"{counts['failed']} host tests failed or errored")
    if counts["passed"] < floor:
        reasons.append(f"{counts['passed']} host tests passed, fewer than the floor of {floor}: is the ComfyUI tree "
                       "complete and its environment working? (see the skip reasons above)")
    for module in required:
        mine = [c for c in host if c.get("classname", "") == module or c.get("classname", "").startswith(module + ".")]
        missed = [c for c in mine if outcome(c) != "passed"]
        if not mine:
            reasons.append(f"{module}: no tests ran, and this run requires it")
        elif missed:
            why = missed[0].find("skipped")
            detail = why.get("message", "") if why is not None else "failed"
            reasons.append(f"{module}: {len(missed)} of {len(mine)} tests did not pass, and this run requires it "
                           f"({detail})")
    return line, reasons


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version")
    parser.add_argument("junit_xml")
    parser.add_argument("floor", type=int, help="fewest host tests that must pass")
    parser.add_argument("--require", action="append", default=[], metavar="MODULE",
                        help="a host test module (dotted, e.g. tests.host.test_frontend) whose every test must pass")
    args = parser.parse_args(argv)
    line, reasons = judge(args.version, args.junit_xml, args.floor, args.require)
    print(line)
    for reason in reasons:
        print(f"host tests on ComfyUI {args.version}: FAILED: {reason}")
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
