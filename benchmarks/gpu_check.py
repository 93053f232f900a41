"""GPU readiness check (issue 31): SD1.5 and SDXL-class edits and inversions × fp16/bf16 × dynamic VRAM on/off.

    COMFYUI_PATH=~/ComfyUI python benchmarks/gpu_check.py            # on the GPU: 512² / 1024², 50 steps, ≤ 8 min
    COMFYUI_PATH=~/ComfyUI python benchmarks/gpu_check.py --cpu --tiny   # the same matrix on a CPU: 64² / 128²

The device may be lent at any time and CI never has one, so this is one unattended command that checks what a
GPU session must check. Each cell of the matrix runs in its own subprocess, because ComfyUI reads its command
line (``--fp16-unet``, ``--disable-dynamic-vram``, ...) once, at import: the child hands ComfyUI the arguments
of its cell exactly as ``main.py`` would, enables dynamic VRAM the way ``main.py`` does (comfy-aimdo, then
``ModelPatcherDynamic``), then runs ``bench_edit.py``'s pipeline in-process: the whole edit (SPDInvInvert +
SPDInvEditSampler with P2P) on SD1.5, the inversion (and the edit when the cell's time allows) on SDXL, and under
dynamic VRAM a short AdamW and null-text inversion, the two methods that differentiate through the model.
A global budget (default 480 s) and a per-cell timeout bound the whole; a cell that would not fit is skipped
and the report says so. See ``benchmarks/README.md`` ("GPU readiness").
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
GIB = 2**30

TARGETS = {
    "sd15-edit": {"model": "sd15", "task": "edit", "resolution": 512, "steps": 50, "max_s": 8.0,
                  "max_peak_bytes": 6 * 10**9, "text": "SD1.5 512² 50-step whole edit ≤ 8 s at ≤ 6 GB peak"},
    "sdxl-invert": {"model": "sdxl", "task": "invert", "resolution": 1024, "steps": 50, "max_s": 20.0,
                    "max_peak_bytes": None, "text": "SDXL 1024² 50-step inversion ≤ 20 s"},
}
"""Issue 31's targets, set for the lent H200; judged on CUDA runs at the full settings only."""

TINY_SOLVER_ITERS = 2
"""--tiny: AdamW's iterations per step (``max_iters``) and null-text's inner Adam steps in the solver checks."""

PRIOR_S = {("sd15", False): 75.0, ("sdxl", False): 120.0, ("sd15", True): 150.0, ("sdxl", True): 120.0}
"""Expected wall time of a cell before any cell of its model has run (model, tiny); later the longest one seen."""


# --------------------------------------------------------------------------------------------
# The matrix (parent process)
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"),
                   help="ComfyUI checkout (default: $COMFYUI_PATH)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (ComfyUI --cpu); default: the CUDA device")
    p.add_argument("--tiny", action="store_true",
                   help="SD1.5 at 64², SDXL at 128², 2 steps, 1 repeat, 1-step solver checks with AdamW capped\n"
                        f"at {TINY_SOLVER_ITERS} iterations and null-text at {TINY_SOLVER_ITERS} inner steps: checks"
                        " on a CPU that everything\nruns (the targets are not judged)")
    p.add_argument("--steps", type=int, help="inversion/edit steps (default 50; --tiny 2)")
    p.add_argument("--repeats", type=int, help="timed runs per row, median reported (default 2; --tiny 1)")
    p.add_argument("--check-steps", type=int, help="steps of the AdamW and null-text checks (default 3; --tiny 1)")
    p.add_argument("--models", nargs="+", choices=("sd15", "sdxl"), default=["sd15", "sdxl"])
    p.add_argument("--dtypes", nargs="+", choices=("fp16", "bf16"), default=["fp16", "bf16"])
    p.add_argument("--dynamic-vram", nargs="+", choices=("on", "off"), default=["on", "off"])
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="wall-clock budget of the whole check in seconds (default 480 = 8 min); cells that\n"
                        "would not fit in what is left are skipped and listed as skipped")
    p.add_argument("--run-timeout-s", type=float, default=240.0,
                   help="longest one cell (a subprocess) may run before it is stopped (default 240)")
    p.add_argument("--out", type=Path,
                   help="output path without suffix (default: benchmarks/results/gpu-check-<device>[-tiny])")
    p.add_argument("--prepare-only", action="store_true",
                   help="only build (or find) the random test checkpoints in $SPDINV_TEST_CACHE and exit")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    tiny = args.tiny
    args.steps = args.steps or (2 if tiny else 50)
    args.repeats = args.repeats or (1 if tiny else 2)
    args.check_steps = args.check_steps or (1 if tiny else 3)
    if min(args.steps, args.repeats, args.check_steps) < 1:
        p.error("--steps, --repeats and --check-steps must be at least 1")
    return args


def cells(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The matrix in priority order: dynamic VRAM on (ComfyUI's GPU default) first, then fp16 before bf16,
    SD1.5 before SDXL; so a short budget drops the least important cells."""
    resolution = {"sd15": 64 if args.tiny else 512, "sdxl": 128 if args.tiny else 1024}
    out: list[dict[str, Any]] = []
    for dyn in args.dynamic_vram:
        for dtype in args.dtypes:
            for model in args.models:
                out.append({
                    "id": f"{model}-{dtype}-dynvram-{dyn}",
                    "model": model,
                    "resolution": resolution[model],
                    "steps": args.steps,
                    "repeats": args.repeats,
                    "dtype": dtype,
                    "dynamic_vram": dyn == "on",
                    "tasks": ["edit"] if model == "sd15" else ["invert"] + (
                        [] if any(c["model"] == "sdxl" for c in out) else ["edit?"]),
                    "solver_checks": dyn == "on",
                    "check_steps": args.check_steps,
                    "check_iters": TINY_SOLVER_ITERS if args.tiny else None,
                    "cpu": args.cpu,
                    "comfyui": args.comfyui,
                    "comfy_args": comfy_args(args.cpu, dtype, dyn == "on"),
                })
    return out


def comfy_args(cpu: bool, dtype: str, dynamic_vram: bool) -> list[str]:
    """ComfyUI's command line for a cell, as a user would start ``main.py``.

    The UNet's weights and compute in ``dtype`` (``--fp16-unet`` / ``--bf16-unet``). Dynamic VRAM: on a GPU
    "on" is ComfyUI's default (no flag) and "off" is ``--disable-dynamic-vram``; ``--cpu`` turns it off, so on
    the CPU "on" asks for it with ``--enable-dynamic-vram`` (comfy-aimdo then finds no NVIDIA device and
    ComfyUI falls back, which the report records). On the CPU the text encoders are also stored in ``dtype``
    (``--fp16-text-enc`` / ``--bf16-text-enc``) to keep the SDXL-class encoders' resident memory small."""
    out = ["--cpu"] if cpu else []
    out.append(f"--{dtype}-unet")
    if cpu:
        out.append(f"--{dtype}-text-enc")
        out.append("--enable-dynamic-vram" if dynamic_vram else "--disable-dynamic-vram")
    elif not dynamic_vram:
        out.append("--disable-dynamic-vram")
    return out


def log(msg: str) -> None:
    print(f"[gpu_check] {msg}", file=sys.stderr, flush=True)


def run_cell(cell: dict[str, Any], timeout_s: float, deadline: float) -> dict[str, Any]:
    """Run one cell in a child process (its own process group, stopped at ``timeout_s``); the child writes
    its results file after every finished task, so a stopped cell still reports what it finished."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        result_path = Path(tmp) / "cell.json"
        spec = {**cell, "result_path": str(result_path), "deadline": deadline}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        wall = time.monotonic() - t0
        data = json.loads(result_path.read_text()) if result_path.is_file() else {}
    status = "timed out" if timed_out else ("ok" if rc == 0 and data.get("complete") else "failed")
    if status == "ok" and any(t.get("error") for t in data.get("tasks", [])):
        status = "failed"
    return {**cell, **data, "status": status, "returncode": rc, "wall_s": wall, "timeout_s": timeout_s}


def verdicts(cell: dict[str, Any], cuda: bool, tiny: bool) -> None:
    """Add ``target`` to each task of a finished cell: pass/fail against issue 31's H200 targets, or why
    they are not judged (CPU, --tiny, other settings)."""
    for task in cell.get("tasks", []):
        for key, t in TARGETS.items():
            if (t["model"], t["task"]) != (cell["model"], task["task"]) or task.get("method") != "spdinv":
                continue
            if not cuda or tiny or (cell["resolution"], cell["steps"]) != (t["resolution"], t["steps"]):
                task["target"] = {"id": key, "text": t["text"], "verdict": "not judged",
                                  "why": "CPU or --tiny run" if not cuda or tiny else "other resolution/steps"}
                continue
            if task.get("error") or task.get("median_s") is None:
                task["target"] = {"id": key, "text": t["text"], "verdict": "fail", "why": "did not run"}
                continue
            peak = task.get("peak_bytes")
            ok_time = task["median_s"] <= t["max_s"]
            ok_mem = t["max_peak_bytes"] is None or (peak is not None and peak <= t["max_peak_bytes"])
            why = f"{task['median_s']:.2f} s (≤ {t['max_s']:g})"
            if t["max_peak_bytes"] is not None:
                why += f", peak {peak / 1e9:.2f} GB (≤ {t['max_peak_bytes'] / 1e9:g})"
            task["target"] = {"id": key, "text": t["text"], "verdict": "pass" if ok_time and ok_mem else "fail",
                              "why": why}


def device_label(cpu: bool) -> str:
    """The device in words without importing torch in the parent (the children report the details)."""
    if cpu:
        import bench_inversion as inv

        return f"CPU {inv.cpu_model()} ({os.cpu_count()} logical CPUs)"
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=30, check=True).stdout.strip().splitlines()
        return names[0] if names else "CUDA device"
    except (OSError, subprocess.SubprocessError):
        return "CUDA device"


def prepare(models: Sequence[str]) -> dict[str, Any]:
    """Build the random test checkpoints that are not cached yet (minutes and GBs on a bare machine), before
    the budget's clock starts: the cells must not pay for it. Returns the paths, what was cached, and the time."""
    import bench_inversion as inv

    inv.register_pack()
    from spdinv_pack.tests.host import factory

    paths = {"sd15": factory.sd15_checkpoint_path, "sdxl": factory.sdxl_checkpoint_path}
    names = {"sd15": factory.sd.CHECKPOINT_NAME, "sdxl": factory.sd.SDXL_CHECKPOINT_NAME}
    t0 = time.monotonic()
    cached = {m: (factory.cache_dir() / names[m]).is_file() for m in models}
    built = {m: str(paths[m]()) for m in models}
    seconds = time.monotonic() - t0
    log(f"checkpoints ready in {seconds:.0f} s (cached before: {cached})")
    return {"checkpoints": built, "cached_before": cached, "prepare_s": seconds}


def run_matrix(args: argparse.Namespace) -> dict[str, Any]:
    import bench_inversion as inv

    prepared = prepare(args.models)
    start = time.monotonic()
    deadline_mono = start + args.budget_s
    pack_git = inv.git_state(ROOT)
    done: list[dict[str, Any]] = []
    seen: dict[str, float] = {}
    for cell in cells(args):
        left = deadline_mono - time.monotonic()
        estimate = seen.get(cell["model"], PRIOR_S[(cell["model"], args.tiny)])
        if left < min(estimate, args.run_timeout_s):
            done.append({**cell, "status": "skipped", "why": f"{left:.0f} s of the {args.budget_s:.0f} s budget "
                                                             f"left, the cell needs about {estimate:.0f} s"})
            log(f"{cell['id']}: skipped ({done[-1]['why']})")
            continue
        timeout = min(args.run_timeout_s, left)
        log(f"{cell['id']}: ComfyUI args {' '.join(cell['comfy_args'])}; timeout {timeout:.0f} s")
        result = run_cell(cell, timeout, time.time() + timeout)
        seen[cell["model"]] = max(seen.get(cell["model"], 0.0), result["wall_s"])
        verdicts(result, not args.cpu, args.tiny)
        done.append(result)
        log(f"{cell['id']}: {result['status']} in {result['wall_s']:.0f} s")
    total = time.monotonic() - start
    return {
        "benchmark": "spdinv-gpu-check",
        "format": 1,
        "meta": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": device_label(args.cpu),
            "device_kind": "cpu" if args.cpu else "cuda",
            "tiny": args.tiny,
            "steps": args.steps,
            "repeats": args.repeats,
            "check_steps": args.check_steps,
            "budget_s": args.budget_s,
            "run_timeout_s": args.run_timeout_s,
            "total_wall_s": total,
            "within_budget": total <= args.budget_s,
            "pack_git": pack_git,
            "python": sys.executable,
            "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "targets": {k: v["text"] for k, v in TARGETS.items()},
            **prepared,
        },
        "cells": done,
    }


# --------------------------------------------------------------------------------------------
# One cell (child process)
# --------------------------------------------------------------------------------------------


def _load_comfy_inprocess() -> Any:
    """``tools/comfy_inprocess.py`` without importing the pack (whose import pulls in torch too early)."""
    name = "gpu_check_comfy_inprocess"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "comfy_inprocess.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def start_comfy(cell: dict[str, Any]) -> dict[str, Any]:
    """Import ComfyUI with the cell's command line and set up dynamic VRAM as ``main.py`` does.

    Order as in ``main.py``: ComfyUI parses ``sys.argv`` at the import of ``comfy.cli_args``; comfy-aimdo's
    ``control.init`` before torch is imported; after ``comfy.model_management``: ``init_devices`` on an NVIDIA
    (or ROCm ≥ 7.14) device with torch ≥ 2.8, and then ``ModelPatcherDynamic`` as the core model patcher. On
    CUDA it also imports ``cuda_malloc`` (main.py's allocator choice). Returns what happened."""
    inproc = _load_comfy_inprocess()
    root, reason = inproc.find_comfyui(cell["comfyui"], "--comfyui / COMFYUI_PATH")
    if root is None:
        raise SystemExit(f"gpu_check: {reason}")
    sys.path.insert(0, str(root))
    import comfy.options

    comfy.options.enable_args_parsing()
    saved_argv, sys.argv = sys.argv, [str(root / "main.py"), *cell["comfy_args"]]
    try:
        inproc.bootstrap_sys_path(root, cpu=cell["cpu"])
    finally:
        sys.argv = saved_argv
    from comfy.cli_args import args, enables_dynamic_vram

    info: dict[str, Any] = {"requested": cell["dynamic_vram"], "enables_dynamic_vram": enables_dynamic_vram(),
                            "active": False, "why": ""}
    aimdo = None
    if enables_dynamic_vram():
        import comfy_aimdo.control as aimdo

        headroom = None if args.reserve_vram is None else int(args.reserve_vram * GIB)
        try:
            aimdo.init(simple_vram_headroom=headroom, nvml_pressure=not args.disable_nvml_pressure)
        except TypeError:
            aimdo.init()
    if not cell["cpu"]:
        import cuda_malloc  # noqa: F401 - sets PYTORCH_CUDA_ALLOC_CONF before torch loads, as main.py does
    import comfy.memory_management
    import comfy.model_management as mm
    import comfy.model_patcher

    supported = mm.is_nvidia() or (mm.is_amd() and mm.rocm_version >= (7, 14))
    if aimdo is None:
        info["why"] = "off by ComfyUI's arguments"
    elif not (args.enable_dynamic_vram or supported):
        info["why"] = "not an NVIDIA/ROCm>=7.14 device"
    elif not args.enable_dynamic_vram and mm.torch_version_numeric < (2, 8):
        info["why"] = "torch < 2.8"
    else:
        devices = [(d.index, int(args.vram_headroom * GIB)) for d in mm.get_all_torch_devices()]
        try:
            ok = aimdo.init_devices(devices)
        except (TypeError, ValueError) as e:
            ok = False
            info["why"] = f"comfy-aimdo cannot take this device (init_devices raised {type(e).__name__})"
            info["detail"] = f"init_devices({devices}): {e}"
        if ok:
            comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
            comfy.memory_management.aimdo_enabled = True
            info["active"] = True
        elif not info["why"]:
            info["why"] = "comfy-aimdo init_devices failed (ComfyUI falls back to the legacy ModelPatcher)"
    info["aimdo_enabled"] = bool(comfy.memory_management.aimdo_enabled)
    info["cuda_alloc_conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")
    return info


class DeviceMemory:
    """Peak of the device's used memory (total − free, all processes) over a ``with`` block, sampled every
    10 ms: it also sees what comfy-aimdo allocates outside torch's allocator. None off CUDA."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.peak: int | None = None
        self._stop = threading.Event()

    def used(self) -> int:
        import torch

        free, total = torch.cuda.mem_get_info()
        return total - free

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak or 0, self.used())

    def __enter__(self) -> DeviceMemory:
        if self.cuda:
            self.peak = self.used()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak or 0, self.used())


def run_child(cell: dict[str, Any]) -> int:
    """One cell: start ComfyUI, load the model, run the cell's tasks, write the results file after each."""
    t_start = time.monotonic()
    out: dict[str, Any] = {"tasks": [], "complete": False}
    path = Path(cell["result_path"])

    def save() -> None:
        path.write_text(json.dumps(out, allow_nan=False, default=str))

    out["dynamic_vram_state"] = start_comfy(cell)
    save()
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_edit as be
    import bench_inversion as inv

    inv.register_pack()
    from spdinv_pack.spdinv.metrics import latent_psnr
    from spdinv_pack.tests.host import factory

    cuda = not cell["cpu"]
    base_used = DeviceMemory(cuda).used() if cuda else None
    ckpt = factory.sd15_checkpoint_path() if cell["model"] == "sd15" else factory.sdxl_checkpoint_path()
    bench_argv = ["--device", "cpu" if cell["cpu"] else "cuda", "--checkpoint", str(ckpt), "--latent", "sd-like",
                  "--resolutions", str(cell["resolution"]), "--steps", str(cell["steps"]),
                  "--repeats", str(cell["repeats"]), "--methods", "spdinv"]
    if cell["comfyui"]:
        bench_argv += ["--comfyui", cell["comfyui"]]
    t0 = time.monotonic()
    bench_args = be.parse_args(bench_argv)
    # bench_inversion.Bench also reads these two, which bench_edit.parse_args does not set (at aa611c2).
    bench_args.family = getattr(bench_args, "family", None)
    bench_args.engine = getattr(bench_args, "engine", "none")
    bench = be.EditBench(bench_args, cuda)
    bench.latent = bench.batch_latent(cell["resolution"], 1)
    import comfy.memory_management

    out.update(load_s=time.monotonic() - t0, startup_s=time.monotonic() - t_start, checkpoint=str(ckpt),
               unet_dtype=str(bench.model.model.get_dtype()), model_class=type(bench.model.model.model_config).__name__,
               model_patcher=type(bench.model).__name__, aimdo_enabled=bool(comfy.memory_management.aimdo_enabled),
               latent_shape=list(bench.latent["samples"].shape), torch=torch.__version__,
               comfyui_version=bench.env.version, device=inv.device_name(cuda), device_used_base_bytes=base_used)
    save()
    spec = inv.parse_method("spdinv")
    steps = cell["steps"]

    def task(name: str, body: Callable[[], dict[str, Any]]) -> None:
        inv.log(f"{cell['id']}: {name}")
        t = time.monotonic()
        try:
            with DeviceMemory(cuda) as dev:
                row = body()
        except Exception as e:  # a failing task is the finding; the other tasks still run
            row = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
            dev = None
        row = {"task": name, **row, "task_wall_s": time.monotonic() - t}
        if dev is not None and dev.peak is not None:
            row["device_used_peak_bytes"] = dev.peak
        peaks = [row.get("peak_mem_bytes")]
        if dev is not None and dev.peak is not None and base_used is not None:
            peaks.append(dev.peak - base_used)
        row["peak_bytes"] = max((p for p in peaks if p is not None), default=None)
        out["tasks"].append(inv.json_safe(row))
        save()

    def edit() -> dict[str, Any]:
        r = bench.row(spec, steps)
        return {"method": "spdinv", "median_s": r["median_s"], "invert_s": r["invert_median_s"],
                "edit_s": r["edit_median_s"], "unet_row_evals": r["unet_row_evals"],
                "invert_forwards": r["invert_forwards"], "invert_backwards": r["invert_backwards"],
                "recon_psnr_db": r["recon_psnr_db"], "steps_under_delta": r["steps_under_delta"],
                "peak_mem_bytes": r["peak_mem_bytes"], "times_s": r["total_s"]}

    def invert() -> dict[str, Any]:
        r, _inversion = bench.method_row(spec, steps)
        return {"method": "spdinv", "median_s": r["median_s"], "invert_s": r["median_s"],
                "invert_forwards": r["forwards"], "invert_backwards": r["backwards"],
                "unet_row_evals": r["forwards"] + 2 * r["backwards"], "recon_psnr_db": r["recon_psnr_db"],
                "steps_under_delta": r["steps_under_delta"], "peak_mem_bytes": r["peak_mem_bytes"],
                "times_s": r["times_s"]}

    def solver_check(label: str) -> Callable[[], dict[str, Any]]:
        def body() -> dict[str, Any]:
            iters = cell["check_iters"]  # AdamW's max_iters, or null-text's inner Adam steps (a spec knob)
            knob = ("" if iters is None else f" max_iters={iters}" if label == "spdinv/adamw"
                    else f" inner_steps={iters}")
            check = inv.parse_method(label + knob)
            with inv.PeakMemory(cuda) as mem, be.UNetCalls(bench.model) as calls:
                seconds, (inversion, _noise) = bench._timed(lambda: bench.invert(check, cell["check_steps"]))
            result = inversion.result
            _edited, recon = bench.edit(inversion, check)
            samples = recon["samples"]
            return {"method": label if label == "null_text" else check.label, "steps": cell["check_steps"],
                    "median_s": seconds,
                    "null_text_inner_steps": iters if label == "null_text" else None,
                    "invert_forwards": int(result.forwards.sum()), "invert_backwards": int(result.backwards.sum()),
                    "unet_row_evals": calls.row_evals, "unet_backward_rows": calls.backward_rows,
                    "differentiated": calls.backward_rows > 0, "finite": bool(torch.isfinite(samples).all()),
                    "recon_psnr_db": latent_psnr(samples, bench.latent["samples"]), "peak_mem_bytes": mem.peak}
        return body

    if cell["solver_checks"]:
        for label in ("spdinv/adamw", "null_text"):
            task("check", solver_check(label))
    for name in cell["tasks"]:
        if name == "edit?":  # SDXL's edit: only when the inversion leaves time for it before the cell's deadline
            inv_rows = [t for t in out["tasks"] if t["task"] == "invert" and not t.get("error")]
            need = 2.5 * inv_rows[0]["task_wall_s"] if inv_rows else None
            left = cell["deadline"] - time.time()
            if need is None or need > left - 30:
                out["tasks"].append({"task": "edit", "skipped": f"estimated {need or 0:.0f} s, "
                                                                f"{left:.0f} s left in the cell"})
                save()
                continue
            name = "edit"
        task(name, edit if name == "edit" else invert)
    out["complete"] = True
    out["child_wall_s"] = time.monotonic() - t_start
    save()
    return 0


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _num(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def _mib(b: int | None) -> str:
    return "–" if b is None else f"{b / MIB:,.0f}"


def render_markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    git = m["pack_git"]
    commit = (git["commit"] or "unknown")[:12] + (" (uncommitted changes)" if git["dirty"] else "")
    first = next((c for c in report["cells"] if c.get("torch")), {})
    lines = [
        "# SPDInv GPU readiness check" + (" (--tiny)" if m["tiny"] else ""),
        "",
        f"- device: {first.get('device', m['device'])}",
        f"- torch {first.get('torch', '?')}, ComfyUI {first.get('comfyui_version', '?')}, pack commit {commit}",
        f"- {m['steps']} steps, median of {m['repeats']} timed run(s) after a 1-step warm-up; solver checks "
        f"{m['check_steps']} steps, one run; every cell a fresh process with its own ComfyUI arguments",
        f"- total {m['total_wall_s']:.0f} s of a {m['budget_s']:.0f} s budget "
        f"({'within' if m['within_budget'] else 'OVER'}); per-cell timeout {m['run_timeout_s']:.0f} s; before it, "
        f"{m['prepare_s']:.0f} s to find or build the random checkpoints (cached before: {m['cached_before']})",
        "- peak MiB: the larger of the bench's meter (CUDA `max_memory_allocated`; CPU peak resident set) and, on "
        "CUDA, the device's used memory sampled every 10 ms above its level before the model was loaded",
        f"- targets (H200, judged on CUDA at full settings only): {'; '.join(m['targets'].values())}",
        f"- {m['date']}: `{m['command']}`",
        "",
        "| cell | ComfyUI args | dynamic VRAM | UNet dtype | load s | task | status | total s | invert s | edit s "
        "| UNet row evals (fwd / bwd) | recon PSNR dB | peak MiB | target |",
        "|---|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in report["cells"]:
        dyn = c.get("dynamic_vram_state") or {}
        dyn_text = ("requested" if c["dynamic_vram"] else "off") + (
            ", active" if dyn.get("active") else (f", not active: {dyn['why']}" if c["dynamic_vram"] and dyn else ""))
        head = (f"| {c['id']} ({c['resolution']}²) | `{' '.join(c['comfy_args'])}` | {dyn_text} "
                f"| {c.get('unet_dtype', '–')} | {_num(c.get('load_s'), '.1f')}")
        if c["status"] == "skipped":
            lines.append(f"{head} | – | skipped: {c['why']} | – | – | – | – | – | – | – |")
            continue
        tasks = c.get("tasks") or []
        if not tasks:
            lines.append(f"{head} | – | {c['status']} (rc {c['returncode']}, {c['wall_s']:.0f} s) "
                         "| – | – | – | – | – | – | – |")
        for t in tasks:
            name = t["task"]
            if name == "check":
                inner = t.get("null_text_inner_steps")
                name = (f"check {t.get('method', '')} ({t.get('steps', '?')} step(s)"
                        + (f", {inner} inner steps)" if inner else ")"))
            if t.get("skipped"):
                lines.append(f"{head} | {name} | skipped: {t['skipped']} | – | – | – | – | – | – | – |")
                continue
            if t.get("error"):
                lines.append(f"{head} | {name} | error: {t['error'][:160]} | – | – | – | – | – | – | – |")
                continue
            status = "ok"
            if t["task"] == "check":
                status = ("ok, differentiated" if t["differentiated"] else "ok, NO backward") + (
                    "" if t["finite"] else ", NON-FINITE")
            target = t.get("target")
            verdict = "–" if target is None else (
                f"{target['verdict']} ({target['why']})" if target["verdict"] != "not judged"
                else f"not judged ({target['why']})")
            lines.append(
                f"{head} | {name} | {status} | {_num(t.get('median_s'), '.2f')} | {_num(t.get('invert_s'), '.2f')} "
                f"| {_num(t.get('edit_s'), '.2f')} | {t.get('unet_row_evals', '–')} "
                f"({t.get('invert_forwards', '–')} / {t.get('invert_backwards', '–')}) "
                f"| {_num(t.get('recon_psnr_db'), '.2f')} | {_mib(t.get('peak_bytes'))} | {verdict} |")
        if c["status"] not in ("ok",) and tasks:
            lines.append(f"{head} | (cell) | {c['status']} (rc {c['returncode']}, {c['wall_s']:.0f} s) "
                         "| – | – | – | – | – | – | – |")
    lines += ["", "UNet row evals: edit rows count the inversion and the edit (a backward row counts two); "
                  "(fwd / bwd) are the inversion's own UNet forwards and backwards."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return run_child(json.loads(args.child))
    root, reason = _load_comfy_inprocess().find_comfyui(args.comfyui, "--comfyui / COMFYUI_PATH")
    if root is None:
        raise SystemExit(f"gpu_check: {reason}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_inversion as inv

    if args.prepare_only:
        prepare(args.models)
        return 0
    report = run_matrix(args)
    text = render_markdown(report)
    out = args.out
    if out is None:
        dev = "cpu-" + inv.slug(inv.cpu_model()) if args.cpu else inv.slug(report["meta"]["device"])
        out = ROOT / "benchmarks" / "results" / f"gpu-check-{dev}{'-tiny' if args.tiny else ''}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(inv.json_safe(report), indent=1, allow_nan=False) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)
    log(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    bad = [c["id"] for c in report["cells"] if c["status"] in ("failed", "timed out")]
    missed = [t["target"]["id"] for c in report["cells"] for t in c.get("tasks", [])
              if isinstance(t, dict) and t.get("target", {}).get("verdict") == "fail"]  # a skipped cell: names
    if bad or missed:
        log(f"failed cells: {bad or 'none'}; missed targets: {missed or 'none'}")
    return 1 if bad or missed else 0


if __name__ == "__main__":
    sys.exit(main())
