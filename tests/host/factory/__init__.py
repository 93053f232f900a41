"""Random-weight checkpoints (SD1.5, SD2.x, SDXL-class) and a LoRA for host tests (pure torch + safetensors).

Real SD1.5 weights cannot be downloaded in CI, but the pack's attention/ResBlock patches address
blocks by their real SD1.5 indices, so the test checkpoint must have the *exact* original LDM key
set and shapes (ComfyUI detects the model type from them):

* 686 UNet tensors under ``model.diffusion_model.``,
* 196 CLIP-L text tensors under ``cond_stage_model.transformer.text_model.`` plus ``position_ids``,
* 248 VAE tensors under ``first_stage_model.``,

about 1.07 B parameters, stored as fp16 (about 2 GiB). Weights are random but deterministic and
small enough (``N(0, (0.5/sqrt(fan_in))^2)``, norms one, biases zero) that UNet, CLIP and VAE
outputs stay finite. Files are built once into a cache folder outside the repository
(``$SPDINV_TEST_CACHE``, default ``~/.cache/spdinv-edit-tests/``) and reused afterwards.

The other families are built the same way from their original layouts (:class:`UNetLayout`): an SD2.x
768-v checkpoint (OpenCLIP-H text tower, detected as v-prediction) and an SDXL-class checkpoint in the
Segmind Vega layout (CLIP-L + CLIP-G), the smallest SDXL UNet ComfyUI recognises.

The same cache also holds a random CLIP ViT-L/14 vision tower (Hugging Face layout, as ComfyUI's
``CLIPVisionLoader`` loads it) and random ELITE mapper files in the published key layout.

What the tests use is re-exported here. Modules: ``shapes`` (key-shape building blocks, random init), ``cache`` (the
cache folder), ``sd`` (SD1.5, SD2.x, SDXL-class, the LoRA), ``flow`` (SD3-class, Flux-class, Flux.2, Chroma,
Qwen-Image, their VAEs), ``elite`` (CLIP vision, ELITE mappers), ``latents`` (:func:`sd_like_latent`), ``standins``
(the flow families' test models with stand-in prompt encodings: :data:`FLOW_TEST_MODELS`; the instruction
editors on them: :data:`INSTRUCTION_EDITORS`). Import it as
``spdinv_pack.tests.host.factory``; ``python -m tests.host.factory`` builds the SD1.5 checkpoint and the LoRA.
Nothing here imports ComfyUI; ``tests/host/test_harness.py`` checks the key set against it.
"""

from __future__ import annotations

from .cache import cache_dir
from .elite import clip_vision_vitl_path, elite_mapper_path
from .flow import (
    FLUX2_CONTEXT,
    FLUX_REDUCED_WIDTH,
    QWEN_IMAGE_CONTEXT,
    chroma_model_path,
    flux2_model_path,
    flux2_vae_path,
    flux_full_width_model_path,
    flux_model_path,
    flux_vae_path,
    qwen_image_model_path,
    sd3_checkpoint_path,
    wan21_model_path,
    wan21_vae_path,
)
from .latents import sd_like_latent
from .sd import (
    CHECKPOINT_NAME,
    CLIP_PREFIX,
    LORA_NAME,
    LORA_TARGETS,
    UNET_PREFIX,
    VAE_PREFIX,
    build_lora_state_dict,
    lora_path,
    sd2_checkpoint_path,
    sd15_checkpoint_path,
    sdxl_checkpoint_path,
)
from .standins import FLOW_TEST_MODELS, INSTRUCTION_EDITORS, FlowTestModel, InstructionEditor

__all__ = [
    "CHECKPOINT_NAME", "CLIP_PREFIX", "LORA_NAME", "LORA_TARGETS", "UNET_PREFIX", "VAE_PREFIX",
    "build_lora_state_dict", "cache_dir", "chroma_model_path", "clip_vision_vitl_path", "elite_mapper_path",
    "flux_full_width_model_path", "flux_model_path", "FLUX_REDUCED_WIDTH",
    "FLOW_TEST_MODELS", "FlowTestModel", "INSTRUCTION_EDITORS", "InstructionEditor",
    "FLUX2_CONTEXT", "flux2_model_path", "QWEN_IMAGE_CONTEXT",
    "qwen_image_model_path", "flux_vae_path", "flux2_vae_path", "wan21_model_path", "wan21_vae_path",
    "lora_path", "sd15_checkpoint_path", "sd2_checkpoint_path", "sd3_checkpoint_path",
    "sd_like_latent", "sdxl_checkpoint_path",
]
