"""UNet calls that evaluate only some of their rows.

ComfyUI hands a ``model_function_wrapper`` the call's input rows and every per-row conditioning tensor
(text, SDXL's ``y``, ``c_concat``...). :func:`take_rows` slices those; :class:`OnlyItems` runs a call on the
rows of some batch items only, for the inversion's solvers, whose converged photos need no more evaluations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

ModelFunctionWrapper = Callable[[Callable[..., torch.Tensor], dict], torch.Tensor]


def take_rows(value: Any, keep: torch.Tensor, rows: int) -> Any:
    """``value`` with only the ``keep`` rows where it is per-row (a tensor of ``rows`` rows, or dicts and lists
    of those); anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value[keep.to(value.device)] if value.dim() > 0 and value.shape[0] == rows else value
    if isinstance(value, dict):
        return {k: take_rows(v, keep, rows) for k, v in value.items()}
    if isinstance(value, list):
        return [take_rows(v, keep, rows) for v in value]
    return value


def call_through(apply_model: Callable[..., torch.Tensor], args: dict, inner: ModelFunctionWrapper | None
                 ) -> torch.Tensor:
    """Run a wrapped call: through ``inner`` (a wrapper that was already on the model) or the model itself."""
    if inner is None:
        return apply_model(args["input"], args["timestep"], **args["c"])
    return inner(apply_model, args)


class OnlyItems:
    """``model_function_wrapper`` that evaluates only the rows of the batch items in ``items`` (a bool mask over
    the photos) and returns zeros (a finite stand-in the caller does not read) in the others.

    A call's rows are the photos, once per cond that ComfyUI batched into it. A call whose rows are not a
    multiple of the photos, or that carries a ControlNet (whose hint is matched to rows by position), runs whole.
    ``inner`` is a wrapper that was already on the model; it runs on the kept rows.
    """

    def __init__(self, items: torch.Tensor, inner: ModelFunctionWrapper | None = None):
        self.items = items.bool().cpu()
        self.inner = inner

    def __call__(self, apply_model: Callable[..., torch.Tensor], args: dict) -> torch.Tensor:
        x, c = args["input"], args["c"]
        rows, photos = x.shape[0], self.items.numel()
        if rows % photos or c.get("control") is not None:
            return call_through(apply_model, args, self.inner)
        keep = self.items.repeat(rows // photos).nonzero().flatten()
        sliced = {**args, "input": x[keep.to(x.device)], "timestep": take_rows(args["timestep"], keep, rows),
                  "c": {k: v if k == "transformer_options" else take_rows(v, keep, rows) for k, v in c.items()}}
        computed = call_through(apply_model, sliced, self.inner)
        out = computed.new_zeros((rows, *computed.shape[1:]))
        out[keep.to(out.device)] = computed
        return out
