"""SPDInvAttentionPreview: see what each token of both prompts attended to during a P2P edit."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..attention_patches.engine import RecordedMaps
from ..spdinv.attention_grid import MapRow, render_attention_grid

AttentionMaps = io.Custom("SPDINV_ATTENTION_MAPS")


class SPDInvAttentionPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPDInvAttentionPreview",
            display_name="SPDInv Attention Preview",
            category="SPDInv/preview",
            description="Per-token cross-attention maps of the source and target prompts from a Prompt-to-Prompt "
                        "edit (averaged over the cross-replace steps and the 16x16-equivalent layers; on Wan over "
                        "every block, a clip's frames stacked top to bottom), with the local-blend mask. Use it to "
                        "pick blend and reweight words.",
            inputs=[
                AttentionMaps.Input("attention", tooltip="The 'attention' output of the SPDInv Edit Sampler."),
                io.Int.Input("image_index", default=0, min=0, max=63,
                             tooltip="Which image of the batch to show."),
                io.Int.Input("panel_size", default=96, min=32, max=512, step=8, tooltip="Pixels per map."),
            ],
            outputs=[
                io.Image.Output(display_name="maps", tooltip="One row per prompt, one panel per token."),
                io.Mask.Output(display_name="blend_mask", tooltip="The local-blend mask of the last step at image "
                               "size (all zeros without local blend)."),
            ],
        )

    @classmethod
    def execute(cls, attention: RecordedMaps, image_index: int, panel_size: int) -> io.NodeOutput:
        if attention.maps is None:
            raise ValueError("attention: no cross-attention maps were recorded; the edit sampler's model must come "
                             "from SPDInv Prompt-to-Prompt")
        images = attention.maps.shape[0] // 2
        if image_index >= images:
            raise ValueError(f"image_index: the edit has {images} image(s); use 0..{images - 1}")
        rows = []
        for branch, (title, labels) in enumerate(zip(("source", "target"), attention.labels, strict=True)):
            first = attention.first_token
            maps = attention.maps[branch * images + image_index, :, :, first:first + len(labels)]
            rows.append(MapRow(f"{title}: {' '.join(labels)}", maps.permute(2, 0, 1).numpy(), labels))
        mask = attention.blend_mask
        # A clip's mask [frames, H, W] is shown as its maps are: the frames stacked along the height.
        latent_mask = None if mask is None else mask[image_index, 0].float().flatten(0, -2)
        grid = render_attention_grid(rows, panel_size, None if latent_mask is None else latent_mask.numpy())
        if latent_mask is None:
            h, w = attention.maps.shape[1:3]
            full = torch.zeros(1, h * 32, w * 32)
        else:
            full = F.interpolate(latent_mask[None, None], scale_factor=8, mode="nearest")[0]
        return io.NodeOutput(torch.from_numpy(grid).float().div(255.0).unsqueeze(0), full)
