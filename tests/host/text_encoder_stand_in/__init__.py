"""Test-only ComfyUI node that stands in for the real text encoders of Flux.1, Flux.2, Qwen-Image, Chroma and Wan.

T5-XXL (4.7 B), Qwen3-4B / Mistral-3 24B and Qwen2.5-VL 7B cannot run in the CPU host tests, so the server tests
replace a workflow's text-encoder loader + ``CLIPTextEncode`` with this node (``FluxGuidance`` stays). It returns
CONDITIONING in each family's real shapes, with random values seeded from the text so that different prompts
differ and the same prompt is the same: Flux.1 T5 tokens ``[1, L, 4096]`` + CLIP-L ``pooled_output [1, 768]``;
Flux.2 Klein 4B ``[1, 512, 7680]`` (three stacked Qwen3-4B layers, padded to 512 tokens as ComfyUI pads it);
Qwen-Image ``[1, L, 3584]``; Chroma T5 tokens ``[1, L, 4096]``; Wan umT5-XXL ``[1, 512, 4096]`` (padded to 512 tokens
as ComfyUI pads it). Encoders without a pooled output give
``pooled_output`` None, as ComfyUI's do. Loaded into the test server next to the pack; never shipped as a node of
the pack. :class:`UMT5ClipStandIn` is a CLIP for the engines that read a prompt's tokens (Prompt-to-Prompt on Wan).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch

FAMILIES = {"flux": (4096, 768), "flux2": (7680, None), "qwen_image": (3584, None), "chroma": (4096, None),
            "wan": (4096, None)}
"""Loader ``type`` -> (text width, pooled width or None: then ``pooled_output`` is None, as for a T5-only
encoder)."""
PADDED_TOKENS = {"flux2": 512, "wan": 512}
"""Families whose encoder pads every prompt to a fixed length."""


def stand_in_conditioning(text: str, family: str) -> list:
    """CONDITIONING for ``text`` in ``family``'s shapes, seeded from the text."""
    width, pooled = FAMILIES[family]
    gen = torch.Generator().manual_seed(zlib.crc32(f"{family}:{text}".encode()))
    tokens = PADDED_TOKENS.get(family, 4 + len(text.split()))
    extra = {"pooled_output": torch.randn(1, pooled, generator=gen) if pooled else None}
    return [[torch.randn(1, tokens, width, generator=gen), extra]]


class UMT5ClipStandIn:
    """A CLIP for Wan prompts (tests only): ComfyUI's own umT5 tokenizer classes (``WanT5Tokenizer``: 512 positions,
    no start token, an end token, padding 0, prompts split into words as ComfyUI splits them) over a stand-in
    SentencePiece vocabulary, the pile T5 tokenizer ComfyUI ships (umT5's own comes inside the 11 GB encoder file);
    and encodings ``[1, 512, 4096]`` made per token, seeded from the token id, padding zeroed as ComfyUI zeroes masked
    positions, so that a word has the same encoding in both prompts, as it roughly has in a real encoder."""

    def __init__(self) -> None:
        from comfy.text_encoders import wan

        vocabulary = Path(wan.__file__).parent / "t5_pile_tokenizer" / "tokenizer.model"
        self.tokenizer = wan.WanT5Tokenizer(tokenizer_data={"spiece_model": vocabulary.read_bytes()})

    def tokenize(self, text: str) -> dict:
        return self.tokenizer.tokenize_with_weights(text)

    def encode_from_tokens_scheduled(self, tokens: dict) -> list:
        width = FAMILIES["wan"][0]
        rows = [torch.zeros(width) if token == 0 else torch.randn(width, generator=torch.Generator().manual_seed(token))
                for token, *_ in tokens["umt5xxl"][0]]
        return [[torch.stack(rows)[None], {"pooled_output": None}]]


class SPDInvTestTextEncoderStandIn:
    """CONDITIONING of a prompt in a family's real shapes, without the real encoder (tests only)."""

    CATEGORY = "SPDInv/tests"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802 - ComfyUI's V1 node interface
        return {"required": {"text": ("STRING", {"multiline": True}), "family": (list(FAMILIES),)}}

    def encode(self, text: str, family: str) -> tuple[list]:
        return (stand_in_conditioning(text, family),)


class SPDInvTestUMT5ClipStandIn:
    """A Wan text-encoder loader's CLIP for nodes that read a prompt's tokens (:class:`UMT5ClipStandIn`; tests only)."""

    CATEGORY = "SPDInv/tests"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802 - ComfyUI's V1 node interface
        return {"required": {}}

    def load(self) -> tuple[UMT5ClipStandIn]:
        return (UMT5ClipStandIn(),)


NODE_CLASS_MAPPINGS = {"SPDInvTestTextEncoderStandIn": SPDInvTestTextEncoderStandIn,
                       "SPDInvTestUMT5ClipStandIn": SPDInvTestUMT5ClipStandIn}
