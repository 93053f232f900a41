"""Token ids and token text from a ComfyUI CLIP, for the token mappings of the attention engines.

Uses ``clip.tokenize`` (the tokenisation the text encoder sees, word by word as ComfyUI splits prompts) and
the word tokenizer behind it (CLIP's BPE, or Wan's umT5 SentencePiece) for start/end ids, the window and token
text. Prompts are read as ComfyUI parses them:
weight syntax such as ``(fluffy cat:1.3)`` scales those words in the encoding, and their tokens are aligned
and found like any other words.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ..attention_patches.token_alignment import PromptTokens, TokenizeFn, find_phrase

T = TypeVar("T")


def named(input_name: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, with a ``ValueError`` message prefixed by the input it is about."""
    try:
        return fn(*args)
    except ValueError as e:
        raise ValueError(f"{input_name}: {e}") from None


def phrase_positions(prompt: PromptTokens, spec: str, tokenize: TokenizeFn, input_name: str) -> tuple[int, ...]:
    """Token positions of every comma-separated word or phrase of ``spec`` in ``prompt`` (errors name
    ``input_name``, the word and the prompt)."""
    phrases = [w.strip() for w in spec.replace("\n", ",").split(",") if w.strip()]
    return tuple(p for phrase in phrases for p in named(input_name, find_phrase, prompt, phrase, tokenize))


def _bpe_tokenizer(clip: Any, key: str) -> Any:
    holder = clip.tokenizer
    for name in (f"clip_{key}", key):
        inner = getattr(holder, name, None)
        if inner is not None and hasattr(inner, "end_token"):
            return inner
    if hasattr(holder, "end_token"):
        return holder
    raise ValueError("clip: this text encoder's tokenizer is not a word tokenizer the attention engines can align; "
                     "Prompt-to-Prompt supports the CLIP text encoders of SD1.x, SD2.x and SDXL and Wan's umT5")


def _clip_key(tokens: dict) -> str:
    return "l" if "l" in tokens else next(iter(tokens))


def _content_ids(batches: list, bpe: Any) -> list[int]:
    """Token ids between the start and end tokens of one encoder's tokenisation (its own padding ignored:
    CLIP-L pads with the end token, OpenCLIP-H and CLIP-G with 0)."""
    ids: list[int] = []
    for batch in batches:
        for position, entry in enumerate(batch):
            token = entry[0]
            if position == 0 and token == bpe.start_token:
                continue
            if not isinstance(token, int):
                raise ValueError("embeddings (embedding:name) are not supported in attention-editing prompts: "
                                 "their tokens cannot be aligned")
            if token == bpe.end_token:
                break
            ids.append(token)
    return ids


def token_ids(clip: Any) -> TokenizeFn:
    """``text -> content token ids`` (no start, end or padding tokens) as ``clip``'s encoder receives them.

    With several text encoders (SDXL: CLIP-L and CLIP-G) each tokenisation is read with its own tokenizer and
    they must agree, since one token position addresses both encoders' features in cross-attention.
    """

    def tokenize(text: str) -> list[int]:
        tokens = clip.tokenize(text)
        ids = {key: _content_ids(tokens[key], _bpe_tokenizer(clip, key)) for key in tokens}
        first = ids[_clip_key(tokens)]
        if any(other != first for other in ids.values()):
            raise ValueError(f"the text encoders ({', '.join(sorted(ids))}) split {text!r} into different tokens; "
                             "the attention engines need one token layout, so simplify the prompt")
        return first

    return tokenize


def prompt_tokens(clip: Any, text: str) -> PromptTokens:
    """``text`` as ``clip``'s encoder receives it, split into whitespace words as the reference's aligner
    splits prompts, after ComfyUI's weight syntax is parsed: ``a (fluffy cat:1.3)`` has the words ``a``,
    ``fluffy`` and ``cat``. Each word is tokenized alone with the encoder's word tokenizer, as ComfyUI does;
    together they must give the encoder's tokens. The window is the encoder's (CLIP: 77 positions after a start
    token; umT5: padded to 512, no start token), and the prompt must fit one window."""
    from comfy.sd1_clip import escape_important, token_weights, unescape_important

    ids = token_ids(clip)(text)
    empty = clip.tokenize("")
    key = _clip_key(empty)
    bpe = _bpe_tokenizer(clip, key)
    window = len(empty[key][0])
    end = -1 if getattr(bpe, "tokenizer_adds_end_token", True) else None
    segments = token_weights(escape_important(text), 1.0)
    words = [w for segment, _ in segments for w in unescape_important(segment).split()]
    word_tokens = [tuple(bpe.tokenizer(w)["input_ids"][bpe.tokens_start:end]) for w in words]
    prompt = PromptTokens(text=text, words=tuple(words), word_tokens=tuple(word_tokens), length=window,
                          start=bpe.tokens_start)
    if list(prompt.ids) != ids:
        raise ValueError(f"the prompt's words could not be matched to its tokens: {text!r}; write it without "
                         "embeddings and unusual escapes")
    most = window - prompt.start - 1
    if prompt.n_tokens > most:
        raise ValueError(f"the prompt has {prompt.n_tokens} tokens, the maximum is {most}; shorten it: {text!r}")
    return prompt


def token_text(clip: Any, ids: list[int]) -> list[str]:
    """Readable text of each token (CLIP's ``</w>`` word-end and SentencePiece's ``▁`` word-start markers removed)."""
    bpe = _bpe_tokenizer(clip, _clip_key(clip.tokenize("")))
    vocab = getattr(bpe, "inv_vocab", {})
    return [vocab.get(i, str(i)).replace("</w>", "").replace("\u2581", "") for i in ids]
