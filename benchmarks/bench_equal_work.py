"""Quality at equal work (issue 31): reconstruction and background PSNR against UNet rows, per inversion method.

    COMFYUI_PATH=~/ComfyUI python benchmarks/bench_equal_work.py [--models sd15 sdxl sd3] [--points 'SPEC@STEPS' ...]

For every model (the random-weight test checkpoints of ``tests/host/factory``: SD1.5, the SDXL-class Segmind Vega
layout, the depth-4 SD3-class MM-DiT) and every point (an inversion method spec as in ``bench_inversion.py`` at a
list of step counts) it runs the whole edit once, as ``bench_edit.py``'s pipeline does: ``SPDInvInvert``, then
``SPDInvEditSampler`` (SD models: Prompt-to-Prompt refine with local blend; SD3: MM-DiT mutual attention). It
records the diffusion-model row evaluations of the inversion (hooks on the model: batch rows of every call, a
backward counted as two; plain DDIM inversion costs one row a step) and of the edit, the reconstruction PSNR (the
edit's source branch against the inverted latent, ``spdinv.metrics.latent_psnr``) and the background PSNR (the
edited latent against the inverted latent outside the photo's central quarter, as ``bench_instruction_drift.py``
measures drift). No timing: rows and PSNRs do not depend on the machine.

Then it checks the claim that at every budget SPDInv's reconstruction is at least ``--margin`` dB (20) above
DDIM's at the same budget: DDIM's PSNR is interpolated at each SPDInv point's inversion rows, linearly in
log(rows) between DDIM's measured points; an SPDInv point outside DDIM's measured rows is not judged. Each model
runs in its own process (``--jobs`` of them at once). Writes ``benchmarks/results/<out>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_edit  # noqa: E402 - the sibling scripts, imported as modules
import bench_instruction_drift as drift  # noqa: E402
import bench_inversion as inv  # noqa: E402


@dataclass(frozen=True)
class TestModel:
    """A random-weight test checkpoint of ``tests/host/factory`` and how it is edited."""

    title: str
    path_function: str
    """The ``tests.host.factory`` function that returns (and on first use builds) the checkpoint."""
    engine: str
    """``none``: Prompt-to-Prompt (UNet models); ``mmdit``: MM-DiT mutual attention."""
    cfg: float


MODELS = {
    "sd15": TestModel("SD1.5", "sd15_checkpoint_path", "none", 7.5),
    "sdxl": TestModel("SDXL (Vega layout)", "sdxl_checkpoint_path", "none", 7.5),
    "sd3": TestModel("SD3 (flow, MM-DiT)", "sd3_checkpoint_path", "mmdit", 4.0),
}
DEFAULT_POINTS = (
    "ddim@5,10,20,50,100,300",
    "direct_inversion@5,20",
    "null_text inner_steps=1@5,10",
    "null_text@5",
    "spdinv@5,10,20,50,100",
    "spdinv delta=1e-8@5,10,20",
    "spdinv max_iters=1@5,10",
    "spdinv max_iters=2@5,10",
    "spdinv rel_tol=0@10",
)
"""Budgets from ~5 to ~300 inversion rows: DDIM and DirectInversion by steps, null-text by its inner Adam steps
(default 10), SPDInv by steps and its solver limits (``delta``, ``max_iters``, ``rel_tol``; defaults 5e-6, 25 and
0.01): a larger budget buys a tighter tolerance as well as more steps."""
MARGIN_DB = 20.0
BUDGETS = (20.0, 300.0)
"""Inversion rows over which the claim is judged (issue 31: budgets from ~20 to ~300 rows)."""
COLORS = {"ddim": (60, 120, 220), "spdinv": (220, 80, 60), "null_text": (170, 90, 200),
          "direct_inversion": (60, 170, 90), "negative_prompt": (200, 150, 40)}
REFERENCE_COLOR = (130, 130, 130)
RECON_CAP_DB = 100.0
"""The reconstruction panels' top: DirectInversion replays the inversion's latents into its source branch, so its
reconstruction is near exact by construction (far above 100 dB); its points are drawn as triangles at the top."""


# --------------------------------------------------------------------------------------------
# The claim (pure)
# --------------------------------------------------------------------------------------------


def interpolate_log_x(points: Sequence[tuple[float, float]], x: float) -> float | None:
    """``y`` at ``x`` on the polyline through ``points`` (x, y), linear in log10 x between neighbours; None when
    ``x`` lies outside the points' x range (no extrapolation) or no point is usable (x > 0, finite y). Points at
    the same x are averaged."""
    merged: dict[float, list[float]] = {}
    for px, py in points:
        if px > 0 and math.isfinite(py):
            merged.setdefault(float(px), []).append(float(py))
    pts = sorted((px, sum(ys) / len(ys)) for px, ys in merged.items())
    if not pts or not pts[0][0] <= x <= pts[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1:
            t = (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0))
            return y0 + t * (y1 - y0)
    return pts[0][1]


def check_margin(baseline: Sequence[tuple[float, float]], candidates: Sequence[tuple[float, float]],
                 margin: float) -> list[dict[str, Any]]:
    """For each candidate (rows, PSNR): the baseline's PSNR interpolated at its rows (:func:`interpolate_log_x`),
    the gap, and whether the gap is at least ``margin`` (None where the baseline has no value there)."""
    out = []
    for rows, psnr in candidates:
        base = interpolate_log_x(baseline, rows)
        gap = None if base is None else psnr - base
        out.append({"rows": rows, "psnr_db": psnr, "baseline_db": base, "gap_db": gap,
                    "holds": None if gap is None else bool(gap >= margin)})
    return out


def best_within(points: Sequence[tuple[float, float]], budget: float) -> tuple[float, float] | None:
    """The point (rows, PSNR) of highest finite-or-infinite PSNR among those costing at most ``budget`` rows
    (ties: the cheaper), or None: what a user with ``budget`` rows can get by choosing steps and settings."""
    within = [(x, y) for x, y in points if x <= budget and not math.isnan(y)]
    return max(within, key=lambda p: (p[1], -p[0]), default=None)


def baseline_at_budget(baseline: Sequence[tuple[float, float]], budget: float) -> float | None:
    """The baseline's best PSNR at ``budget`` rows: its curve interpolated there (:func:`interpolate_log_x`) or
    any measured point at fewer rows that did better (more steps need not help on random weights); None outside
    its measured rows."""
    at = interpolate_log_x(baseline, budget)
    if at is None:
        return None
    cheaper = best_within([(x, y) for x, y in baseline if math.isfinite(y)], budget)
    return at if cheaper is None else max(at, cheaper[1])


def check_budgets(baseline: Sequence[tuple[float, float]], candidates: Sequence[tuple[float, float]],
                  margin: float, low: float, high: float) -> list[dict[str, Any]]:
    """The claim at every budget in ``[low, high]`` rows (``high`` capped at the baseline's largest measured
    rows): the best candidate costing at most the budget against the baseline there.

    The best candidate is a step function of the budget, constant from one candidate's rows to just below the
    next's, and the baseline's value only grows with the budget, so the worst budget of each stretch is its
    right end: judging ``low``, ``high``, every candidate's rows and the row just below each is judging every
    budget. A budget without a candidate at or under it fails (``best_rows`` None)."""
    usable = [x for x, y in baseline if x > 0 and math.isfinite(y)]
    if not usable:
        return []
    high = min(high, max(usable))
    marks = {low, high} | {x for x, _ in candidates} | {x - 1 for x, _ in candidates}
    out = []
    for budget in sorted(b for b in marks if low <= b <= high):
        best = best_within(candidates, budget)
        base = baseline_at_budget(baseline, budget)
        gap = None if best is None or base is None else best[1] - base
        out.append({"budget": budget, "best_rows": None if best is None else best[0],
                    "psnr_db": None if best is None else best[1], "baseline_db": base, "gap_db": gap,
                    "holds": None if base is None else bool(gap is not None and gap >= margin)})
    return out


def verdict(checks: Sequence[dict[str, Any]]) -> bool | None:
    """True when every judged point holds, False when one does not, None when no point could be judged."""
    judged = [c["holds"] for c in checks if c["holds"] is not None]
    return all(judged) if judged else None


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """A method spec at some step counts, on every model or on the listed ones."""

    spec: inv.MethodSpec
    steps: list[int]
    models: tuple[str, ...] | None = None

    @property
    def text(self) -> str:
        where = "" if self.models is None else ",".join(self.models) + ":"
        return f"{where}{self.spec.label}@{','.join(map(str, self.steps))}"


def parse_point(text: str) -> Point:
    """``[MODELS:]SPEC@STEPS``: optionally the models it runs on (comma-separated keys of ``MODELS``), a
    ``bench_inversion.py`` method spec, and comma-separated step counts."""
    head, colon, rest = text.partition(":")
    models = tuple(head.split(",")) if colon and set(head.split(",")) <= set(MODELS) else None
    spec, at, steps = (rest if models else text).rpartition("@")
    try:
        counts = [int(s) for s in steps.split(",")]
    except ValueError:
        counts = []
    if not at or not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected [MODELS:]SPEC@STEPS, e.g. 'spdinv max_iters=2@10,20' "
                                         "or 'sd3:ddim@100'")
    return Point(inv.parse_method(spec), counts, models)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout ($COMFYUI_PATH)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA when available, else CPU (ComfyUI started with --cpu)")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS),
                   help="random test models, one process each (default: sd15 sdxl sd3)")
    p.add_argument("--points", type=parse_point, nargs="+", default=None, metavar="SPEC@STEPS",
                   help="methods and step counts, e.g. 'spdinv max_iters=2@10,20' 'null_text inner_steps=1@5';\n"
                        "'sd3,sd15:SPEC@STEPS' runs on those models only\n"
                        f"(default: {' | '.join(DEFAULT_POINTS)})")
    p.add_argument("--resolution", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--margin", type=float, default=MARGIN_DB, help="the claim's dB over DDIM (default 20)")
    p.add_argument("--budgets", type=float, nargs=2, default=BUDGETS, metavar=("LOW", "HIGH"),
                   help="inversion rows over which the claim is judged (default %(default)s; HIGH is capped at\n"
                        "DDIM's largest measured rows)")
    p.add_argument("--prompt", default="a photo of a cat", help="source prompt")
    p.add_argument("--target-prompt", default="a photo of a dog", help="target prompt")
    p.add_argument("--out", type=Path, help="output path without suffix (default: benchmarks/results/"
                                            "equal-work-<device>-<resolution>-<models>)")
    p.add_argument("--jobs", type=int, default=1,
                   help="models measured at once, each in its own process (default 1; memory: one model each)")
    p.add_argument("--add-to", type=Path, metavar="REPORT",
                   help="add the points measured now to a recorded report (its .json; same resolution and\n"
                        "prompts), rejudge the claim and rewrite that report (or --out): more points without\n"
                        "rerunning the recorded ones; the report lists every run that made it")
    p.add_argument("--part", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.points is None:
        args.points = [parse_point(t) for t in DEFAULT_POINTS]
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.resolution < 8 or args.resolution % 8:
        p.error("--resolution must be a positive multiple of 8")
    return args


# --------------------------------------------------------------------------------------------
# One model (child process)
# --------------------------------------------------------------------------------------------


def settings_text(method: str, settings: dict[str, Any], spec: inv.MethodSpec) -> str:
    """The row's cost knobs in words: SPDInv's solver limits, null-text's inner steps."""
    if method.startswith("spdinv"):
        return f"{settings['solver']}, max_iters {settings['max_iters']}, rel_tol {settings['rel_tol']:g}"
    if method == "null_text":
        from spdinv_pack.spdinv.null_text import NullTextSettings

        return f"inner_steps {spec.null_text.get('inner_steps', NullTextSettings.inner_steps)}"
    return ""


def measure_model(key: str, args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    """Every point on one model: the rows of its inversion and edit, and the two PSNRs."""
    from spdinv_pack.spdinv.metrics import latent_psnr
    from spdinv_pack.tests.host import factory

    model = MODELS[key]
    bench_args = argparse.Namespace(
        comfyui=args.comfyui, device=args.device, checkpoint=getattr(factory, model.path_function)(), family=None,
        image=None, latent="sd-like", resolution=args.resolution, frames=None, engine=model.engine,
        edit_cfg=model.cfg, cfg=model.cfg, dtype="default", blend=["cat", "dog"], inversion_guidance=False,
        prompt=args.prompt, target_prompt=args.target_prompt, methods=[p.spec for p in args.points],
        delta=5e-6, repeats=1, warmup_steps=0, no_edit=True)
    bench = bench_edit.EditBench(bench_args, cuda)
    photo = bench.latent["samples"]
    inside = drift.cells_of(drift.central_quarter(args.resolution), photo)
    rows = []
    for point in args.points:
        if point.models is not None and key not in point.models:
            continue
        spec = point.spec
        for steps in point.steps:
            run = bench.pipeline(spec, steps)
            method = bench_edit.method_name(run["inversion"], spec)
            settings = run["inversion"].result.settings.to_dict()
            row = {"method": method, "label": spec.label, "steps": steps,
                   "settings": settings, "settings_text": settings_text(method, settings, spec),
                   "invert_row_evals": run["invert_row_evals"], "edit_row_evals": run["edit_row_evals"],
                   "recon_psnr_db": latent_psnr(run["recon"]["samples"], photo),
                   "background_psnr_db": drift.outside_figures(run["edited"]["samples"], photo, inside)["psnr_db"]}
            rows.append(row)
            inv.log(f"{key} {spec.label} @ {steps}: {row['invert_row_evals']} + {row['edit_row_evals']} rows, "
                    f"recon {row['recon_psnr_db']:.2f} dB, background {row['background_psnr_db']:.2f} dB")
    meta = bench.meta()
    for k in ("repeats", "warmup_steps", "delta", "memory"):
        meta.pop(k, None)
    meta.update(engine="p2p" if model.engine == "none" else model.engine, cfg=model.cfg,
                target_prompt=args.target_prompt)
    return {"model": key, "title": model.title, "meta": meta, "rows": rows}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def family(method: str) -> str:
    """A method name or spec without solver and settings (``spdinv/anderson``, ``spdinv max_iters=1`` -> ``spdinv``)."""
    return method.split()[0].split("/")[0].split("+")[0]


def series_of(row: dict[str, Any]) -> str:
    """The plot line of a row: SPDInv's by its settings (the row's spec, one line through its step counts), the
    other methods' by method (null-text's line runs through its inner steps)."""
    return row["label"] if family(row["method"]) == "spdinv" else family(row["method"])


def shade_of(name: str, k: int) -> tuple[int, int, int]:
    """The method's colour for its ``k``-th line: darker and lighter variants of it after the first."""
    r, g, b = COLORS.get(name, (0, 0, 0))
    f = (1.0, 0.55, 1.35, 0.8, 1.6, 0.35)[k % 6]
    return (min(255, int(r * f)), min(255, int(g * f)), min(255, int(b * f))) if f <= 1 else tuple(
        int(c + (255 - c) * (f - 1)) for c in (r, g, b))


def claim_of(table: dict[str, Any], margin: float, budgets: Sequence[float]) -> dict[str, Any]:
    """The margin check of one model's SPDInv rows against its DDIM rows (inversion rows as the budget): at each
    SPDInv point's own rows (``checks``, per setting) and at every budget in ``budgets`` (low, high) for the best
    SPDInv point within it (``budget_checks``, whose verdict is the claim's)."""
    def points(rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
        return [(r["invert_row_evals"], r["recon_psnr_db"]) for r in rows]

    ddim = points([r for r in table["rows"] if r["method"] == "ddim"])
    spd = [r for r in table["rows"] if family(r["method"]) == "spdinv"]
    checks = check_margin(ddim, points(spd), margin)
    for r, c in zip(spd, checks, strict=True):
        c.update(label=r["label"], steps=r["steps"])
    budget_checks = check_budgets(ddim, points(spd), margin, *budgets)
    for c in budget_checks:
        best = next((r for r in spd if c["best_rows"] is not None and r["invert_row_evals"] == c["best_rows"]
                     and r["recon_psnr_db"] == c["psnr_db"]), None)
        c.update(label=best and best["label"], steps=best and best["steps"])
    return {"margin_db": margin, "budget": "inversion row evaluations", "baseline": "ddim, interpolated in log(rows)",
            "budgets": list(budgets), "checks": checks, "budget_checks": budget_checks,
            "holds": verdict(budget_checks)}


def _db(v: float | None) -> str:
    return "–" if v is None else "inf" if math.isinf(v) else f"{v:.2f}"


def render_markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    lines = [
        "# Quality at equal work: PSNR against UNet rows",
        "",
        *inv.environment_lines(m),
        f"- random-weight test models, {m['resolution']}² SD-like latent; edit \"{m['prompt']}\" → "
        f"\"{m['target_prompt']}\" (SD models: P2P refine, local blend cat/dog, CFG 7.5; SD3: MM-DiT mutual "
        "attention, CFG 4); one run per point, no timing",
        "- rows: diffusion-model row evaluations (batch rows of every call, a backward counted as two); "
        "**inversion rows** are the budget; edit rows are the edit's own (3 a step, 4 for the guided sources)",
        "- recon PSNR: the edit's source branch against the inverted latent; background PSNR: the edited latent "
        "against it outside the photo's central quarter (peak: the latent's largest magnitude)",
        f"- claim: at every budget of {m['budgets'][0]:g} to {m['budgets'][1]:g} inversion rows (capped at DDIM's "
        f"largest measured rows), the best SPDInv point costing at most the budget (any steps and settings) has a "
        f"recon PSNR ≥ DDIM's + {m['margin_db']:g} dB there; DDIM's PSNR is its curve interpolated linearly in "
        "log(rows), or a cheaper DDIM point that did better. Judged at the range's ends, at every SPDInv point's "
        "rows and one row below each (the best SPDInv point is constant in between and DDIM's value only grows, "
        "so these are the worst cases)",
        "- per point: SPDInv − DDIM at that point's own rows (one setting at one step count; informative)",
        f"- {m['date']}: `{m['command']}`",
        *(f"- points added {a['date']} at commit {(a['pack_git']['commit'] or 'unknown')[:12]}"
          f"{' (uncommitted changes)' if a['pack_git']['dirty'] else ''}: `{a['command']}`"
          for a in m.get("added", [])),
    ]
    added = bool(m.get("added"))
    """Points added by later runs: each row names the commit that measured it."""
    for t in report["models"]:
        tm = t["meta"]
        claim = t["claim"]
        by_label = {(c["label"], c["steps"]): c for c in claim["checks"]}
        lines += ["", f"## {t['title']} ({Path(tm['checkpoint']).name}, latent {tm['latent_shape']})", "",
                  "| method | steps | settings | inversion rows | edit rows | recon PSNR dB | background PSNR dB "
                  "| DDIM at these rows dB | SPDInv − DDIM dB |" + (" commit |" if added else ""),
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|" + ("---|" if added else "")]
        for r in sorted(t["rows"], key=lambda r: (family(r["method"]) != "ddim", r["method"], r["invert_row_evals"])):
            c = by_label.get((r["label"], r["steps"]))
            commit = (r.get("commit") or m["pack_git"]["commit"] or "unknown")[:7]
            lines.append(
                f"| {r['label']} | {r['steps']} | {r['settings_text']} | {r['invert_row_evals']} "
                f"| {r['edit_row_evals']} | {_db(r['recon_psnr_db'])} | {_db(r['background_psnr_db'])} "
                f"| {_db(c and c['baseline_db'])} | {_db(c and c['gap_db'])} |" + (f" {commit} |" if added else ""))
        budget_checks = claim["budget_checks"]
        lines += ["", f"At every budget ({claim['budgets'][0]:g}–{claim['budgets'][1]:g} rows):", "",
                  "| budget rows | best SPDInv within it | its rows | recon PSNR dB | DDIM at the budget dB "
                  f"| gap dB | ≥ {claim['margin_db']:g} dB |",
                  "|---:|---|---:|---:|---:|---:|:---:|"]
        for c in budget_checks:
            best = "none" if c["best_rows"] is None else f"{c['label']} @ {c['steps']}"
            mark = "not judged" if c["holds"] is None else "yes" if c["holds"] else "**no**"
            rows = "–" if c["best_rows"] is None else f"{c['best_rows']:g}"
            lines.append(f"| {c['budget']:g} | {best} | {rows} | {_db(c['psnr_db'])} | {_db(c['baseline_db'])} "
                         f"| {_db(c['gap_db'])} | {mark} |")
        judged = [c for c in budget_checks if c["holds"] is not None]
        failed = [c for c in judged if not c["holds"]]
        result = ("no budget inside DDIM's measured rows" if claim["holds"] is None else
                  f"holds at all {len(judged)} judged budgets" if claim["holds"] else
                  f"fails at {len(failed)} of {len(judged)} judged budgets (" + ", ".join(
                      f"{c['budget']:g} rows" for c in failed) + ")")
        lines += ["", f"Claim (≥ {claim['margin_db']:g} dB over DDIM at every budget): {result}."]
    return "\n".join(lines) + "\n"


def frontier_line(table: dict[str, Any]) -> Any:
    """The claim's SPDInv side as a staircase: the best SPDInv recon PSNR within each budget."""
    from spdinv_pack.spdinv.plot import Line

    pts = [(c["budget"], c["psnr_db"]) for c in table["claim"]["budget_checks"] if c["psnr_db"] is not None]
    xs, ys = [], []
    for x, y in pts:
        if ys and y != ys[-1]:
            xs.append(x)
            ys.append(ys[-1])
        xs.append(x)
        ys.append(y)
    return Line("best SPDInv within the budget", xs, ys, shade_of("spdinv", 5), dashed=True)


def render_plot(report: dict[str, Any]) -> Any:
    """Recon PSNR (top row) and background PSNR (bottom row) against inversion rows, one panel per model."""
    from spdinv_pack.spdinv.plot import Line, Panel, render_line_panels

    margin = report["meta"]["margin_db"]

    def lines(table: dict[str, Any], key: str) -> list[Line]:
        out = []
        names = sorted({series_of(r) for r in table["rows"]}, key=lambda n: (family(n) != "ddim", n))
        shades: dict[str, int] = {}
        for name in names:
            pts = sorted((r["invert_row_evals"], r[key]) for r in table["rows"] if series_of(r) == name)
            pts = [(x, y) for x, y in pts if y is not None]
            shade = shades[family(name)] = shades.get(family(name), -1) + 1
            out.append(Line(name, [x for x, _ in pts], [y for _, y in pts], shade_of(family(name), shade)))
            if name == "ddim" and key == "recon_psnr_db":
                out.append(frontier_line(table))
                out.append(Line(f"ddim + {margin:g} dB (the claim's bar)", [x for x, _ in pts],
                                [y + margin for _, y in pts], REFERENCE_COLOR, dashed=True))
        return out

    tables = report["models"]
    panels = [Panel(f"{t['title']}: reconstruction (triangles: above {RECON_CAP_DB:g} dB)",
                    lines(t, "recon_psnr_db"), "PSNR dB", RECON_CAP_DB) for t in tables]
    panels += [Panel(f"{t['title']}: edit background (outside centre)", lines(t, "background_psnr_db"), "PSNR dB")
               for t in tables]
    m = report["meta"]
    runs = [m["pack_git"], *(a["pack_git"] for a in m.get("added", []))]
    return render_line_panels(panels, columns=len(tables), x_label="inversion UNet row evaluations (log)",
                              title=f"PSNR at equal work, {m['resolution']}x{m['resolution']}, commit "
                                    + " + ".join((g["commit"] or "unknown")[:7] for g in runs)
                                    + (" (uncommitted changes)" if any(g["dirty"] for g in runs) else ""))


def default_out(args: argparse.Namespace, device_kind: str, device: str) -> Path:
    dev = inv.slug(device) if device_kind == "cuda" else "cpu"
    return inv.ROOT / "benchmarks" / "results" / f"equal-work-{dev}-{args.resolution}-{'_'.join(args.models)}"


def main(argv: Sequence[str] | None = None) -> int:
    inv.register_pack()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_equal_work: --device cuda but torch sees no CUDA device")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if args.part is not None:
        args.part.write_text(json.dumps(inv.json_safe(measure_model(args.models[0], args, cuda)), indent=1))
        return 0
    pack_git = inv.git_state(inv.ROOT)
    base = None if args.add_to is None else load_base(args)
    tables: list[dict[str, Any]] = [] if base is None else list(base["models"])
    order = [t["model"] for t in tables] + [k for k in args.models if k not in {t["model"] for t in tables}]
    with tempfile.TemporaryDirectory() as tmp:
        waiting, running = list(args.models), {}
        while waiting or running:
            while waiting and len(running) < args.jobs:
                key = waiting.pop(0)
                part = Path(tmp) / f"{key}.json"
                inv.log(f"{key}: a fresh process")
                running[key] = (part, subprocess.Popen([sys.executable, __file__, *argv, "--models", key, "--part",
                                                        str(part)]))
            key = next((k for k, (_, proc) in running.items() if proc.poll() is not None), None)
            if key is None:
                time.sleep(1.0)
                continue
            part, proc = running.pop(key)
            if proc.returncode:
                raise SystemExit(f"bench_equal_work: the {key} process failed ({proc.returncode})")
            table = with_infinities(json.loads(part.read_text()))
            for r in table["rows"]:
                r["commit"] = pack_git["commit"]
            if base is not None:
                table = merged(base, table)
            table["claim"] = claim_of(table, args.margin, args.budgets)
            tables = [t for t in tables if t["model"] != table["model"]] + [table]
            tables.sort(key=lambda t: order.index(t["model"]))
            write_all(args, argv, pack_git, tables, base)  # after every model: a stopped run keeps the models done
    return 0


def with_infinities(table: dict[str, Any]) -> dict[str, Any]:
    """A model's table as JSON holds it, with an exact reconstruction back to inf (``json_safe`` wrote null)."""
    for r in table["rows"]:
        for k in ("recon_psnr_db", "background_psnr_db"):
            r[k] = math.inf if r[k] is None else r[k]
    return table


def load_base(args: argparse.Namespace) -> dict[str, Any]:
    """The report ``--add-to`` names, checked to measure what this run measures (resolution, prompts)."""
    path = args.add_to if args.add_to.suffix == ".json" else args.add_to.with_suffix(".json")
    if not path.is_file():
        raise SystemExit(f"bench_equal_work: --add-to {path} is not a file; give a report's .json")
    base = json.loads(path.read_text())
    m = base["meta"]
    ours = {"resolution": args.resolution, "prompt": args.prompt, "target_prompt": args.target_prompt}
    differ = [f"{k} {m.get(k)!r} there, {v!r} here" for k, v in ours.items() if m.get(k) != v]
    if differ:
        raise SystemExit(f"bench_equal_work: --add-to {path} measured something else ({'; '.join(differ)})")
    for t in base["models"]:
        with_infinities(t)
    if args.out is None:
        args.out = path.with_suffix("")
    return base


def merged(base: dict[str, Any], table: dict[str, Any]) -> dict[str, Any]:
    """``table``'s rows after the recorded rows of the same model in ``base`` (the recorded child meta kept); a
    point measured again (same spec and steps) replaces its recorded row."""
    old = next((t for t in base["models"] if t["model"] == table["model"]), None)
    if old is None:
        return table
    again = {(r["label"], r["steps"]) for r in table["rows"]}
    return {**old, "rows": [r for r in old["rows"] if (r["label"], r["steps"]) not in again] + table["rows"]}


def write_all(args: argparse.Namespace, argv: list[str], pack_git: dict[str, Any],
              tables: list[dict[str, Any]], base: dict[str, Any] | None = None) -> None:
    """The report of the models measured so far: JSON, Markdown and the PNG plot. Added to ``base``, its meta is
    the recorded one plus this run in ``added`` (date, commit, points, command)."""
    run = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "pack_git": pack_git,
           "points": [p.text for p in args.points], "command": shlex.join([Path(sys.argv[0]).name, *argv])}
    if base is None:
        first = tables[0]["meta"]
        meta = {key: first[key] for key in ("device", "device_kind", "torch", "python", "comfyui_version",
                                             "prompt", "target_prompt")}
        meta.update(run, resolution=args.resolution)
    else:
        meta = {**base["meta"], "added": [*base["meta"].get("added", []), run]}
    meta.update(margin_db=args.margin, budgets=list(args.budgets), models=[t["model"] for t in tables])
    report = {"benchmark": "spdinv-equal-work", "format": 1, "meta": meta, "models": tables,
              "claim_holds": {t["model"]: t["claim"]["holds"] for t in tables}}
    out = args.out or default_out(args, meta["device_kind"], meta["device"])
    if out.suffix in (".json", ".md", ".png"):
        out = out.with_suffix("")
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_plot(report)).save(out.with_suffix(".png"))
    inv.write_report(out, report, render_markdown(report))
    inv.log(f"wrote {out.with_suffix('.png')}")


if __name__ == "__main__":
    sys.exit(main())
