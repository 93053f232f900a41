"""UNet calls whose unconditional rows read a tuned prompt embedding (null-text inversion).

Null-text inversion tunes the negative prompt's token embedding per step and photo; ComfyUI's conditioning
holds one fixed tensor. :class:`NullEmbedding` (a ``model_function_wrapper``) puts the embedding of the
call's step into the text rows (``c_crossattn``) of every unconditional chunk, photo by photo, leaving the
negative's other extras (SDXL's pooled ``y``, ControlNets) as they are. Gradients flow into the embedding, so
the inversion can tune it through the model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..spdinv.branches import COND
from .row_selection import ModelFunctionWrapper, call_through


class NullEmbedding:
    """``model_function_wrapper`` that replaces the unconditional chunks' text rows by ``embedding(sigma)``
    (``[photos, tokens, width]``); ``inner`` is a wrapper that was already on the model, run after."""

    def __init__(self, embedding: Callable[[float], torch.Tensor], inner: ModelFunctionWrapper | None = None):
        self.embedding = embedding
        self.inner = inner

    def __call__(self, apply_model: Callable[..., torch.Tensor], args: dict) -> torch.Tensor:
        x, c, chunks = args["input"], args["c"], args["cond_or_uncond"]
        text = c.get("c_crossattn")
        if text is not None and any(k != COND for k in chunks):
            per_chunk = x.shape[0] // len(chunks)
            emb = self.embedding(float(args["timestep"].flatten()[0])).to(device=text.device, dtype=text.dtype)
            photos = emb.shape[0]
            if per_chunk % photos:
                raise ValueError(f"null-text embeddings for {photos} photos cannot fill a chunk of {per_chunk} rows")
            emb = emb.repeat(per_chunk // photos, 1, 1)
            if text.shape[1] % emb.shape[1]:
                raise ValueError(f"null-text embeddings of {emb.shape[1]} tokens cannot fill a text of "
                                 f"{text.shape[1]}; encode the prompts with at most 77 tokens")
            emb = emb.repeat(1, text.shape[1] // emb.shape[1], 1)
            rows = [emb if k != COND else text[i * per_chunk:(i + 1) * per_chunk] for i, k in enumerate(chunks)]
            args = {**args, "c": {**c, "c_crossattn": torch.cat(rows)}}
        return call_through(apply_model, args, self.inner)


def step_lookup(sigmas: torch.Tensor, embeddings: torch.Tensor) -> Callable[[float], torch.Tensor]:
    """``embedding(sigma)``: the tuned embedding of the grid step whose sigma is nearest (``embeddings[i]`` for
    ``sigmas[i]``, the step's starting sigma)."""
    grid = sigmas[: embeddings.shape[0]].double()

    def embedding(sigma: float) -> torch.Tensor:
        return embeddings[int((grid - sigma).abs().argmin())]

    return embedding
