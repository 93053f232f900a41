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
from typing import Any

import torch

from .cache import SEED
from .flow import (
    FLUX2_CONTEXT,
    QWEN_IMAGE_CONTEXT,
    WAN_CONTEXT,
    chroma_model_path,
    flux2_model_path,
    flux_model_path,
    qwen_image_model_path,
    wan21_model_path,
)
from .latents import sd_like_latent


@dataclass(frozen=True)
class FlowTestModel:
    """One family's random diffusion-model file and the shapes of its inputs.

    ``model_path``: the file ComfyUI's diffusion-model loader detects, or ``None`` for a family whose detection fixes
    a width too large to test (Z-Image, HiDream): ``bypass`` then names the ComfyUI config class, the reduced
    ``unet_config`` to build it from and the weights' seed (``tests/host/pack_calls.bypassed_model``).
    ``context``/``tokens``: the text encoder's width and the stand-in prompt's length; ``extras``: the other
    per-prompt tensors by conditioning key and shape (Flux.1's CLIP-L ``pooled_output``, HiDream's Llama layers;
    shape ``None``: the key is there with ``None``, as ComfyUI's T5-only encoders give ``pooled_output``);
    ``guidance``: the distilled guidance a prompt carries (FluxGuidance), if any; ``channels``/``downscale``: latent
    channels and pixels per latent cell; ``frames``: 5-D latents; ``clip_frames``: the pixel frames of the test clip
    :meth:`photo` gives (video models; 1: one image)."""

    family: str
    model_path: Callable[[], Path] | None
    context: int
    tokens: int = 16
    extras: tuple[tuple[str, tuple[int, ...] | None], ...] = ()
    guidance: float | None = None
    channels: int = 16
    downscale: int = 8
    frames: bool = False
    bypass: tuple[str, dict[str, Any], int] | None = None
    clip_frames: int = 1

    def prompt(self, seed: int, guidance: float | None = None) -> list:
        """A stand-in CONDITIONING for prompt number ``seed`` (at ``guidance``, default the family's)."""
        gen = torch.Generator().manual_seed(seed)
        tokens = torch.randn(1, self.tokens, self.context, generator=gen)
        options: dict = {key: None if shape is None else torch.randn(*shape, generator=gen)
                         for key, shape in self.extras}
        if self.guidance is not None:
            options["guidance"] = self.guidance if guidance is None else guidance
        return [[tokens, options]]

    def photo(self, resolution: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """A ``resolution``² photo's LATENT: smooth, unit statistics, in the model's layout; for a video model the
        test clip of ``clip_frames`` frames (:meth:`clip`)."""
        if self.clip_frames > 1:
            return self.clip(resolution, self.clip_frames, seed)
        samples = sd_like_latent(resolution * 8 // self.downscale, seed=seed, channels=self.channels, scale=1.0)
        return {"samples": samples.unsqueeze(2) if self.frames else samples}

    def clip(self, resolution: int, frames: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """A ``frames``-frame ``resolution``² clip's LATENT ``[1, C, 1 + (frames - 1) // 4, h, w]`` (Wan's VAE keeps
        the first frame and packs four frames into each later latent frame): a smooth field drifting smoothly into
        another over time, unit statistics."""
        ends = sd_like_latent(resolution * 8 // self.downscale, batch=2, seed=seed, channels=self.channels, scale=1.0)
        t = torch.linspace(0, 1, 1 + (frames - 1) // 4).reshape(1, 1, -1, 1, 1)
        samples = ends[:1].unsqueeze(2) * (1 - t) + ends[1:].unsqueeze(2) * t
        return {"samples": samples / samples.std()}


Z_IMAGE = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=256, cap_feat_dim=2560, n_layers=2,
               n_refiner_layers=1, n_heads=2, n_kv_heads=2, qk_norm=True, axes_dims=[32, 48, 48],
               axes_lens=[1536, 512, 512], rope_theta=256.0, ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True,
               time_scale=1000.0, pad_tokens_multiple=32)
"""ComfyUI's detected Z-Image config (model_detection.py) at width 256, 2 layers, 1 refiner each."""
HIDREAM = dict(image_model="hidream", attention_head_dim=128, axes_dims_rope=[64, 32, 32],
               caption_channels=[4096, 4096], max_resolution=[128, 128], in_channels=16, llama_layers=[0, 10, 20, 31],
               num_attention_heads=1, num_routed_experts=4, num_activated_experts=2, num_layers=2,
               num_single_layers=2, out_channels=16, patch_size=2, text_emb_dim=2048)
"""ComfyUI's detected HiDream config (model_detection.py) at 2 + 2 blocks of one head."""

FLOW_TEST_MODELS: dict[str, FlowTestModel] = {
    "flux": FlowTestModel("Flux.1", flux_model_path, 4096, extras=(("pooled_output", (1, 768)),), guidance=3.5),
    "flux2": FlowTestModel("Flux.2", flux2_model_path, FLUX2_CONTEXT, channels=128, downscale=16),
    "chroma": FlowTestModel("Chroma", chroma_model_path, 4096, extras=(("pooled_output", None),)),
    "qwen-image": FlowTestModel("Qwen-Image", qwen_image_model_path, QWEN_IMAGE_CONTEXT, tokens=8, frames=True),
    "z-image": FlowTestModel("Z-Image", None, 2560, tokens=8, bypass=("ZImage", Z_IMAGE, SEED + 9)),
    "hidream": FlowTestModel("HiDream", None, 4096, tokens=8,
                             extras=(("conditioning_llama3", (1, 32, 8, 4096)), ("pooled_output", (1, 2048))),
                             bypass=("HiDream", HIDREAM, SEED + 10)),
    "wan": FlowTestModel("Wan", wan21_model_path, WAN_CONTEXT, tokens=512, frames=True, clip_frames=9),
}
"""By command-line name: Flux.1-dev (T5-XXL tokens, CLIP-L pooled, guidance 3.5), Flux.2 Klein (three Qwen3-4B
layers), Chroma (T5-XXL tokens, no pooled output), Qwen-Image (Qwen2.5-VL-7B, 5-D latents), Z-Image (Qwen3-4B's
width), HiDream (T5-XXL tokens, every Llama-3.1 layer, the pooled CLIP-L + CLIP-G), Wan 2.1 T2V (umT5-XXL's 512
padded tokens, a 9-frame clip)."""


@dataclass(frozen=True)
class InstructionEditor:
    """An instruction editor as the tests run it: the random test model of its architecture (a key of
    :data:`FLOW_TEST_MODELS`), its official template's CFG and distilled guidance. Its prompts carry the photo as a
    reference latent, as ComfyUI's ``ReferenceLatent`` (and ``TextEncodeQwenImageEdit``) attach it."""

    name: str
    model: str
    cfg: float
    guidance: float | None = None

    @property
    def test_model(self) -> FlowTestModel:
        return FLOW_TEST_MODELS[self.model]


INSTRUCTION_EDITORS: dict[str, InstructionEditor] = {
    "qwen-image-edit": InstructionEditor("Qwen-Image-Edit", "qwen-image", cfg=2.5),
    "flux-kontext": InstructionEditor("Flux Kontext", "flux", cfg=1.0, guidance=2.5),
    "flux2-edit": InstructionEditor("Flux.2 [klein] edit", "flux2", cfg=1.0),
}
"""By command-line name: Qwen-Image-Edit (Qwen-Image's transformer, CFG 2.5 as core's template), Flux Kontext dev
(Flux.1-dev's, CFG 1 with FluxGuidance 2.5) and Flux.2 [klein]'s reference edits (distilled Klein, CFG 1). Their text
encoders also read the photo (Qwen2.5-VL sees it); the stand-in encodings do not."""
