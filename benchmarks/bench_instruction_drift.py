"""Drift of instruction editors outside the edit region (issue: instruction editors without pixel drift).

    COMFYUI_PATH=~/ComfyUI python benchmarks/bench_instruction_drift.py [--editors qwen-image-edit flux-kontext]
        [--steps 10] [--resolution 128]

For each editor class, on its random test model (``tests/host/factory``: Qwen-Image-Edit is Qwen-Image's
transformer, Flux Kontext Flux.1-dev's; prompts are stand-in encodings with the photo attached by ComfyUI's
``ReferenceLatent``), a smooth unit-statistics photo latent is edited with the instruction five ways and the target
compared with the photo's latent outside a region (the photo's central quarter, or the found region):

* **plain editor**: ComfyUI's ``KSampler`` (euler, simple, denoise 1) from seeded noise, as the editor's template runs;
* **SPDInv, no preservation**: SPDInv's inversion under the editor, then the edit sampler with MM-DiT mutual attention;
* **SPDInv + preservation (given region)** and **(found region)**: the same with SPDInv Preserve Outside Edit;
* **identity**: the empty instruction as target, found region: the whole latent against the photo.

Reports PSNR (peak: the photo latent's largest magnitude) and max abs outside the region, the mean abs change from
the reconstruction inside it, the region's share, and the diffusion-model rows each way costs. Random weights say
nothing about edit quality; they show what the rule guarantees for any weights. Runs in-process like
``bench_inversion.py``; writes ``benchmarks/results/instruction-drift-*.{json,md}`` with the pack's commit.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inversion import (  # noqa: E402 - the sibling script, imported as a module
    ROOT,
    cpu_model,
    environment_lines,
    git_state,
    log,
    register_pack,
    write_report,
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout")
    p.add_argument("--editors", nargs="+", default=["qwen-image-edit", "flux-kontext"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--out", type=Path, default=None, help="output path without suffix")
    return p.parse_args(argv)


def outside_figures(latent: torch.Tensor, photo: torch.Tensor, inside: torch.Tensor) -> dict[str, float]:
    """PSNR and max abs of ``latent`` against ``photo`` where ``inside`` (broadcast over channels) is false."""
    keep = ~inside.expand_as(photo)
    diff = (latent.float() - photo.float())[keep]
    mse = float(diff.square().mean())
    peak = float(photo.float().abs().max())
    return {"psnr_db": math.inf if mse == 0 else 10 * math.log10(peak * peak / mse),
            "max_abs": float(diff.abs().max())}


def central_quarter(size: int) -> torch.Tensor:
    """A pixel MASK ``[1, size, size]``: the photo's central quarter (half its side each way), the given edit
    region outside which a benchmark compares the edit with the photo."""
    region = torch.zeros(1, size, size)
    region[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1.0
    return region


def cells_of(mask: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """A pixel MASK ``[1, H, W]`` as a bool latent region ``[1, 1, (1,) h, w]`` (any covered pixel inside)."""
    plane = torch.nn.functional.adaptive_max_pool2d(mask.float()[None], latent.shape[-2:])[0] > 0
    return plane.reshape(1, 1, *([1] * (latent.dim() - 4)), *latent.shape[-2:])


def measure(editor_key: str, args: argparse.Namespace, env: Any, extra: dict[str, type]) -> dict[str, Any]:
    """The table rows of one editor."""
    from spdinv_pack import nodes
    from spdinv_pack.tests.host.factory import INSTRUCTION_EDITORS
    from spdinv_pack.tests.host.pack_calls import (
        RowCount,
        diffusion_model,
        editor_model_path,
        instruction,
        invert,
        mutual,
    )
    from spdinv_pack.tools.comfy_inprocess import RunNode

    run_node = RunNode()
    editor = INSTRUCTION_EDITORS[editor_key]
    photo = editor.test_model.photo(args.resolution)
    region = central_quarter(args.resolution)
    inside = cells_of(region, photo["samples"])
    rows: list[dict[str, Any]] = []
    path = editor_model_path(editor)
    log(f"{editor.name}: {path.name}")
    with diffusion_model(path) as model:
        source, target = (instruction(run_node, extra["ReferenceLatent"], editor, seed, photo) for seed in (0, 1))

        def row(name: str, latent: torch.Tensor, counter: RowCount, within: torch.Tensor,
                recon: torch.Tensor | None, share: float | None) -> None:
            figures = outside_figures(latent, photo["samples"], within)
            change = None if recon is None else float(
                (latent - recon)[within.expand_as(latent)].abs().mean()) if within.any() else 0.0
            rows.append({"way": name, **figures, "inside_change": change, "region_share": share,
                         "dit_rows": counter.rows})
            log(f"  {name}: {figures}, inside change {change}, rows {counter.rows}")

        with RowCount(model) as plain_rows:
            (plain,) = run_node(env.nodes.KSampler, model=model, seed=0, steps=args.steps, cfg=editor.cfg,
                                sampler_name="euler", scheduler="simple", positive=target, negative=source,
                                latent_image=photo, denoise=1.0)
        row("plain editor (KSampler from noise)", plain["samples"], plain_rows, inside, None, None)

        with RowCount(model) as inversion_rows:
            inversion, _ = invert(run_node, nodes, model, source, photo, steps=args.steps, rel_tol=0.01,
                                  measure_residual=False)
        patched = mutual(run_node, nodes, model)
        given = run_node(nodes.SPDInvPreservation, mask=region, threshold=0.5, estimate_for=0.25, grow=0).result[0]
        found = run_node(nodes.SPDInvPreservation, threshold=0.5, estimate_for=0.25, grow=1).result[0]
        ways = (("SPDInv, no preservation", target, None), ("SPDInv + preservation (given region)", target, given),
                ("SPDInv + preservation (found region)", target, found), ("identity instruction (found region)",
                                                                        source, found))
        for name, prompt, rule in ways:
            with RowCount(model) as counter:
                edited, recon, _, mask = run_node(nodes.SPDInvEditSampler, model=patched, inversion=inversion,
                                                  source=source, target=prompt, cfg=editor.cfg,
                                                  **({} if rule is None else {"preserve": rule})).result
            counter.rows += inversion_rows.rows
            within = inside if rule is not found else cells_of(mask, photo["samples"])
            if prompt is source:
                within = torch.zeros_like(within)
            row(name, edited["samples"], counter, within, recon["samples"], float(mask.mean()))
        untouched = not {"patches", "patches_replace"} & set(model.model_options.get("transformer_options", {}))
    return {"editor": editor.name, "key": editor_key, "model_file": path.name, "cfg": editor.cfg,
            "guidance": editor.guidance, "latent_shape": list(photo["samples"].shape), "rows": rows,
            "base_model_unpatched": untouched}


def render(report: dict[str, Any]) -> str:
    m = report["meta"]
    lines = ["# Instruction editors: drift outside the edit region", "", *environment_lines(m),
             f"- {m['steps']} steps, {m['resolution']}² smooth unit-statistics photo latent, random-weight editor "
             "models with stand-in prompt encodings (the photo attached by ReferenceLatent); given region: the "
             "photo's central quarter",
             "- outside: target vs the photo's latent outside the region (PSNR peak = the photo latent's largest "
             "magnitude; inf = identical); inside: mean abs change from the reconstruction in the region; rows: "
             "diffusion-model batch rows, inversion included",
             f"- {m['date']}: `{m['command']}`"]
    for table in report["editors"]:
        guidance = "" if table["guidance"] is None else f", FluxGuidance {table['guidance']:g}"
        lines += ["", f"## {table['editor']} ({table['model_file']}, latent {table['latent_shape']}, CFG "
                      f"{table['cfg']:g}{guidance})", "",
                  "| way | outside PSNR dB | outside max abs | inside mean abs change | region share | DiT rows |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in table["rows"]:
            psnr = "inf" if math.isinf(r["psnr_db"]) else f"{r['psnr_db']:.2f}"
            change = "–" if r["inside_change"] is None else f"{r['inside_change']:.3g}"
            share = "–" if r["region_share"] is None else f"{r['region_share']:.2f}"
            lines.append(f"| {r['way']} | {psnr} | {r['max_abs']:.3g} | {change} | {share} | {r['dit_rows']} |")
        lines.append("")
        lines.append(f"Base MODEL after the runs: {'unpatched' if table['base_model_unpatched'] else 'PATCHED'}.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    register_pack()
    args = parse_args(argv)
    from spdinv_pack.tests.host import factory
    from spdinv_pack.tools.comfy_inprocess import bootstrap_sys_path, find_comfyui, import_comfy, load_extra_nodes

    root, reason = find_comfyui(args.comfyui, "--comfyui / COMFYUI_PATH")
    if root is None:
        raise SystemExit(f"bench_instruction_drift: {reason}")
    bootstrap_sys_path(root, cpu=True)
    env = import_comfy(root, factory.cache_dir(), kinds=("diffusion_models",))
    extra = load_extra_nodes(env)
    meta = {"pack_git": git_state(ROOT), "device": f"{cpu_model()} (CPU)", "torch": torch.__version__,
            "python": sys.version.split()[0], "comfyui_version": env.version, "steps": args.steps,
            "resolution": args.resolution, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    report = {"meta": meta, "editors": [measure(key, args, env, extra) for key in args.editors]}
    text = render(report)
    out = args.out or ROOT / "benchmarks" / "results" / f"instruction-drift-cpu-{args.resolution}-{args.steps}"
    write_report(out, report, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
