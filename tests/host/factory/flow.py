"""Random flow models: an SD3-class checkpoint (depth-4 MM-DiT), Flux-dev-class diffusion models (a reduced-width
one and a full-width one of reduced depth, for ComfyUI versions that fix Flux's width), a Flux.2-Klein-class, a
Chroma (full width, reduced depth) and a one-block Qwen-Image diffusion model, and stand-alone VAE files in each
family's layout (Flux.1's 16-channel, Flux.2's 32-channel batch-normed and Qwen-Image's Wan 2.1 VAE) as
``VAELoader`` loads them."""

from __future__ import annotations

from pathlib import Path

import torch

from .cache import FORMAT_VERSION, SEED, _cached
from .sd import UNET_PREFIX, VAE_PREFIX, clip_text_shapes, vae_shapes
from .shapes import Shapes, _conv, _linear, _prefixed, _random

SD3_CHECKPOINT_NAME = f"spdinv-test-sd3-mmdit4-random-v{FORMAT_VERSION}.safetensors"
FLUX_MODEL_NAME = f"spdinv-test-flux-dev-d2s4-random-v{FORMAT_VERSION}.safetensors"
FLUX_FULL_WIDTH_MODEL_NAME = f"spdinv-test-flux-dev-w3072-d1s2-random-v{FORMAT_VERSION}.safetensors"
CHROMA_MODEL_NAME = f"spdinv-test-chroma-d1s1-random-v{FORMAT_VERSION}.safetensors"
FLUX_WIDTH = 3072
"""Flux.1's (and Chroma's) hidden size: 24 heads of 128. ComfyUI 0.3.64 fixes it for Flux, every version for Chroma."""
FLUX_REDUCED_WIDTH = 256
"""The hidden size of the fast reduced-width Flux test model (ComfyUI 0.33 reads Flux's width from the weights)."""
FLUX_FULL_WIDTH_DEPTH = (1, 2)
"""Double- and single-stream blocks of the full-width Flux test model: the fewest with a block before and one after
the default start depth of mutual attention (0.65 of 3 blocks: the second single-stream block)."""
CHROMA_DEPTH = (1, 1)
"""Double- and single-stream blocks of the Chroma test model (its distilled-guidance approximator alone has
0.28 B parameters)."""
FLUX2_MODEL_NAME = f"spdinv-test-flux2-klein-d2s2-random-v{FORMAT_VERSION}.safetensors"
QWEN_IMAGE_MODEL_NAME = f"spdinv-test-qwen-image-b1-random-v{FORMAT_VERSION}.safetensors"
WAN21_MODEL_NAME = f"spdinv-test-wan21-t2v-w128-d2-random-v{FORMAT_VERSION}.safetensors"
WAN_CONTEXT = 4096
"""Wan's text width: umT5-XXL's hidden size (ComfyUI pads a prompt to 512 tokens)."""
WAN_TEST_WIDTH, WAN_TEST_DEPTH = 128, 2
"""The Wan test model's width (one head of 128: ComfyUI reads the heads as width / 128) and blocks."""
FLUX_VAE_NAME = f"spdinv-test-flux-vae-random-v{FORMAT_VERSION}.safetensors"
FLUX2_VAE_NAME = f"spdinv-test-flux2-vae-random-v{FORMAT_VERSION}.safetensors"
WAN21_VAE_NAME = f"spdinv-test-wan21-vae-random-v{FORMAT_VERSION}.safetensors"
QWEN_IMAGE_CONTEXT = 3584
"""Qwen-Image's text width: Qwen2.5-VL-7B's last hidden layer."""
FLUX2_CONTEXT = 7680
"""Flux.2 Klein 4B's text width: three stacked Qwen3-4B hidden layers of 2560."""


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


def _flux_blocks(s: Shapes, hidden: int, double: int, single: int, modulated: bool) -> None:
    """Flux's double- and single-stream blocks (``comfy/ldm/flux/layers.py``): heads of 128, MLP ratio 4, QK RMS
    norms; ``modulated``: each block has its own modulation (Flux), else they all come from outside (Chroma)."""
    head, mlp = 128, 4 * hidden
    for i in range(double):
        for stream in ("img", "txt"):
            p = f"double_blocks.{i}.{stream}"
            if modulated:
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
        if modulated:
            _linear(s, f"{p}.modulation.lin", 3 * hidden, hidden)


def flux_shapes(hidden: int = FLUX_REDUCED_WIDTH, double: int = 2, single: int = 4) -> Shapes:
    """Flux-dev's diffusion model (``comfy/ldm/flux``; a ``diffusion_models`` file, no prefix): heads of 128
    (ComfyUI divides the hidden size by the rotary axes' 16 + 56 + 56), ``double`` double-stream and ``single``
    single-stream blocks, the distilled-guidance embedder, 4096-d text and 768-d pooled inputs."""
    s: Shapes = {}
    _linear(s, "img_in", hidden, 64)
    for name, c_in in (("time_in", 256), ("vector_in", 768), ("guidance_in", 256)):
        _linear(s, f"{name}.in_layer", hidden, c_in)
        _linear(s, f"{name}.out_layer", hidden, hidden)
    _linear(s, "txt_in", hidden, 4096)
    _flux_blocks(s, hidden, double, single, modulated=True)
    _linear(s, "final_layer.linear", 64, hidden)
    _linear(s, "final_layer.adaLN_modulation.1", 2 * hidden, hidden)
    return s


def chroma_shapes(double: int = 1, single: int = 1) -> Shapes:
    """Chroma's diffusion model (``comfy/ldm/chroma``, detected by its distilled-guidance approximator): Flux's
    double- and single-stream blocks without per-block modulation, their modulations all coming from the
    approximator (64 in, five residual MLP layers of 5120, out 3072: ComfyUI fixes these, and with them the width
    3072), 4096-d text input, no pooled or guidance input, 64 inputs (16 latent channels, patch 2). RMS norms keep
    the original files' ``.scale`` names (ComfyUI 0.33 renames them)."""
    hidden, approx = FLUX_WIDTH, 5120
    s: Shapes = {}
    _linear(s, "img_in", hidden, 64)
    _linear(s, "txt_in", hidden, 4096)
    g = "distilled_guidance_layer"
    _linear(s, f"{g}.in_proj", approx, 64)
    for i in range(5):
        _linear(s, f"{g}.layers.{i}.in_layer", approx, approx)
        _linear(s, f"{g}.layers.{i}.out_layer", approx, approx)
        s[f"{g}.norms.{i}.scale"] = (approx,)
    _linear(s, f"{g}.out_proj", hidden, approx)
    _flux_blocks(s, hidden, double, single, modulated=False)
    _linear(s, "final_layer.linear", 64, hidden)
    return s


def flux2_shapes(hidden: int = 128, double: int = 2, single: int = 2, context: int = FLUX2_CONTEXT) -> Shapes:
    """Flux.2's diffusion model (``comfy/ldm/flux`` with ``image_model="flux2"``, detected by its shared
    modulation layers): heads of 128 (four rotary axes of 32), 128 latent channels at patch 1, bias-free layers,
    SiLU-gated MLPs of 3 × hidden, no pooled or guidance input (Klein), ``double`` double- and ``single``
    single-stream blocks."""
    head, mlp = 128, 3 * hidden
    s: Shapes = {}
    for name, out, c_in in (("img_in", hidden, 128), ("time_in.in_layer", hidden, 256),
                            ("time_in.out_layer", hidden, hidden), ("txt_in", hidden, context)):
        s[f"{name}.weight"] = (out, c_in)
    for i in range(double):
        for stream in ("img", "txt"):
            p = f"double_blocks.{i}.{stream}"
            s[f"{p}_attn.qkv.weight"] = (3 * hidden, hidden)
            s[f"{p}_attn.norm.query_norm.weight"] = (head,)
            s[f"{p}_attn.norm.key_norm.weight"] = (head,)
            s[f"{p}_attn.proj.weight"] = (hidden, hidden)
            s[f"{p}_mlp.0.weight"] = (2 * mlp, hidden)
            s[f"{p}_mlp.2.weight"] = (hidden, mlp)
    for i in range(single):
        p = f"single_blocks.{i}"
        s[f"{p}.linear1.weight"] = (3 * hidden + 2 * mlp, hidden)
        s[f"{p}.linear2.weight"] = (hidden, hidden + mlp)
        s[f"{p}.norm.query_norm.weight"] = (head,)
        s[f"{p}.norm.key_norm.weight"] = (head,)
    s["final_layer.linear.weight"] = (128, hidden)
    s["final_layer.adaLN_modulation.1.weight"] = (2 * hidden, hidden)
    for stream in ("img", "txt"):
        s[f"double_stream_modulation_{stream}.lin.weight"] = (6 * hidden, hidden)
    s["single_stream_modulation.lin.weight"] = (3 * hidden, hidden)
    return s


def qwen_image_shapes(blocks: int = 1) -> Shapes:
    """Qwen-Image's diffusion model (``comfy/ldm/qwen_image``, detected by ``txt_norm``): ComfyUI fixes its width
    (24 heads of 128) and text width (3584) and reads only the block count from the keys; 64 inputs (16 latent
    channels, patch 2), about 0.38 B parameters a block."""
    width, heads_dim, mlp = 3072, 128, 4 * 3072
    s: Shapes = {"txt_norm.weight": (QWEN_IMAGE_CONTEXT,)}
    _linear(s, "time_text_embed.timestep_embedder.linear_1", width, 256)
    _linear(s, "time_text_embed.timestep_embedder.linear_2", width, width)
    _linear(s, "img_in", width, 64)
    _linear(s, "txt_in", width, QWEN_IMAGE_CONTEXT)
    for i in range(blocks):
        p = f"transformer_blocks.{i}"
        for stream in ("img", "txt"):
            _linear(s, f"{p}.{stream}_mod.1", 6 * width, width)
            _linear(s, f"{p}.{stream}_mlp.net.0.proj", mlp, width)
            _linear(s, f"{p}.{stream}_mlp.net.2", width, mlp)
        for norm in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            s[f"{p}.attn.{norm}.weight"] = (heads_dim,)
        for proj in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"):
            _linear(s, f"{p}.attn.{proj}", width, width)
    _linear(s, "norm_out.linear", 2 * width, width)
    _linear(s, "proj_out", 64, width)
    return s


def wan21_shapes(dim: int = WAN_TEST_WIDTH, layers: int = WAN_TEST_DEPTH, ffn: int = 2 * WAN_TEST_WIDTH) -> Shapes:
    """Wan 2.1 text-to-video's diffusion model (``comfy/ldm/wan/model.py``, detected by ``head.modulation``): ComfyUI
    reads the width, FFN width, block count and input channels from the keys and the heads as width / 128; patches
    1×2×2 of 16 latent channels, 4096-d umT5 text input, self- then cross-attention in every block (the 1.3 B model:
    width 1536, 30 blocks)."""
    s: Shapes = {"patch_embedding.weight": (dim, 16, 1, 2, 2), "patch_embedding.bias": (dim,)}
    _linear(s, "text_embedding.0", dim, WAN_CONTEXT)
    _linear(s, "text_embedding.2", dim, dim)
    _linear(s, "time_embedding.0", dim, 256)
    _linear(s, "time_embedding.2", dim, dim)
    _linear(s, "time_projection.1", 6 * dim, dim)
    for i in range(layers):
        p = f"blocks.{i}"
        for attention in ("self_attn", "cross_attn"):
            for proj in ("q", "k", "v", "o"):
                _linear(s, f"{p}.{attention}.{proj}", dim, dim)
            s[f"{p}.{attention}.norm_q.weight"] = (dim,)
            s[f"{p}.{attention}.norm_k.weight"] = (dim,)
        s[f"{p}.norm3.weight"] = (dim,)
        s[f"{p}.norm3.bias"] = (dim,)
        _linear(s, f"{p}.ffn.0", ffn, dim)
        _linear(s, f"{p}.ffn.2", dim, ffn)
        s[f"{p}.modulation"] = (1, 6, dim)
    _linear(s, "head.head", 4 * 16, dim)
    s["head.modulation"] = (1, 2, dim)
    return s


def _conv3d(s: Shapes, name: str, c_out: int, c_in: int, kernel: tuple[int, int, int]) -> None:
    s[f"{name}.weight"] = (c_out, c_in, *kernel)
    s[f"{name}.bias"] = (c_out,)


def _wan_resblock(s: Shapes, name: str, c_in: int, c_out: int) -> None:
    s[f"{name}.residual.0.gamma"] = (c_in, 1, 1, 1)
    _conv3d(s, f"{name}.residual.2", c_out, c_in, (3, 3, 3))
    s[f"{name}.residual.3.gamma"] = (c_out, 1, 1, 1)
    _conv3d(s, f"{name}.residual.6", c_out, c_out, (3, 3, 3))
    if c_in != c_out:
        _conv3d(s, f"{name}.shortcut", c_out, c_in, (1, 1, 1))


def _wan_middle(s: Shapes, name: str, c: int) -> None:
    _wan_resblock(s, f"{name}.0", c, c)
    s[f"{name}.1.norm.gamma"] = (c, 1, 1)
    _conv(s, f"{name}.1.to_qkv", 3 * c, c, 1)
    _conv(s, f"{name}.1.proj", c, c, 1)
    _wan_resblock(s, f"{name}.2", c, c)


def wan21_vae_shapes(dim: int = 96, z: int = 16) -> Shapes:
    """Wan 2.1's causal 3-D VAE (``comfy/ldm/wan/vae.py``; Qwen-Image's VAE) keys: channel multipliers 1, 2, 4, 4,
    two residual blocks a level, time downsampling at the two deeper levels, 16 latent channels. ComfyUI 0.33 reads
    ``dim`` from ``decoder.head.0.gamma``; 0.3.64 fixes it at the real 96, the default here."""
    mult, n_res, temporal = (1, 2, 4, 4), 2, (False, True, True)
    s: Shapes = {}
    _conv3d(s, "encoder.conv1", dim, 3, (3, 3, 3))
    dims = [dim * m for m in (1, *mult)]
    index = 0
    for level, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        for _ in range(n_res):
            _wan_resblock(s, f"encoder.downsamples.{index}", c_in, c_out)
            c_in, index = c_out, index + 1
        if level != len(mult) - 1:
            _conv(s, f"encoder.downsamples.{index}.resample.1", c_out, c_out, 3)
            if temporal[level]:
                _conv3d(s, f"encoder.downsamples.{index}.time_conv", c_out, c_out, (3, 1, 1))
            index += 1
    _wan_middle(s, "encoder.middle", dims[-1])
    s["encoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    _conv3d(s, "encoder.head.2", 2 * z, dims[-1], (3, 3, 3))
    _conv3d(s, "conv1", 2 * z, 2 * z, (1, 1, 1))
    _conv3d(s, "conv2", z, z, (1, 1, 1))
    dims = [dim * m for m in (mult[-1], *mult[::-1])]
    _conv3d(s, "decoder.conv1", dims[0], z, (3, 3, 3))
    _wan_middle(s, "decoder.middle", dims[0])
    index = 0
    for level, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        if level in (1, 2, 3):
            c_in //= 2
        for _ in range(n_res + 1):
            _wan_resblock(s, f"decoder.upsamples.{index}", c_in, c_out)
            c_in, index = c_out, index + 1
        if level != len(mult) - 1:
            _conv(s, f"decoder.upsamples.{index}.resample.1", c_out // 2, c_out, 3)
            if temporal[::-1][level]:
                _conv3d(s, f"decoder.upsamples.{index}.time_conv", 2 * c_out, c_out, (3, 1, 1))
            index += 1
    s["decoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    _conv3d(s, "decoder.head.2", 3, dims[-1], (3, 3, 3))
    return s


def flux2_vae_shapes() -> Shapes:
    """Flux.2's VAE keys: the SD AutoencoderKL with 32 latent channels and its quant convs, plus the batch norm
    over 2×2-patchified latents (``bn``, 128 channels) that ComfyUI detects it by (128-channel latents at /16)."""
    s = vae_shapes(z=32)
    s["bn.running_mean"] = (128,)
    s["bn.running_var"] = (128,)
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


def build_flux_full_width_state_dict(seed: int = SEED + 9, dtype: torch.dtype = torch.float16
                                     ) -> dict[str, torch.Tensor]:
    """All tensors of the full-width Flux-dev-class test diffusion model (width 3072, :data:`FLUX_FULL_WIDTH_DEPTH`)."""
    return _random(flux_shapes(FLUX_WIDTH, *FLUX_FULL_WIDTH_DEPTH), torch.Generator().manual_seed(seed), dtype)


def build_chroma_state_dict(seed: int = SEED + 10, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """All tensors of the Chroma test diffusion model (:func:`chroma_shapes` at :data:`CHROMA_DEPTH`)."""
    return _random(chroma_shapes(*CHROMA_DEPTH), torch.Generator().manual_seed(seed), dtype)


def build_flux2_state_dict(seed: int = SEED + 7, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """All tensors of the Flux.2-Klein-class test diffusion model (:func:`flux2_shapes`), deterministic random."""
    return _random(flux2_shapes(), torch.Generator().manual_seed(seed), dtype)


def build_qwen_image_state_dict(seed: int = SEED + 8, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """All tensors of the one-block Qwen-Image test diffusion model (:func:`qwen_image_shapes`)."""
    return _random(qwen_image_shapes(), torch.Generator().manual_seed(seed), dtype)


def build_sd3_state_dict(seed: int = SEED + 5, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """All tensors of the SD3-class test checkpoint (:func:`sd3_shapes`), deterministic random values."""
    return _random(sd3_shapes(), torch.Generator().manual_seed(seed), dtype)


def build_wan21_state_dict(seed: int = SEED + 12, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """All tensors of the Wan 2.1 T2V-class test diffusion model (:func:`wan21_shapes`), deterministic random."""
    return _random(wan21_shapes(), torch.Generator().manual_seed(seed), dtype)


def build_vae_state_dict(shapes: Shapes, seed: int, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """All tensors of a stand-alone VAE file, deterministic random values; RMS-norm scales (``gamma``) one."""
    sd = _random(shapes, torch.Generator().manual_seed(seed), dtype)
    return {k: torch.ones_like(v) if k.endswith("gamma") else v for k, v in sd.items()}


def flux_vae_path() -> Path:
    """Path of the cached random Flux.1 / SD3 VAE (16 latent channels, no quant convs; ``models/vae``)."""
    meta = {"spdinv_test": "random-weight Flux.1-class VAE, not a real model", "seed": str(SEED + 9)}
    return _cached(FLUX_VAE_NAME, lambda: build_vae_state_dict(vae_shapes(z=16, quant_convs=False), SEED + 9), meta)


def flux2_vae_path() -> Path:
    """Path of the cached random Flux.2 VAE (32 channels, batch-normed 128-channel latents at /16)."""
    meta = {"spdinv_test": "random-weight Flux.2-class VAE, not a real model", "seed": str(SEED + 10)}
    return _cached(FLUX2_VAE_NAME, lambda: build_vae_state_dict(flux2_vae_shapes(), SEED + 10), meta)


def wan21_vae_path() -> Path:
    """Path of the cached random Wan 2.1 VAE at the real width (Qwen-Image's VAE; about 0.24 GiB)."""
    meta = {"spdinv_test": "random-weight Wan 2.1-class VAE, not a real model", "seed": str(SEED + 11)}
    return _cached(WAN21_VAE_NAME, lambda: build_vae_state_dict(wan21_vae_shapes(), SEED + 11), meta)


def sd3_checkpoint_path() -> Path:
    """Path of the cached random SD3-class checkpoint (depth-4 MM-DiT, CLIP-L, 16-channel VAE; about 0.4 GiB)."""
    meta = {"spdinv_test": "random-weight SD3-class (depth-4 MM-DiT) checkpoint, not a real model",
            "seed": str(SEED + 5)}
    return _cached(SD3_CHECKPOINT_NAME, build_sd3_state_dict, meta)


def flux_model_path() -> Path:
    """Path of the cached random Flux-dev-class diffusion model (2 double, 4 single blocks; a few MiB)."""
    meta = {"spdinv_test": "random-weight Flux-dev-class diffusion model, not a real model", "seed": str(SEED + 6)}
    return _cached(FLUX_MODEL_NAME, build_flux_state_dict, meta)


def flux_full_width_model_path() -> Path:
    """Path of the cached random full-width Flux-dev-class diffusion model (width 3072, 1 double and 2 single
    blocks, 0.69 B parameters; about 1.3 GiB in fp16), for ComfyUI versions whose Flux detection fixes the width."""
    meta = {"spdinv_test": "random-weight full-width Flux-dev-class diffusion model of reduced depth, not a real "
                           "model", "seed": str(SEED + 9)}
    return _cached(FLUX_FULL_WIDTH_MODEL_NAME, build_flux_full_width_state_dict, meta)


def chroma_model_path() -> Path:
    """Path of the cached random Chroma diffusion model (1 double and 1 single block, 0.63 B parameters; about
    1.2 GiB in fp16)."""
    meta = {"spdinv_test": "random-weight Chroma diffusion model of reduced depth, not a real model",
            "seed": str(SEED + 10)}
    return _cached(CHROMA_MODEL_NAME, build_chroma_state_dict, meta)


def flux2_model_path() -> Path:
    """Path of the cached random Flux.2-Klein-class diffusion model (2 double, 2 single blocks; a few MiB)."""
    meta = {"spdinv_test": "random-weight Flux.2-Klein-class diffusion model, not a real model", "seed": str(SEED + 7)}
    return _cached(FLUX2_MODEL_NAME, build_flux2_state_dict, meta)


def qwen_image_model_path() -> Path:
    """Path of the cached random one-block Qwen-Image diffusion model (about 0.7 GiB in fp16)."""
    meta = {"spdinv_test": "random-weight one-block Qwen-Image diffusion model, not a real model",
            "seed": str(SEED + 8)}
    return _cached(QWEN_IMAGE_MODEL_NAME, build_qwen_image_state_dict, meta)


def wan21_model_path() -> Path:
    """Path of the cached random Wan 2.1 T2V-class diffusion model (width 128, 2 blocks, 1.1 M parameters)."""
    meta = {"spdinv_test": "random-weight Wan 2.1 T2V-class diffusion model of reduced width and depth, not a real "
                           "model", "seed": str(SEED + 12)}
    return _cached(WAN21_MODEL_NAME, build_wan21_state_dict, meta)
