"""Self-tests of the random ELITE test files: the mapper's published key layout and the CLIP ViT-L/14
vision tower loaded by ComfyUI's own ``CLIPVisionLoader``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from spdinv_pack.tests.host import factory

MAPPER_TENSORS = 132
CLIP_VISION_TENSORS = 392
CLIP_VISION_PARAMS = 303_966_208

# (diffusers block, number of attentions, inner width) of SD1.x's cross-attention modules.
SD1_ATTN_BLOCKS = (
    ("down_blocks_0", 2, 320),
    ("down_blocks_1", 2, 640),
    ("down_blocks_2", 2, 1280),
    ("mid_block", 1, 1280),
    ("up_blocks_1", 3, 1280),
    ("up_blocks_2", 3, 640),
    ("up_blocks_3", 3, 320),
)


def _expected_mapper_shapes() -> dict[str, tuple[int, ...]]:
    """The published ELITE mapper layout, written out independently of ``factory``."""
    s: dict[str, tuple[int, ...]] = {}
    for i in range(5):
        for head in (f"mapping_{i}", f"mapping_patch_{i}"):
            for idx, shape in (("0", (1024, 1024)), ("1", (1024,)), ("3", (1024, 1024)), ("4", (1024,))):
                s[f"{head}.{idx}.weight"] = shape
                s[f"{head}.{idx}.bias"] = (1024,)
            s[f"{head}.6.weight"] = (768, 1024)
            s[f"{head}.6.bias"] = (768,)
    for block, n_attn, inner in SD1_ATTN_BLOCKS:
        for a in range(n_attn):
            for proj in ("to_k", "to_v"):
                s[f"{block}_attentions_{a}_transformer_blocks_0_attn2_{proj}.weight"] = (inner, 768)
    return s


def _load_pt(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert type(sd) is dict
    return sd


def test_elite_mapper_published_layout(elite_mapper_path_global: Path) -> None:
    sd = _load_pt(elite_mapper_path_global)
    expected = _expected_mapper_shapes()
    assert len(expected) == MAPPER_TENSORS
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in sd.values())
    for i in range(5):
        for head in (f"mapping_{i}", f"mapping_patch_{i}"):
            for ln in ("1", "4"):
                assert torch.equal(sd[f"{head}.{ln}.weight"], torch.ones(1024))
                assert torch.equal(sd[f"{head}.{ln}.bias"], torch.zeros(1024))
            assert sd[f"{head}.0.weight"].abs().max() < 0.5


def test_elite_mapper_safetensors_and_local(
    elite_mapper_path_global: Path, elite_mapper_path_safetensors: Path
) -> None:
    """The safetensors file holds the same tensors; the "local" mapper has the layout, not the values."""
    pt = _load_pt(elite_mapper_path_global)
    st = load_file(str(elite_mapper_path_safetensors))
    assert set(st) == set(pt)
    assert all(torch.equal(st[k], pt[k]) for k in pt)
    local = _load_pt(factory.elite_mapper_path("local"))
    assert {k: v.shape for k, v in local.items()} == {k: v.shape for k, v in pt.items()}
    assert not torch.equal(local["mapping_0.0.weight"], pt["mapping_0.0.weight"])
    with pytest.raises(ValueError):
        factory.elite_mapper_path("patch")


def test_clip_vision_file_layout(clip_vision_path: Path) -> None:
    with safe_open(str(clip_vision_path), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert len(shapes) == CLIP_VISION_TENSORS
    assert sum(math.prod(s) for s in shapes.values()) == CLIP_VISION_PARAMS
    assert shapes["vision_model.embeddings.position_embedding.weight"] == (257, 1024)
    assert shapes["vision_model.embeddings.patch_embedding.weight"] == (1024, 3, 14, 14)
    assert "vision_model.embeddings.patch_embedding.bias" not in shapes
    assert "vision_model.encoder.layers.23.mlp.fc1.weight" in shapes
    assert shapes["visual_projection.weight"] == (768, 1024)


def test_clip_vision_loads_and_encodes(comfy_env, run_node, clip_vision_path: Path) -> None:
    """``CLIPVisionLoader`` detects ViT-L/14 224 px; ``encode_image`` gives finite 257-token states.

    Hidden states (ComfyUI 0.3.64): ``ClipVisionModel.return_all_hidden_states`` is a plain instance
    attribute (False for CLIP, True only for SigLIP); setting it to True makes ``encode_image`` call
    ``model(pixel_values=..., intermediate_output="all")`` and return ``all_hidden_states`` of shape
    [B, 24, 257, 1024]: the outputs of the 24 encoder layers, *without* the embedding output that
    Hugging Face's ``hidden_states`` puts first (so HF ``hidden_states[k]`` is ``all_hidden_states[:, k - 1]``).
    The last entry equals ``last_hidden_state``, which is the encoder output before ``post_layernorm``.
    """
    (clip_vision,) = run_node(comfy_env.nodes.CLIPVisionLoader, clip_name=clip_vision_path.name)
    assert clip_vision.image_size == 224
    with safe_open(str(clip_vision_path), "pt") as f:
        file_shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert {k: tuple(v.shape) for k, v in clip_vision.get_sd().items()} == file_shapes
    assert not clip_vision.return_all_hidden_states

    image = torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = clip_vision.encode_image(image)
    assert out["last_hidden_state"].shape == (1, 257, 1024)
    assert torch.isfinite(out["last_hidden_state"]).all()
    assert out["image_embeds"].shape == (1, 768)
    assert out["penultimate_hidden_states"].shape == (1, 257, 1024)

    clip_vision.return_all_hidden_states = True
    try:
        with torch.inference_mode():
            out_all = clip_vision.encode_image(image)
    finally:
        clip_vision.return_all_hidden_states = False
    hidden = out_all["all_hidden_states"]
    assert hidden.shape == (1, 24, 257, 1024)
    assert torch.isfinite(hidden).all()
    torch.testing.assert_close(hidden[:, -1], out_all["last_hidden_state"])
    torch.testing.assert_close(hidden[:, -2], out["penultimate_hidden_states"])
    torch.testing.assert_close(out_all["last_hidden_state"], out["last_hidden_state"])
