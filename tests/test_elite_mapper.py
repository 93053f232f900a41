"""ELITE mappers: published key layout, hand-checked forward passes, and a checkpoint reader that runs no code."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from spdinv_pack.spdinv.elite_mapper import (
    FEATURE_LAYERS,
    GlobalMapper,
    LocalMapper,
    MapperFile,
    build_mapper,
    clip_features,
    read_mapper_file,
)

SMALL = {"input_dim": 8, "output_dim": 4, "levels": 5}
KV_KEYS = [
    "down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.weight",
    "down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v.weight",
    "mid_block_attentions_0_transformer_blocks_0_attn2_to_k.weight",
]


def _published_keys(levels: int = 5) -> dict[str, tuple[int, ...]]:
    """The published mapper keys and their shapes at 1024 -> 768."""
    shapes = {}
    for i in range(levels):
        for name in (f"mapping_{i}", f"mapping_patch_{i}"):
            for idx in (0, 3):
                shapes[f"{name}.{idx}.weight"] = (1024, 1024)
                shapes[f"{name}.{idx}.bias"] = (1024,)
            for idx in (1, 4):
                shapes[f"{name}.{idx}.weight"] = (1024,)
                shapes[f"{name}.{idx}.bias"] = (1024,)
            shapes[f"{name}.6.weight"] = (768, 1024)
            shapes[f"{name}.6.bias"] = (768,)
    return shapes


def _random_state(input_dim: int = 8, output_dim: int = 4, levels: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """A small mapper state dict with random values everywhere, LayerNorm affine parameters included."""
    generator = torch.Generator().manual_seed(seed)
    template = GlobalMapper(input_dim=input_dim, output_dim=output_dim, levels=levels).state_dict()
    return {k: torch.randn(v.shape, generator=generator) for k, v in template.items()}


def _checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state plus fake cross-attention K/V weights, as in the published files."""
    fake = {k: torch.randn(6, 6, generator=torch.Generator().manual_seed(i)) for i, k in enumerate(KV_KEYS)}
    return {**state, **fake}


def _mlp_by_hand(state: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    """The ELITE MLP written out with explicit weights."""
    for linear, norm in ((0, 1), (3, 4)):
        x = x @ state[f"{prefix}.{linear}.weight"].T + state[f"{prefix}.{linear}.bias"]
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, unbiased=False, keepdim=True)
        x = (x - mean) / torch.sqrt(var + 1e-5) * state[f"{prefix}.{norm}.weight"] + state[f"{prefix}.{norm}.bias"]
        x = torch.where(x >= 0, x, 0.01 * x)
    return x @ state[f"{prefix}.6.weight"].T + state[f"{prefix}.6.bias"]


def _features(batch: int = 2, tokens: int = 257, dim: int = 8, levels: int = 5, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, tokens, dim, generator=generator) for _ in range(levels)]


def test_published_size_key_layout_and_shapes():
    expected = _published_keys()
    assert len(expected) == 100
    for cls in (GlobalMapper, LocalMapper):
        mapper = cls()
        shapes = {k: tuple(v.shape) for k, v in mapper.state_dict().items()}
        assert shapes == expected
    built = build_mapper(MapperFile(state=mapper.state_dict()), "local")
    features = _features(batch=1, dim=1024)
    assert built(features).shape == (1, 256, 768)
    assert built(features, torch.ones(1, 512, 512)).shape == (1, 256, 768)
    global_mapper = build_mapper(MapperFile(state=GlobalMapper().state_dict()), "global")
    assert global_mapper(features).shape == (1, 5, 768)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_published_layout_loads_bit_exactly_and_ignores_kv(tmp_path, suffix):
    state = _random_state()
    path = tmp_path / f"global_mapper{suffix}"
    if suffix == ".pt":
        torch.save(_checkpoint(state), path)
    else:
        save_file(_checkpoint(state), str(path))
    file = read_mapper_file(path)
    assert file.ignored == sorted(KV_KEYS)
    assert set(file.state) == set(state)
    for kind, cls in (("global", GlobalMapper), ("local", LocalMapper)):
        mapper = build_mapper(file, kind, **SMALL)
        assert type(mapper) is cls
        assert not mapper.training
        params = dict(mapper.named_parameters())
        assert set(params) == set(state)
        for key, param in params.items():
            assert param.dtype == torch.float32 and not param.requires_grad
            assert torch.equal(param, state[key]), key


def test_pt_and_safetensors_give_identical_tensors(tmp_path):
    state = _checkpoint(_random_state(seed=3))
    torch.save(state, tmp_path / "m.pt")
    save_file(state, str(tmp_path / "m.safetensors"))
    from_pt, from_st = read_mapper_file(tmp_path / "m.pt"), read_mapper_file(tmp_path / "m.safetensors")
    assert from_pt.ignored == from_st.ignored
    assert from_pt.state.keys() == from_st.state.keys()
    assert all(torch.equal(from_pt.state[k], from_st.state[k]) for k in from_pt.state)


def test_half_precision_file_loads_as_exact_float32(tmp_path):
    state = {k: v.half() for k, v in _random_state(seed=4).items()}
    torch.save(state, tmp_path / "half.pt")
    mapper = build_mapper(read_mapper_file(tmp_path / "half.pt"), **SMALL)
    for key, param in mapper.named_parameters():
        assert param.dtype == torch.float32
        assert torch.equal(param, state[key].float())


def test_global_forward_matches_hand_computation():
    state = _random_state(seed=5)
    mapper = build_mapper(MapperFile(state=state), "global", **SMALL)
    features = _features(tokens=5)
    words = []
    for i, emb in enumerate(features):
        cls = _mlp_by_hand(state, f"mapping_{i}", emb[:, :1])
        patches = _mlp_by_hand(state, f"mapping_patch_{i}", emb[:, 1:])
        words.append(cls + patches.mean(dim=1, keepdim=True))
    out = mapper(features)
    assert out.shape == (2, 5, 4)
    torch.testing.assert_close(out, torch.cat(words, dim=1), rtol=1e-5, atol=1e-5)


def test_global_forward_casts_half_features():
    mapper = build_mapper(MapperFile(state=_random_state(seed=6)), **SMALL)
    features = [f.half() for f in _features(tokens=5)]
    out = mapper(features)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, mapper([f.float() for f in features]))


def test_local_forward_broadcasts_cls_and_averages_levels():
    state = _random_state(seed=7)
    mapper = build_mapper(MapperFile(state=state), "local", **SMALL)
    features = _features()
    levels = [
        _mlp_by_hand(state, f"mapping_{i}", emb[:, :1]) + _mlp_by_hand(state, f"mapping_patch_{i}", emb[:, 1:])
        for i, emb in enumerate(features)
    ]
    expected = sum(levels) / len(levels)
    out = mapper(features)
    assert out.shape == (2, 256, 4)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mapper(features, None), out, rtol=0, atol=0)


def test_local_mask_is_nearest_resized_to_the_patch_grid():
    mapper = build_mapper(MapperFile(state=_random_state(seed=8)), "local", **SMALL)
    features = _features()
    full = mapper(features)
    mask = torch.zeros(2, 32, 32)
    mask[0, :, :16] = 1.0  # left half of the image -> grid columns 0..7
    mask[1, ::2, ::2] = 1.0  # nearest 32 -> 16 samples the even pixels only: every patch kept
    out = mapper(features, mask)
    grid_cols = torch.arange(256) % 16
    kept = grid_cols < 8
    assert torch.equal(out[0, kept], full[0, kept])
    assert torch.all(out[0, ~kept] == 0)
    assert torch.equal(out[1], full[1])
    odd = torch.zeros(1, 32, 32)
    odd[0, 1::2, 1::2] = 1.0  # odd pixels are never sampled: every patch masked out
    assert torch.all(mapper(features, odd) == 0)


def test_local_mask_shapes():
    mapper = build_mapper(MapperFile(state=_random_state(seed=9)), "local", **SMALL)
    features = _features()
    mask = torch.ones(64, 64)
    mask[:32] = 0.0
    expected = mapper(features, mask.expand(2, 64, 64))
    assert torch.equal(mapper(features, mask), expected)
    assert torch.equal(mapper(features, mask[None, None]), expected)
    with pytest.raises(ValueError, match="mask"):
        mapper(features, torch.ones(3, 64, 64))


def test_forward_rejects_wrong_feature_count_and_width():
    mapper = GlobalMapper(**SMALL)
    with pytest.raises(ValueError, match="expected 5 feature tensors, got 4"):
        mapper(_features(levels=4))
    with pytest.raises(ValueError, match="feature level 0"):
        mapper(_features(dim=6))


class _WritesMarker:
    """Unpickling this calls a harmless builtin that writes a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_payload_really_runs_under_plain_pickle(tmp_path):
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(_WritesMarker(marker)))
    assert marker.exists()


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_executing_pickle_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"mapping_0.0.weight": torch.zeros(2, 2), "extra": _WritesMarker(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle, protocol=2)
    with pytest.raises(ValueError, match="must be a plain state dict") as info:
        read_mapper_file(path)
    assert "evil.pt" in str(info.value) and "could run code" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_empty_and_truncated_files_are_refused(tmp_path, suffix):
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.*must be a plain state dict"):
        read_mapper_file(empty)
    whole = tmp_path / f"whole{suffix}"
    state = _random_state()
    if suffix == ".pt":
        torch.save(state, whole)
    else:
        save_file(state, str(whole))
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut.*must be a plain state dict"):
        read_mapper_file(cut)


def test_garbage_file_is_not_called_code(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="must be a plain state dict") as info:
        read_mapper_file(path)
    assert "could run code" not in str(info.value)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_mapper_file(tmp_path / "absent.pt")


@pytest.mark.parametrize(
    "content, message",
    [
        ([torch.zeros(1)], "holds a list"),
        ({"mapping_0.0.weight": 1.0}, "non-tensor entries: mapping_0.0.weight"),
        ({"a": {"b": torch.zeros(1)}, "c": torch.zeros(1)}, "non-tensor entries: a"),
    ],
)
def test_non_tensor_content_is_refused(tmp_path, content, message):
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match=message):
        read_mapper_file(path)


def test_nested_state_dict_is_accepted(tmp_path):
    state = _random_state(seed=10)
    torch.save({"state_dict": _checkpoint(state)}, tmp_path / "nested.pt")
    file = read_mapper_file(tmp_path / "nested.pt")
    assert file.ignored == sorted(KV_KEYS)
    mapper = build_mapper(file, "global", **SMALL)
    assert all(torch.equal(p, state[k]) for k, p in mapper.named_parameters())


def test_wrong_keys_are_reported_together(tmp_path):
    state = _random_state()
    del state["mapping_3.4.bias"], state["mapping_patch_1.6.weight"]
    state["mapping_0.0.weight"] = torch.zeros(10, 10)
    state["mapping_9.0.weight"] = torch.zeros(8, 8)
    torch.save(state, tmp_path / "wrong.pt")
    with pytest.raises(ValueError) as info:
        build_mapper(read_mapper_file(tmp_path / "wrong.pt"), **SMALL)
    message = str(info.value)
    assert "wrong.pt" in message
    assert "missing 2 keys: mapping_patch_1.6.weight, mapping_3.4.bias" in message
    assert "unexpected 1 keys: mapping_9.0.weight" in message
    assert "mapping_0.0.weight: expected (8, 8), got (10, 10)" in message


def test_long_missing_list_is_abbreviated_and_published_shape_named():
    with pytest.raises(ValueError) as info:
        build_mapper(MapperFile(state=_random_state()), "global")
    message = str(info.value)
    assert "missing" not in message
    assert "mapping_0.0.weight: expected (1024, 1024), got (8, 8)" in message
    with pytest.raises(ValueError) as info:
        build_mapper(MapperFile(state={}), "local", **SMALL)
    message = str(info.value)
    assert "missing 100 keys: mapping_0.0.weight" in message
    assert "(92 more, 100 in all)" in message


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="'global' or 'local'"):
        build_mapper(MapperFile(state=_random_state()), "both", **SMALL)


def test_clip_features_picks_hf_layers():
    hidden = [torch.full((1, 257, 8), float(k)) for k in range(25)]
    last = torch.full((1, 257, 8), -1.0)
    for stacked in (tuple(hidden), torch.stack(hidden)):
        features = clip_features(last, stacked)
        assert [float(f[0, 0, 0]) for f in features] == [-1.0, *map(float, FEATURE_LAYERS)]
    with pytest.raises(ValueError, match="index 16"):
        clip_features(last, hidden[:16])
