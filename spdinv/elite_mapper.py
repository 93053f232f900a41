"""ELITE's global and local mappers: CLIP image features to word embeddings, with a safe checkpoint reader.

ELITE maps a reference image's CLIP ViT-L/14 vision features (224 px, 257 tokens = CLS + 16x16 patches,
width 1024) into the text encoder's word-embedding space (768 for SD1.x). Five feature tensors feed the
mappers, in this order: level 0 is the vision encoder's last hidden state (before the post-layernorm),
then the outputs of encoder layers 4, 8, 12 and 16, which HF transformers exposes as ``hidden_states[4]``,
``[8]``, ``[12]``, ``[16]`` (``hidden_states[0]`` is the embedding output). ``clip_features`` assembles
that list from HF-indexed hidden states.

ComfyUI indexes differently: its ``all_hidden_states[:, k]`` is the output of layer ``k + 1``, i.e. HF
``hidden_states[k + 1]``, so a ComfyUI caller passes ``all_hidden_states[:, k - 1]`` for HF index ``k``
(layers 4, 8, 12, 16 are ComfyUI indices 3, 7, 11, 15).

Both mappers hold, per level ``i``, two MLPs ``mapping_{i}`` (for the CLS token) and ``mapping_patch_{i}``
(for the patch tokens), each ``Linear, LayerNorm, LeakyReLU, Linear, LayerNorm, LeakyReLU, Linear``. The
global mapper turns each level into one word (CLS output plus the mean patch output); SPDInv uses word 0.
The local mapper keeps one embedding per patch (CLS output broadcast over the patch outputs, averaged over
the levels) and zeroes the patches outside the object mask.

The published checkpoints also carry the bias-free cross-attention K/V projections ELITE trained alongside
the mappers (keys ending in ``_to_k.weight`` / ``_to_v.weight``); SPDInv does not use them, so
``read_mapper_file`` drops them and lists them in ``MapperFile.ignored``. Nothing here imports ComfyUI.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_LAYERS = (4, 8, 12, 16)
"""HF ``hidden_states`` indices of the feature levels 1..4 (level 0 is the last hidden state)."""

_IGNORED_SUFFIXES = ("_to_k.weight", "_to_v.weight")
_FORMAT_HINT = "it must be a plain state dict (.pt saved with torch.save(state_dict) or .safetensors)"
_LIST_LIMIT = 8


def _mlp(input_dim: int, output_dim: int) -> nn.Sequential:
    """One ELITE mapping MLP; its layer order fixes the state-dict indices 0, 1, 3, 4, 6."""
    return nn.Sequential(
        nn.Linear(input_dim, input_dim),
        nn.LayerNorm(input_dim),
        nn.LeakyReLU(),
        nn.Linear(input_dim, input_dim),
        nn.LayerNorm(input_dim),
        nn.LeakyReLU(),
        nn.Linear(input_dim, output_dim),
    )


class _Mappers(nn.Module):
    """The ``levels`` pairs of CLS / patch MLPs shared by both mappers, under the published attribute names."""

    def __init__(self, input_dim: int = 1024, output_dim: int = 768, levels: int = 5) -> None:
        super().__init__()
        self.input_dim, self.output_dim, self.levels = input_dim, output_dim, levels
        for i in range(levels):
            setattr(self, f"mapping_{i}", _mlp(input_dim, output_dim))
            setattr(self, f"mapping_patch_{i}", _mlp(input_dim, output_dim))

    def _level_outputs(self, features: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per level, the CLS output ``[B, 1, D]`` and the patch outputs ``[B, N, D]``.

        Features are cast to the weights' dtype and device, so fp16 CLIP outputs feed a float32 mapper.
        """
        if len(features) != self.levels:
            raise ValueError(f"expected {self.levels} feature tensors, got {len(features)}")
        weight = self.mapping_0[0].weight
        outputs = []
        for i, emb in enumerate(features):
            if emb.ndim != 3 or emb.shape[1] < 2 or emb.shape[2] != self.input_dim:
                raise ValueError(
                    f"feature level {i}: expected [B, tokens >= 2, {self.input_dim}], got {tuple(emb.shape)}"
                )
            emb = emb.to(device=weight.device, dtype=weight.dtype)
            cls = getattr(self, f"mapping_{i}")(emb[:, :1])
            patches = getattr(self, f"mapping_patch_{i}")(emb[:, 1:])
            outputs.append((cls, patches))
        return outputs


class GlobalMapper(_Mappers):
    """ELITE's global mapper: one word per feature level, ``[B, levels, output_dim]``."""

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Word ``i`` is the CLS MLP output plus the mean of the patch MLP outputs at level ``i``."""
        words = [cls + patches.mean(dim=1, keepdim=True) for cls, patches in self._level_outputs(features)]
        return torch.cat(words, dim=1)


class LocalMapper(_Mappers):
    """ELITE's local mapper: one masked embedding per image patch, ``[B, patches, output_dim]``."""

    def forward(self, features: Sequence[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        """Level-averaged CLS + patch outputs per patch, times the object mask nearest-resized to the patch grid.

        ``mask`` is ``[B, H, W]`` (or ``[H, W]``, or ``[B, 1, H, W]``) with values in 0..1; a batch of one is
        broadcast over the features' batch. ``None`` keeps every patch.
        """
        levels = self._level_outputs(features)
        local = torch.stack([cls + patches for cls, patches in levels]).mean(dim=0)
        if mask is None:
            return local
        batch, tokens = local.shape[:2]
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"a mask needs a square patch grid, got {tokens} patch tokens")
        if mask.ndim == 2:
            mask = mask[None]
        if mask.ndim == 4 and mask.shape[1] == 1:
            mask = mask[:, 0]
        if mask.ndim != 3 or mask.shape[0] not in (1, batch):
            raise ValueError(f"mask: expected [B, H, W] with B in (1, {batch}), got {tuple(mask.shape)}")
        mask = mask[:, None].to(device=local.device, dtype=local.dtype)
        grid = F.interpolate(mask, size=(side, side), mode="nearest")
        return local * grid.reshape(grid.shape[0], tokens, 1)


@dataclass
class MapperFile:
    """A mapper checkpoint's MLP tensors, and the keys of the unused K/V projections that were dropped."""

    state: dict[str, torch.Tensor]
    ignored: list[str] = field(default_factory=list)
    path: str = ""


def _bad_file(path: Path, reason: str) -> ValueError:
    return ValueError(f"{path}: {reason}; {_FORMAT_HINT}")


def _unpickling_reason(exc: pickle.UnpicklingError) -> str:
    """A short reason from torch's weights-only refusal, without its advice to load with weights_only=False."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    detail = found.group(1).strip().split(". ")[0] if found else ""
    if "Unsupported global" in detail:
        return f"refused: it pickles objects other than tensors, and loading those could run code ({detail})"
    return f"not a tensor pickle ({detail or type(exc).__name__})"


def read_mapper_file(path: str | os.PathLike) -> MapperFile:
    """Read an ELITE mapper checkpoint without executing code, keeping only the mapping MLP tensors.

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True)``,
    which refuses pickles that would build arbitrary objects. A dict nested under one key (e.g.
    ``{"state_dict": {...}}``) is unwrapped. Keys ending in ``_to_k.weight`` / ``_to_v.weight`` are dropped
    and listed in ``ignored``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mapper file not found: {path}")
    if path.stat().st_size == 0:
        raise _bad_file(path, "the file is empty")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _bad_file(path, _unpickling_reason(exc)) from exc
    except Exception as exc:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
        detail = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
        raise _bad_file(path, f"cannot be read as a tensor state dict ({detail})") from exc
    if isinstance(loaded, dict) and len(loaded) == 1:
        (only,) = loaded.values()
        if isinstance(only, dict):
            loaded = only
    if not isinstance(loaded, dict):
        raise _bad_file(path, f"holds a {type(loaded).__name__}, not a dict of tensors")
    not_tensors = [str(k) for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise _bad_file(path, f"non-tensor entries: {_abbreviate(sorted(not_tensors))}")
    state = {k: v for k, v in loaded.items() if not k.endswith(_IGNORED_SUFFIXES)}
    ignored = sorted(k for k in loaded if k.endswith(_IGNORED_SUFFIXES))
    return MapperFile(state=state, ignored=ignored, path=str(path))


def _abbreviate(names: Sequence[str]) -> str:
    """All names when few, else the first few and how many more, so error messages stay readable."""
    if len(names) <= _LIST_LIMIT:
        return ", ".join(names)
    return f"{', '.join(names[:_LIST_LIMIT])}, ... ({len(names) - _LIST_LIMIT} more, {len(names)} in all)"


def build_mapper(
    file: MapperFile,
    kind: str = "global",
    *,
    input_dim: int = 1024,
    output_dim: int = 768,
    levels: int = 5,
) -> GlobalMapper | LocalMapper:
    """A frozen float32 ``GlobalMapper`` or ``LocalMapper`` loaded bit-exactly from ``file``.

    Every key problem (missing, unexpected, mis-shaped, non-float) is collected into one ValueError so a
    wrong file is diagnosed in one go. The dimensions default to the published ViT-L/14 -> SD1.x mappers.
    """
    classes = {"global": GlobalMapper, "local": LocalMapper}
    if kind not in classes:
        raise ValueError(f"kind must be 'global' or 'local', got {kind!r}")
    mapper = classes[kind](input_dim=input_dim, output_dim=output_dim, levels=levels)
    expected = mapper.state_dict()
    problems = []
    missing = [k for k in expected if k not in file.state]
    unexpected = sorted(k for k in file.state if k not in expected)
    if missing:
        problems.append(f"missing {len(missing)} keys: {_abbreviate(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys: {_abbreviate(unexpected)}")
    for key, reference in expected.items():
        tensor = file.state.get(key)
        if tensor is None:
            continue
        if tensor.shape != reference.shape:
            problems.append(f"{key}: expected {tuple(reference.shape)}, got {tuple(tensor.shape)}")
        elif not tensor.is_floating_point():
            problems.append(f"{key}: expected a floating-point tensor, got {tensor.dtype}")
    if problems:
        source = file.path or "mapper state"
        raise ValueError(
            f"{source} is not an ELITE {kind} mapper ({levels} levels, {input_dim}->{output_dim}): "
            + "; ".join(problems)
        )
    mapper.load_state_dict({k: file.state[k] for k in expected}, strict=True)
    mapper.float().eval().requires_grad_(False)
    return mapper


def clip_features(
    last_hidden_state: torch.Tensor, hidden_states: Sequence[torch.Tensor] | torch.Tensor
) -> list[torch.Tensor]:
    """The mappers' five inputs: the last hidden state, then HF ``hidden_states[k]`` for ``k`` in FEATURE_LAYERS.

    ``hidden_states`` is HF-indexed (index 0 is the embedding output): a tuple/list, or a tensor stacked
    along dim 0. For ComfyUI's ``all_hidden_states[:, k]`` (layer ``k + 1``) see the module docstring.
    """
    count = len(hidden_states)
    if count <= max(FEATURE_LAYERS):
        raise ValueError(f"hidden_states needs index {max(FEATURE_LAYERS)} (HF indexing), got {count} entries")
    features = [last_hidden_state] + [hidden_states[k] for k in FEATURE_LAYERS]
    shapes = {tuple(f.shape) for f in features}
    if len(shapes) != 1:
        raise ValueError(f"feature tensors differ in shape: {[tuple(f.shape) for f in features]}")
    return features
