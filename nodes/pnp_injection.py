"""PNPInjection: Plug-and-Play feature and self-attention injection on a MODEL clone."""

from __future__ import annotations

from comfy.ldm.modules.attention import optimized_attention
from comfy.patcher_extension import WrappersMP
from comfy_api.latest import io

from ..attention_patches.families import Family
from ..attention_patches.plug_and_play import PlugAndPlay, pnp_sites
from ..attention_patches.registration import attach_engine
from ..spdinv.guidance import EditRecipe
from .clip_tokens import named

SOURCE_PATHS = ("inversion", "reconstruction")


class PNPInjection(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PNPInjection",
            display_name="SPDInv Plug-and-Play",
            category="SPDInv/engines",
            description="Plug-and-Play for the SPDInv Edit Sampler: the source branch replays the stored "
                        "inversion (give the sampler the EMPTY prompt as source) and the target takes its "
                        "decoder residual features and self-attention queries/keys, keeping the photo's "
                        "structure under a new prompt. Negative for the target as the reference: 'ugly, blurry, "
                        "black, low res, unrealistic'.",
            inputs=[
                io.Model.Input("model", tooltip="The model the photo was inverted with."),
                io.Float.Input("feature_fraction", default=0.8, min=0.0, max=1.0, step=0.05,
                               tooltip="Fraction of the steps (from the start) in which the target takes the "
                                       "source's residual features at the reference's decoder block (0.8). "
                                       "Lower it if the edit is too weak."),
                io.Float.Input("attention_fraction", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Fraction of the steps in which the target takes the source's self-attention "
                                       "queries and keys in the decoder (0.5). Raise it to keep more structure."),
                io.Combo.Input("source_path", options=list(SOURCE_PATHS), default="inversion", optional=True,
                               tooltip="Which latents the source branch replays. inversion: the stored inversion "
                                       "(SPDInv + PnP, DirectInversion + PnP). reconstruction: the DDIM "
                                       "reconstruction from the inversion's noise with the prompt it was inverted "
                                       "with (PnPInversion's DDIM + PnP); costs one more pass of the model."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The model with PnP injection (use it with the "
                                     "SPDInv Edit Sampler; other samplers see the plain model).")],
        )

    @classmethod
    def execute(cls, model, feature_fraction, attention_fraction, source_path="inversion") -> io.NodeOutput:
        if source_path not in SOURCE_PATHS:
            raise ValueError(f"source_path must be one of {SOURCE_PATHS}, got {source_path!r}")
        family = Family.of(model)
        family.require(PlugAndPlay.node)
        path, layers = named("model", pnp_sites, family, model.get_model_object("diffusion_model"))
        recipe = EditRecipe(source_cfg=1.0, source_from_inversion=True,
                            source_from_reconstruction=source_path == "reconstruction")
        engine = PlugAndPlay(path, feature_fraction, attention_fraction, layers, recipe=recipe)
        return io.NodeOutput(attach_engine(model, engine, optimized_attention, WrappersMP.DIFFUSION_MODEL))
