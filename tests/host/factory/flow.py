"""Random flow models: an SD3-class checkpoint (depth-4 MM-DiT) and a Flux-dev-class diffusion model."""

from __future__ import annotations

from pathlib import Path

import torch

from .cache import FORMAT_VERSION, SEED, _cached
from .sd import UNET_PREFIX, VAE_PREFIX, clip_text_shapes, vae_shapes
from .shapes import Shapes, _conv, _linear, _prefixed, _random

SD3_CHECKPOINT_NAME = f"spdinv-test-sd3-mmdit4-random-v{FORMAT_VERSION}.safetensors"
FLUX_MODEL_NAME = f"spdinv-test-flux-dev-d2s4-random-v{FORMAT_VERSION}.safetensors"


def mmdit_shapes(depth: int, pos_embed_max: int = 64, context_in: int = 4096, adm_in: int = 2048) -> Shapes:
    """SD3's MM-DiT (``comfy/ldm/modules/diffusionmodules/mmdit.py``) keys without prefix: hidden size 64 ×
    ``depth`` (ComfyUI reads the depth from it), patch 2, 16 latent channels; the last block's context stream
    is pre-only (no output projection or MLP)."""
    hidden, patch, channels = 64 * depth, 2, 16
    s: Shapes = {"pos_embed": (1, pos_embed_max * pos_embed_max, hidden)}
    _conv(s, "x_embedder.proj", hidden, channels, patch)
    _linear(s, "t_embedder.mlp.0", hidden, 256)
    _linear(s, "t_embedder.mlp.2", hidden, hidden)
    _linear(s, "y_embedder.mlp.0", hidden, adm_in)
    _linear(s, "y_embedder.mlp.2", hidden, hidden)
    _linear(s, "context_embedder", hidden, context_in)
    for i in range(depth):
        for stream in ("context_block", "x_block"):
            p = f"joint_blocks.{i}.{stream}"
            pre_only = stream == "context_block" and i == depth - 1
            _linear(s, f"{p}.attn.qkv", 3 * hidden, hidden)
            _linear(s, f"{p}.adaLN_modulation.1", (2 if pre_only else 6) * hidden, hidden)
            if not pre_only:
                _linear(s, f"{p}.attn.proj", hidden, hidden)
                _linear(s, f"{p}.mlp.fc1", 4 * hidden, hidden)
                _linear(s, f"{p}.mlp.fc2", hidden, 4 * hidden)
    _linear(s, "final_layer.linear", patch * patch * channels, hidden)
    _linear(s, "final_layer.adaLN_modulation.1", 2 * hidden, hidden)
    return s


def flux_shapes(hidden: int = 256, double: int = 2, single: int = 4) -> Shapes:
    """Flux-dev's diffusion model (``comfy/ldm/flux``; a ``diffusion_models`` file, no prefix): heads of 128
    (ComfyUI divides the hidden size by the rotary axes' 16 + 56 + 56), ``double`` double-stream and ``single``
    single-stream blocks, the distilled-guidance embedder, 4096-d text and 768-d pooled inputs."""
    head, mlp = 128, 4 * hidden
    s: Shapes = {}
    _linear(s, "img_in", hidden, 64)
    for name, c_in in (("time_in", 256), ("vector_in", 768), ("guidance_in", 256)):
        _linear(s, f"{name}.in_layer", hidden, c_in)
        _linear(s, f"{name}.out_layer", hidden, hidden)
    _linear(s, "txt_in", hidden, 4096)
    for i in range(double):
        for stream in ("img", "txt"):
            p = f"double_blocks.{i}.{stream}"
            _linear(s, f"{p}_mod.lin", 6 * hidden, hidden)
            _linear(s, f"{p}_attn.qkv", 3 * hidden, hidden)
            s[f"{p}_attn.norm.query_norm.scale"] = (head,)
            s[f"{p}_attn.norm.key_norm.scale"] = (head,)
            _linear(s, f"{p}_attn.proj", hidden, hidden)
            _linear(s, f"{p}_mlp.0", mlp, hidden)
            _linear(s, f"{p}_mlp.2", hidden, mlp)
    for i in range(single):
        p = f"single_blocks.{i}"
        _linear(s, f"{p}.linear1", 3 * hidden + mlp, hidden)
        _linear(s, f"{p}.linear2", hidden, hidden + mlp)
        s[f"{p}.norm.query_norm.scale"] = (head,)
        s[f"{p}.norm.key_norm.scale"] = (head,)
        _linear(s, f"{p}.modulation.lin", 3 * hidden, hidden)
    _linear(s, "final_layer.linear", 64, hidden)
    _linear(s, "final_layer.adaLN_modulation.1", 2 * hidden, hidden)
    return s


SD3_DEPTH = 4
SD3_CLIP_L_PREFIX = "text_encoders.clip_l.transformer.text_model."


def sd3_shapes() -> Shapes:
    """SD3-class checkpoint (Stability's single-file layout): a depth-4 MM-DiT, CLIP-L as its only text encoder
    (ComfyUI pads the missing CLIP-G and T5 with zeros) and the 16-channel VAE; about 0.22 B parameters."""
    return _prefixed((UNET_PREFIX, mmdit_shapes(SD3_DEPTH)), (SD3_CLIP_L_PREFIX, clip_text_shapes()),
                     (VAE_PREFIX, vae_shapes(z=16, quant_convs=False)))


def build_flux_state_dict(seed: int = SEED + 6, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """All tensors of the Flux-dev-class test diffusion model (:func:`flux_shapes`), deterministic random values."""
    return _random(flux_shapes(), torch.Generator().manual_seed(seed), dtype)


def build_sd3_state_dict(seed: int = SEED + 5, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """All tensors of the SD3-class test checkpoint (:func:`sd3_shapes`), deterministic random values."""
    return _random(sd3_shapes(), torch.Generator().manual_seed(seed), dtype)


def sd3_checkpoint_path() -> Path:
    """Path of the cached random SD3-class checkpoint (depth-4 MM-DiT, CLIP-L, 16-channel VAE; about 0.4 GiB)."""
    meta = {"spdinv_test": "random-weight SD3-class (depth-4 MM-DiT) checkpoint, not a real model",
            "seed": str(SEED + 5)}
    return _cached(SD3_CHECKPOINT_NAME, build_sd3_state_dict, meta)


def flux_model_path() -> Path:
    """Path of the cached random Flux-dev-class diffusion model (2 double, 4 single blocks; a few MiB)."""
    meta = {"spdinv_test": "random-weight Flux-dev-class diffusion model, not a real model", "seed": str(SEED + 6)}
    return _cached(FLUX_MODEL_NAME, build_flux_state_dict, meta)
