"""PIE-Bench with this pack: edit every item in a headless ComfyUI, then score the edits as PnPInversion does.

    # 1. the edits, resumable (rerun the same command after an interruption: finished edits are kept)
    python -m benchmarks.pie run --comfyui ~/ComfyUI --python ~/ComfyUI/venv/bin/python --gpu \\
        --checkpoint ~/ComfyUI/models/checkpoints/sd-v1-4.safetensors --pie-dir ~/PIE-Bench_v1 --out pie_out \\
        --inversions ddim spdinv spdinv_paper negative_prompt null_text direct_inversion --engines p2p

    # 2. the seven metrics (and the corrected background ones) for every method folder under --edits
    python -m benchmarks.pie metrics --pie-dir ~/PIE-Bench_v1 --edits pie_out --out pie_out \\
        --dino dino_vitbase8_pretrain.pth --lpips squeezenet1_1-b8a52dc0.pth \\
        --clip ~/ComfyUI/models/clip_vision/clip-vit-large-patch14.safetensors \\
               ~/ComfyUI/models/text_encoders/clip_l.safetensors --clip-tokenizer ~/ComfyUI/comfy/sd1_tokenizer

    # the same across machines: worker I of N (a Slurm array task, a Kubernetes indexed Job), or running servers
    python -m benchmarks.pie run --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT ... --out /shared/pie_out
    python -m benchmarks.pie run --servers http://gpu1:8188 http://gpu2:8188 --checkpoint sd-v1-4.safetensors ...

    # what will run, without running anything: each (item, method)'s protocol and API graph
    python -m benchmarks.pie plan --pie-dir ~/PIE-Bench_v1 --checkpoint sd-v1-4.safetensors --limit 1 \
        --inversions ddim spdinv_paper --engines p2p masactrl pnp

``run`` saves each edit alone as ``<out>/<inversion>+<engine>/<image_id>.png`` (what the methods are:
``benchmarks/pie/run.py``), in float32 unless ``--precision auto``. ``metrics`` scores any folder laid out that
way, whatever made the edits, and writes
``<out>/metrics.csv`` (one row per image and method), ``<out>/summary.md`` (the paper's units, the SSIM
convention and each weight file's name, size and SHA-256) and ``<out>/metrics_settings.json``; a metric whose
weight file is not given is left empty, and said so. Both take ``--ids`` / ``--categories`` /
``--limit`` to work on part of the set. ``metrics`` needs torchmetrics (and timm for ``--dino``, transformers
for ``--clip``; see ``benchmarks/pie/metrics.py``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shlex
import socket
import statistics
import sys
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from ...tools.comfy_server import ComfyServer, ComfyServerError, supported_cli_flags
from .data import PieDataError, PieItem, load_items
from .metrics import SSIM_CONVENTIONS
from .run import (
    ENGINES,
    FP32_FLAGS,
    INVERSIONS,
    PRECISIONS,
    RunReport,
    RunSettings,
    Shard,
    check_settings,
    edit_path,
    edit_prompt,
    image_size,
    method_name,
    method_settings,
    plan_methods,
    run_edits,
    server_split,
    skip_reason,
)
from .servers import AllServersGone, ComfyClient


def _items(args: argparse.Namespace) -> list[PieItem]:
    items = load_items(args.pie_dir, ids=args.ids, categories=args.categories)
    return items[: args.limit] if args.limit else items


def _settings(args: argparse.Namespace) -> RunSettings:
    """The run's settings; the checkpoint as ComfyUI names it (the file's name, or as given with --servers)."""
    name = args.checkpoint if getattr(args, "servers", None) else Path(args.checkpoint).name
    return RunSettings(checkpoint=name, steps=args.steps, cfg=args.cfg, size=args.size,
                       cross_replace=args.cross_replace, word_swap=args.word_swap, precision=args.precision,
                       comfyui_args=getattr(args, "comfyui_args", None) or None)


def precision_flags(precision: str, supported: set[str]) -> list[str]:
    """ComfyUI's command-line flags for ``--precision`` (fp32: each of :data:`FP32_FLAGS` the checkout knows;
    an empty ``supported``, an unreadable ``cli_args.py``, passes only ``--force-fp32``)."""
    if precision == "auto":
        return []
    if not supported:
        return ["--force-fp32"]
    return [flag for flag in FP32_FLAGS if flag in supported]


def parse_shard(text: str) -> Shard:
    """``--shard i/n`` as a :class:`Shard`; anything else, or ``i`` not in ``0 … n-1``, is refused with the fix."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        unset = " (an unset variable? run it inside the Slurm array or indexed Job)" if "/" in text and (
            text.startswith("/") or text.endswith("/")) else ""
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected i/n, this worker's index i (from 0) and the number of workers n, e.g. 0/4{unset}; "
            "in a Slurm array: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT (with --array=0-<n-1>), in a "
            "Kubernetes indexed Job: --shard $JOB_COMPLETION_INDEX/<completions>")
    index, count = int(match[1]), int(match[2])
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the number of workers n must be at least 1")
    if index >= count:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the index must be below n, from 0 to {count - 1}; a Slurm array numbered from 1 (--array=1-"
            f"{count}) gives 1..{count}: use --array=0-{count - 1}, or --shard "
            "$((SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN))/$SLURM_ARRAY_TASK_COUNT")
    return Shard(index, count)


def parse_server(text: str) -> str:
    """A ``--servers`` entry (``http://host:port`` or ``host:port``) as ``http://host:port``."""
    parts = urllib.parse.urlsplit(text if "://" in text else f"http://{text}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None or parts.path.strip("/") \
            or parts.query:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a running ComfyUI's address, http://host:port (e.g. "
                                         "http://gpu-node-3:8188)")
    return f"{parts.scheme}://{parts.netloc}"


def print_report(report: RunReport, out: Path) -> None:
    """The end of ``run``: times by method, counts, edits by server (this run's and the whole folder's)."""
    for method, secs in report.seconds.items():
        print(f"{method}: {len(secs)} edits, median {statistics.median(secs):.1f} s an edit")
    print(f"done {report.done}, already there {report.skipped}, left out {len(report.left_out)}, "
          f"failed {len(report.failed)}"
          + (f", made by another worker meanwhile {report.made_elsewhere}" if report.made_elsewhere else "")
          + (f", retried after their server went away {report.retried}" if report.retried else "")
          + (f" (see {out / 'failures.jsonl'}; rerun to retry)" if report.failed else ""))
    if report.by_server:
        print("this run, edits by server: " + ", ".join(f"{k} {v}" for k, v in report.by_server.items()))
    split = server_split(out)
    if split:
        print(f"all of {out}, edits by server: " + ", ".join(f"{k} {v}" for k, v in split.items()))


def cmd_run(args: argparse.Namespace) -> int:
    """Edit the chosen items (this worker's share with --shard) with every chosen method: in a ComfyUI server
    started for the run, or in the running servers given by --servers."""
    methods = plan_methods(args.inversions, args.engines)
    items = _items(args)
    checkpoint = Path(args.checkpoint).expanduser()
    if not args.servers and not checkpoint.is_file():
        raise ValueError(f"--checkpoint {checkpoint} does not exist")
    if args.in_flight < 1:
        raise ValueError(f"--in-flight {args.in_flight}: give at least 1 prompt per server")
    if args.servers and args.comfyui_args:
        raise ValueError("--comfyui-args is for the ComfyUI a run starts; with --servers, start the servers with them")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(args)
    check_settings(out, methods, settings)
    share = f", shard {args.shard}: {len(args.shard.take(items))} items" if args.shard else ""
    if args.servers:
        urls = list(dict.fromkeys(args.servers))
        print(f"{len(items)} items × {len(methods)} methods from {args.pie_dir} into {out}{share} on {len(urls)} "
              f"servers, {args.in_flight} prompts in flight on each (precision {args.precision})")
        report = run_edits([ComfyClient(url) for url in urls], items, methods, settings, out, timeout=args.timeout,
                           shard=args.shard, in_flight=args.in_flight)
    else:
        flags = precision_flags(args.precision, supported_cli_flags(args.comfyui) if args.comfyui else set())
        print(f"{len(items)} items × {len(methods)} methods from {args.pie_dir} into {out}{share} (precision "
              f"{args.precision}" + (f": {' '.join(flags)})" if flags else ")"))
        with ComfyServer(args.comfyui, python=args.python, gpu=args.gpu, checkpoints=[checkpoint.parent],
                         input_dir=Path(args.pie_dir).expanduser() / "annotation_images", only_this_pack=True,
                         require_nodes=["SPDInvInvert", "SPDInvEditSampler"],
                         extra_args=flags + shlex.split(args.comfyui_args or "")) as server:
            client = ComfyClient(server.url, label=f"{socket.gethostname()}-{os.getpid()} own ComfyUI", upload=False)
            try:
                report = run_edits([client], items, methods, settings, out, timeout=args.timeout, shard=args.shard,
                                   in_flight=args.in_flight)
            except AllServersGone as e:
                raise ComfyServerError(f"{e}\n{server.log_tail()}\n(full log: {server.log_path})") from e
    print_report(report, out)
    print(f"next: python -m benchmarks.pie metrics --pie-dir {args.pie_dir} --edits {out} --out {out} "
          "[--dino FILE] [--clip FILE ...] [--lpips FILE]")
    return 1 if report.failed else 0


def describe(entry: dict) -> list[str]:
    """``plan``'s text for one (item, method): the row's protocol, then one line per node of its API graph
    (links as ``#node.output``)."""
    settings = entry["settings"]
    lines = [f"# {entry['image_id']} {entry['method']}: {entry['source_prompt']!r} -> {entry['target_prompt']!r}"]
    lines += [f"  {key}: {json.dumps(value, ensure_ascii=False)}" for key, value in settings["protocol"].items()]
    if "left_out" in entry:
        return [*lines, f"  left out: {entry['left_out']}"]
    for node_id, node in entry["prompt"].items():
        inputs = ", ".join(f"{k}=#{v[0]}.{v[1]}" if isinstance(v, list) else f"{k}={v!r}"
                           for k, v in node["inputs"].items())
        lines.append(f"  {node_id:>2} {node['class_type']} ({node['_meta']['title']}): {inputs}")
    return lines


def cmd_plan(args: argparse.Namespace) -> int:
    """Print (or write under --out) each (item, method)'s protocol and API graph; nothing runs."""
    methods = plan_methods(args.inversions, args.engines)
    settings = _settings(args)
    out = Path(args.out) if args.out else None
    for item in _items(args):
        for inv, eng in methods:
            method = method_name(inv, eng)
            reason = skip_reason(item, inv, eng)
            size = image_size(item.image_path) if item.image_path.is_file() else (settings.size, settings.size)
            entry: dict = {"image_id": item.image_id, "method": method, "source_prompt": item.source_prompt,
                           "target_prompt": item.target_prompt, "settings": method_settings(inv, eng, settings)}
            if reason:
                entry["left_out"] = reason
            else:
                entry["prompt"] = edit_prompt(item, inv, eng, settings, size, prefix=f"pie/{method}/{item.image_id}")
            if out is None:
                print("\n".join(describe(entry)))
            else:
                path = out / method / f"{item.image_id}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(entry, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
                print(f"{path}" + (f" (left out: {reason})" if reason else ""))
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    """Score every method folder under --edits against the PIE photos and masks."""
    from .metrics import (
        COLUMNS,
        NEEDS_WEIGHTS,
        MetricModels,
        Scorer,
        load_clip,
        load_dino,
        load_edit,
        load_lpips,
        load_source,
        summarise,
        summary_markdown,
        weight_record,
    )

    items = _items(args)
    edits = Path(args.edits)
    methods = args.methods or sorted(p.name for p in edits.iterdir() if p.is_dir() and any(p.glob("*.png")))
    if not methods:
        raise ValueError(f"--edits {edits}: no method folders with .png edits (expected <edits>/<method>/<id>.png)")
    tokenizer = args.clip_tokenizer or (Path(os.environ["COMFYUI_PATH"]) / "comfy" / "sd1_tokenizer"
                                        if os.environ.get("COMFYUI_PATH") else None)
    if args.clip and tokenizer is None:
        raise ValueError("--clip-tokenizer: name CLIP's tokenizer folder (ComfyUI's comfy/sd1_tokenizer) or set "
                         "COMFYUI_PATH")
    models = MetricModels(
        dino=load_dino(args.dino) if args.dino else None,
        clip=load_clip(args.clip, tokenizer) if args.clip else None,
        lpips=load_lpips(args.lpips) if args.lpips else None)
    for col in models.missing():
        print(f"{col}: left empty (no --{NEEDS_WEIGHTS[col]} weight file given)")
    weights = {kind: [weight_record(f) for f in files] for kind, files in
               (("dino", [args.dino] if args.dino else []), ("lpips", [args.lpips] if args.lpips else []),
                ("clip", args.clip or [])) if files}
    scorer = Scorer(models, ssim_convention=args.ssim_convention)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    missing: dict[str, int] = {}
    t0 = time.monotonic()
    for n, item in enumerate(items, 1):
        source = load_source(item.image_path)
        mask = item.mask()
        for method in methods:
            path = edit_path(edits, method, item.image_id)
            if not path.is_file():
                missing[method] = missing.get(method, 0) + 1
                continue
            values = scorer.score(source, load_edit(path), mask, item.target_prompt)
            rows.append({"image_id": item.image_id, "method": method, **values})
        if n % 25 == 0 or n == len(items):
            print(f"[{n}/{len(items)}] scored ({time.monotonic() - t0:.0f} s)")
    for method, count in missing.items():
        print(f"{method}: {count} of {len(items)} edits missing (not scored)")
    partial = out / "metrics.csv.partial"
    with open(partial, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else ("nan" if isinstance(v, float) and math.isnan(v) else v)
                             for k, v in row.items()})
    os.replace(partial, out / "metrics.csv")
    import torchmetrics

    convention = ("as torchmetrics < 1.4.2, the published tables" if args.ssim_convention == "published"
                  else "as torchmetrics >= 1.4.2")
    notes = [f"SSIM convention: {args.ssim_convention} ({convention}); torchmetrics {torchmetrics.__version__}.", "",
             "Weight files:" if weights else "Weight files: none (no --dino, --lpips, --clip)."]
    notes += [f"- {kind}: {w['file']}, {w['bytes']} bytes, SHA-256 {w['sha256']}" for kind, ws in weights.items()
              for w in ws]
    table = summary_markdown(summarise(rows), len(items), notes)
    (out / "summary.md").write_text(table, encoding="utf-8")
    (out / "metrics_settings.json").write_text(json.dumps(
        {"ssim_convention": args.ssim_convention, "torchmetrics": torchmetrics.__version__, "weights": weights},
        indent=1), encoding="utf-8")
    print(table)
    print(f"wrote {out / 'metrics.csv'} ({len(rows)} rows), {out / 'summary.md'} and {out / 'metrics_settings.json'}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pie", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--pie-dir", required=True, help="PIE-Bench folder (mapping_file.json, annotation_images/)")
        sp.add_argument("--ids", nargs="+", help="only these image ids")
        sp.add_argument("--categories", nargs="+", help="only these editing_type_id values (0-9)")
        sp.add_argument("--limit", type=int, default=0, help="only the first N items (after --ids/--categories)")

    def protocol(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--checkpoint", required=True, help="the model file (paper: SD 1.4; PnP rows: SD 1.5)")
        sp.add_argument("--inversions", nargs="+", default=["ddim", "spdinv"], choices=list(INVERSIONS))
        sp.add_argument("--engines", nargs="+", default=["p2p"], choices=list(ENGINES))
        sp.add_argument("--steps", type=int, default=50)
        sp.add_argument("--cfg", type=float, default=7.5)
        sp.add_argument("--size", type=int, default=512, help="working resolution (PIE photos are 512×512)")
        sp.add_argument("--cross-replace", type=float, default=0.4,
                        help="P2P cross-attention replacement fraction (PIE protocol 0.4; SPDInv's demo 0.8; the "
                             "spdinv_dci row keeps DCI's 0.8)")
        sp.add_argument("--word-swap", action="store_true",
                        help="P2P word swap where both prompts have the same number of words (default: refine for "
                             "every item, as the references)")
        sp.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32: ComfyUI runs every model in float32, as the references (default); auto: "
                             "ComfyUI's own choice (fp16 on most GPUs)")

    r = sub.add_parser("run", help="edit the items with each inversion × engine (resumable)")
    common(r)
    protocol(r)
    r.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout ($COMFYUI_PATH)")
    r.add_argument("--python", help="interpreter ComfyUI runs with (default: this one)")
    r.add_argument("--out", required=True, help="folder for <method>/<image_id>.png")
    r.add_argument("--gpu", action="store_true", help="run ComfyUI on the GPU (default --cpu)")
    r.add_argument("--comfyui-args", metavar="FLAGS",
                   help="more flags for the ComfyUI the run starts, as one string: --comfyui-args='--cuda-device 1' "
                        "(recorded in settings.json)")
    r.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds allowed per edit (from its start, not counting its wait in the server's queue)")
    r.add_argument("--shard", type=parse_shard, metavar="I/N",
                   help="be worker I of N (0 <= I < N): edit every N-th item from the I-th, all methods, into the "
                        "shared --out (Slurm: $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; Kubernetes indexed Job: "
                        "$JOB_COMPLETION_INDEX/<completions>)")
    r.add_argument("--servers", nargs="+", type=parse_server, metavar="URL",
                   help="use these running ComfyUI servers (http://host:port, with the pack and the checkpoint; "
                        "--checkpoint is then the name they list it by) instead of starting one; photos are "
                        "uploaded to them")
    r.add_argument("--in-flight", type=int, default=2,
                   help="prompts queued on each server at once (default 2: one running, the next waiting)")
    r.set_defaults(func=cmd_run)

    pl = sub.add_parser("plan", help="print each (item, method)'s protocol and API graph without running anything")
    common(pl)
    protocol(pl)
    pl.add_argument("--out", help="write <out>/<method>/<image_id>.json instead of printing")
    pl.set_defaults(func=cmd_plan)

    m = sub.add_parser("metrics", help="score <edits>/<method>/<image_id>.png against the photos")
    common(m)
    m.add_argument("--edits", required=True, help="folder of method folders")
    m.add_argument("--out", required=True, help="where metrics.csv and summary.md go")
    m.add_argument("--methods", nargs="+", help="method folders to score (default: all under --edits)")
    m.add_argument("--dino", help="DINO ViT-B/8 weights (dino_vitbase8_pretrain.pth) for structure distance")
    m.add_argument("--clip", nargs="+", help="CLIP ViT-L/14 weights: one full file, or the clip_vision file and "
                   "a text file with text_projection (ComfyUI's text_encoders/clip_l.safetensors)")
    m.add_argument("--clip-tokenizer", help="CLIP tokenizer folder (default $COMFYUI_PATH/comfy/sd1_tokenizer)")
    m.add_argument("--lpips", help="torchvision SqueezeNet 1.1 weights (squeezenet1_1-b8a52dc0.pth) for LPIPS")
    m.add_argument("--ssim-convention", choices=SSIM_CONVENTIONS, default="published",
                   help="published: SSIM as torchmetrics < 1.4.2 computed it, the map's mean without its 5-pixel "
                        "border (the PIE-Bench tables; default); current: torchmetrics >= 1.4.2, the whole map")
    m.set_defaults(func=cmd_metrics)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (PieDataError, ValueError, ComfyServerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

