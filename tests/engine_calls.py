"""Engine calls for the core tests: an edit run of some steps, :class:`AttentionCall` values as the patches make
them inside ComfyUI (the host's attention is plain scaled dot-product attention), and :class:`FakePatcher`, the
slice of ComfyUI's ModelPatcher that registration uses. No ComfyUI here; the host tests use the real ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from spdinv_pack.attention_patches.attention_call import AttentionCall
from spdinv_pack.attention_patches.attention_math import plain_attention
from spdinv_pack.attention_patches.run import EditRun
from spdinv_pack.spdinv.branches import Chunks


def edit_run(steps: int, latent_shape: Sequence[int] = (1, 4, 8, 8)) -> EditRun:
    """A run of ``steps`` steps on a made-up descending grid."""
    return EditRun(torch.linspace(float(steps), 0.0, steps + 1), tuple(latent_shape))


def attention_call(kind: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, site: Any,
                   run: EditRun | None, step: int | None, chunks: Sequence[int] = (0,), shared_source: bool = False,
                   inner: Any = None, **layout: Any) -> AttentionCall:
    """One call at ``site`` in ``run`` (``None``: outside an edit) at ``step``; ``inner`` is another node's
    attention ``inner(q, k, v)`` on the site."""
    return AttentionCall(q, k, v, heads, kind, site, run, Chunks(chunks, shared_source),
                         lambda q, k, v: plain_attention(q, k, v, heads), inner, step=step, **layout)


def copy_nested(d: Any) -> Any:
    """ComfyUI's clone of ``model_options`` since v0.14: dicts and lists copied, everything else shared."""
    if isinstance(d, dict):
        return {k: copy_nested(v) for k, v in d.items()}
    if isinstance(d, list):
        return [copy_nested(v) for v in d]
    return d


class FakePatcher:
    """The slice of ComfyUI's ModelPatcher that registration uses; ``config`` stands for ``model.model_config``
    (its class is what :meth:`Family.of` matches)."""

    def __init__(self, diffusion_model: nn.Module, config: Any = None):
        self.diffusion_model = diffusion_model
        self.model = type("BaseModel", (), {"model_config": config})() if config is not None else None
        self.model_options: dict = {"transformer_options": {}}

    def clone(self) -> FakePatcher:
        n = FakePatcher(self.diffusion_model)
        n.model = self.model
        n.model_options = copy_nested(self.model_options)
        return n

    def get_model_object(self, name: str) -> Any:
        assert name == "diffusion_model"
        return self.diffusion_model

    def set_model_patch_replace(self, patch: Any, name: str, block: Any, number: int, index: int | None = None):
        key = (block, number, index) if name != "dit" else (block, number)
        to = self.model_options["transformer_options"]
        to.setdefault("patches_replace", {}).setdefault(name, {})[key] = patch

    def set_model_attn1_replace(self, patch: Any, block: str, number: int, index: int | None = None):
        self.set_model_patch_replace(patch, "attn1", block, number, index)

    def set_model_attn2_replace(self, patch: Any, block: str, number: int, index: int | None = None):
        self.set_model_patch_replace(patch, "attn2", block, number, index)

    def set_model_attn1_patch(self, patch: Any):
        self.model_options["transformer_options"].setdefault("patches", {}).setdefault("attn1_patch", []).append(patch)

    def add_wrapper_with_key(self, wrapper_type: str, key: str, wrapper: Any):
        wrappers = self.model_options["transformer_options"].setdefault("wrappers", {})
        wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)
