"""Benchmark of the pack's inversion (SPEC §8): DDIM vs SPDInv solvers, run inside an in-process ComfyUI.

    COMFYUI_PATH=~/ComfyUI python benchmarks/bench_inversion.py [--steps 20 50] [--resolution 128]

For each ``--steps`` value and each method it calls the ``SPDInvInvert`` node as ComfyUI's executor does
(``tools/comfy_inprocess.py``) and reports: median wall time of the node call, UNet forwards/backwards,
the fixed-point residual re-measured for every method on the same footing, the reconstruction PSNR of
the latent through ``SPDInvEditSampler`` (target = source, CFG 1), and peak memory. Timings come from
here only; the tests never time anything. See ``benchmarks/README.md`` for what each column means.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib.util
import json
import math
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "spdinv_pack"
DEFAULT_METHODS = ("ddim", "spdinv/anderson rel_tol=0", "spdinv/adamw rel_tol=0", "spdinv/anderson rel_tol=0.01")
TUNABLE: dict[str, Callable[[str], Any]] = {
    "max_iters": int,
    "lr": float,
    "delta": float,
    "rel_tol": float,
    "dci_rate": float,
    "measure_residual": lambda v: {"true": True, "1": True, "false": False, "0": False}[v.lower()],
    "predicted_stop": lambda v: {"true": True, "1": True, "false": False, "0": False}[v.lower()],
}
"""SPDInvInvert inputs a method spec may set as ``key=value``."""
SOLVER_KNOBS: dict[str, Callable[[str], Any]] = {
    "memory": int, "damping": float, "warm_start": str, "min_progress": float,
    "relax": lambda v: {"true": True, "1": True, "false": False, "0": False}[v.lower()]}
"""Anderson settings the node does not expose; a spec may set them for its runs (solver tuning)."""
NULL_TEXT_KNOBS: dict[str, Callable[[str], Any]] = {"inner_steps": int, "epsilon": float, "null_lr": float}
"""Null-text tuning settings the node does not expose (``NullTextSettings``; ``null_lr`` is its ``lr``), for
``null_text`` rows: the reference's 10 inner Adam steps per step are the method's cost knob."""
MIB = 2**20


def register_pack() -> None:
    """Import the repository as the package ``spdinv_pack``, as ComfyUI imports a node pack (and as
    ``tests/conftest.py`` does): the pack uses relative imports and its ``nodes/`` must not shadow
    ComfyUI's ``nodes.py``."""
    if PACKAGE in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """One table row: a label and the SPDInvInvert inputs it sets (besides model, prompt, latent, steps)."""

    label: str
    inputs: dict[str, Any]
    repeats: int | None = None
    """Timed runs of this row, where it should differ from ``--repeats`` (a slow row)."""
    knobs: dict[str, Any] = field(default_factory=dict)
    """``SOLVER_KNOBS`` set for this row's runs."""
    edit: dict[str, Any] = field(default_factory=dict)
    """SPDInvEditSampler inputs of this row (``source_guidance``), for ``bench_edit.py``."""
    null_text: dict[str, Any] = field(default_factory=dict)
    """``NullTextSettings`` of this row's runs (``null_text`` rows only; ``NULL_TEXT_KNOBS``)."""


def parse_method(text: str) -> MethodSpec:
    """Parse ``spdinv[/solver]`` or another SPDInvInvert method (``ddim``, ``negative_prompt``, ``null_text``,
    ``direct_inversion``), then ``key=value`` items (keys from ``TUNABLE`` and ``SOLVER_KNOBS``, ``repeats``, for
    ``null_text`` the ``NULL_TEXT_KNOBS``, and for the edit ``source_guidance=exact|like_target``).

    The DDIM methods run with ``measure_residual=False`` unless told otherwise, so their time is plain DDIM
    inversion (plus null-text's tuning).
    """
    from spdinv_pack.spdinv.inversion import SOLVERS
    from spdinv_pack.spdinv.inversion_methods import INVERSION_METHODS, SOURCE_GUIDANCE

    tokens = text.split()
    if not tokens:
        raise argparse.ArgumentTypeError("empty method")
    method, _, solver = tokens[0].partition("/")
    if method not in INVERSION_METHODS:
        raise argparse.ArgumentTypeError(f"{text!r}: method must be one of {INVERSION_METHODS}")
    inputs: dict[str, Any] = {"method": method}
    edit: dict[str, Any] = {}
    if method != "spdinv":
        if solver:
            raise argparse.ArgumentTypeError(f"{text!r}: {method} takes no solver")
        inputs["measure_residual"] = False
    else:
        solver = solver or "anderson"
        if solver not in SOLVERS:
            raise argparse.ArgumentTypeError(f"{text!r}: solver must be one of {SOLVERS}")
        inputs["solver"] = solver
    repeats = None
    knobs: dict[str, Any] = {}
    null_text: dict[str, Any] = {}
    for tok in tokens[1:]:
        key, eq, value = tok.partition("=")
        if key == "repeats" and eq and value.isdigit() and int(value) > 0:
            repeats = int(value)
            continue
        if key == "source_guidance" and value.replace("_", " ") in SOURCE_GUIDANCE:
            edit[key] = value.replace("_", " ")
            continue
        parsers = {**TUNABLE, **SOLVER_KNOBS, **(NULL_TEXT_KNOBS if method == "null_text" else {})}
        if not eq or key not in parsers:
            raise argparse.ArgumentTypeError(f"{text!r}: expected key=value with key in {sorted(parsers)}, "
                                             f"got {tok!r}")
        try:
            if key in NULL_TEXT_KNOBS:
                null_text[key.removeprefix("null_")] = parsers[key](value)
            else:
                (knobs if key in SOLVER_KNOBS else inputs)[key] = parsers[key](value)
        except (ValueError, KeyError):
            raise argparse.ArgumentTypeError(f"{text!r}: bad value for {key}: {value!r}") from None
    return MethodSpec(" ".join(tokens), inputs, repeats, knobs, edit, null_text)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from spdinv_pack.tests.host.factory.standins import FLOW_TEST_MODELS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"),
                   help="ComfyUI checkout (default: $COMFYUI_PATH)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA when available, else CPU (ComfyUI started with --cpu)")
    p.add_argument("--checkpoint", type=Path,
                   help="SD checkpoint file (default: the random-weight SD1.5 of tests/host/factory/)")
    p.add_argument("--family", choices=sorted(FLOW_TEST_MODELS),
                   help="instead of a checkpoint: the random test diffusion model of this flow family, with\n"
                        "stand-in prompt encodings in its text encoder's real shape (tests/host/factory/standins.py)\n"
                        "and an SD-like latent in its layout")
    p.add_argument("--engine", choices=("none", "mmdit"), default="none",
                   help="engine on the model of the timed and identity edits (mmdit: SPDInv MM-DiT Mutual\n"
                        "Attention at its family defaults, sharing from the first step)")
    p.add_argument("--image", type=Path, help="photo to invert, centre-cropped and resized (default: synthetic)")
    p.add_argument("--latent", choices=("auto", "vae", "sd-like"), default="auto",
                   help="what to invert: the VAE-encoded image, or a smooth latent with a real VAE latent's\n"
                        "statistics in the model's latent format (the random test VAEs give latents ~50x too small\n"
                        "to judge reconstruction on);\n"
                        "auto: sd-like with the random test checkpoint and no --image, else vae")
    p.add_argument("--resolution", type=int, default=128, help="image side in pixels, multiple of 8 (default 128)")
    p.add_argument("--frames", type=int, default=None,
                   help="video families (--family wan): pixel frames of the synthetic clip, 1 + 4k\n"
                        "(default the family's test clip, 9)")
    p.add_argument("--steps", type=int, nargs="+", default=[20], help="inversion steps; one table per value")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method; the median is reported")
    p.add_argument("--warmup-steps", type=int, default=1,
                   help="steps of the untimed warm-up call before each method's timed runs (default 1)")
    p.add_argument("--methods", type=parse_method, nargs="+", default=None, metavar="SPEC",
                   help="rows, e.g. ddim spdinv/adamw 'spdinv/anderson rel_tol=0.01 max_iters=50'\n"
                        f"(default: {' | '.join(DEFAULT_METHODS)})")
    p.add_argument("--delta", type=float, default=5e-6,
                   help="threshold of the 'steps < delta' column, on the re-measured residual (default 5e-6)")
    p.add_argument("--prompt", default="a photo of a cat", help="source prompt")
    p.add_argument("--target-prompt", default="a photo of a dog", help="target prompt of the timed edit")
    p.add_argument("--edit-cfg", type=float, default=7.5, help="CFG of the timed edit (default 7.5)")
    p.add_argument("--no-edit", action="store_true", help="skip timing the edit sampler")
    p.add_argument("--out", type=Path,
                   help="output path without suffix; writes .json and .md\n"
                        "(default: benchmarks/results/<device>-<resolution>-<steps>)")
    args = p.parse_args(argv)
    if args.methods is None:
        args.methods = [parse_method(m) for m in DEFAULT_METHODS]
    if args.family is not None and args.checkpoint is not None:
        p.error("--family and --checkpoint exclude each other")
    if args.frames is not None and (args.family is None or FLOW_TEST_MODELS[args.family].clip_frames == 1
                                    or args.frames < 1 or (args.frames - 1) % 4):
        p.error("--frames: give 1 + 4k frames (1, 5, 9, 17, ...) with a video --family (wan)")
    if args.resolution < 8 or args.resolution % 8:
        p.error("--resolution must be a positive multiple of 8")
    if min(args.steps) < 1 or args.repeats < 1 or args.warmup_steps < 1:
        p.error("--steps, --repeats and --warmup-steps must be at least 1")
    return args


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(cuda: bool) -> str:
    if cuda:
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return f"{cpu_model()} ({os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads)"


def slug(text: str) -> str:
    text = re.sub(r"\((R|TM|C)\)|\(.*?\)", "", text, flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "device"


def git_state(path: Path) -> dict[str, Any]:
    """Commit of the repository at ``path`` and whether its working tree differs (untracked files too, except
    result files under ``benchmarks/results/``, which a series of runs writes one after another)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(path), *a], capture_output=True, text=True, check=True).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--", ".", ":!benchmarks/results")
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(dirty)}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


# --------------------------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; Linux >= 4.0."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = _proc_status_kib("VmHWM"), _proc_status_kib("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 1024


class PeakMemory:
    """Peak memory over a ``with`` block, and the baseline at its start (bytes).

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU: the process's peak
    resident set, read as VmHWM after resetting it through /proc/self/clear_refs; where that reset is not
    possible, VmRSS sampled every 5 ms by a thread; off Linux, ``ru_maxrss`` (since process start).
    """

    def __init__(self, cuda: bool):
        self.cuda = cuda
        if cuda:
            self.how = "CUDA torch.cuda.max_memory_allocated"
        elif _reset_hwm():
            self.how = "CPU peak resident set (VmHWM, reset via /proc/self/clear_refs)"
        elif _proc_status_kib("VmRSS") is not None:
            self.how = "CPU peak resident set (VmRSS sampled every 5 ms)"
        else:
            self.how = "CPU ru_maxrss (peak since process start, not resettable)"
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        elif "VmHWM" in self.how:
            _reset_hwm()
            self.base = (_proc_status_kib("VmRSS") or 0) * 1024
        elif "sampled" in self.how:
            self.base = self.peak = (_proc_status_kib("VmRSS") or 0) * 1024
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, (_proc_status_kib("VmRSS") or 0) * 1024)

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        elif "VmHWM" in self.how:
            self.peak = (_proc_status_kib("VmHWM") or 0) * 1024
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, (_proc_status_kib("VmRSS") or 0) * 1024)
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def synthetic_image(size: int) -> torch.Tensor:
    """A smooth RGB image [1, H, W, 3] in 0..1 (the host tests' photo, at any size)."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = torch.stack([x, y, 0.5 + 0.4 * torch.sin(6 * x) * torch.cos(4 * y)], dim=-1)
    return img.unsqueeze(0)


def load_image(path: Path, size: int) -> torch.Tensor:
    """The file as an IMAGE tensor [1, size, size, 3]: centre-cropped to a square, then resized."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
        data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return (data.float() / 255.0).unsqueeze(0)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


def weights_digest(model_patcher: Any) -> str:
    """SHA-256 of the model's weights (names and bytes): equal before and after iff no weight changed."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model_patcher.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _inversion_order(t: torch.Tensor) -> list[Any]:
    """Per-step values (item 0 of the batch) from the first inversion step (lowest noise) to the last."""
    return (t[:, 0] if t.dim() > 1 else t).flip(0).tolist()


class Bench:
    """ComfyUI, the model and the encoded inputs, and one measurement per (steps, method)."""

    def __init__(self, args: argparse.Namespace, cuda: bool):
        from spdinv_pack.tools.comfy_inprocess import RunNode, bootstrap_sys_path, find_comfyui, import_comfy

        root, reason = find_comfyui(args.comfyui, "--comfyui / COMFYUI_PATH")
        if root is None:
            raise SystemExit(f"bench_inversion: {reason}")
        bootstrap_sys_path(root, cpu=not cuda)
        from spdinv_pack.tests.host import factory

        self.test_model = None if args.family is None else factory.FLOW_TEST_MODELS[args.family]
        self.bypass = self.test_model is not None and self.test_model.bypass is not None
        if self.bypass:
            ckpt = factory.cache_dir() / f"{self.test_model.bypass[0]} built bypassing detection"
        elif self.test_model is not None:
            ckpt = self.test_model.model_path()
        elif args.checkpoint is None:
            ckpt = factory.sd15_checkpoint_path()
        else:
            ckpt = args.checkpoint.expanduser().resolve()
            if not ckpt.is_file():
                raise SystemExit(f"bench_inversion: --checkpoint {ckpt} is not a file")
        kind = "checkpoints" if self.test_model is None else "diffusion_models"
        self.env = import_comfy(root, ckpt.parent, kinds=(kind,))
        found = self.env.folder_paths.get_full_path(kind, ckpt.name)
        if not self.bypass and (found is None or Path(found).resolve() != ckpt):
            raise SystemExit(f"bench_inversion: ComfyUI resolves {ckpt.name} to {found}, not {ckpt}; rename the file")
        import comfy.model_management as mm

        if cuda and mm.get_torch_device().type != "cuda":
            raise SystemExit(f"bench_inversion: CUDA requested but ComfyUI chose {mm.get_torch_device()}")

        from spdinv_pack.nodes.edit_sampler import SPDInvEditSampler
        from spdinv_pack.nodes.invert import SPDInvInvert
        from spdinv_pack.nodes.mmdit_attention import MMDiTMutualAttention

        self.args, self.cuda, self.ckpt = args, cuda, ckpt
        self.pack_git = git_state(ROOT)  # the code this run imports; later edits of the tree do not change it
        self.run_node = RunNode()
        self.invert_node, self.edit_node = SPDInvInvert, SPDInvEditSampler
        n = self.env.nodes
        log(f"loading {ckpt}")
        if self.test_model is not None:
            if args.image is not None or args.latent == "vae":
                raise SystemExit("bench_inversion: --family has no VAE; it inverts an SD-like latent")
            if self.bypass:
                from spdinv_pack.tests.host.pack_calls import bypassed_model

                self.model_scope = contextlib.ExitStack()  # the model stays loaded for the whole run
                self.model = self.model_scope.enter_context(bypassed_model(*self.test_model.bypass))
            else:
                (self.model,) = self.run_node(n.UNETLoader, unet_name=ckpt.name, weight_dtype="default")
            self.latent_source = "sd-like"
            self.latent = (self.test_model.photo(args.resolution) if args.frames is None
                           else self.test_model.clip(args.resolution, args.frames))
            self.source, self.target, self.null = (self.test_model.prompt(seed) for seed in (0, 1, 2))
        else:
            self.model, self.clip, self.vae = self.run_node(n.CheckpointLoaderSimple, ckpt_name=ckpt.name)
            self.latent_source = args.latent
            if self.latent_source == "auto":
                self.latent_source = "vae" if args.image is not None or args.checkpoint is not None else "sd-like"
            self.latent = self.make_latent(args.resolution)
            (self.source,) = self.run_node(n.CLIPTextEncode, text=args.prompt, clip=self.clip)
            (self.target,) = self.run_node(n.CLIPTextEncode, text=args.target_prompt, clip=self.clip)
            (self.null,) = self.run_node(n.CLIPTextEncode, text="", clip=self.clip)
        self.memory_how = PeakMemory(cuda).how
        self.digest_before = weights_digest(self.model)
        self.edit_model = self.model
        if args.engine == "mmdit":
            (self.edit_model,) = self.run_node(MMDiTMutualAttention, model=self.model, start_step=0.0,
                                               start_block=-1.0, share="keys and values")

    def make_latent(self, resolution: int) -> dict[str, torch.Tensor]:
        """The LATENT to invert at ``resolution`` pixels (see ``--latent``)."""
        if self.latent_source == "sd-like":  # in the loaded model's latent format (SD3: 16 channels, shifted)
            from spdinv_pack.tests.host import factory

            fmt = self.model.model.latent_format
            return {"samples": factory.sd_like_latent(resolution, channels=fmt.latent_channels,
                                                      scale=fmt.scale_factor, shift=getattr(fmt, "shift_factor", 0.0))}
        args = self.args
        pixels = synthetic_image(resolution) if args.image is None else load_image(args.image, resolution)
        (latent,) = self.run_node(self.env.nodes.VAEEncode, pixels=pixels, vae=self.vae)
        return latent

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _timed(self, call: Callable[[], Any]) -> tuple[float, Any]:
        self._sync()
        t0 = time.perf_counter()
        out = call()
        self._sync()
        return time.perf_counter() - t0, out

    def invert(self, spec: MethodSpec, steps: int) -> Any:
        """One SPDInvInvert node call; returns (inversion payload, noise LATENT). A spec's solver knobs and
        null-text settings are the defaults of the node's ``InversionSettings`` and ``NullTextSettings`` for this
        call only."""
        import spdinv_pack.nodes.invert as node_module

        settings_type, null_type = node_module.InversionSettings, node_module.NullTextSettings
        if spec.knobs:
            node_module.InversionSettings = functools.partial(settings_type, **spec.knobs)
        if spec.null_text:
            node_module.NullTextSettings = functools.partial(null_type, **spec.null_text)
        null_text = {"negative": self.null, "cfg": getattr(self.args, "cfg", 7.5)} if spec.inputs[
            "method"] == "null_text" else {}
        try:
            return self.run_node(self.invert_node, model=self.model, source=self.source, latent=self.latent,
                                 steps=steps, **spec.inputs, **null_text).result
        finally:
            node_module.InversionSettings, node_module.NullTextSettings = settings_type, null_type

    def remeasure(self, inversion: Any) -> torch.Tensor:
        """Fixed-point residual of every stored step, one UNet forward each, through a CFGGuider at CFG 1
        with the source prompt (what SPDInvInvert's solvers see); ``[steps, batch]``."""
        import comfy.samplers

        from spdinv_pack.nodes.comfy_bridge import denoiser, input_scale_of, run_in_guider
        from spdinv_pack.spdinv.inversion import fixed_point_residual

        guider = comfy.samplers.CFGGuider(self.model)
        guider.set_conds(self.source, [])
        guider.set_cfg(1.0)
        result = inversion.result

        def routine(guider: Any, extra_args: dict, start: torch.Tensor, x0: torch.Tensor, grid: torch.Tensor,
                    progress: Callable[..., None]) -> tuple[torch.Tensor, torch.Tensor]:
            scale = input_scale_of(guider.inner_model.model_sampling)
            return x0, fixed_point_residual(denoiser(guider, extra_args), result.to(x0.device), scale)

        samples = self.latent["samples"]
        with torch.inference_mode():
            _, residual = run_in_guider(guider, routine, torch.zeros_like(samples), samples, result.sigmas,
                                        result.steps)
        return residual

    def reconstruction_psnr(self, inversion: Any) -> float:
        """Latent PSNR of the edit sampler's source branch (target = source, CFG 1) against the VAE latent."""
        from spdinv_pack.spdinv.metrics import latent_psnr

        recon = self.run_node(self.edit_node, model=self.model, inversion=inversion, source=self.source,
                              target=self.source, cfg=1.0).result[1]
        return latent_psnr(recon["samples"], self.latent["samples"])

    def method_row(self, spec: MethodSpec, steps: int) -> tuple[dict[str, Any], Any]:
        """Warm up, time ``repeats`` node calls under the memory meter, then measure (untimed)."""
        args = self.args
        log(f"steps={steps} {spec.label}: warm-up ({args.warmup_steps} step(s))")
        self.invert(spec, args.warmup_steps)
        times: list[float] = []
        with PeakMemory(self.cuda) as mem:
            repeats = spec.repeats or args.repeats
            for r in range(repeats):
                seconds, (inversion, _noise) = self._timed(lambda: self.invert(spec, steps))
                times.append(seconds)
                log(f"steps={steps} {spec.label}: run {r + 1}/{repeats} {seconds:.2f} s")
        result = inversion.result
        residual = self.remeasure(inversion)
        psnr = self.reconstruction_psnr(inversion)
        per_step = residual[:, 0]
        row = {
            "method": spec.label,
            "settings": result.settings.to_dict(),
            "times_s": times,
            "median_s": statistics.median(times),
            "forwards": int(result.forwards.sum()),
            "backwards": int(result.backwards.sum()),
            "steps_under_delta": int((residual < args.delta).all(dim=1).sum()),
            "residual_median": statistics.median(per_step.tolist()),
            "residual_max": float(per_step.max()),
            "recon_psnr_db": psnr,
            "peak_mem_bytes": mem.peak,
            "mem_base_bytes": mem.base,
            "per_step": {
                "sigma": _inversion_order(result.sigmas[:-1]),
                "residual": _inversion_order(residual),
                "solver_residual": _inversion_order(result.residual),
                "guess_residual": _inversion_order(result.guess_residual),
                "iterations": _inversion_order(result.iterations),
                "forwards": _inversion_order(result.forwards),
                "backwards": _inversion_order(result.backwards),
            },
        }
        log(f"steps={steps} {spec.label}: median {row['median_s']:.2f} s, {row['forwards']} fwd, "
            f"{row['backwards']} bwd, {row['steps_under_delta']}/{steps} < delta, PSNR {psnr:.2f} dB")
        return row, inversion

    def edit_row(self, inversion: Any) -> dict[str, Any]:
        """Time the edit sampler (source + target branches, target prompt at ``--edit-cfg``) on the ``--engine``
        model, and measure how far an identity edit (target = source) is from its reconstruction."""
        args = self.args

        def call(target: Any = self.target) -> Any:
            return self.run_node(self.edit_node, model=self.edit_model, inversion=inversion, source=self.source,
                                 target=target, cfg=args.edit_cfg)

        edited, recon, _ = call(self.source).result
        identity = float((edited["samples"] - recon["samples"]).abs().max())

        log("edit: warm-up")
        call()
        times = []
        with PeakMemory(self.cuda) as mem:
            for _ in range(args.repeats):
                times.append(self._timed(call)[0])
        return {"cfg": args.edit_cfg, "target_prompt": args.target_prompt, "engine": args.engine,
                "identity_max_abs": identity, "times_s": times,
                "median_s": statistics.median(times), "peak_mem_bytes": mem.peak, "mem_base_bytes": mem.base}

    def run(self) -> dict[str, Any]:
        args = self.args
        tables = []
        for steps in args.steps:
            rows, first_inversion = [], None
            for spec in args.methods:
                row, inversion = self.method_row(spec, steps)
                rows.append(row)
                if first_inversion is None:
                    first_inversion = inversion
            ddim = next((r for r in rows if r["settings"]["method"] == "ddim"), None)
            for r in rows:
                r["time_vs_ddim"] = r["median_s"] / ddim["median_s"] if ddim else None
            edit = None if args.no_edit else self.edit_row(first_inversion)
            tables.append({"steps": steps, "rows": rows, "edit": edit})
        return {"benchmark": "spdinv-inversion", "format": 1, "meta": self.meta(), "tables": tables}

    def meta(self) -> dict[str, Any]:
        args, base = self.args, self.model.model
        return {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": device_name(self.cuda),
            "device_kind": "cuda" if self.cuda else "cpu",
            "torch": torch.__version__,
            "python": platform.python_version(),
            "comfyui_version": self.env.version,
            "comfyui_git": git_state(self.env.root),
            "pack_git": self.pack_git,
            "checkpoint": str(self.ckpt),
            "family": None if self.test_model is None else self.test_model.family,
            "weights_unchanged": weights_digest(self.model) == self.digest_before,
            "base_model_options_unpatched": not {"patches", "patches_replace"} & set(
                self.model.model_options.get("transformer_options", {})),
            "model": type(base.model_config).__name__,
            "unet_dtype": str(base.get_dtype()),
            "resolution": args.resolution,
            "latent_shape": list(self.latent["samples"].shape),
            "frames": None if self.test_model is None or self.test_model.clip_frames == 1 else (
                args.frames or self.test_model.clip_frames),
            "image": str(args.image) if args.image else "synthetic",
            "latent": self.latent_source,
            "prompt": args.prompt,
            "repeats": args.repeats,
            "warmup_steps": args.warmup_steps,
            "delta": args.delta,
            "memory": self.memory_how,
            "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        }


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _mib(b: int) -> str:
    return f"{b / MIB:,.0f}"


def environment_lines(meta: dict[str, Any]) -> list[str]:
    """The report header's device and software lines (Markdown list items)."""
    git = meta["pack_git"]
    commit = (git["commit"] or "unknown")[:12] + (" (uncommitted changes)" if git["dirty"] else "")
    software = f"torch {meta['torch']}, Python {meta['python']}, ComfyUI {meta['comfyui_version']}"
    return [f"- device: {meta['device']}", f"- {software}, pack commit {commit}"]


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: a header with the environment and one table per steps value."""
    m = report["meta"]
    lines = [
        "# SPDInv inversion benchmark",
        "",
        *environment_lines(m),
        f"- model: {Path(m['checkpoint']).name} ({m['model']}, UNet {m['unet_dtype']}); "
        f"{'VAE-encoded image ' + m['image'] if m['latent'] == 'vae' else 'SD-like synthetic latent'} at "
        f"{m['resolution']}x{m['resolution']}" + (f", {m['frames']} frames" if m.get("frames") else "")
        + f" (latent {m['latent_shape']}); "
        + (f"stand-in encodings of the {m['family']} text encoder's shape" if m.get("family")
           else f"prompt \"{m['prompt']}\""),
        f"- wall time: median of {m['repeats']} SPDInvInvert calls after a {m['warmup_steps']}-step warm-up; "
        "residuals re-measured afterwards (one untimed UNet forward per step)",
        f"- memory: {m['memory']} during the timed calls",
        f"- {m['date']}: `{m['command']}`",
    ]
    if "weights_unchanged" in m:
        lines.append(f"- after every run: model weights {'bit-identical' if m['weights_unchanged'] else 'CHANGED'}, "
                     f"base MODEL {'without' if m['base_model_options_unpatched'] else 'WITH'} the engine's patches")
    delta = f"{m['delta']:.0e}"
    for table in report["tables"]:
        n = table["steps"]
        lines += [
            "",
            f"## {n} steps",
            "",
            f"| method | wall s | × ddim | UNet fwd | fwd/step | UNet bwd | steps < δ={delta} | median residual "
            "| max residual | recon PSNR dB | peak mem MiB | Δ mem MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in table["rows"]:
            ratio = "–" if r["time_vs_ddim"] is None else f"{r['time_vs_ddim']:.2f}"
            lines.append(
                f"| {r['method']} | {r['median_s']:.2f} | {ratio} | {r['forwards']} | {r['forwards'] / n:.2f} "
                f"| {r['backwards']} "
                f"| {r['steps_under_delta']}/{n} | {r['residual_median']:.2e} | {r['residual_max']:.2e} "
                f"| {r['recon_psnr_db']:.2f} | {_mib(r['peak_mem_bytes'])} "
                f"| {_mib(r['peak_mem_bytes'] - r['mem_base_bytes'])} |"
            )
        e = table["edit"]
        if e is not None:
            engine = "" if e.get("engine", "none") == "none" else f", engine {e['engine']}"
            lines += ["", f"Edit (SPDInvEditSampler, source + target branches, CFG {e['cfg']:g}{engine}, {n} steps): "
                          f"{e['median_s']:.2f} s median, peak mem {_mib(e['peak_mem_bytes'])} MiB "
                          f"(Δ {_mib(e['peak_mem_bytes'] - e['mem_base_bytes'])} MiB)."]
            if "identity_max_abs" in e:
                lines.append(f"Identity edit (target = source): max |edited − reconstruction| = "
                             f"{e['identity_max_abs']:.3g}.")
    return "\n".join(lines) + "\n"


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by None (strict JSON has no NaN or Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_report(out: Path, report: dict[str, Any], text: str) -> None:
    """Write ``report`` as ``out``.json (strict JSON) and its Markdown ``text`` as ``out``.md, and print the text."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(json_safe(report), indent=1, allow_nan=False) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)
    log(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


def default_out(report: dict[str, Any], args: argparse.Namespace) -> Path:
    m = report["meta"]
    dev = slug(m["device"]) if m["device_kind"] == "cuda" else "cpu-" + slug(cpu_model())
    steps = "_".join(str(s) for s in args.steps)
    return ROOT / "benchmarks" / "results" / f"{dev}-{args.resolution}-{steps}"


def main(argv: Sequence[str] | None = None) -> int:
    register_pack()
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_inversion: --device cuda but torch sees no CUDA device")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    bench = Bench(args, cuda)
    report = bench.run()
    text = render_markdown(report)
    out = args.out or default_out(report, args)
    if out.suffix in (".json", ".md"):
        out = out.with_suffix("")
    write_report(out, report, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
