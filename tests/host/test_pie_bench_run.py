"""The PIE-Bench harness's ``run`` through a real ComfyUI server on the synthetic PIE folder (random SD1.5).

Small settings (128² working size, 3 steps, 2 items) so that it fits CI; the edits are saved at the photos'
512×512 and a rerun resumes: finished edits are kept, only missing ones are made. The rows include DDIM + PnP,
whose source replays the DDIM reconstruction (a second pass of the model), and each folder records its protocol
and the precision (fp32: ComfyUI started with ``--force-fp32``). The same set made on two running servers
(``--servers``) and by two workers at once (``--shard 0/2`` and ``1/2``, each with its own server) into one folder
gives the same edits, so the same metrics, as one server.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from PIL import Image

from spdinv_pack.benchmarks.pie.run import server_split
from spdinv_pack.tests.pie_fixture import make_pie_folder
from spdinv_pack.tools.comfy_server import ComfyServer

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


LEAN = ("--bf16-unet", "--bf16-text-enc")
"""ComfyUI flags of the multi-server test: weights stored in bfloat16 (about half the memory of float32)."""


def scores(folder: Path) -> dict[tuple[str, str], dict[str, str]]:
    return {(r["image_id"], r["method"]): r for r in csv.DictReader(open(folder / "metrics.csv", encoding="utf-8"))}


def test_two_servers_and_two_shards_make_the_same_edits_and_metrics_as_one_server(comfyui_path, sd15_checkpoint_path,
                                                                                    tmp_path):
    pie = make_pie_folder(tmp_path / "pie")
    # bf16 weights (fp32 compute on the CPU) so that two servers fit next to other work; the same in every run
    protocol = ["--pie-dir", str(pie), "--inversions", "ddim", "--engines", "p2p", "--steps", "3", "--size", "128",
                "--precision", "auto"]
    own = ["--comfyui", str(comfyui_path), "--python", sys.executable, "--checkpoint", str(sd15_checkpoint_path),
           f"--comfyui-args={' '.join(LEAN)}"]
    one, two, shards = tmp_path / "one", tmp_path / "two", tmp_path / "shards"
    wall = {}
    t0 = time.monotonic()
    first = run_cli("run", *own, *protocol, "--out", str(one))
    wall["one server"] = time.monotonic() - t0
    assert first.returncode == 0, first.stdout + first.stderr

    with ExitStack() as stack:
        servers = [stack.enter_context(ComfyServer(comfyui_path, python=sys.executable, only_this_pack=True,
                                                   checkpoints=[sd15_checkpoint_path.parent], extra_args=LEAN))
                   for _ in range(2)]
        t0 = time.monotonic()
        both = run_cli("run", "--servers", *(s.url for s in servers), "--checkpoint", sd15_checkpoint_path.name,
                       *protocol, "--out", str(two))
        wall["--servers a b"] = time.monotonic() - t0
    assert both.returncode == 0, both.stdout + both.stderr
    split_two = server_split(two)
    assert sorted(split_two) == sorted(s.url for s in servers) and sum(split_two.values()) == 3

    t0 = time.monotonic()
    workers = [subprocess.Popen([sys.executable, "-m", "benchmarks.pie", "run", *own, *protocol, "--out", str(shards),
                                 "--shard", f"{i}/2"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for i in range(2)]
    logs = [w.communicate(timeout=1800)[0] for w in workers]
    wall["--shard 0/2 + 1/2"] = time.monotonic() - t0
    assert [w.returncode for w in workers] == [0, 0], "\n".join(logs)
    split_shards = server_split(shards)
    assert sorted(split_shards.values()) == [1, 2]  # items 0 and 2 to shard 0, item 1 to shard 1

    for folder in (one, two, shards):
        scored = run_cli("metrics", "--pie-dir", str(pie), "--edits", str(folder), "--out", str(folder))
        assert scored.returncode == 0, scored.stdout + scored.stderr
    reference = scores(one)
    assert len(reference) == 3
    for folder in (two, shards):
        assert sorted(folder.glob("*/*.png")) and not list(folder.rglob("*.partial"))
        for p in sorted(one.glob("*/*.png")):  # same protocol, same graph, deterministic: the same pixels
            assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(folder / p.parent.name / p.name)))
        assert scores(folder) == reference
    summary = {"wall_s": {k: round(v, 1) for k, v in wall.items()}, "split --servers": split_two,
               "split --shard": split_shards,
               "metrics": {f"{i} {m}": {k: r[k] for k in ("psnr", "mse", "ssim", "psnr_corrected")}
                           for (i, m), r in reference.items()}}
    print("PIE across workers:", json.dumps(summary, indent=1))
