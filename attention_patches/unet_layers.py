"""The transformer layers of a loaded UNet, in forward order, with their resolution level.

Engines choose layers from the model's own structure (SPEC §4), not from a hard-coded SD1.5 list:
the level of a layer is how many times the latent was downsampled before it (SD1.5 at 512²: level 0 is
64×64, 1 is 32×32, 2 is 16×16, 3 is 8×8), so a rule such as "16×16 at 512²" becomes "level 2" and
carries over to other sizes and to SD2.x and SDXL. Duck-typed: this module never imports ComfyUI.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TransformerLayer:
    """One ``BasicTransformerBlock``: the key ComfyUI's attention patches use, and where it sits."""

    block: str
    """``"input"``, ``"middle"`` or ``"output"``."""
    block_id: int
    index: int
    """Depth inside its ``SpatialTransformer`` (ComfyUI's ``block_index``)."""
    order: int
    """Position among all transformer layers in forward order (0 = first encoder layer)."""
    level: int
    """Number of downsamplings applied to the latent before this layer."""
    self_attention: bool
    cross_attention: bool

    @property
    def key(self) -> tuple[str, int, int]:
        """``(block, id, index)``: the key of ``set_model_attn1_replace``/``attn2_replace``."""
        return (self.block, self.block_id, self.index)


def _contains(module: torch.nn.Module, class_word: str) -> bool:
    return any(class_word in type(m).__name__ for m in module.modules())


def _layers_of(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The ``BasicTransformerBlock``s of one UNet block, in order (a block holds at most one transformer)."""
    for m in module.modules():
        blocks = getattr(m, "transformer_blocks", None)
        if isinstance(blocks, torch.nn.ModuleList):
            return list(blocks)
    return []


def transformer_layers(unet: torch.nn.Module) -> list[TransformerLayer]:
    """All transformer layers of an openaimodel-style UNet (SD1.x, SD2.x, SDXL), in forward order.

    Raises ``ValueError`` for a model without ``input_blocks``/``output_blocks`` (DiT, MMDiT, flow
    transformers), whose attention layout the engines cannot address.
    """
    if not all(hasattr(unet, name) for name in ("input_blocks", "output_blocks")):
        raise ValueError(f"{type(unet).__name__} is not a UNet with input/output blocks; the attention engines "
                         "support SD1.x, SD2.x and SDXL-style UNets")
    found: list[TransformerLayer] = []

    def add(block: str, block_id: int, module: torch.nn.Module, level: int) -> None:
        for index, layer in enumerate(_layers_of(module)):
            found.append(TransformerLayer(
                block, block_id, index, len(found), level,
                self_attention=not getattr(layer, "disable_self_attn", False),
                cross_attention=getattr(layer, "attn2", None) is not None,
            ))

    level = 0
    for block_id, module in enumerate(unet.input_blocks):
        add("input", block_id, module, level)
        if _contains(module, "Downsample"):
            level += 1
    middle = getattr(unet, "middle_block", None)
    if middle is not None:
        add("middle", 0, middle, level)
    for block_id, module in enumerate(unet.output_blocks):
        add("output", block_id, module, level)
        if _contains(module, "Upsample"):
            level -= 1
    return found


def decoder_stages(unet: torch.nn.Module) -> list[list[int]]:
    """Output block ids grouped by resolution stage (a stage ends with the block that upsamples)."""
    stages: list[list[int]] = [[]]
    for block_id, module in enumerate(unet.output_blocks):
        stages[-1].append(block_id)
        if _contains(module, "Upsample"):
            stages.append([])
    return [s for s in stages if s]


def decoder_layer_at(layers: list[TransformerLayer], fraction: float) -> int:
    """Order of the decoder transformer layer ``fraction`` of the way through the decoder's layers, so that one
    rule picks comparable layers on every family (1/3: SD1.x and SD2.x 10 of 16, SDXL 46 of 70)."""
    decoder = [layer.order for layer in layers if layer.block == "output"]
    if not decoder:
        raise ValueError("model: no transformer layers in the decoder; the attention engines need an SD1.x, SD2.x "
                         "or SDXL-style UNet")
    return decoder[min(len(decoder) - 1, round(fraction * len(decoder)))]


def decoder_stage_at_level(unet: torch.nn.Module, level: int) -> int:
    """Index of the decoder stage working at resolution ``level`` (SD1.x: level 2 is stage 1, SDXL: stage 0)."""
    stages = decoder_stages(unet)
    stage = len(stages) - 1 - level
    if not 0 <= stage < len(stages):
        raise ValueError(f"{type(unet).__name__} has no decoder stage at 1/{8 * 2 ** level} of the image size")
    return stage


def resblock_output_path(unet: torch.nn.Module, stage: int, index: int) -> str:
    """Module path (inside the UNet) of the last layer of the residual branch of decoder stage ``stage``'s
    ``index``-th block's ResBlock: its output is the ResBlock's features before the skip connection is added.
    SD1.x, stage 1, index 1: ``output_blocks.4.0.out_layers.3`` (diffusers ``up_blocks[1].resnets[1]``)."""
    stages = decoder_stages(unet) if hasattr(unet, "output_blocks") else []
    if stage >= len(stages) or index >= len(stages[stage]):
        raise ValueError(f"{type(unet).__name__} has no decoder stage {stage} with a block {index}; Plug-and-Play "
                         "needs an SD1.x, SD2.x or SDXL-style UNet")
    block_id = stages[stage][index]
    resblock = unet.output_blocks[block_id][0]
    out_layers = getattr(resblock, "out_layers", None)
    if not isinstance(out_layers, torch.nn.Sequential):
        raise ValueError(f"output block {block_id} does not start with a ResBlock; Plug-and-Play needs an SD1.x, "
                         "SD2.x or SDXL-style UNet")
    return f"output_blocks.{block_id}.0.out_layers.{len(out_layers) - 1}"
