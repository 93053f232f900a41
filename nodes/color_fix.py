"""SPDInvWaveletColorFix: put an edit's details back on the source photo's colours."""

from __future__ import annotations

from comfy_api.latest import io

from ..spdinv.color_fix import wavelet_color_fix


class SPDInvWaveletColorFix(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPDInvWaveletColorFix",
            display_name="SPDInv Wavelet Color Fix",
            category="SPDInv/postprocess",
            description="Wavelet colour fix (as in the Plug-and-Play reference): keep the edit's details and the "
                        "photo's colours and low frequencies. It improves background fidelity, but it also "
                        "suppresses colour edits (e.g. \"a red car\" from a blue car), so it is off by default in "
                        "the PnP workflow.",
            inputs=[
                io.Image.Input("edit", tooltip="The edited image, whose details (high frequencies) are kept."),
                io.Image.Input("source", tooltip="The original photo, whose colours (low frequencies) are kept. "
                               "Must have the edit's size; one image is used for every image of the edit batch."),
                io.Int.Input("levels", default=5, min=1, max=8,
                             tooltip="Wavelet levels (blur dilations 1, 2, 4, ...). More levels hand more of the "
                                     "broad structure to the edit and keep only the photo's broadest colours."),
            ],
            outputs=[io.Image.Output(display_name="fixed")],
        )

    @classmethod
    def execute(cls, edit, source, levels) -> io.NodeOutput:
        if edit.shape[1:3] != source.shape[1:3]:
            raise ValueError(f"source: the photo is {source.shape[2]}x{source.shape[1]} but the edit is "
                             f"{edit.shape[2]}x{edit.shape[1]}; resize the photo to the edit's size first")
        fixed = wavelet_color_fix(edit.movedim(-1, 1), source.movedim(-1, 1), int(levels))
        return io.NodeOutput(fixed.clamp(0.0, 1.0).movedim(1, -1))
