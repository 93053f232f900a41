"""MMDiTMutualAttention: mutual attention on a flow transformer's joint attention (SD3.x, Flux.1, Flux.2, Chroma,
Qwen-Image, Z-Image, HiDream) and on Wan's self-attention over a clip's frames, on a MODEL clone."""

from __future__ import annotations

from comfy.patcher_extension import WrappersMP
from comfy_api.latest import io

from ..attention_patches.dit_blocks import block_from
from ..attention_patches.families import Family
from ..attention_patches.joint_attention import SHARES, JointMutualAttention
from ..attention_patches.registration import attach_engine
from .clip_tokens import named

AUTO_DEPTH = -1.0
"""``start_block`` value meaning: the family's documented default (``mmdit_start_block``)."""


class MMDiTMutualAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MMDiTMutualAttention",
            display_name="SPDInv MM-DiT Mutual Attention",
            category="SPDInv/engines",
            description="Mutual attention for flow transformers (SD3.x, Flux.1, Flux.2, Chroma, Qwen-Image, "
                        "Z-Image, HiDream; Wan video: the self-attention over all frames) with the "
                        "SPDInv Edit Sampler: from a "
                        "start step, in the blocks from a start depth on, the target's image tokens attend to the "
                        "source's image-token keys and values (or values only, as RF-Solver-Edit), next to its own "
                        "prompt's tokens: the new prompt changes the content, the photo's layout and appearance "
                        "stay. Installed on a clone through ComfyUI's pre-attention hook (or block patches where "
                        "the model has no hook; Z-Image and HiDream: one attention override for the model, "
                        "chained onto one already there; Wan: block patches that change only the "
                        "self-attention); other samplers see plain attention. To keep the edit inside a region, "
                        "connect SPDInv Preserve Outside Edit to the edit sampler.",
            inputs=[
                io.Model.Input("model", tooltip="The flow model the photo was inverted with (SD3.x, Flux.1, "
                               "Flux.2, Chroma, Qwen-Image, Z-Image, HiDream, Wan)."),
                io.Float.Input("start_step", default=0.1, min=0.0, max=1.0, step=0.02,
                               tooltip="Fraction of the steps before sharing starts (0.1). Later: the target "
                                       "forms more of its own layout first."),
                io.Float.Input("start_block", default=AUTO_DEPTH, min=AUTO_DEPTH, max=1.0, step=0.05,
                               tooltip="Relative depth (0 = first block, 1 = last) of the first block that "
                                       "shares, in the order joint blocks, then single-stream blocks. -1: the "
                                       "model's default (SD3.x, Qwen-Image and Z-Image: 0.5, the second half of "
                                       "the blocks; Flux.1: 0.65, the last 20 of its 38 single-stream blocks; "
                                       "Flux.2, Chroma and HiDream: 0.65; Wan: 0.5). Lower: more of the photo "
                                       "kept."),
                io.Combo.Input("share", options=list(SHARES), default=SHARES[0],
                               tooltip="keys and values: the target's image tokens see the source's (MasaCtrl, "
                                       "KV-Edit). values: only the values are the source's (RF-Solver-Edit): "
                                       "the target keeps its own attention pattern, a weaker hold."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The model with mutual attention (use it with "
                                     "the SPDInv Edit Sampler).")],
        )

    @classmethod
    def execute(cls, model, start_step, start_block, share) -> io.NodeOutput:
        family = Family.of(model)
        family.require(JointMutualAttention.node)
        blocks = named("model", family.sites, model.get_model_object("diffusion_model"))
        depth = family.default("mmdit_start_block") if start_block == AUTO_DEPTH else start_block
        engine = JointMutualAttention(start_step, block_from(depth, len(blocks)), share)
        return io.NodeOutput(attach_engine(model, engine, None, WrappersMP.DIFFUSION_MODEL))
