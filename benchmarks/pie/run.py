"""PIE-Bench edits through the pack in a headless ComfyUI: one API prompt per (image, inversion, engine).

Each method (``<inversion>+<engine>``) is a row of the SPDInv paper's Table 1 run the way its authors ran it
on PIE-Bench (``../shared/notes/reference-algorithms.md`` §2.3, §6): DDIM steps and CFG 7.5 throughout;
Prompt-to-Prompt with PnPInversion's PIE protocol (cross-attention replaced for the first 40 % of the steps,
self-attention for 60 %, word swap when the prompts have the same number of words and refine otherwise, local
blend on ``blended_word`` with threshold 0.3 from 20 % of the steps, the target word reweighted ×2, the
blend mask from the edited maps as the official code builds it). The SPDInv rows edit as SPDInv's code does
(the source prompt as negative, ProxEdit's proximal guidance at the 0.7 quantile and inversion guidance); the
other inversions use plain CFG, as PnPInversion's runners do. ``spdinv`` is the pack's defaults (Anderson,
``rel_tol`` 0.01, ComfyUI's DDIM grid); ``spdinv_paper`` the published solver (AdamW, K 25, lr 1e-3, δ 5e-6,
δ alone, the official grid); ``spdinv_dci`` adds DCI's correction (λ 1) to the paper's settings.

Standard library only; the server is :class:`tools.comfy_server.ComfyServer`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...tools.api_graph import ApiGraph
from ...tools.comfy_server import ComfyServer, ComfyServerError
from .data import PieItem


@dataclass(frozen=True)
class Inversion:
    """How one inversion row is run: SPDInvInvert's settings and what the edit sampler does with the source."""

    invert: Mapping[str, Any]
    """SPDInvInvert widget values over :data:`INVERT_PROTOCOL` (the others: the node's defaults)."""
    source_guidance: str = "exact"
    empty_negative: bool = False
    """The edit's negative is the empty prompt (else the sampler's default, the source prompt)."""
    spdinv_editing: bool = False
    """Proximal and inversion guidance on, as SPDInv's editing code has them."""


INVERT_PROTOCOL: Mapping[str, Any] = {"measure_residual": False, "grid": "reference"}
"""SPDInvInvert settings of every row unless the row sets its own: no extra residual pass, the official grid."""
_PAPER_SOLVER = {"method": "spdinv", "solver": "adamw", "max_iters": 25, "lr": 1e-3, "delta": 5e-6, "rel_tol": 0.0}

INVERSIONS: Mapping[str, Inversion] = {
    "ddim": Inversion({"method": "ddim"}, source_guidance="like target", empty_negative=True),
    "spdinv": Inversion({"method": "spdinv", "grid": "ddim_uniform"}, spdinv_editing=True),
    "spdinv_paper": Inversion(_PAPER_SOLVER, spdinv_editing=True),
    "spdinv_dci": Inversion({**_PAPER_SOLVER, "dci_rate": 1.0}, spdinv_editing=True),
    "negative_prompt": Inversion({"method": "negative_prompt"}),
    "null_text": Inversion({"method": "null_text"}, empty_negative=True),
    "direct_inversion": Inversion({"method": "direct_inversion"}, empty_negative=True),
}
"""The inversions a run can compare (``--inversions``)."""

ENGINES: Mapping[str, tuple[str, ...]] = {
    "p2p": tuple(INVERSIONS),
    "masactrl": ("ddim", "spdinv", "spdinv_paper", "spdinv_dci", "direct_inversion"),
    "pnp": ("ddim", "spdinv", "spdinv_paper", "spdinv_dci"),
}
"""Engine -> the inversions it runs with (those of the paper's table and the pack's own)."""

PNP_NEGATIVE = "ugly, blurry, black, low res, unrealistic"


@dataclass(frozen=True)
class RunSettings:
    """What is the same for every edit of a run."""

    checkpoint: str
    """The checkpoint's name as ComfyUI lists it."""
    steps: int = 50
    cfg: float = 7.5
    size: int = 512
    """Working resolution: photos of another size are resized to it and the edit back to the photo's size."""
    cross_replace: float = 0.4
    self_replace: float = 0.6


def method_name(inversion: str, engine: str) -> str:
    """The method folder's name, e.g. ``spdinv_paper+p2p``."""
    return f"{inversion}+{engine}"


def plan_methods(inversions: Sequence[str], engines: Sequence[str]) -> list[tuple[str, str]]:
    """Every (inversion, engine) pair asked for; an unknown name or a pair the pack does not run is an error."""
    for name in inversions:
        if name not in INVERSIONS:
            raise ValueError(f"--inversions: unknown {name!r}; choose from {', '.join(INVERSIONS)}")
    for engine in engines:
        if engine not in ENGINES:
            raise ValueError(f"--engines: unknown {engine!r}; choose from {', '.join(ENGINES)}")
        bad = [i for i in inversions if i not in ENGINES[engine]]
        if bad:
            raise ValueError(f"--inversions {' '.join(bad)} with --engines {engine}: not run by the harness "
                             f"({engine} runs with {', '.join(ENGINES[engine])})")
    return [(i, e) for e in engines for i in inversions]


def _words(text: str) -> list[str]:
    return [re.sub(r"[^\w'-]", "", w).casefold() for w in text.split()]


def blend_settings(item: PieItem) -> tuple[str, str, str, str | None]:
    """(source word, target word, reweight, note) for local blend; empty words when the item has none.

    A blended word missing from its prompt (where the reference's mask would be empty and its edit collapse to
    the source) leaves local blend and reweighting off for that item; ``note`` says so.
    """
    if item.blended_words is None:
        return "", "", "", None
    src, tgt = item.blended_words
    if src.casefold() not in _words(item.source_prompt) or tgt.casefold() not in _words(item.target_prompt):
        return "", "", "", (f"blended_word {src!r}/{tgt!r} not in the prompts: local blend and reweight off for "
                            f"{item.image_id}")
    return src, tgt, f"{tgt}:2.0", None


def edit_prompt(item: PieItem, inversion: str, engine: str, settings: RunSettings,
                photo_size: tuple[int, int], prefix: str,
                object_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The API prompt that edits one PIE item with one method and saves the edit alone under ``prefix``.

    Inputs the protocol does not set are left to the nodes' defaults: filled from ``object_info`` (the server's
    ``/object_info``) when given, else left out of the prompt.
    """
    inv = INVERSIONS[inversion]
    g = ApiGraph()
    ckpt = g.add("CheckpointLoaderSimple", _title="Checkpoint", ckpt_name=settings.checkpoint)
    model, clip, vae = ckpt, ckpt[1], ckpt[2]
    pixels = g.add("LoadImage", _title="Photo", image=item.relative_path)
    working = (settings.size, settings.size)
    if photo_size != working:
        pixels = g.add("ImageScale", _title="Resize", upscale_method="lanczos", width=working[0],
                       height=working[1], crop="center", image=pixels)
    latent = g.add("VAEEncode", _title="Encode photo", pixels=pixels, vae=vae)
    source = g.add("CLIPTextEncode", _title="Source prompt", text=item.source_prompt, clip=clip)
    empty = g.add("CLIPTextEncode", _title="Empty prompt", text="", clip=clip)
    negative = empty if inv.empty_negative else None
    if engine == "p2p":
        src_word, tgt_word, reweight, _ = blend_settings(item)
        same_length = len(item.source_prompt.split(" ")) == len(item.target_prompt.split(" "))
        control = g.add("P2PAttentionControl", _title="Prompt-to-Prompt", model=model, clip=clip,
                        source_text=item.source_prompt, target_text=item.target_prompt,
                        mode="word swap" if same_length else "refine", cross_replace=settings.cross_replace,
                        self_replace=settings.self_replace, blend_source_words=src_word,
                        blend_target_words=tgt_word, blend_threshold=0.3, blend_start=0.2, reweight=reweight,
                        proximal_guidance=inv.spdinv_editing, proximal_quantile=0.7,
                        inversion_guidance=inv.spdinv_editing, blend_maps="edited")
        edit_model, edit_source, target = control, control[1], control[2]
    elif engine == "masactrl":
        edit_model = g.add("MasaCtrlMutualAttention", _title="MasaCtrl", model=model,
                           proximal_guidance=inv.spdinv_editing)
        edit_source = source
        target = g.add("CLIPTextEncode", _title="Target prompt", text=item.target_prompt, clip=clip)
        negative = empty
    else:
        edit_model = g.add("PNPInjection", _title="Plug-and-Play", model=model)
        edit_source = empty
        target = g.add("CLIPTextEncode", _title="Target prompt", text=item.target_prompt, clip=clip)
        negative = g.add("CLIPTextEncode", _title="Negative", text=PNP_NEGATIVE, clip=clip)
    invert_inputs = {**INVERT_PROTOCOL, **inv.invert, "steps": settings.steps, "cfg": settings.cfg}
    if inv.invert.get("method") == "null_text":
        invert_inputs["negative"] = empty
    inverted = g.add("SPDInvInvert", _title=f"Inversion ({inversion})", model=model, source=source, latent=latent,
                     **invert_inputs)
    sampler_inputs: dict[str, Any] = {"model": edit_model, "inversion": inverted, "source": edit_source,
                                      "target": target, "cfg": settings.cfg, "source_guidance": inv.source_guidance}
    if negative is not None:
        sampler_inputs["negative"] = negative
    edited = g.add("SPDInvEditSampler", _title=f"Edit ({engine})", **sampler_inputs)
    image = g.add("VAEDecode", _title="Decode edit", samples=edited, vae=vae)
    if photo_size != working:
        image = g.add("ImageScale", _title="Back to the photo's size", upscale_method="lanczos",
                      width=photo_size[0], height=photo_size[1], crop="disabled", image=image)
    g.add("SaveImage", _title="Save edit", filename_prefix=prefix, images=image)
    return g.prompt(object_info)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, read by Pillow (in ComfyUI's environment)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


@dataclass
class RunReport:
    """What a run did: edits made and skipped (already there), failures, seconds per edit by method."""

    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: dict[str, list[float]] = field(default_factory=dict)


def edit_path(out: Path, method: str, image_id: str) -> Path:
    """Where an edit is saved: ``<out>/<method>/<image_id>.png``."""
    return out / method / f"{image_id}.png"


def check_settings(out: Path, methods: Sequence[tuple[str, str]], settings: RunSettings) -> None:
    """Record each method folder's settings, or refuse to add edits made with other settings to it.

    A resumed run must not mix protocols in one folder: ``<out>/<method>/settings.json`` holds what its edits
    were made with.
    """
    for inv, eng in methods:
        folder = out / method_name(inv, eng)
        record = folder / "settings.json"
        wanted = {"inversion": inv, "engine": eng, **asdict(settings)}
        if record.is_file():
            had = json.loads(record.read_text(encoding="utf-8"))
            changed = {k: (had.get(k), v) for k, v in wanted.items() if had.get(k) != v}
            if changed:
                what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
                raise ValueError(f"--out {out}: {folder.name} holds edits made with other settings ({what}); "
                                 "give another --out, or delete that folder to redo it")
        else:
            folder.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps(wanted, indent=1), encoding="utf-8")


def run_edits(server: ComfyServer, items: Sequence[PieItem], methods: Sequence[tuple[str, str]],
              settings: RunSettings, out: Path, log: Callable[[str], None] = print,
              timeout: float = 3600.0) -> RunReport:
    """Edit every item with every method, skipping edits already saved; resumable after any interruption.

    Each edit is written to a temporary name and renamed, so an interrupted run leaves no partial file. A
    failed edit is logged (``<out>/failures.jsonl``) and the run goes on; timings go to
    ``<out>/<method>/seconds.csv``.
    """
    report = RunReport()
    todo = [(item, inv, eng) for item in items for inv, eng in methods
            if not edit_path(out, method_name(inv, eng), item.image_id).is_file()]
    report.skipped = len(items) * len(methods) - len(todo)
    if report.skipped:
        log(f"{report.skipped} edits already in {out}: skipped")
    noted: set[str] = set()
    object_info = server.object_info() if todo else None
    started = time.monotonic()
    for n, (item, inv, eng) in enumerate(todo, 1):
        method = method_name(inv, eng)
        target = edit_path(out, method, item.image_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        note = blend_settings(item)[3] if eng == "p2p" else None
        if note and item.image_id not in noted:
            noted.add(item.image_id)
            log(f"note: {note}")
        t0 = time.monotonic()
        try:
            if not item.image_path.is_file():
                raise FileNotFoundError(f"{item.image_path} does not exist")
            prompt = edit_prompt(item, inv, eng, settings, image_size(item.image_path),
                                 prefix=f"pie/{method}/{item.image_id}", object_info=object_info)
            history = server.run(prompt, timeout=timeout)
            images = server.output_images(history)
            if len(images) != 1:
                raise ComfyServerError(f"expected one saved edit, the server listed {len(images)}")
            partial = target.with_suffix(".png.partial")
            shutil.copyfile(images[0], partial)
            os.replace(partial, target)
            images[0].unlink(missing_ok=True)
        except (ComfyServerError, OSError, ValueError) as e:
            report.failed.append((method, item.image_id, str(e)))
            with open(out / "failures.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"method": method, "image_id": item.image_id, "error": str(e)}) + "\n")
            log(f"[{n}/{len(todo)}] {method} {item.image_id}: FAILED: {str(e).splitlines()[0]}")
            if not server.running():
                raise
            continue
        seconds = time.monotonic() - t0
        report.done += 1
        report.seconds.setdefault(method, []).append(seconds)
        with open(target.parent / "seconds.csv", "a", encoding="utf-8") as f:
            f.write(f"{item.image_id},{seconds:.3f}\n")
        left = (time.monotonic() - started) / n * (len(todo) - n)
        log(f"[{n}/{len(todo)}] {method} {item.image_id}: {seconds:.1f} s (about {left / 60:.0f} min left)")
    return report
