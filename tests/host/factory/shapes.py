"""Building blocks of the key -> shape maps, and deterministic random weights for them (see the package doc)."""

from __future__ import annotations

import math

import torch

Shapes = dict[str, tuple[int, ...]]


def _conv(shapes: Shapes, name: str, c_out: int, c_in: int, k: int) -> None:
    shapes[f"{name}.weight"] = (c_out, c_in, k, k)
    shapes[f"{name}.bias"] = (c_out,)


def _linear(shapes: Shapes, name: str, c_out: int, c_in: int, bias: bool = True) -> None:
    shapes[f"{name}.weight"] = (c_out, c_in)
    if bias:
        shapes[f"{name}.bias"] = (c_out,)


def _norm(shapes: Shapes, name: str, c: int) -> None:
    shapes[f"{name}.weight"] = (c,)
    shapes[f"{name}.bias"] = (c,)


def _prefixed(*parts: tuple[str, Shapes]) -> Shapes:
    return {prefix + k: v for prefix, part in parts for k, v in part.items()}


# --------------------------------------------------------------------------------------------
# Deterministic random weights
# --------------------------------------------------------------------------------------------


def _init_tensor(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Small-scale init that keeps random UNet/CLIP/VAE activations finite (see module doc)."""
    if len(shape) == 1:
        return torch.zeros(shape) if key.endswith("bias") else torch.ones(shape)
    if "embedding" in key:
        return torch.randn(shape, generator=gen) * 0.02
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=gen) * (0.5 / math.sqrt(fan_in))


def _random(shapes: Shapes, gen: torch.Generator, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: _init_tensor(k, shape, gen).to(dtype) for k, shape in sorted(shapes.items())}
