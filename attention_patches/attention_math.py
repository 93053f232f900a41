"""Attention maths shared by the engines, on ``[B, N, heads·d]`` tensors as ComfyUI's attention takes them.

What attention computes, apart from where an engine installs it (as diffusers' attention processors keep
the two apart); which attention a patched site runs is the call's (:mod:`.attention_call`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
"""``attend(q, k, v, heads) -> out`` on ``[B, N, heads·d]`` tensors: e.g. the host's optimised attention."""


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, N, heads·d]`` → ``[B, heads, N, d]``."""
    b, n, inner = t.shape
    return t.reshape(b, n, heads, inner // heads).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """``[B, heads, N, d]`` → ``[B, N, heads·d]``."""
    b, heads, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, heads * d)


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Scaled dot-product attention (used when no host attention is given)."""
    return merge_heads(F.scaled_dot_product_attention(split_heads(q, heads), split_heads(k, heads),
                                                      split_heads(v, heads)))


def attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax attention probabilities ``[B, heads, Nq, Nk]`` in float32."""
    qh, kh = split_heads(q, heads).float(), split_heads(k, heads).float()
    return (qh @ kh.transpose(-1, -2) * qh.shape[-1] ** -0.5).softmax(-1)


def apply_probs(probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``probs @ v`` back to ``[B, Nq, heads·d]`` in ``v``'s dtype."""
    vh = split_heads(v, probs.shape[1])
    return merge_heads(probs.to(vh.dtype) @ vh)


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, key_mask: torch.Tensor, query_mask: torch.Tensor
) -> torch.Tensor:
    """Queries in ``query_mask`` attend to keys in ``key_mask`` only, the others to keys outside it.

    ``q`` ``[B, Nq, inner]``, ``k``/``v`` ``[B, Nk, inner]``, ``key_mask`` ``[B, Nk]`` and ``query_mask``
    ``[B, Nq]`` bool. A row whose key mask is empty or full has nothing to keep apart: it attends to all keys.
    """
    qh, kh, vh = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
    some = key_mask.any(-1) & ~key_mask.all(-1)
    fg_keys = torch.where(some[:, None], key_mask, torch.ones_like(key_mask))
    bg_keys = torch.where(some[:, None], ~key_mask, torch.ones_like(key_mask))
    fg = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=fg_keys[:, None, None, :])
    bg = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bg_keys[:, None, None, :])
    return merge_heads(torch.where(query_mask[:, None, :, None], fg, bg))
