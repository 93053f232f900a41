"""The edit's UNet calls without the source branch's unconditional rows.

The edit sampler gives the source branch its own prompt as negative (it runs at CFG 1), so in a UNet call
that carries both CFG chunks the unconditional chunk's source rows would repeat the conditional chunk's source
rows exactly: same latent, same prompt, same extras, same attention. :class:`SharedSourceRows` (ComfyUI's
``model_function_wrapper``, set for the edit's own calls only) leaves them out of the call, marks the call's
run (``shared_source``) so the engines read the conditional chunk's source rows in their place, and copies
those rows' predictions back, so ComfyUI's CFG gets the batch it sent. An edit step costs 3 rows per image
instead of 4.

Calls with one chunk (ComfyUI runs cond and uncond apart when memory is short) keep every row, and so does a
model carrying another node's patches or wrappers (an IP-Adapter, attention couple...), which may split rows
by ``cond_or_uncond`` themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..attention_patches.registration import WRAPPER_KEY, EnginePatch
from ..attention_patches.run import RUN_KEY, EditRun
from ..spdinv.branches import COND, BranchLayout
from .row_selection import take_rows


def can_share_source(model_options: Mapping[str, Any]) -> bool:
    """Whether the edit's calls may leave out the source's unconditional rows: nothing but this pack's own
    engine patches and wrapper is on the model."""
    if model_options.get("model_function_wrapper") is not None:
        return False
    options = model_options.get("transformer_options", {})
    if any(not isinstance(p, EnginePatch) for patches in options.get("patches", {}).values() for p in patches):
        return False
    for patches in options.get("patches_replace", {}).values():
        if any(not isinstance(p, EnginePatch) or p.inner is not None for p in patches.values()):
            return False
    for by_key in options.get("wrappers", {}).values():
        if any(fns for key, fns in by_key.items() if key != WRAPPER_KEY):
            return False
    return True


class SharedSourceRows:
    """``model_function_wrapper(apply_model, args)`` that runs a two-chunk call without the unconditional
    chunks' source rows (see the module docstring)."""

    def __call__(self, apply_model: Callable[..., torch.Tensor], args: dict) -> torch.Tensor:
        x, t, c, chunks = args["input"], args["timestep"], args["c"], args["cond_or_uncond"]
        if COND not in chunks or all(k == COND for k in chunks):
            return apply_model(x, t, **c)
        rows = x.shape[0]
        full = BranchLayout.of_call(rows, chunks, "the edit sampler")
        source = torch.arange(full.images) + full.cond_chunks()[0].start
        kept = [torch.arange(full.chunk(i).start, full.chunk(i).stop) if kind == COND
                else torch.arange(full.chunk(i).start + full.images, full.chunk(i).stop)
                for i, kind in enumerate(full.chunks)]
        keep = torch.cat(kept)
        call = {k: take_rows(v, keep, rows) for k, v in c.items() if k != "transformer_options"}
        options = dict(c.get("transformer_options", {}))
        run = EditRun.of(options)
        if run is not None:
            options[RUN_KEY] = run.for_call(shared_source=True)
        call["transformer_options"] = options
        computed = apply_model(x[keep.to(x.device)], take_rows(t, keep, rows), **call)
        out = computed.new_empty((rows, *computed.shape[1:]))
        out[keep.to(out.device)] = computed
        for i, kind in enumerate(full.chunks):
            if kind != COND:
                start = full.chunk(i).start
                out[start:start + full.images] = out[source.to(out.device)]
        return out
