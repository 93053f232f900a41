"""SPDInvResidualPlot: look at the per-step fixed-point residual instead of reading numbers."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..spdinv.plot import PALETTE, Series, render_residual_plot
from .inversion_type import Inversion


def _series(payload, color) -> Series:
    r = payload.result
    s = r.settings
    label = payload.method if s.method == "ddim" else f"spdinv/{s.solver}"
    if s.method != "ddim" and s.dci_rate:
        label += f" + DCI {s.dci_rate:g}"
    label += f" ({r.steps_under_delta()}/{r.steps} under delta, {int(r.forwards.sum())} fwd)"
    # Per-step arrays are stored along the sampling grid; plot in inversion order (low sigma first).
    worst = r.residual.max(dim=1).values.flip(0).numpy()
    predicted = None if r.predicted is None else r.predicted.any(dim=1).flip(0).numpy()
    return Series(label, worst, r.iterations.flip(0).numpy(), color, predicted)


class SPDInvResidualPlot(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPDInvResidualPlot",
            display_name="SPDInv Residual Plot",
            category="SPDInv/preview",
            description="Plot the per-step fixed-point residual (log scale) and solver iterations of one or two "
                        "inversions, with the threshold delta, e.g. SPDInv against plain DDIM inversion.",
            inputs=[
                Inversion.Input("inversion", tooltip="An inversion from SPDInv Invert."),
                Inversion.Input("compare", optional=True, tooltip="A second inversion to draw on the same axes "
                                "(e.g. method ddim)."),
            ],
            outputs=[io.Image.Output(display_name="plot")],
        )

    @classmethod
    def execute(cls, inversion, compare=None) -> io.NodeOutput:
        payloads = [inversion] + ([compare] if compare is not None else [])
        series = [_series(p, PALETTE[i]) for i, p in enumerate(payloads)]
        image = render_residual_plot(series, inversion.result.settings.delta)
        return io.NodeOutput(torch.from_numpy(image).float().div(255.0).unsqueeze(0))
