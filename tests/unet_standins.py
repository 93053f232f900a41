"""Stand-ins for ComfyUI's openaimodel UNet structure (module names and nesting only), for core tests of
layer and block selection without ComfyUI. The real UNets are exercised by the host tests."""

from __future__ import annotations

from torch import nn


class Downsample(nn.Module):
    def forward(self, x):
        return x


class Upsample(nn.Module):
    def forward(self, x):
        return x


class Block(nn.Module):
    """A BasicTransformerBlock: self-attention ``attn1`` and cross-attention ``attn2``."""

    def __init__(self):
        super().__init__()
        self.attn1, self.attn2 = nn.Identity(), nn.Identity()


class SpatialTransformer(nn.Module):
    def __init__(self, depth: int = 1):
        super().__init__()
        self.transformer_blocks = nn.ModuleList(Block() for _ in range(depth))


class ResBlockLike(nn.Module):
    """The part of ComfyUI's ResBlock that PnP reads: ``out_layers`` (norm, SiLU, dropout, conv)."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.out_layers = nn.Sequential(nn.GroupNorm(1, c), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.out_layers(x)


def _block(depth: int, *extra: nn.Module) -> nn.Sequential:
    return nn.Sequential(ResBlockLike(), *([SpatialTransformer(depth)] if depth else []), *extra)


def openai_unet(depths: list[int], middle_depth: int, blocks_per_level: int = 2) -> nn.Module:
    """The block layout of ComfyUI's ``UNetModel`` for per-level transformer depths (0 = no attention).

    SD1.x: ``openai_unet([1, 1, 1, 0], 1)``; SDXL: ``openai_unet([0, 2, 10], 10)``.
    """
    unet = nn.Module()
    inputs = [nn.Sequential(nn.Identity())]
    for level, depth in enumerate(depths):
        inputs += [_block(depth) for _ in range(blocks_per_level)]
        if level < len(depths) - 1:
            inputs.append(nn.Sequential(Downsample()))
    outputs = []
    for level in reversed(range(len(depths))):
        for i in range(blocks_per_level + 1):
            up = (Upsample(),) if level > 0 and i == blocks_per_level else ()
            outputs.append(_block(depths[level], *up))
    unet.input_blocks = nn.ModuleList(inputs)
    unet.middle_block = _block(middle_depth)
    unet.output_blocks = nn.ModuleList(outputs)
    return unet


def sd15_like() -> nn.Module:
    return openai_unet([1, 1, 1, 0], 1)


def sdxl_like() -> nn.Module:
    return openai_unet([0, 2, 10], 10)
