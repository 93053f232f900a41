"""Print ``host tests on ComfyUI <version>: N passed, M skipped`` from a pytest JUnit XML file.

Counts only the test cases under ``tests/host`` (the same run also re-runs the core tests). Exits 1 when
any host test failed or errored, after printing the line with those counts too.
"""

import sys
import xml.etree.ElementTree as ET

version, path = sys.argv[1], sys.argv[2]
counts = {"passed": 0, "skipped": 0, "failed": 0}
for case in ET.parse(path).getroot().iter("testcase"):
    if not case.get("classname", "").startswith("tests.host"):
        continue
    if case.find("failure") is not None or case.find("error") is not None:
        counts["failed"] += 1
    elif case.find("skipped") is not None:
        counts["skipped"] += 1
    else:
        counts["passed"] += 1
line = f"host tests on ComfyUI {version}: {counts['passed']} passed, {counts['skipped']} skipped"
print(line + (f", {counts['failed']} failed" if counts["failed"] else ""))
sys.exit(1 if counts["failed"] else 0)
