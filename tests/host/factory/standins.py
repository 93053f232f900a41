"""The flow families' random test models with stand-in prompt encodings and photo latents in their real shapes.

The text encoders of these families are multi-billion-parameter models (T5-XXL 4.7 B, Qwen3-4B, Qwen2.5-VL-7B) that
cannot run here, so a prompt's CONDITIONING is random tokens of the encoder's real width, seeded by the prompt
(another seed is another prompt), with the pooled vector and distilled guidance where the family takes them. A
photo is a smooth latent with unit statistics in the family's latent layout (:func:`sd_like_latent`). Used by the
host tests and ``benchmarks/bench_inversion.py --family``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .flow import FLUX2_CONTEXT, QWEN_IMAGE_CONTEXT, flux2_model_path, flux_model_path, qwen_image_model_path
from .latents import sd_like_latent


@dataclass(frozen=True)
class FlowTestModel:
    """One family's random diffusion-model file and the shapes of its inputs.

    ``context``/``tokens``: the text encoder's width and the stand-in prompt's length; ``pooled``: the pooled
    vector's width (Flux.1's CLIP-L), if any; ``guidance``: the distilled guidance a prompt carries (FluxGuidance),
    if any; ``channels``/``downscale``: latent channels and pixels per latent cell; ``frames``: 5-D latents."""

    family: str
    model_path: Callable[[], Path]
    context: int
    tokens: int = 16
    pooled: int | None = None
    guidance: float | None = None
    channels: int = 16
    downscale: int = 8
    frames: bool = False

    def prompt(self, seed: int, guidance: float | None = None) -> list:
        """A stand-in CONDITIONING for prompt number ``seed`` (at ``guidance``, default the family's)."""
        gen = torch.Generator().manual_seed(seed)
        options: dict = {}
        tokens = torch.randn(1, self.tokens, self.context, generator=gen)
        if self.pooled is not None:
            options["pooled_output"] = torch.randn(1, self.pooled, generator=gen)
        if self.guidance is not None:
            options["guidance"] = self.guidance if guidance is None else guidance
        return [[tokens, options]]

    def photo(self, resolution: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """A ``resolution``² photo's LATENT: smooth, unit statistics, in the model's layout."""
        samples = sd_like_latent(resolution * 8 // self.downscale, seed=seed, channels=self.channels, scale=1.0)
        return {"samples": samples.unsqueeze(2) if self.frames else samples}


FLOW_TEST_MODELS: dict[str, FlowTestModel] = {
    "flux": FlowTestModel("Flux.1", flux_model_path, 4096, pooled=768, guidance=3.5),
    "flux2": FlowTestModel("Flux.2", flux2_model_path, FLUX2_CONTEXT, channels=128, downscale=16),
    "qwen-image": FlowTestModel("Qwen-Image", qwen_image_model_path, QWEN_IMAGE_CONTEXT, tokens=8, frames=True),
}
"""By command-line name: Flux.1-dev (T5-XXL tokens, CLIP-L pooled, guidance 3.5), Flux.2 Klein (three Qwen3-4B
layers), Qwen-Image (Qwen2.5-VL-7B, 5-D latents)."""
