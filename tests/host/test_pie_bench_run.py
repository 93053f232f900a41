"""The PIE-Bench harness's ``run`` through a real ComfyUI server on the synthetic PIE folder (random SD1.5).

Small settings (128² working size, 3 steps, 2 items) so that it fits CI; the edits are saved at the photos'
512×512 and a rerun resumes: finished edits are kept, only missing ones are made. The rows include DDIM + PnP,
whose source replays the DDIM reconstruction (a second pass of the model), and each folder records its protocol
and the precision (fp32: ComfyUI started with ``--force-fp32``).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from spdinv_pack.tests.pie_fixture import make_pie_folder

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.pie", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=1800)


def test_run_edits_every_item_and_method_resumes_and_scores(comfyui_path, sd15_checkpoint_path, tmp_path):
    pie = make_pie_folder(tmp_path / "pie")
    out = tmp_path / "out"
    args = ["run", "--comfyui", str(comfyui_path), "--python", sys.executable, "--checkpoint",
            str(sd15_checkpoint_path), "--pie-dir", str(pie), "--out", str(out), "--inversions", "ddim", "spdinv",
            "--engines", "p2p", "pnp", "--steps", "3", "--size", "128", "--limit", "2"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    edits = sorted(out.glob("*/*.png"))
    assert [f"{p.parent.name}/{p.name}" for p in edits] == [
        f"{m}+{e}/00000000000{i}.png" for m in ("ddim", "spdinv") for e in ("p2p", "pnp") for i in (0, 1)]
    assert all(Image.open(p).size == (512, 512) for p in edits)
    assert "[8/8]" in first.stdout and "median" in first.stdout and "--force-fp32" in first.stdout
    recorded = json.loads((out / "ddim+pnp" / "settings.json").read_text(encoding="utf-8"))
    assert recorded["precision"] == "fp32" and recorded["protocol"]["pnp"]["source_path"] == "reconstruction"
    stamps = {p: p.stat().st_mtime_ns for p in edits}
    (out / "spdinv+p2p" / "000000000001.png").unlink()
    second = run_cli(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "7 edits already" in second.stdout and "[1/1] spdinv+p2p 000000000001" in second.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.name != "000000000001.png"
               or p.parent.name != "spdinv+p2p")
    scored = run_cli("metrics", "--pie-dir", str(pie), "--edits", str(out), "--out", str(out), "--limit", "2")
    assert scored.returncode == 0, scored.stdout + scored.stderr
    rows = list(csv.DictReader(open(out / "metrics.csv", encoding="utf-8")))
    assert len(rows) == 8 and all(float(r["psnr"]) > 5 for r in rows)
