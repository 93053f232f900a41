"""The edit sampler's conditioning: each branch's prompt and its extras, stacked into one batch.

The source and target branches run in one UNet batch (``[source rows, target rows]``, the engines need both
in every call), so each side of CFG is one CONDITIONING entry whose tensors are stacked per row. Extras stay
with their branch:

* ``control`` (ControlNet, T2I-Adapter, chained ControlNets): a :class:`BranchControl` runs each branch's
  control and keeps its output on that branch's rows only, so a ControlNet on the target leaves the source
  reconstruction untouched. ``control_apply_to_uncond`` (the legacy apply node) also gives the control to
  the same branch's negative when that has none.
* per-prompt tensors beside the text encoding (:data:`ROW_EXTRAS`: the pooled vector, HiDream's Llama-3.1 layers)
  are stacked per row like the encoding itself;
* ``guidance`` (FluxGuidance) on a guidance-distilled model: each branch's rows get their own value, so the
  inversion's guidance can ride on the source (which retraces the inversion) and the edit's on the target.
* everything else (SDXL sizes, masks, areas, strength, hooks, …) must agree between the branches of one side:
  one entry cannot carry two values, and copying one branch's value to the other would silently change it.

SDXL's size conditioning defaults to the photo's pixel size (:func:`at_photo_size`), not ComfyUI's 768, for
the inversion and every branch alike, unless the prompt sets it (``CLIPTextEncodeSDXL``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import comfy.conds
import comfy.controlnet
import torch

from ..attention_patches.families import Family
from ..spdinv.branches import BranchLayout

Branch = tuple[str, list]
"""``(input name, CONDITIONING)``; the name goes into errors."""

ROW_EXTRAS = ("pooled_output", "conditioning_llama3")
"""Extras that encode the prompt itself (CLIP's pooled vector; HiDream's Llama-3.1 hidden states
``[B, 32, tokens, 4096]``): one per row, stacked as the text encoding is."""
_PER_BRANCH = {*ROW_EXTRAS, "control", "control_apply_to_uncond"}


class BranchControl(comfy.controlnet.ControlBase):
    """One control per branch (``None``: no control on that branch), applied in one batch.

    ComfyUI calls :meth:`get_control` with the whole batch of a UNet call (CFG chunks of ``[source rows,
    target rows]``). Each branch's control runs on that batch as it would alone (its hint broadcast to the
    rows), and its residuals are zeroed outside the branch's rows. A control thus costs the same rows as one
    on the whole batch would; the other branch gets exactly nothing added.
    """

    def __init__(self, controls: Sequence[Any | None]):
        super().__init__()
        self.controls = list(controls)

    def _each(self) -> list[Any]:
        return [c for c in self.controls if c is not None]

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        chunks = transformer_options.get("cond_or_uncond", [0] * batched_number)
        layout = BranchLayout.of_call(x_noisy.shape[0], chunks, "ControlNet on one branch")
        rows = (layout.source_rows(), layout.target_rows())
        merged: dict[str, list] | None = None
        for branch, control in enumerate(self.controls):
            if control is None:
                continue
            out = control.get_control(x_noisy, t, cond, batched_number, transformer_options)
            if out is None:
                continue
            keep = torch.zeros(x_noisy.shape[0], dtype=torch.bool)
            keep[rows[branch]] = True
            out = {k: [None if x is None else x * keep.to(x.device).view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
                       for x in v] for k, v in out.items()}
            merged = out if merged is None else _add(merged, out)
        return merged

    def pre_run(self, model, percent_to_timestep_function):
        for control in self._each():
            control.pre_run(model, percent_to_timestep_function)

    def cleanup(self):
        for control in self._each():
            control.cleanup()

    def get_models(self):
        return [m for control in self._each() for m in control.get_models()]

    def get_extra_hooks(self):
        return [h for control in self._each() for h in control.get_extra_hooks()]

    def inference_memory_requirements(self, dtype):
        return sum(control.inference_memory_requirements(dtype) for control in self._each())

    def copy(self):
        return BranchControl(self.controls)


def _add(a: dict[str, list], b: dict[str, list]) -> dict[str, list]:
    out = {}
    for key in a.keys() | b.keys():
        xs, ys = a.get(key, []), b.get(key, [])
        out[key] = [x if y is None else y if x is None else x + y
                    for x, y in zip(xs + [None] * (len(ys) - len(xs)), ys + [None] * (len(xs) - len(ys)), strict=True)]
    return out


def _entry(name: str, cond: list, rows: int) -> tuple[torch.Tensor, dict]:
    if not cond:
        raise ValueError(f"{name}: the conditioning is empty; connect a CLIPTextEncode output")
    if len(cond) != 1:
        raise ValueError(f"{name}: has {len(cond)} conditioning entries (combined or area conditioning); "
                         "the edit sampler needs one text encoding per prompt")
    tensor, meta = cond[0]
    if tensor.shape[0] not in (1, rows):
        raise ValueError(f"{name}: batch of {tensor.shape[0]} does not match the {rows} image(s) inverted")
    return tensor, meta


def _rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    return t.expand(rows, *t.shape[1:]) if t.shape[0] == 1 else t


def _same(a: Any, b: Any) -> bool:
    """Equal values: tensors by value, lists and tuples item by item (the reference latents of two prompts
    encoded with the same photo are two equal tensors), other objects by ``==``."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and bool(
            torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - objects without a usable ==: only identity counts
        return False


def _branch_guidance(branches: list[tuple[str, dict]], rows: int) -> dict:
    """The extras giving each branch's ``rows`` their own distilled guidance: none where every branch has the
    same (the shared extra then carries it), else ``guidance`` None (no model default over it) and the per-row
    values as the model's ``guidance`` cond, the way ComfyUI's samplers batch it."""
    values = [meta.get("guidance") for _, meta in branches]
    if all(v == values[0] for v in values):
        return {}
    if any(v is None for v in values):
        unset = ", ".join(name for (name, _), v in zip(branches, values, strict=True) if v is None)
        raise ValueError(f"{unset}: sets no guidance while the other branch does (FluxGuidance); put a FluxGuidance "
                         "on it too (a negative may also stay unconnected)")
    per_row = torch.tensor([float(v) for v in values for _ in range(rows)])
    return {"guidance": None, "model_conds": {"guidance": comfy.conds.CONDRegular(per_row)}}


def _shared_extras(branches: list[tuple[str, dict]], per_branch: set[str] = _PER_BRANCH) -> dict:
    """The extras that are not per branch; they must be the same on every branch."""
    keys = sorted({k for _, meta in branches for k in meta} - per_branch)
    out = {}
    for key in keys:
        (first_name, first), *rest = branches
        for name, meta in rest:
            if key not in first or key not in meta or not _same(first[key], meta[key]):
                if key == "reference_latents":
                    raise ValueError(f"{first_name}, {name}: the instruction editor's reference image differs "
                                     "between them (or only one has it); both branches must see the same photo: "
                                     "encode every prompt with the same image (TextEncodeQwenImageEdit's image, "
                                     "or ReferenceLatent with the photo's latent on each)")
                raise ValueError(f"{first_name}, {name}: the conditionings differ in '{key}'; the edit sampler "
                                 f"runs both branches in one batch, so '{key}' must be the same on both (set it "
                                 "the same way on both prompts, or remove it)")
        out[key] = first[key]
    return out


def stack_branches(branches: list[Branch], rows: int, control: BranchControl | None = None,
                   branch_guidance: bool = False) -> list:
    """One CONDITIONING whose batch holds each branch's prompt ``rows`` times, in order, with the shared
    extras and ``control`` (the branches' controls, see :func:`edit_conditioning`); with ``branch_guidance``
    (a guidance-distilled model) each branch keeps its own ``guidance``.

    Token lengths that differ are matched by repetition to their least common multiple, as ComfyUI batches
    conds.
    """
    entries = [_entry(name, cond, rows) for name, cond in branches]
    tensors = [_rows(t, rows) for t, _ in entries]
    length = math.lcm(*(t.shape[1] for t in tensors))
    metas = [(name, m) for (name, _), (_, m) in zip(branches, entries, strict=True)]
    own = _branch_guidance(metas, rows) if branch_guidance else {}
    meta = {**_shared_extras(metas, _PER_BRANCH | own.keys()), **own}
    names = ", ".join(n for n, _ in branches)
    for key in ROW_EXTRAS:
        extras = [m.get(key) for _, m in entries]
        if all(x is None for x in extras):
            if key == "pooled_output" and any(key in m for _, m in entries):
                meta[key] = None  # a T5-only encoder's (Chroma): ComfyUI 0.3.64's Flux models read the key
            continue
        if any(x is None for x in extras):
            raise ValueError(f"{names}: only some conditionings have '{key}'; encode every prompt with the same "
                             "text encoder")
        if len({tuple(x.shape[1:]) for x in extras}) > 1:
            shapes = ", ".join(str(list(x.shape)) for x in extras)
            raise ValueError(f"{names}: the prompts' '{key}' differ in shape ({shapes}), so they cannot run in one "
                             "batch; shorten the longer prompt (HiDream pads its Llama tokens to 128)")
        meta[key] = torch.cat([_rows(x, rows) for x in extras])
    if control is not None:
        meta["control"] = control
        meta["control_apply_to_uncond"] = False
    return [[torch.cat([t.repeat(1, length // t.shape[1], 1) for t in tensors]), meta]]


def at_photo_size(cond: list, latent: torch.Tensor, model: Any) -> list:
    """``cond`` with the photo's pixel size as its ``width``/``height`` where an entry sets none.

    SDXL tells the UNet the image size through ``y``; a plain ``CLIPTextEncode`` leaves it to ComfyUI's
    default of 768, so a 1024² photo would be inverted and edited as if it were 768². Entries that set a size
    (``CLIPTextEncodeSDXL``) keep theirs; other model families are returned unchanged.
    """
    if not Family.of(model).size_conditioning:
        return cond
    ratio = getattr(model.get_model_object("latent_format"), "spacial_downscale_ratio", 8)
    height, width = (int(n) * ratio for n in latent.shape[-2:])
    return [[t, meta if "width" in meta or "height" in meta else {**meta, "width": width, "height": height}]
            for t, meta in cond]


def edit_conditioning(source: list, target: list, negative: list | None, rows: int, guided_source: bool = False,
                      branch_guidance: bool = False) -> tuple[list, list]:
    """``(positive, negative)`` of the edit sampler: ``[source, target]`` and ``[source, negative]`` (the
    negative defaults to the source prompt, the paper's recipe), or ``[negative, negative]`` for a
    ``guided_source`` (the source branch guided against the negative too).

    A branch's control marked ``control_apply_to_uncond`` also acts on that branch's negative when the
    negative has none. When both sides carry the same controls they share one :class:`BranchControl`, so
    ComfyUI still batches cond and uncond into one UNet call. ``branch_guidance``: see :func:`stack_branches`.
    """
    negative = source if negative is None else negative
    source_uncond = "negative" if guided_source else "source"
    metas = {name: _entry(name, cond, rows)[1] for name, cond in
             (("source", source), ("target", target), ("negative", negative))}
    cond_controls = [metas["source"].get("control"), metas["target"].get("control")]
    uncond_controls = [
        metas[own].get("control") or (metas[pos].get("control") if metas[pos].get("control_apply_to_uncond") else None)
        for own, pos in ((source_uncond, "source"), ("negative", "target"))
    ]
    cond_control = BranchControl(cond_controls) if any(c is not None for c in cond_controls) else None
    if all(a is b for a, b in zip(cond_controls, uncond_controls, strict=True)):
        uncond_control = cond_control
    else:
        uncond_control = BranchControl(uncond_controls) if any(c is not None for c in uncond_controls) else None
    return (stack_branches([("source", source), ("target", target)], rows, cond_control, branch_guidance),
            stack_branches([(source_uncond, source if source_uncond == "source" else negative),
                            ("negative", negative)], rows, uncond_control, branch_guidance))
