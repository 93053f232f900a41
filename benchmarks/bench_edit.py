"""Benchmark v2 (SPEC §8): the whole edit, inversion plus Prompt-to-Prompt edit, per inversion method.

    COMFYUI_PATH=~/ComfyUI python benchmarks/bench_edit.py [--resolutions 128 256] [--steps 10 20 50]

For every resolution, steps value and method it runs what a user's workflow runs: ``SPDInvInvert`` with
the method, then ``SPDInvEditSampler`` on a ``P2PAttentionControl`` model (the same engine, prompts and
CFG for every method), as ComfyUI's executor calls nodes (in-process, under ``torch.inference_mode()``).
It reports the median wall time of invert + edit over ``--repeats`` runs, its ratio to ``ddim`` + P2P,
UNet passes, steps under δ (residual re-measured afterwards), the edit's source reconstruction PSNR and
peak memory. The model is loaded once. See ``benchmarks/README.md`` for the columns.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_inversion as inv  # noqa: E402 - the sibling script, imported as a module

DEFAULT_METHODS = ("ddim", "spdinv", "spdinv/adamw rel_tol=0")
"""``spdinv`` alone is SPDInvInvert's default solver and tolerance; ``adamw rel_tol=0`` is the paper's."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--comfyui", default=inv.os.environ.get("COMFYUI_PATH"),
                   help="ComfyUI checkout (default: $COMFYUI_PATH)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA when available, else CPU (ComfyUI started with --cpu)")
    p.add_argument("--checkpoint", type=Path,
                   help="SD checkpoint file (default: the random-weight SD1.5 of tests/host/factory/)")
    p.add_argument("--image", type=Path, help="photo to invert (default: synthetic); see bench_inversion.py")
    p.add_argument("--latent", choices=("auto", "vae", "sd-like"), default="auto",
                   help="what to invert, as in bench_inversion.py (auto: sd-like on the random checkpoint)")
    p.add_argument("--dtype", choices=("default", "fp32", "fp16", "bf16"), default="default",
                   help="UNet compute dtype through core ModelComputeDtype (default: as ComfyUI loads it)")
    p.add_argument("--resolutions", type=int, nargs="+", default=[128], help="image sides in pixels (default 128)")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50], help="DDIM steps (default 10 20 50)")
    p.add_argument("--batches", type=int, nargs="+", default=[1],
                   help="images inverted and edited together (default 1); each image is a different latent")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row; the median is reported")
    p.add_argument("--methods", type=inv.parse_method, nargs="+", default=None, metavar="SPEC",
                   help=f"inversion rows as in bench_inversion.py, plus repeats=N for a slow row\n"
                        f"(default: {' | '.join(DEFAULT_METHODS)})")
    p.add_argument("--delta", type=float, default=5e-6, help="threshold of the 'steps < δ' column (default 5e-6)")
    p.add_argument("--prompt", default="a photo of a cat", help="source prompt")
    p.add_argument("--target-prompt", default="a photo of a dog", help="target prompt")
    p.add_argument("--blend", nargs=2, default=["cat", "dog"], metavar=("SOURCE_WORD", "TARGET_WORD"),
                   help="P2P local blend words (default: cat dog); '' '' for no blend")
    p.add_argument("--cfg", type=float, default=7.5, help="CFG of the target branch (default 7.5)")
    p.add_argument("--inversion-guidance", action="store_true",
                   help="P2P's inversion guidance on. Off by default: it pins the source branch to the stored\n"
                        "trajectory for t < 400, which makes every method's reconstruction exact by construction")
    p.add_argument("--out", type=Path,
                   help="output path without suffix (default: benchmarks/results/edit-<device>-<res>-<steps>)")
    args = p.parse_args(argv)
    if args.methods is None:
        args.methods = [inv.parse_method(m) for m in DEFAULT_METHODS]
    if any(r < 8 or r % 8 for r in args.resolutions):
        p.error("--resolutions must be positive multiples of 8")
    if min(args.steps) < 1 or args.repeats < 1:
        p.error("--steps and --repeats must be at least 1")
    # What bench_inversion.Bench reads to load the model and build the first latent.
    args.resolution, args.warmup_steps, args.no_edit = args.resolutions[0], 1, True
    args.family, args.frames, args.engine, args.edit_cfg = None, None, "none", args.cfg
    return args


class UNetCalls:
    """Counts calls of the diffusion model and the rows they carried, forward and backward, through hooks
    that are removed on exit (benchmark instrumentation only; the pack itself never hooks a model this way).

    ``row_evals``: a row is one image-prompt pair in a UNet call; a backward counts as two evaluations."""

    def __init__(self, model_patcher: Any):
        self.module = model_patcher.model.diffusion_model
        self.calls = self.rows = self.backward_rows = 0

    @property
    def row_evals(self) -> int:
        return self.rows + 2 * self.backward_rows

    def __enter__(self) -> UNetCalls:
        def count(_module: torch.nn.Module, args: tuple) -> None:
            self.calls += 1
            self.rows += int(args[0].shape[0])

        def count_backward(_module: torch.nn.Module, grad_output: tuple) -> None:
            self.backward_rows += int(grad_output[0].shape[0])

        self.handles = [self.module.register_forward_pre_hook(count),
                        self.module.register_full_backward_pre_hook(count_backward)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def method_name(inversion: Any, spec: inv.MethodSpec) -> str:
    """The JSON's ``method``: ``spdinv/<solver>`` (``+dci`` with DCI's correction), or the DDIM method's name
    (``ddim/like_target`` for the paper's DDIM baseline)."""
    settings = inversion.result.settings
    if settings.method == "spdinv":
        return f"spdinv/{settings.solver}" + ("+dci" if settings.dci_rate else "")
    guided = spec.edit.get("source_guidance") == "like target" and inversion.method == "ddim"
    return inversion.method + ("/like_target" if guided else "")


def reference_row_evals(steps: int, images: int) -> int:
    """UNet rows of the paper's DDIM + P2P pipeline: ``steps`` for the inversion plus 4 a step for the edit
    (two prompts, each with CFG), per image."""
    return 5 * steps * images


class EditBench(inv.Bench):
    """``bench_inversion.Bench`` plus the P2P engine (or, with ``args.engine`` "mmdit", MM-DiT mutual attention),
    timing invert + edit together."""

    def __init__(self, args: argparse.Namespace, cuda: bool):
        super().__init__(args, cuda)
        from spdinv_pack.nodes.p2p_control import P2PAttentionControl

        if args.dtype != "default":
            import comfy_extras.nodes_model_advanced as advanced

            (self.model,) = advanced.ModelComputeDtype().patch(self.model, args.dtype)
        if args.engine == "mmdit":  # an MM-DiT model: the mutual-attention model Bench built, in P2P's place
            self.p2p_model, self.p2p_source, self.p2p_target = self.edit_model, self.source, self.target
            return
        self.p2p_model, self.p2p_source, self.p2p_target = self.run_node(
            P2PAttentionControl, model=self.model, clip=self.clip, source_text=args.prompt,
            target_text=args.target_prompt, mode="refine", cross_replace=0.8, self_replace=0.6,
            blend_source_words=args.blend[0], blend_target_words=args.blend[1], blend_threshold=0.3,
            blend_start=0.2, reweight="", proximal_guidance=True, proximal_quantile=0.7,
            inversion_guidance=args.inversion_guidance,
        ).result

    def edit(self, inversion: Any, spec: inv.MethodSpec) -> tuple[Any, Any]:
        """One SPDInvEditSampler call on the P2P model; (edited, reconstruction) LATENTs. A guided source
        (null_text, direct_inversion, ``source_guidance=like_target``) is guided against the empty prompt."""
        from spdinv_pack.spdinv.inversion_methods import protocol_of

        extra = dict(spec.edit)
        if protocol_of(inversion.method, extra.get("source_guidance", "exact")).guided:
            extra["negative"] = self.null
        out = self.run_node(self.edit_node, model=self.p2p_model, inversion=inversion, source=self.p2p_source,
                            target=self.p2p_target, cfg=self.args.cfg, **extra).result
        return out[0], out[1]

    def pipeline(self, spec: inv.MethodSpec, steps: int) -> dict[str, Any]:
        """Invert then edit once, timing each part; returns the times, the inversion and the outputs."""
        with UNetCalls(self.model) as inverting:
            t_inv, (inversion, _noise) = self._timed(lambda: self.invert(spec, steps))
        with UNetCalls(self.model) as calls:
            t_edit, (edited, recon) = self._timed(lambda: self.edit(inversion, spec))
        return {"invert_s": t_inv, "edit_s": t_edit, "inversion": inversion, "edited": edited, "recon": recon,
                "edit_calls": calls.calls, "edit_rows": calls.rows, "invert_row_evals": inverting.row_evals,
                "edit_row_evals": calls.row_evals}

    def row(self, spec: inv.MethodSpec, steps: int) -> dict[str, Any]:
        from spdinv_pack.spdinv.metrics import latent_psnr

        repeats = spec.repeats or self.args.repeats
        inv.log(f"{self.label()} steps={steps} {spec.label}: warm-up (1 step)")
        self.pipeline(spec, 1)
        runs = []
        with inv.PeakMemory(self.cuda) as mem:
            for r in range(repeats):
                runs.append(self.pipeline(spec, steps))
                inv.log(f"{self.label()} steps={steps} {spec.label}: run {r + 1}/{repeats} "
                        f"invert {runs[-1]['invert_s']:.2f} s + edit {runs[-1]['edit_s']:.2f} s")
        last = runs[-1]
        result = last["inversion"].result
        residual = self.remeasure(last["inversion"])[:, 0]
        totals = [r["invert_s"] + r["edit_s"] for r in runs]
        fwd, bwd = int(result.forwards.sum()), int(result.backwards.sum())
        images = int(self.latent["samples"].shape[0])
        row_evals = last["invert_row_evals"] + last["edit_row_evals"]
        return {
            "method": method_name(last["inversion"], spec),
            "label": spec.label,
            "steps": steps,
            "batch": images,
            "unet_row_evals": row_evals,
            "invert_row_evals": last["invert_row_evals"],
            "edit_row_evals": last["edit_row_evals"],
            "reference_row_evals": reference_row_evals(steps, images),
            "row_evals_vs_reference": row_evals / reference_row_evals(steps, images),
            "images_per_minute": 60 * images / statistics.median(totals),
            "settings": result.settings.to_dict(),
            "repeats": repeats,
            "total_s": totals,
            "median_s": statistics.median(totals),
            "invert_median_s": statistics.median(r["invert_s"] for r in runs),
            "edit_median_s": statistics.median(r["edit_s"] for r in runs),
            "invert_forwards": fwd,
            "invert_backwards": bwd,
            "invert_passes": fwd + 2 * bwd,
            "edit_unet_calls": last["edit_calls"],
            "edit_unet_rows": last["edit_rows"],
            "steps_under_delta": int((residual < self.args.delta).sum()),
            "residual_max": float(residual.max()),
            "residual_median": float(residual.median()),
            "recon_psnr_db": latent_psnr(last["recon"]["samples"], self.latent["samples"]),
            "peak_mem_bytes": mem.peak,
            "mem_base_bytes": mem.base,
            "per_step_forwards": result.forwards.flip(0).tolist(),
        }

    def batch_latent(self, resolution: int, batch: int) -> dict[str, torch.Tensor]:
        """``batch`` different latents at ``resolution``: the first as ``make_latent`` gives it, the others
        mirrored and scaled, so no two images are equal."""
        first = self.make_latent(resolution)["samples"]
        others = [first.flip(-1 - (i % 2)) * (1 - 0.1 * i) for i in range(1, batch)]
        return {"samples": torch.cat([first, *others])}

    def label(self) -> str:
        return f"{self.latent['samples'].shape[-1] * 8}px"

    def run_all(self) -> dict[str, Any]:
        tables = []
        for resolution, batch in ((r, b) for r in self.args.resolutions for b in self.args.batches):
            self.latent = self.batch_latent(resolution, batch)
            for steps in self.args.steps:
                rows = [self.row(spec, steps) for spec in self.args.methods]
                ddim = next((r for r in rows if r["method"] == "ddim"), None)
                adamw = next((r for r in rows if r["settings"]["solver"] == "adamw"
                              and r["settings"]["method"] == "spdinv"), None)
                for r in rows:
                    r["time_vs_ddim"] = r["median_s"] / ddim["median_s"] if ddim else None
                    r["psnr_gain_db"] = r["recon_psnr_db"] - ddim["recon_psnr_db"] if ddim else None
                    r["passes_vs_adamw"] = r["invert_passes"] / adamw["invert_passes"] if adamw else None
                shape = list(self.latent["samples"].shape)
                tables.append({"resolution": resolution, "steps": steps, "batch": batch, "latent_shape": shape,
                               "rows": rows})
        meta = self.meta()
        meta.update(resolutions=self.args.resolutions, steps=self.args.steps, batches=self.args.batches,
                    dtype=self.args.dtype,
                    target_prompt=self.args.target_prompt, blend=self.args.blend, cfg=self.args.cfg,
                    inversion_guidance=self.args.inversion_guidance)
        for key in ("resolution", "latent_shape", "warmup_steps"):
            meta.pop(key, None)
        flat = [{"resolution": t["resolution"], **{k: v for k, v in r.items() if k != "per_step_forwards"}}
                for t in tables for r in t["rows"]]
        return {"benchmark": "spdinv-edit", "format": 2, "meta": meta, "rows": flat, "tables": tables}


def render_markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    blend = " / ".join(m["blend"]) if any(m["blend"]) else "none"
    lines = [
        "# SPDInv whole-edit benchmark (inversion + Prompt-to-Prompt)",
        "",
        *inv.environment_lines(m),
        f"- model: {Path(m['checkpoint']).name} ({m['model']}, UNet compute dtype {m['dtype']}); "
        f"{'VAE-encoded image ' + m['image'] if m['latent'] == 'vae' else 'SD-like synthetic latent'}",
        f"- edit: P2P refine \"{m['prompt']}\" → \"{m['target_prompt']}\", cross 0.8, self 0.6, local blend {blend}, "
        f"proximal guidance 0.7, inversion guidance {'on' if m['inversion_guidance'] else 'off'}, CFG {m['cfg']:g}",
        "- wall time: median over the repeats of SPDInvInvert + SPDInvEditSampler after a 1-step warm-up; "
        "residuals re-measured afterwards (untimed)",
        f"- memory: {m['memory']} over the timed runs (includes the loaded model)",
        f"- {m['date']}: `{m['command']}`",
    ]
    delta = f"{m['delta']:.0e}"
    for t in report["tables"]:
        n = t["steps"]
        lines += [
            "",
            f"## {t['resolution']}², {n} steps, batch {t.get('batch', 1)}",
            "",
            "| inversion | total s | × ddim | images/min | UNet row evals | × DDIM+P2P rows | invert s | edit s "
            f"| invert UNet fwd / bwd | × adamw passes | edit UNet calls (rows) | steps < δ={delta} | max residual "
            "| recon PSNR dB | vs ddim dB | peak mem MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in t["rows"]:
            def opt(v: float | None, fmt: str) -> str:
                return "–" if v is None else format(v, fmt)

            lines.append(
                f"| {r.get('label', r['method'])} | {r['median_s']:.2f} | {opt(r['time_vs_ddim'], '.2f')} "
                f"| {r['images_per_minute']:.2f} | {r['unet_row_evals']} | {r['row_evals_vs_reference']:.2f} "
                f"| {r['invert_median_s']:.2f} "
                f"| {r['edit_median_s']:.2f} | {r['invert_forwards']} / {r['invert_backwards']} "
                f"| {opt(r['passes_vs_adamw'], '.3f')} | {r['edit_unet_calls']} ({r['edit_unet_rows']}) "
                f"| {r['steps_under_delta']}/{n} | {r['residual_max']:.2e} | {r['recon_psnr_db']:.2f} "
                f"| {opt(r['psnr_gain_db'], '+.2f')} | {inv._mib(r['peak_mem_bytes'])} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    inv.register_pack()
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_edit: --device cuda but torch sees no CUDA device")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    bench = EditBench(args, cuda)
    report = bench.run_all()
    text = render_markdown(report)
    out = args.out
    if out is None:
        m = report["meta"]
        dev = inv.slug(m["device"]) if m["device_kind"] == "cuda" else "cpu-" + inv.slug(inv.cpu_model())
        res = "_".join(map(str, args.resolutions))
        steps = "_".join(map(str, args.steps))
        batches = "" if args.batches == [1] else "-b" + "_".join(map(str, args.batches))
        out = inv.ROOT / "benchmarks" / "results" / f"edit-{dev}-{res}-{steps}{batches}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(inv.json_safe(report), indent=1, allow_nan=False) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)
    inv.log(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

