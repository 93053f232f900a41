"""Random SD1.5, SD2.x 768-v and SDXL-class (Segmind Vega) checkpoints and a kohya LoRA for the SD1.5 one."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .cache import FORMAT_VERSION, SEED, _cached
from .shapes import Shapes, _conv, _linear, _norm, _prefixed, _random

CHECKPOINT_NAME = f"spdinv-test-sd15-random-v{FORMAT_VERSION}.safetensors"
LORA_NAME = f"spdinv-test-lora-random-v{FORMAT_VERSION}.safetensors"
SD2_CHECKPOINT_NAME = f"spdinv-test-sd21-v-random-v{FORMAT_VERSION}.safetensors"
SDXL_CHECKPOINT_NAME = f"spdinv-test-sdxl-vega-random-v{FORMAT_VERSION}.safetensors"

UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
VAE_PREFIX = "first_stage_model."
SD2_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."


# --------------------------------------------------------------------------------------------
# Key sets and shapes (original CompVis/LDM layout of v1-5-pruned-emaonly)
# --------------------------------------------------------------------------------------------

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


def build_sd15_state_dict(seed: int = SEED, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """All SD1.5 checkpoint tensors with deterministic random values (keys in sorted order)."""
    gen = torch.Generator().manual_seed(seed)
    sd = _random(sd15_shapes(), gen, dtype)
    sd[CLIP_PREFIX + "embeddings.position_ids"] = torch.arange(77, dtype=torch.int64).unsqueeze(0)
    return sd


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



def lora_path() -> Path:
    """Path of the cached random LoRA for the checkpoint above (kohya key format)."""
    meta = {"spdinv_test": "random LoRA for the random SD1.5 checkpoint", "ss_network_dim": str(LORA_RANK)}
    return _cached(LORA_NAME, build_lora_state_dict, meta)
