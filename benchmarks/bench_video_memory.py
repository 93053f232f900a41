"""Peak memory and DiT passes of inverting (and editing) a video clip, per frame count, on the random Wan test model.

Runs ``bench_inversion.py --family wan --frames F`` for each frame count, plain inversion and SPDInv (then the edit)
each in a fresh process so that one run's allocations cannot raise another's peak, and tabulates what each run
measured: the latent's size, the clip's tokens (every block's self-attention sees all of them at once), and per
method (plain ``ddim`` flow inversion, ``spdinv``) and for the edit (source + target branches with mutual attention)
the peak memory, its rise over the level before the call, DiT passes per step and wall time. On CPU the memory is
the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` before each timed call, as
``bench_inversion.py`` measures it); on CUDA, torch's peak allocated memory.

``--solver-shape`` adds what the solver alone holds at a real clip's latent size (default 81 frames at 832×480:
``[1, 16, 21, 60, 104]``), without a DiT: ``spdinv.inversion.invert`` on CPU with a cheap nonlinear stand-in for the
velocity, on Wan's grid (shift 8), each method in a fresh process; the peak resident set's rise over the level with
the clip's latent allocated, in MiB and in copies of the latent, next to the trajectory the inversion returns
(steps + 1 latents). Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, nargs="+", default=[9, 17, 33], help="pixel frame counts, 1 + 4k each")
    p.add_argument("--resolution", type=int, default=256, help="frame side in pixels, multiple of 16 (default 256)")
    p.add_argument("--steps", type=int, default=10, help="inversion and edit steps (default 10)")
    p.add_argument("--edit-cfg", type=float, default=5.0, help="CFG of the edit (default 5, Wan's usual)")
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout ($COMFYUI_PATH)")
    p.add_argument("--solver-shape", type=int, nargs=5, default=[1, 16, 21, 60, 104], metavar="N",
                   help="latent shape of the solver-only measurement (default 81 frames at 832x480)")
    p.add_argument("--solver-steps", type=int, default=50, help="steps of the solver-only measurement (default 50)")
    p.add_argument("--solver-only", choices=("ddim", "spdinv"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help="output path without suffix")
    args = p.parse_args(argv)
    if args.out is None and args.solver_only is None:
        p.error("--out is required")
    if any(f < 1 or (f - 1) % 4 for f in args.frames):
        p.error(f"--frames: each count must be 1 + 4k (Wan's VAE packs 4 frames a latent frame), got {args.frames}")
    if args.resolution % 16:
        p.error(f"--resolution: must be a multiple of 16 (8 pixels a latent cell, 2×2 cells a token), got "
                f"{args.resolution}")
    return args


def one_run(args: argparse.Namespace, frames: int, method: str, scratch: Path) -> dict[str, Any]:
    """``bench_inversion.py``'s report for ``frames`` frames and ``method`` from a fresh process (``spdinv`` with
    the edit after it, ``ddim`` without)."""
    out = scratch / f"frames-{frames}-{method}"
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_inversion.py"), "--family", "wan", "--frames",
               str(frames), "--resolution", str(args.resolution), "--steps", str(args.steps), "--repeats", "1",
               "--methods", method, "--engine", "mmdit", "--edit-cfg", str(args.edit_cfg), "--out", str(out)]
    if method != "spdinv":
        command.append("--no-edit")
    if args.comfyui:
        command += ["--comfyui", args.comfyui]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.with_suffix(".json").read_text())


def one_count(args: argparse.Namespace, frames: int, scratch: Path) -> dict[str, Any]:
    """The report for ``frames`` frames: plain inversion and SPDInv (then the edit) each from its own process, so
    neither inherits the other's allocations."""
    ddim, spdinv = (one_run(args, frames, method, scratch) for method in ("ddim", "spdinv"))
    for table, other in zip(spdinv["tables"], ddim["tables"], strict=True):
        table["rows"] = other["rows"] + table["rows"]
    return spdinv


def summary(frames: int, report: dict[str, Any]) -> dict[str, Any]:
    """One frame count's row: latent size, tokens, and per method and the edit peak, rise, passes a step, time."""
    shape = report["meta"]["latent_shape"]
    (table,) = report["tables"]
    steps = table["steps"]
    row: dict[str, Any] = {"frames": frames, "latent_shape": shape, "latent_mib": _numel(shape) * 4 / MIB,
                           "tokens": shape[2] * (shape[3] // 2) * (shape[4] // 2)}
    for method in table["rows"]:
        row[method["method"]] = {"peak_mib": method["peak_mem_bytes"] / MIB,
                                 "rise_mib": (method["peak_mem_bytes"] - method["mem_base_bytes"]) / MIB,
                                 "passes_per_step": method["forwards"] / steps, "wall_s": method["median_s"],
                                 "recon_psnr_db": method["recon_psnr_db"]}
    edit = table.get("edit")
    if edit:
        row["edit"] = {"peak_mib": edit["peak_mem_bytes"] / MIB,
                       "rise_mib": (edit["peak_mem_bytes"] - edit["mem_base_bytes"]) / MIB,
                       "wall_s": edit["median_s"]}
    return row


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def stand_in_velocity(x: torch.Tensor) -> torch.Tensor:
    """A cheap nonlinear, spatially coupled velocity, so that each step's fixed point takes the solver a few
    iterations as a DiT's does."""
    return 1.2 * torch.tanh(x) + 0.3 * torch.roll(x, 1, dims=-1)


def solver_only(args: argparse.Namespace) -> dict[str, Any]:
    """This process's measurement of the solver alone (``--solver-only``): see the module docstring."""
    import bench_inversion

    bench_inversion.register_pack()
    from spdinv_pack.spdinv.inversion import InversionSettings, invert

    shape, steps = tuple(args.solver_shape), args.solver_steps
    t = torch.linspace(1.0, 0.0, steps + 1)
    sigmas = 8.0 * t / (1.0 + 7.0 * t)
    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    passes = {"n": 0}

    def denoise(x: torch.Tensor, sigma: float, items: torch.Tensor | None = None) -> torch.Tensor:
        passes["n"] += 1
        return x - sigma * stand_in_velocity(x)

    settings = InversionSettings(method=args.solver_only, rel_tol=0.01)
    gc.collect()
    if not bench_inversion._reset_hwm():
        raise SystemExit("bench_video_memory: cannot reset VmHWM (/proc/self/clear_refs); Linux only")
    base = bench_inversion._proc_status_kib("VmRSS") * 1024
    result = invert(denoise, x0, sigmas, settings, input_scale=lambda _s: 1.0)
    peak = bench_inversion._proc_status_kib("VmHWM") * 1024
    latent = x0.numel() * x0.element_size()
    return {"method": args.solver_only, "shape": list(shape), "steps": steps, "latent_mib": latent / MIB,
            "passes_per_step": passes["n"] / steps, "rise_mib": (peak - base) / MIB,
            "rise_copies": (peak - base) / latent, "trajectory_copies": result.latents.shape[0],
            "steps_under_delta": result.steps_under_delta()}


def solver_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The solver-only measurement of each method, each from a fresh process."""
    rows = []
    for method in ("ddim", "spdinv"):
        command = [sys.executable, __file__, "--solver-only", method, "--solver-steps", str(args.solver_steps),
                   "--solver-shape", *map(str, args.solver_shape)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def render(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table under the run's environment."""
    lines = ["# Video inversion memory per frame count (Wan)", "",
             f"- {meta['bench_meta']['device']}; torch {meta['bench_meta']['torch']}, ComfyUI "
             f"{meta['bench_meta']['comfyui_version']}, pack commit {meta['pack_commit']}",
             f"- model: {Path(meta['bench_meta']['checkpoint']).name} ({meta['bench_meta']['model']}); synthetic "
             f"clip at {meta['resolution']}², {meta['steps']} steps; edit with mutual attention at CFG "
             f"{meta['edit_cfg']} (source and target branches)",
             f"- memory: {meta['bench_meta']['memory']}; one fresh process per frame count and method (the edit "
             "after SPDInv); rise = peak − level before the call",
             f"- {meta['date']}: `{meta['command']}`", "",
             "| frames | latent | latent MiB | tokens | ddim peak / rise MiB | spdinv peak / rise MiB | "
             "spdinv passes/step | ddim / spdinv s | edit peak / rise MiB | edit s |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        d, s, e = r["ddim"], r["spdinv"], r.get("edit", {})
        lines.append(f"| {r['frames']} | {r['latent_shape']} | {r['latent_mib']:.2f} | {r['tokens']} | "
                     f"{d['peak_mib']:,.0f} / {d['rise_mib']:,.0f} | {s['peak_mib']:,.0f} / {s['rise_mib']:,.0f} | "
                     f"{s['passes_per_step']:.2f} | {d['wall_s']:.2f} / {s['wall_s']:.2f} | "
                     f"{e.get('peak_mib', float('nan')):,.0f} / {e.get('rise_mib', float('nan')):,.0f} | "
                     f"{e.get('wall_s', float('nan')):.2f} |")
    solver = meta.get("solver_rows")
    if solver:
        first = solver[0]
        lines += ["", f"## The solver alone at {first['shape']} ({first['latent_mib']:.1f} MiB a latent, "
                  f"{first['steps']} steps, no DiT)", "",
                  "Peak resident set's rise while inverting, over the level with the latent allocated; the "
                  "trajectory (steps + 1 latents) is what the inversion returns; working set = rise − trajectory.",
                  "", "| method | passes/step | steps < δ | rise MiB | rise in latents | trajectory latents | "
                  "working set in latents |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in solver:
            lines.append(f"| {r['method']} | {r['passes_per_step']:.2f} | {r['steps_under_delta']}/{r['steps']} | "
                         f"{r['rise_mib']:,.0f} | {r['rise_copies']:.1f} | {r['trajectory_copies']} | "
                         f"{r['rise_copies'] - r['trajectory_copies']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.solver_only:
        print(json.dumps(solver_only(args)))
        return 0
    rows, reports = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for frames in args.frames:
            print(f"[memory] {frames} frames", file=sys.stderr, flush=True)
            report = one_count(args, frames, Path(scratch))
            reports.append(report)
            rows.append(summary(frames, report))
    git = reports[0]["meta"]["pack_git"]
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "pack_commit": (git["commit"] or "unknown")[:12] + (" (uncommitted changes)" if git["dirty"] else ""),
            "resolution": args.resolution, "steps": args.steps, "edit_cfg": args.edit_cfg,
            "bench_meta": reports[0]["meta"], "solver_rows": solver_rows(args)}
    out = args.out.with_suffix("") if args.out.suffix in (".json", ".md") else args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    text = render(meta, rows)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
