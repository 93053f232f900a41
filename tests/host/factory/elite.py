"""Random ELITE test files: a CLIP ViT-L/14 vision tower (Hugging Face layout) and mappers in the published
key layout."""

from __future__ import annotations

from pathlib import Path

import torch

from .cache import FORMAT_VERSION, SEED, _cached, _save_safetensors
from .shapes import Shapes, _init_tensor, _linear, _norm

CLIP_VISION_NAME = f"spdinv-test-clip-vision-vitl-random-v{FORMAT_VERSION}.safetensors"


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
