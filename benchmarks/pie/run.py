"""PIE-Bench edits through the pack in a headless ComfyUI: one API prompt per (image, inversion, engine).

Each method (``<inversion>+<engine>``) is a row of the SPDInv paper's Table 1 run the way its authors ran it
on PIE-Bench (``../shared/notes/reference-algorithms.md`` §2.3, §6); :func:`row_protocol` states each row as
data (recorded in ``<method>/settings.json``, printed by ``plan``). DDIM steps and CFG 7.5 throughout.
Prompt-to-Prompt with PnPInversion's PIE protocol (``run_editing_p2p.py``): refine for every item (word swap
where the word counts match only with ``--word-swap``), cross-attention replaced for the first 40 % of the
steps, self-attention for 60 %, local blend on ``blended_word`` (threshold 0.3, from 20 % of the steps, the
mask from the edited maps), the target word reweighted ×2; a blend word the reference does not find is
handled as it handles it (:func:`blend_settings`), an item whose ``blended_word`` is not two words is left out.
The SPDInv rows edit as SPDInv's code does (the source prompt as negative, ProxEdit's proximal guidance at the
0.7 quantile and inversion guidance); the other inversions use plain CFG, as PnPInversion's runners do.
``spdinv`` is the pack's defaults (Anderson, ``rel_tol`` 0.01, ComfyUI's DDIM grid); ``spdinv_paper`` the
published solver (AdamW, K 25, lr 1e-3, δ 5e-6, δ alone, the official grid); ``spdinv_dci`` DCI's batch
script (K 10, λ 1, cross-replace 0.8, no reweight). MasaCtrl: the ``ddim`` and ``direct_inversion`` rows invert
and run the source with the empty prompt (PnPInversion's ``run_editing_masactrl.py``), the SPDInv rows with the
source prompt (SPDInv's ``run_SPDInv_MasaCtrl.py``). PnP: the source branch takes the empty prompt; ``ddim`` is
DDIM + PnP (the source replays the DDIM reconstruction, PnPInversion's ``run_editing_pnp.py``), the SPDInv
rows replay the inversion.

Standard library only; the servers are :class:`.servers.ComfyClient` (one the run starts with
:class:`tools.comfy_server.ComfyServer`, or running ones given by URL).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ...tools.api_graph import ApiGraph
from ...tools.comfy_server import ComfyServerError
from .data import PieItem
from .servers import ComfyClient, Job, ServerGone, dispatch


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
    p2p: Mapping[str, Any] = field(default_factory=dict)
    """Prompt-to-Prompt settings of this row's own reference that differ from the PIE protocol (DCI's)."""


INVERT_PROTOCOL: Mapping[str, Any] = {"measure_residual": False, "grid": "reference"}
"""SPDInvInvert settings of every row unless the row sets its own: no extra residual pass, the official grid."""
_PAPER_SOLVER = {"method": "spdinv", "solver": "adamw", "max_iters": 25, "lr": 1e-3, "delta": 5e-6, "rel_tol": 0.0}

INVERSIONS: Mapping[str, Inversion] = {
    "ddim": Inversion({"method": "ddim"}, source_guidance="like target", empty_negative=True),
    "spdinv": Inversion({"method": "spdinv", "grid": "ddim_uniform"}, spdinv_editing=True),
    "spdinv_paper": Inversion(_PAPER_SOLVER, spdinv_editing=True),
    "spdinv_dci": Inversion({**_PAPER_SOLVER, "max_iters": 10, "dci_rate": 1.0}, spdinv_editing=True,
                            p2p={"cross_replace": 0.8, "reweight": False, "word_swap": False,
                                 "blend_word_not_two": "no blend"}),
    "negative_prompt": Inversion({"method": "negative_prompt"}),
    "null_text": Inversion({"method": "null_text"}, empty_negative=True),
    "direct_inversion": Inversion({"method": "direct_inversion"}, empty_negative=True),
}
"""The inversions a run can compare (``--inversions``). ``spdinv_dci`` is DCI's batch script (``run_dci_P2P.py``):
K 10, λ 1, cross-attention replaced for 80 % of the steps, refine, no reweight, an item without two blend words
edited without local blend."""

ENGINES: Mapping[str, tuple[str, ...]] = {
    "p2p": tuple(INVERSIONS),
    "masactrl": ("ddim", "spdinv", "spdinv_paper", "spdinv_dci", "direct_inversion"),
    "pnp": ("ddim", "spdinv", "spdinv_paper", "spdinv_dci"),
}
"""Engine -> the inversions it runs with (those of the paper's table and the pack's own)."""

PNP_NEGATIVE = "ugly, blurry, black, low res, unrealistic"
EMPTY_SOURCE_MASACTRL = ("ddim", "direct_inversion")
"""MasaCtrl rows run as PnPInversion's ``run_editing_masactrl.py``: inverted, and the source branch run, with the
empty prompt (the SPDInv rows follow SPDInv's ``run_SPDInv_MasaCtrl.py``: the source prompt)."""
PRECISIONS = ("fp32", "auto")
FP32_FLAGS = ("--force-fp32", "--fp32-unet", "--fp32-vae", "--fp32-text-enc")
"""ComfyUI flags for ``--precision fp32`` (each passed where the checkout knows it): the references ran fp32."""


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
    word_swap: bool = False
    """P2P word swap where both prompts have the same number of words (refine otherwise); off: refine for every
    item, as PnPInversion's and SPDInv's P2P runners do."""
    precision: str = "fp32"
    """``fp32``: ComfyUI runs every model in float32 (as the references did); ``auto``: ComfyUI's choice."""
    comfyui_args: str | None = None
    """More flags the run's own ComfyUI was started with (``--comfyui-args``; they can change the edits, e.g. a
    weight dtype), or None."""


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


def row_protocol(inversion: str, engine: str, settings: RunSettings) -> dict[str, Any]:
    """Everything one row (``<inversion>+<engine>``) does that is the same for every item, as plain data: what
    :func:`edit_prompt` builds from, what ``settings.json`` records and ``plan`` prints."""
    inv = INVERSIONS[inversion]
    empty_source = engine == "masactrl" and inversion in EMPTY_SOURCE_MASACTRL
    source_guidance = "exact" if engine == "pnp" else inv.source_guidance
    negative = "source prompt"
    if engine == "pnp":
        negative = PNP_NEGATIVE
    elif engine == "masactrl" or inv.empty_negative:
        negative = "empty prompt"
    out: dict[str, Any] = {
        "invert": {**INVERT_PROTOCOL, **inv.invert, "steps": settings.steps, "cfg": settings.cfg},
        "inverted_prompt": "empty prompt" if empty_source else "source prompt",
        "edit_source": "empty prompt" if empty_source or engine == "pnp" else "source prompt",
        "source_guidance": source_guidance,
        "negative": negative,
    }
    if inversion == "null_text":
        out["invert"]["negative"] = "empty prompt"
    if engine == "p2p":
        p2p = {"cross_replace": settings.cross_replace, "reweight": True, "word_swap": settings.word_swap,
               "blend_word_not_two": "skip item", **inv.p2p}
        out["p2p"] = {
            "mode": "word swap if same word count, else refine" if p2p["word_swap"] else "refine",
            "cross_replace": p2p["cross_replace"], "self_replace": settings.self_replace,
            "blend_threshold": 0.3, "blend_start": 0.2, "blend_maps": "edited",
            "reweight": "target blend word ×2" if p2p["reweight"] else "none",
            "blend_word_not_two": p2p["blend_word_not_two"],
            "proximal_guidance": inv.spdinv_editing, "proximal_quantile": 0.7,
            "inversion_guidance": inv.spdinv_editing,
        }
    elif engine == "masactrl":
        out["masactrl"] = {"proximal_guidance": inv.spdinv_editing}
    else:
        out["pnp"] = {"source_path": "reconstruction" if inversion == "ddim" else "inversion",
                      "feature_fraction": 0.8, "attention_fraction": 0.5}
    return out


def _present(word: str, prompt: str) -> bool:
    """Whether the reference finds ``word`` in ``prompt``: an exact match of one of its space-separated words
    (``get_word_inds``: case and punctuation count)."""
    return word in prompt.split(" ")


@dataclass(frozen=True)
class Blend:
    """Local blend and reweight inputs of one P2P edit, and a note when they differ from the item's field."""

    source_words: str = ""
    target_words: str = ""
    reweight: str = ""
    threshold: float = 0.3
    note: str | None = None


def blend_settings(item: PieItem, reweight: bool = True) -> Blend:
    """Local blend as the reference runs ``blended_word`` (``LocalBlend`` with ``get_word_inds``).

    A word the reference does not find gets no map, so the mask is the other word's alone (the target's mask
    is the union with the source's); the reweight acts only on a target word it finds. When neither word is
    found its mask is empty and, from the blend's start, the target is the source: reproduced by blending on the
    source prompt's first word at threshold 1 (no normalised map value exceeds 1, so the mask stays empty).
    """
    if item.blended_words is None:
        return Blend()
    src, tgt = item.blended_words
    has_src, has_tgt = _present(src, item.source_prompt), _present(tgt, item.target_prompt)
    weight = f"{tgt}:2.0" if reweight and has_tgt else ""
    if has_src and has_tgt:
        return Blend(src, tgt, weight)
    if not has_src and not has_tgt:
        return Blend(item.source_prompt.split()[0], "", "", 1.0,
                     f"{item.image_id}: neither blended word {src!r} nor {tgt!r} is a word of its prompt: empty "
                     "blend mask, the edit becomes the source from the blend's start (as the reference)")
    missing = src if not has_src else tgt
    return Blend(src if has_src else "", tgt if has_tgt else "", weight,
                 note=f"{item.image_id}: blended word {missing!r} is not a word of its prompt: local blend on "
                      f"{tgt if has_tgt else src!r} alone (as the reference)")


def skip_reason(item: PieItem, inversion: str, engine: str) -> str | None:
    """Why ``item`` is not edited with this row (the reference's P2P runner cannot run it), or None."""
    if engine != "p2p" or item.blend_error is None:
        return None
    if INVERSIONS[inversion].p2p.get("blend_word_not_two") == "no blend":
        return None
    return f"{item.blend_error}: skipped for P2P"


def edit_prompt(item: PieItem, inversion: str, engine: str, settings: RunSettings,
                photo_size: tuple[int, int], prefix: str,
                object_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The API prompt that edits one PIE item with one method and saves the edit alone under ``prefix``.

    Inputs the protocol does not set are left to the nodes' defaults: filled from ``object_info`` (the server's
    ``/object_info``) when given, else left out of the prompt.
    """
    reason = skip_reason(item, inversion, engine)
    if reason:
        raise ValueError(reason)
    row = row_protocol(inversion, engine, settings)
    g = ApiGraph()
    ckpt = g.add("CheckpointLoaderSimple", _title="Checkpoint", ckpt_name=settings.checkpoint)
    model, clip, vae = ckpt, ckpt[1], ckpt[2]
    pixels = g.add("LoadImage", _title="Photo", image=item.relative_path)
    working = (settings.size, settings.size)
    if photo_size != working:
        pixels = g.add("ImageScale", _title="Resize", upscale_method="lanczos", width=working[0],
                       height=working[1], crop="center", image=pixels)
    latent = g.add("VAEEncode", _title="Encode photo", pixels=pixels, vae=vae)
    prompts: dict[str, Any] = {}

    def encoded(name: str) -> Any:
        """The source or the empty prompt's encoding, added to the graph where first used."""
        if name not in prompts:
            text = item.source_prompt if name == "source prompt" else ""
            prompts[name] = g.add("CLIPTextEncode", _title=name.capitalize(), text=text, clip=clip)
        return prompts[name]

    inverted_with = encoded(row["inverted_prompt"])
    edit_source = encoded(row["edit_source"])
    negative = encoded("empty prompt") if row["negative"] == "empty prompt" else None
    if engine == "p2p":
        p2p = row["p2p"]
        blend = blend_settings(item, reweight=p2p["reweight"] != "none") if item.blend_error is None else Blend()
        same_length = len(item.source_prompt.split(" ")) == len(item.target_prompt.split(" "))
        mode = "word swap" if p2p["mode"] != "refine" and same_length else "refine"
        control = g.add("P2PAttentionControl", _title="Prompt-to-Prompt", model=model, clip=clip,
                        source_text=item.source_prompt, target_text=item.target_prompt, mode=mode,
                        cross_replace=p2p["cross_replace"], self_replace=p2p["self_replace"],
                        blend_source_words=blend.source_words, blend_target_words=blend.target_words,
                        blend_threshold=blend.threshold, blend_start=p2p["blend_start"], reweight=blend.reweight,
                        proximal_guidance=p2p["proximal_guidance"], proximal_quantile=p2p["proximal_quantile"],
                        inversion_guidance=p2p["inversion_guidance"], blend_maps=p2p["blend_maps"])
        edit_model, target = control, control[2]
        if row["edit_source"] == "source prompt":
            edit_source = control[1]
    elif engine == "masactrl":
        edit_model = g.add("MasaCtrlMutualAttention", _title="MasaCtrl", model=model,
                           proximal_guidance=row["masactrl"]["proximal_guidance"])
        target = g.add("CLIPTextEncode", _title="Target prompt", text=item.target_prompt, clip=clip)
    else:
        pnp = row["pnp"]
        edit_model = g.add("PNPInjection", _title="Plug-and-Play", model=model,
                           feature_fraction=pnp["feature_fraction"], attention_fraction=pnp["attention_fraction"],
                           source_path=pnp["source_path"])
        target = g.add("CLIPTextEncode", _title="Target prompt", text=item.target_prompt, clip=clip)
        negative = g.add("CLIPTextEncode", _title="Negative", text=PNP_NEGATIVE, clip=clip)
    invert_inputs = dict(row["invert"])
    if "negative" in invert_inputs:
        invert_inputs["negative"] = encoded(invert_inputs["negative"])
    inverted = g.add("SPDInvInvert", _title=f"Inversion ({inversion})", model=model, source=inverted_with,
                     latent=latent, **invert_inputs)
    sampler_inputs: dict[str, Any] = {"model": edit_model, "inversion": inverted, "source": edit_source,
                                      "target": target, "cfg": settings.cfg,
                                      "source_guidance": row["source_guidance"]}
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
    """What a run did: edits made and skipped (already there), items left out (with the reason), failures,
    seconds per edit by method, edits made by each server, edits another worker saved first, edits retried
    because their server went away."""

    done: int = 0
    skipped: int = 0
    left_out: list[tuple[str, str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    by_server: dict[str, int] = field(default_factory=dict)
    made_elsewhere: int = 0
    retried: int = 0


@dataclass(frozen=True)
class Shard:
    """Worker ``index`` of ``count`` (``--shard index/count``): it edits every ``count``-th item from the
    ``index``-th, with every method."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def take(self, items: Sequence[PieItem]) -> list[PieItem]:
        """This worker's items: by position in the whole selection, not in what is left to do, so that a resumed
        worker takes the same items. Round robin rather than blocks: PIE-Bench's file is ordered by editing type,
        so blocks would give one worker all the style edits; by item rather than by (item, method) so that each
        worker runs every method, whose costs differ several-fold."""
        return list(items[self.index::self.count])


def edit_path(out: Path, method: str, image_id: str) -> Path:
    """Where an edit is saved: ``<out>/<method>/<image_id>.png``."""
    return out / method / f"{image_id}.png"


def method_settings(inversion: str, engine: str, settings: RunSettings) -> dict[str, Any]:
    """What ``<out>/<method>/settings.json`` records: the run's settings and the row's protocol."""
    return {"inversion": inversion, "engine": engine, **asdict(settings),
            "protocol": row_protocol(inversion, engine, settings)}


def _flat(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``, so that a changed setting is named alone."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def write_once(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists; True if this call created it.

    Written under a temporary name of its own and hard-linked into place, so that readers never see a partial
    file and, of several workers writing the same path at once, exactly one wins and none replaces another's
    file. Where hard links are not supported the file is renamed into place when absent (a narrow race remains).
    """
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    partial.write_bytes(data)
    try:
        os.link(partial, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        if path.exists():
            return False
        os.replace(partial, path)
        return True
    finally:
        partial.unlink(missing_ok=True)


def append_line(path: Path, line: str) -> None:
    """Append one line with a single ``write`` in append mode, so lines of concurrent workers do not interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8"))
    finally:
        os.close(fd)


def check_settings(out: Path, methods: Sequence[tuple[str, str]], settings: RunSettings) -> None:
    """Record each method folder's settings, or refuse to add edits made with other settings to it.

    A resumed run must not mix protocols in one folder: ``<out>/<method>/settings.json`` holds what its edits
    were made with (:func:`method_settings`). The record is created by :func:`write_once`, so of several workers
    starting at once one writes it and the others check theirs against it.
    """
    for inv, eng in methods:
        folder = out / method_name(inv, eng)
        record = folder / "settings.json"
        wanted = method_settings(inv, eng, settings)
        folder.mkdir(parents=True, exist_ok=True)
        if write_once(record, json.dumps(wanted, indent=1).encode("utf-8")):
            continue
        had = _flat(json.loads(record.read_text(encoding="utf-8")))
        changed = {k: (had.get(k), v) for k, v in _flat(wanted).items() if had.get(k) != v}
        if changed:
            what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"--out {out}: {folder.name} holds edits made with other settings ({what}); "
                             "give another --out, or delete that folder to redo it")


def check_servers(clients: Sequence[ComfyClient], probes: Sequence[tuple[PieItem, str, str]],
                  settings: RunSettings) -> dict[str, Any]:
    """The first server's ``/object_info``, once every server can run the edits (:meth:`ComfyClient.check`) and
    fills the nodes' unset inputs alike (the probes' prompts, one per method, built with each server's node
    defaults, are the same), so that which server makes an edit does not change it."""
    def prompt(item: PieItem, inv: str, eng: str, info: Mapping[str, Any] | None) -> dict[str, Any]:
        size = image_size(item.image_path) if item.image_path.is_file() else (settings.size, settings.size)
        return edit_prompt(item, inv, eng, settings, size, prefix="probe", object_info=info)

    nodes = {node["class_type"] for probe in probes for node in prompt(*probe, None).values()}
    infos = [client.check(nodes, settings.checkpoint, settings.precision) for client in clients]
    for probe in probes:
        first = prompt(*probe, infos[0])
        for client, info in zip(clients[1:], infos[1:], strict=True):
            other = prompt(*probe, info)
            for node_id, node in first.items():
                mine, theirs = node["inputs"], other[node_id]["inputs"]
                diff = {k: (mine.get(k), theirs.get(k)) for k in {**mine, **theirs} if mine.get(k) != theirs.get(k)}
                if diff:
                    what = ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in diff.items())
                    raise ComfyServerError(f"servers {clients[0].label} and {client.label} fill {node['class_type']} "
                                           f"differently ({what}): different versions of the pack or of ComfyUI; "
                                           "give servers that run the same ones")
    return infos[0]


def default_worker() -> str:
    """This process's name in ``<out>/runs/``: host and process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


def server_split(out: Path) -> dict[str, int]:
    """The edits in ``out`` by the server that made them, from every worker's ``<out>/runs/*.jsonl`` (an edit made
    again after its file was deleted counts once, for its last maker; an edit whose file is gone not at all)."""
    records = []
    for path in sorted((out / "runs").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the last line of a worker killed while writing it
    makers = {(r["method"], r["image_id"]): r["server"] for r in sorted(records, key=lambda r: r.get("finished", ""))
              if edit_path(out, r["method"], r["image_id"]).is_file()}
    return dict(sorted(Counter(makers.values()).items()))


def run_edits(clients: Sequence[ComfyClient], items: Sequence[PieItem], methods: Sequence[tuple[str, str]],
              settings: RunSettings, out: Path, log: Callable[[str], None] = print,
              timeout: float = 3600.0, shard: Shard | None = None, in_flight: int = 2,
              worker: str | None = None) -> RunReport:
    """Edit every item (this worker's share with ``shard``) with every method on the servers, skipping edits
    already saved; resumable after any interruption, and safe with several workers writing into one ``out``.

    Each edit is saved by :func:`write_once`: an interrupted run leaves no partial file and an edit another worker
    saved first is kept (an edit already there when its turn comes is not made again). A failed edit is logged
    (``<out>/failures.jsonl``) and the run goes on; an edit whose server went away is run on another
    (:func:`.servers.dispatch`). Each saved edit is recorded in ``<out>/runs/<worker>.jsonl`` (which server made
    it; :func:`server_split`) and its time in ``<out>/<method>/seconds.csv``. An item a row cannot run
    (:func:`skip_reason`) is left out and logged.
    """
    report = RunReport()
    worker = worker or default_worker()
    mine = shard.take(items) if shard else list(items)
    todo: list[Job] = []
    for item in mine:
        for inv, eng in methods:
            method = method_name(inv, eng)
            reason = skip_reason(item, inv, eng)
            if reason:
                report.left_out.append((method, item.image_id, reason))
                log(f"{method} {item.image_id}: left out: {reason}")
            elif not edit_path(out, method, item.image_id).is_file():
                todo.append(Job((method, item.image_id), (item, inv, eng)))
    report.skipped = len(mine) * len(methods) - len(todo) - len(report.left_out)
    if report.skipped:
        log(f"{report.skipped} edits already in {out}: skipped")
    if not todo:
        return report
    probes = list({job.key[0]: job.payload for job in todo}.values())
    object_info = check_servers(clients, probes, settings)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    noted: set[str] = set()
    finished = [0]
    started = time.monotonic()

    def progress(method: str, image_id: str, what: str) -> None:
        with lock:
            finished[0] += 1
            n = finished[0]
        left = (time.monotonic() - started) / n * (len(todo) - n)
        log(f"[{n}/{len(todo)}] {method} {image_id}: {what} (about {left / 60:.0f} min left)")

    def run_job(client: ComfyClient, job: Job) -> None:
        item, inv, eng = job.payload
        method = method_name(inv, eng)
        target = edit_path(out, method, item.image_id)
        if job.lost_on:
            with lock:
                report.retried += 1
        if target.is_file():
            with lock:
                report.made_elsewhere += 1
            progress(method, item.image_id, "made by another worker meanwhile")
            return
        note = blend_settings(item).note if eng == "p2p" and item.blend_error is None else None
        with lock:
            fresh = note is not None and item.image_id not in noted
            noted.add(item.image_id)
        if fresh:
            log(f"note: {note}")
        try:
            if not item.image_path.is_file():
                raise FileNotFoundError(f"{item.image_path} does not exist")
            photo = replace(item, relative_path=client.image_name(item.image_path, item.relative_path))
            prompt = edit_prompt(photo, inv, eng, settings, image_size(item.image_path),
                                 prefix=f"pie/{method}/{item.image_id}", object_info=object_info)
            edit = client.edit(prompt, timeout=timeout)
            target.parent.mkdir(parents=True, exist_ok=True)
            saved = write_once(target, edit.png)
        except ServerGone:
            raise
        except (ComfyServerError, OSError, ValueError) as e:
            with lock:
                report.failed.append((method, item.image_id, str(e)))
            append_line(out / "failures.jsonl", json.dumps({"method": method, "image_id": item.image_id,
                                                            "server": client.label, "error": str(e)}))
            progress(method, item.image_id, f"FAILED on {client.label}: {str(e).splitlines()[0]}")
            return
        if not saved:
            with lock:
                report.made_elsewhere += 1
            progress(method, item.image_id, "another worker saved it first (theirs is kept)")
            return
        with lock:
            report.done += 1
            report.seconds.setdefault(method, []).append(edit.seconds)
            report.by_server[client.label] = report.by_server.get(client.label, 0) + 1
        append_line(target.parent / "seconds.csv", f"{item.image_id},{edit.seconds:.3f}")
        append_line(out / "runs" / f"{worker}.jsonl", json.dumps({
            "method": method, "image_id": item.image_id, "server": client.label, "worker": worker,
            "shard": str(shard) if shard else None, "seconds": round(edit.seconds, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
        progress(method, item.image_id, f"{edit.seconds:.1f} s on {client.label}")

    dispatch(clients, todo, run_job, in_flight=in_flight, log=log)
    return report
