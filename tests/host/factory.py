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

Nothing here imports ComfyUI; ``tests/host/test_harness.py`` checks the key set against it.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

# Bump when the content of a generated file changes, so stale caches are not reused.
FORMAT_VERSION = 1
SEED = 1234

CHECKPOINT_NAME = f"spdinv-test-sd15-random-v{FORMAT_VERSION}.safetensors"
LORA_NAME = f"spdinv-test-lora-random-v{FORMAT_VERSION}.safetensors"
SD2_CHECKPOINT_NAME = f"spdinv-test-sd21-v-random-v{FORMAT_VERSION}.safetensors"
SDXL_CHECKPOINT_NAME = f"spdinv-test-sdxl-vega-random-v{FORMAT_VERSION}.safetensors"
SD3_CHECKPOINT_NAME = f"spdinv-test-sd3-mmdit4-random-v{FORMAT_VERSION}.safetensors"
FLUX_MODEL_NAME = f"spdinv-test-flux-dev-d2s4-random-v{FORMAT_VERSION}.safetensors"
CLIP_VISION_NAME = f"spdinv-test-clip-vision-vitl-random-v{FORMAT_VERSION}.safetensors"

UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
VAE_PREFIX = "first_stage_model."
SD2_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."

Shapes = dict[str, tuple[int, ...]]


# --------------------------------------------------------------------------------------------
# Key sets and shapes (original CompVis/LDM layout of v1-5-pruned-emaonly)
# --------------------------------------------------------------------------------------------


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


def _unet_resblock(shapes: Shapes, name: str, c_in: int, c_out: int, emb: int) -> None:
    _norm(shapes, f"{name}.in_layers.0", c_in)
    _conv(shapes, f"{name}.in_layers.2", c_out, c_in, 3)
    _linear(shapes, f"{name}.emb_layers.1", c_out, emb)
    _norm(shapes, f"{name}.out_layers.0", c_out)
    _conv(shapes, f"{name}.out_layers.3", c_out, c_out, 3)
    if c_in != c_out:
        _conv(shapes, f"{name}.skip_connection", c_out, c_in, 1)


def _unet_transformer(shapes: Shapes, name: str, c: int, context: int, depth: int = 1, linear: bool = False) -> None:
    """SpatialTransformer of ``depth`` blocks, GEGLU feed-forward; proj_in/proj_out are 1x1 convs (SD1.x) or
    linear layers (``linear``: SD2.x, SDXL)."""
    proj = (lambda n: _linear(shapes, n, c, c)) if linear else (lambda n: _conv(shapes, n, c, c, 1))
    _norm(shapes, f"{name}.norm", c)
    proj(f"{name}.proj_in")
    for i in range(depth):
        blk = f"{name}.transformer_blocks.{i}"
        for attn, ctx in (("attn1", c), ("attn2", context)):
            _linear(shapes, f"{blk}.{attn}.to_q", c, c, bias=False)
            _linear(shapes, f"{blk}.{attn}.to_k", c, ctx, bias=False)
            _linear(shapes, f"{blk}.{attn}.to_v", c, ctx, bias=False)
            _linear(shapes, f"{blk}.{attn}.to_out.0", c, c)
        _linear(shapes, f"{blk}.ff.net.0.proj", 8 * c, c)
        _linear(shapes, f"{blk}.ff.net.2", c, 4 * c)
        for n in ("norm1", "norm2", "norm3"):
            _norm(shapes, f"{blk}.{n}", c)
    proj(f"{name}.proj_out")


@dataclass(frozen=True)
class UNetLayout:
    """What distinguishes the openaimodel UNets of the families: channel multipliers, transformer depth per
    resolution level (encoder and decoder), the middle block's depth (``None``: a single ResBlock, as in
    Segmind Vega), text context width, linear projections and the SDXL class-embedding input."""

    mult: tuple[int, ...]
    depth: tuple[int, ...]
    middle: int | None
    context: int
    linear: bool = False
    adm_in: int | None = None


SD15_LAYOUT = UNetLayout(mult=(1, 2, 4, 4), depth=(1, 1, 1, 0), middle=1, context=768)
SD2_LAYOUT = UNetLayout(mult=(1, 2, 4, 4), depth=(1, 1, 1, 0), middle=1, context=1024, linear=True)
VEGA_LAYOUT = UNetLayout(mult=(1, 2, 4), depth=(0, 1, 2), middle=None, context=2048, linear=True, adm_in=2816)
"""Segmind Vega: the smallest SDXL-class layout ComfyUI detects (``Segmind_Vega``, an ``SDXL`` subclass)."""


def unet_shapes(layout: UNetLayout = SD15_LAYOUT) -> Shapes:
    """openaimodel.UNetModel keys without prefix, in construction order (SD1.5 by default)."""
    mc, n_res, in_ch = 320, 2, 4
    emb = 4 * mc
    s: Shapes = {}

    def transformer(name: str, c: int, depth: int) -> None:
        _unet_transformer(s, name, c, layout.context, depth, layout.linear)

    _linear(s, "time_embed.0", emb, mc)
    _linear(s, "time_embed.2", emb, emb)
    if layout.adm_in is not None:
        _linear(s, "label_emb.0.0", emb, layout.adm_in)
        _linear(s, "label_emb.0.2", emb, emb)
    _conv(s, "input_blocks.0.0", mc, in_ch, 3)
    skip = [mc]
    ch, idx = mc, 1
    for level, m in enumerate(layout.mult):
        for _ in range(n_res):
            _unet_resblock(s, f"input_blocks.{idx}.0", ch, m * mc, emb)
            ch = m * mc
            if layout.depth[level]:
                transformer(f"input_blocks.{idx}.1", ch, layout.depth[level])
            skip.append(ch)
            idx += 1
        if level != len(layout.mult) - 1:
            _conv(s, f"input_blocks.{idx}.0.op", ch, ch, 3)
            skip.append(ch)
            idx += 1
    _unet_resblock(s, "middle_block.0", ch, ch, emb)
    if layout.middle is not None:
        transformer("middle_block.1", ch, layout.middle)
        _unet_resblock(s, "middle_block.2", ch, ch, emb)
    idx = 0
    for level in reversed(range(len(layout.mult))):
        for i in range(n_res + 1):
            c_out = layout.mult[level] * mc
            _unet_resblock(s, f"output_blocks.{idx}.0", ch + skip.pop(), c_out, emb)
            ch, sub = c_out, 1
            if layout.depth[level]:
                transformer(f"output_blocks.{idx}.1", ch, layout.depth[level])
                sub = 2
            if level != 0 and i == n_res:
                _conv(s, f"output_blocks.{idx}.{sub}.conv", ch, ch, 3)
            idx += 1
    _norm(s, "out.0", ch)
    _conv(s, "out.2", in_ch, ch, 3)
    return s


def clip_text_shapes() -> Shapes:
    """CLIP ViT-L/14 text encoder (HF CLIPTextModel ``text_model.*``) keys without prefix."""
    d, layers, vocab, ctx = 768, 12, 49408, 77
    s: Shapes = {
        "embeddings.token_embedding.weight": (vocab, d),
        "embeddings.position_embedding.weight": (ctx, d),
    }
    for i in range(layers):
        p = f"encoder.layers.{i}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            _linear(s, f"{p}.self_attn.{proj}", d, d)
        _norm(s, f"{p}.layer_norm1", d)
        _linear(s, f"{p}.mlp.fc1", 4 * d, d)
        _linear(s, f"{p}.mlp.fc2", d, 4 * d)
        _norm(s, f"{p}.layer_norm2", d)
    _norm(s, "final_layer_norm", d)
    return s


def open_clip_text_shapes(width: int, layers: int) -> Shapes:
    """OpenCLIP text tower (``open_clip`` layout, as SD2.x and SDXL checkpoints store it) keys without prefix:
    CLIP-G is ``width`` 1280 with 32 layers, OpenCLIP-H 1024 with 24."""
    vocab, ctx = 49408, 77
    s: Shapes = {"positional_embedding": (ctx, width), "token_embedding.weight": (vocab, width)}
    for i in range(layers):
        p = f"transformer.resblocks.{i}"
        _norm(s, f"{p}.ln_1", width)
        s[f"{p}.attn.in_proj_weight"] = (3 * width, width)
        s[f"{p}.attn.in_proj_bias"] = (3 * width,)
        _linear(s, f"{p}.attn.out_proj", width, width)
        _norm(s, f"{p}.ln_2", width)
        _linear(s, f"{p}.mlp.c_fc", 4 * width, width)
        _linear(s, f"{p}.mlp.c_proj", width, 4 * width)
    _norm(s, "ln_final", width)
    s["text_projection"] = (width, width)
    return s


def _vae_resblock(s: Shapes, name: str, c_in: int, c_out: int) -> None:
    _norm(s, f"{name}.norm1", c_in)
    _conv(s, f"{name}.conv1", c_out, c_in, 3)
    _norm(s, f"{name}.norm2", c_out)
    _conv(s, f"{name}.conv2", c_out, c_out, 3)
    if c_in != c_out:
        _conv(s, f"{name}.nin_shortcut", c_out, c_in, 1)


def _vae_mid(s: Shapes, name: str, c: int) -> None:
    _vae_resblock(s, f"{name}.block_1", c, c)
    _norm(s, f"{name}.attn_1.norm", c)
    for n in ("q", "k", "v", "proj_out"):
        _conv(s, f"{name}.attn_1.{n}", c, c, 1)
    _vae_resblock(s, f"{name}.block_2", c, c)


def vae_shapes(z: int = 4, quant_convs: bool = True) -> Shapes:
    """SD AutoencoderKL (ch 128, mult 1,2,4,4, 2 res blocks) keys without prefix: ``z`` latent channels (4; SD3
    and Flux: 16, without the quant convs)."""
    ch, mult, n_res = 128, (1, 2, 4, 4), 2
    s: Shapes = {}
    _conv(s, "encoder.conv_in", ch, 3, 3)
    c = ch
    for level, m in enumerate(mult):
        for b in range(n_res):
            _vae_resblock(s, f"encoder.down.{level}.block.{b}", c, m * ch)
            c = m * ch
        if level != len(mult) - 1:
            _conv(s, f"encoder.down.{level}.downsample.conv", c, c, 3)
    _vae_mid(s, "encoder.mid", c)
    _norm(s, "encoder.norm_out", c)
    _conv(s, "encoder.conv_out", 2 * z, c, 3)

    c = ch * mult[-1]
    _conv(s, "decoder.conv_in", c, z, 3)
    _vae_mid(s, "decoder.mid", c)
    for level in reversed(range(len(mult))):
        for b in range(n_res + 1):
            _vae_resblock(s, f"decoder.up.{level}.block.{b}", c, mult[level] * ch)
            c = mult[level] * ch
        if level != 0:
            _conv(s, f"decoder.up.{level}.upsample.conv", c, c, 3)
    _norm(s, "decoder.norm_out", c)
    _conv(s, "decoder.conv_out", 3, c, 3)
    if quant_convs:
        _conv(s, "quant_conv", 2 * z, 2 * z, 1)
        _conv(s, "post_quant_conv", z, z, 1)
    return s


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


def _prefixed(*parts: tuple[str, Shapes]) -> Shapes:
    return {prefix + k: v for prefix, part in parts for k, v in part.items()}


def sd15_shapes() -> Shapes:
    """Full checkpoint key -> shape map (without ``position_ids``, which is an int64 buffer)."""
    return _prefixed((UNET_PREFIX, unet_shapes()), (CLIP_PREFIX, clip_text_shapes()), (VAE_PREFIX, vae_shapes()))


def sd2_shapes() -> Shapes:
    """SD2.x checkpoint (``v2-1_768-ema-pruned`` layout): UNet with 1024-d context and linear projections,
    OpenCLIP-H text tower, the SD VAE (about 1.3 B parameters)."""
    return _prefixed((UNET_PREFIX, unet_shapes(SD2_LAYOUT)), (SD2_CLIP_PREFIX, open_clip_text_shapes(1024, 24)),
                     (VAE_PREFIX, vae_shapes()))


def sdxl_shapes() -> Shapes:
    """SDXL-class checkpoint in the original (Stability ``sgm``) layout: a Segmind Vega UNet, CLIP-L,
    OpenCLIP bigG (CLIP-G) and the SD VAE, whose shapes SDXL shares (about 1.7 B parameters)."""
    return _prefixed((UNET_PREFIX, unet_shapes(VEGA_LAYOUT)), (SDXL_CLIP_L_PREFIX, clip_text_shapes()),
                     (SDXL_CLIP_G_PREFIX, open_clip_text_shapes(1280, 32)), (VAE_PREFIX, vae_shapes()))


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


def build_sd15_state_dict(seed: int = SEED, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """All SD1.5 checkpoint tensors with deterministic random values (keys in sorted order)."""
    gen = torch.Generator().manual_seed(seed)
    sd = _random(sd15_shapes(), gen, dtype)
    sd[CLIP_PREFIX + "embeddings.position_ids"] = torch.arange(77, dtype=torch.int64).unsqueeze(0)
    return sd


def _random(shapes: Shapes, gen: torch.Generator, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: _init_tensor(k, shape, gen).to(dtype) for k, shape in sorted(shapes.items())}


SD2_V_MARKER = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
"""ComfyUI reads SD2.x v-prediction from this bias's spread (std > 0.09, ``SD20.model_type``), as 768-v has."""


def build_sd2_state_dict(seed: int = SEED + 4, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """All tensors of the SD2.x test checkpoint (:func:`sd2_shapes`); ComfyUI detects it as v-prediction."""
    gen = torch.Generator().manual_seed(seed)
    sd = _random(sd2_shapes(), gen, dtype)
    sd[SD2_V_MARKER] = (torch.randn(sd[SD2_V_MARKER].shape, generator=gen) * 0.2).to(dtype)
    return sd


def build_sdxl_state_dict(seed: int = SEED + 3, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """All tensors of the SDXL-class test checkpoint (:func:`sdxl_shapes`), deterministic random values."""
    return _random(sdxl_shapes(), torch.Generator().manual_seed(seed), dtype)


def build_flux_state_dict(seed: int = SEED + 6, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """All tensors of the Flux-dev-class test diffusion model (:func:`flux_shapes`), deterministic random values."""
    return _random(flux_shapes(), torch.Generator().manual_seed(seed), dtype)


def build_sd3_state_dict(seed: int = SEED + 5, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """All tensors of the SD3-class test checkpoint (:func:`sd3_shapes`), deterministic random values."""
    return _random(sd3_shapes(), torch.Generator().manual_seed(seed), dtype)


# --------------------------------------------------------------------------------------------
# Random LoRA (kohya key format)
# --------------------------------------------------------------------------------------------

# (kohya module name, out features, in features). UNet names use the diffusers layout, which
# ComfyUI maps onto LDM keys (comfy.utils.unet_to_diffusers); the text-encoder name is kohya's.
LORA_TARGETS: tuple[tuple[str, int, int], ...] = (
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 320, 320),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 320, 768),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v", 320, 768),
    ("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_out_0", 1280, 1280),
    ("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v", 1280, 768),
    ("lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_attn1_to_v", 1280, 1280),
    ("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_q", 320, 320),
    ("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0", 320, 320),
    ("lora_te_text_model_encoder_layers_11_self_attn_v_proj", 768, 768),
)
LORA_RANK = 4
LORA_ALPHA = 4.0


def build_lora_state_dict(seed: int = SEED + 1, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Kohya-style LoRA: ``<name>.lora_down.weight`` [r, in], ``.lora_up.weight`` [out, r], ``.alpha``.

    The delta ``up @ down * alpha / r`` has entries of about the size of the base weights, so it
    visibly changes the UNet output.
    """
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, c_out, c_in in LORA_TARGETS:
        sd[f"{name}.lora_down.weight"] = (torch.randn(LORA_RANK, c_in, generator=gen) / math.sqrt(c_in)).to(dtype)
        sd[f"{name}.lora_up.weight"] = (torch.randn(c_out, LORA_RANK, generator=gen) * 2.0 / math.sqrt(c_in)).to(dtype)
        sd[f"{name}.alpha"] = torch.tensor(LORA_ALPHA, dtype=dtype)
    return sd


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Cache folder for generated models: ``$SPDINV_TEST_CACHE`` or ``~/.cache/spdinv-edit-tests``."""
    env = os.environ.get("SPDINV_TEST_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "spdinv-edit-tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock so that parallel test processes build a file only once (no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent builds just duplicate work; os.replace stays atomic
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _save_safetensors(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    save_file(sd, str(path), metadata=metadata)


def _cached(
    name: str,
    build: Callable[[], dict[str, torch.Tensor]],
    metadata: dict[str, str],
    save: Callable[[dict[str, torch.Tensor], Path, dict[str, str]], None] = _save_safetensors,
) -> Path:
    """Return ``cache_dir()/name``, building it first if absent (temp file + atomic rename).

    ``save(state_dict, path, metadata)`` writes the file (safetensors by default).
    """
    target = cache_dir() / name
    if target.is_file():
        return target
    with _file_lock(target.with_name(target.name + ".lock")):
        if target.is_file():
            return target
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            save(build(), tmp, metadata)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def sd15_checkpoint_path() -> Path:
    """Path of the cached random SD1.5 checkpoint (built on first use, about 15 s and 2 GiB)."""
    meta = {"spdinv_test": "random-weight SD1.5 checkpoint, not a real model", "seed": str(SEED)}
    return _cached(CHECKPOINT_NAME, build_sd15_state_dict, meta)


def sd2_checkpoint_path() -> Path:
    """Path of the cached random SD2.x v-prediction checkpoint (about 2.6 GiB in fp16)."""
    meta = {"spdinv_test": "random-weight SD2.x (768-v layout) checkpoint, not a real model", "seed": str(SEED + 4)}
    return _cached(SD2_CHECKPOINT_NAME, build_sd2_state_dict, meta)


def sdxl_checkpoint_path() -> Path:
    """Path of the cached random SDXL-class checkpoint (Segmind Vega layout; about 3.4 GiB in fp16)."""
    meta = {"spdinv_test": "random-weight SDXL-class (Segmind Vega layout) checkpoint, not a real model",
            "seed": str(SEED + 3)}
    return _cached(SDXL_CHECKPOINT_NAME, build_sdxl_state_dict, meta)


def sd3_checkpoint_path() -> Path:
    """Path of the cached random SD3-class checkpoint (depth-4 MM-DiT, CLIP-L, 16-channel VAE; about 0.4 GiB)."""
    meta = {"spdinv_test": "random-weight SD3-class (depth-4 MM-DiT) checkpoint, not a real model",
            "seed": str(SEED + 5)}
    return _cached(SD3_CHECKPOINT_NAME, build_sd3_state_dict, meta)


def flux_model_path() -> Path:
    """Path of the cached random Flux-dev-class diffusion model (2 double, 4 single blocks; a few MiB)."""
    meta = {"spdinv_test": "random-weight Flux-dev-class diffusion model, not a real model", "seed": str(SEED + 6)}
    return _cached(FLUX_MODEL_NAME, build_flux_state_dict, meta)


def lora_path() -> Path:
    """Path of the cached random LoRA for the checkpoint above (kohya key format)."""
    meta = {"spdinv_test": "random LoRA for the random SD1.5 checkpoint", "ss_network_dim": str(LORA_RANK)}
    return _cached(LORA_NAME, build_lora_state_dict, meta)


# --------------------------------------------------------------------------------------------
# Random CLIP ViT-L/14 vision tower (Hugging Face layout, 224 px)
# --------------------------------------------------------------------------------------------


def clip_vision_vitl_shapes() -> Shapes:
    """HF ``CLIPVisionModelWithProjection`` ViT-L/14 keys: 392 tensors, as ComfyUI detects ViT-L 224.

    ComfyUI (``comfy.clip_vision.load_clipvision_from_sd``) picks ``clip_vision_config_vitl.json``
    from ``encoder.layers.22`` being present, width 1024 and 257 position embeddings.
    """
    d, layers, patch, positions, proj = 1024, 24, 14, (224 // 14) ** 2 + 1, 768
    p = "vision_model."
    s: Shapes = {
        f"{p}embeddings.class_embedding": (d,),
        f"{p}embeddings.patch_embedding.weight": (d, 3, patch, patch),
        f"{p}embeddings.position_embedding.weight": (positions, d),
    }
    _norm(s, f"{p}pre_layrnorm", d)
    for i in range(layers):
        lp = f"{p}encoder.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _linear(s, f"{lp}.self_attn.{name}", d, d)
        _norm(s, f"{lp}.layer_norm1", d)
        _linear(s, f"{lp}.mlp.fc1", 4 * d, d)
        _linear(s, f"{lp}.mlp.fc2", d, 4 * d)
        _norm(s, f"{lp}.layer_norm2", d)
    _norm(s, f"{p}post_layernorm", d)
    _linear(s, "visual_projection", proj, d, bias=False)
    return s


def _init_clip_vision_tensor(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Like :func:`_init_tensor`, but the 1-D ``class_embedding`` is small random, not ones."""
    if "embedding" in key:
        return torch.randn(shape, generator=gen) * 0.02
    return _init_tensor(key, shape, gen)


def build_clip_vision_state_dict(seed: int = SEED + 2, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """All ViT-L/14 vision tensors with deterministic small random values (about 304 M parameters)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: _init_clip_vision_tensor(k, shape, gen).to(dtype) for k, shape in clip_vision_vitl_shapes().items()}


def clip_vision_vitl_path() -> Path:
    """Path of the cached random CLIP ViT-L/14 vision file (fp16 safetensors, about 0.6 GiB)."""
    meta = {"spdinv_test": "random-weight CLIP ViT-L/14 vision tower, not a real model", "seed": str(SEED + 2)}
    return _cached(CLIP_VISION_NAME, build_clip_vision_state_dict, meta)


# --------------------------------------------------------------------------------------------
# Random ELITE mapper (published key layout)
# --------------------------------------------------------------------------------------------

ELITE_KINDS = ("global", "local")
ELITE_FORMATS = ("pt", "safetensors")
ELITE_MAPPERS = 5
ELITE_WIDTH, ELITE_OUT = 1024, 768

# (diffusers module path of a cross-attention, inner width) for SD1.x's 16 attn2 modules.
SD1_CROSS_ATTENTIONS: tuple[tuple[str, int], ...] = tuple(
    (f"{block}.attentions.{a}.transformer_blocks.0.attn2", width)
    for block, n_attn, width in (
        ("down_blocks.0", 2, 320),
        ("down_blocks.1", 2, 640),
        ("down_blocks.2", 2, 1280),
        ("mid_block", 1, 1280),
        ("up_blocks.1", 3, 1280),
        ("up_blocks.2", 3, 640),
        ("up_blocks.3", 3, 320),
    )
    for a in range(n_attn)
)


def elite_mapper_shapes() -> Shapes:
    """ELITE mapper keys: 5 ``mapping_i`` + 5 ``mapping_patch_i`` MLPs (100) and 32 K/V weights (132).

    Each MLP is ``Linear, LayerNorm, LeakyReLU, Linear, LayerNorm, LeakyReLU, Linear`` (indices
    0, 1, 3, 4, 6 hold tensors). The K/V weights are named after the diffusers module path with
    ``.`` replaced by ``_``, e.g. ``down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.weight``.
    """
    s: Shapes = {}
    for i in range(ELITE_MAPPERS):
        for head in (f"mapping_{i}", f"mapping_patch_{i}"):
            _linear(s, f"{head}.0", ELITE_WIDTH, ELITE_WIDTH)
            _norm(s, f"{head}.1", ELITE_WIDTH)
            _linear(s, f"{head}.3", ELITE_WIDTH, ELITE_WIDTH)
            _norm(s, f"{head}.4", ELITE_WIDTH)
            _linear(s, f"{head}.6", ELITE_OUT, ELITE_WIDTH)
    for path, inner in SD1_CROSS_ATTENTIONS:
        name = path.replace(".", "_")
        for proj in ("to_k", "to_v"):
            _linear(s, f"{name}_{proj}", inner, ELITE_OUT, bias=False)
    return s


def build_elite_mapper_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """All ELITE mapper tensors, float32, small random weights (LayerNorm weights one, biases zero)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: _init_tensor(k, shape, gen) for k, shape in elite_mapper_shapes().items()}


def _save_torch(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """``torch.save`` of the plain state dict, as the published ELITE files are (no metadata)."""
    torch.save(sd, path)


def elite_mapper_path(kind: str = "global", fmt: str = "pt") -> Path:
    """Path of a cached random ELITE mapper: ``kind`` "global"/"local" (seed differs), ``fmt`` "pt"/"safetensors"."""
    if kind not in ELITE_KINDS:
        raise ValueError(f"kind must be one of {ELITE_KINDS}, got {kind!r}")
    if fmt not in ELITE_FORMATS:
        raise ValueError(f"fmt must be one of {ELITE_FORMATS}, got {fmt!r}")
    seed = SEED + 3 + ELITE_KINDS.index(kind)
    meta = {"spdinv_test": f"random-weight ELITE {kind} mapper, not a real model", "seed": str(seed)}
    name = f"spdinv-test-elite-{kind}-random-v{FORMAT_VERSION}.{fmt}"
    save = _save_torch if fmt == "pt" else _save_safetensors
    return _cached(name, lambda: build_elite_mapper_state_dict(seed), meta, save)


if __name__ == "__main__":
    t0 = time.perf_counter()
    ckpt = sd15_checkpoint_path()
    print(f"{ckpt} ({ckpt.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.1f} s")
    print(lora_path())


def sd_like_latent(resolution: int, batch: int = 1, seed: int = 0, channels: int = 4, scale: float = 0.18215,
                   shift: float = 0.0) -> torch.Tensor:
    """Raw LATENT samples with the statistics of a real VAE latent: std 1 after the model's latent scale (SD1.5's
    0.18215 by default; SD3: 16 channels, scale 1.5305, shift 0.0609).

    The random VAE encodes images to latents about 50x smaller than a trained VAE does, which makes
    every reconstruction error look huge relative to the signal. Reconstruction quality is measured on
    latents like this instead: smooth (bicubic upsampling of a 4x coarser field), as image latents are.
    """
    gen = torch.Generator().manual_seed(seed)
    size = resolution // 8
    coarse = torch.randn(batch, channels, max(1, size // 4), max(1, size // 4), generator=gen)
    z = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return z / z.std() / scale + shift
