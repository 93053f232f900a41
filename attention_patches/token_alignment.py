"""Token-level mappings between a source and a target prompt, for Prompt-to-Prompt editing.

Cross-attention probabilities end in a dimension of ``length`` token positions: ``start`` start tokens (CLIP: BOS
at 0), the prompt's n content tokens, EOS, then padding (CLIP: 77 positions, 1..n content, n+1 EOS; Wan's umT5: 512
positions, no start token, 0..n-1 content, n EOS). Prompt-to-Prompt builds the target prompt's maps from the
source prompt's, so it needs to know which source position feeds each target position: a word-swap matrix
(``replacement_mapper``), an alignment for inserted or deleted words (``refinement_mapper``) and per-token
scale factors (``equalizer``). The caller supplies the tokenizer, so this module works with ComfyUI's CLIP
and umT5 tokenizers in production and with a fake in tests, and imports no ComfyUI.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

TokenizeFn = Callable[[str], list[int]]
"""text -> CLIP token ids of its content, without BOS/EOS/padding."""

WINDOW = 77
"""CLIP's token window: start token, 75 content tokens, end token."""
UMT5_WINDOW = 512
"""Wan's umT5 window: ComfyUI pads every prompt to 512 tokens (content, end token, padding; no start token)."""

_BOS = -1
_EOS = -2


@dataclass(frozen=True)
class PromptTokens:
    """A prompt split into whitespace words and the tokens of each word, in a ``length`` window whose first
    ``start`` positions are start tokens (CLIP: 1, umT5: 0)."""

    text: str
    words: tuple[str, ...]
    word_tokens: tuple[tuple[int, ...], ...]
    length: int = WINDOW
    start: int = 1

    @property
    def ids(self) -> tuple[int, ...]:
        """All content tokens in order: the concatenation of ``word_tokens``."""
        return tuple(t for tokens in self.word_tokens for t in tokens)

    @property
    def n_tokens(self) -> int:
        """Number of content tokens (BOS, EOS and padding excluded)."""
        return sum(len(tokens) for tokens in self.word_tokens)

    @property
    def end(self) -> int:
        """Window position of the end token (after the start tokens and the content)."""
        return self.start + self.n_tokens


def _word_starts(prompt: PromptTokens) -> list[int]:
    """Indices into ``prompt.ids`` where a word begins (words that have no tokens are skipped)."""
    starts, offset = [], 0
    for tokens in prompt.word_tokens:
        if tokens:
            starts.append(offset)
        offset += len(tokens)
    return starts


def find_phrase(prompt: PromptTokens, phrase: str, tokenize: TokenizeFn) -> list[int]:
    """Window positions of every occurrence of ``phrase``'s tokens as a run that starts at a word boundary.

    Only the start must be a word boundary, so ``cat`` is found in ``a cat.`` (whose last word tokenizes
    as ``cat`` + ``.``) but not inside a word that merely ends with the same token. The positions of all
    occurrences come back as one sorted list without repeats.
    """
    wanted = tuple(tokenize(phrase))
    if not wanted:
        raise ValueError(f"the phrase {phrase!r} has no tokens; name a word of the prompt {prompt.text!r}")
    ids = prompt.ids
    positions: list[int] = []
    for start in _word_starts(prompt):
        if ids[start : start + len(wanted)] == wanted:
            positions.extend(range(prompt.start + start, prompt.start + start + len(wanted)))
    if not positions:
        raise ValueError(f"the phrase {phrase!r} was not found in the prompt {prompt.text!r}")
    return sorted(set(positions))


def _pad_source(source: PromptTokens, target: PromptTokens, p: int) -> int:
    """Source position for target padding position ``p``: aligned from EOS onward, clipped to the window."""
    return min(source.end + (p - target.end), target.length - 1)


def _check_windows(source: PromptTokens, target: PromptTokens) -> int:
    """The common window length; both prompts must use the same window (length and start tokens)."""
    if (source.length, source.start) != (target.length, target.start):
        raise ValueError(f"source and target windows differ: {source.length} vs {target.length} positions, "
                         f"{source.start} vs {target.start} start tokens")
    return target.length


def replacement_mapper(source: PromptTokens, target: PromptTokens) -> torch.Tensor:
    """Word-swap matrix ``M`` [length, length]: ``M[w, n]`` is the weight of source position ``w`` in target
    position ``n``, so the target's maps are ``einsum("...w,wn->...n", source_maps, M)``.

    Words are walked in order. Words with the same number of tokens (equal words included) pair token to
    token. A swapped word whose token count differs spreads each of its source tokens over all its target
    tokens with weight ``1 / len(target tokens)``, so the word's total attention mass is kept. Start tokens map
    to themselves, EOS to EOS, and padding is aligned from EOS onward (clipped to the last position when the target
    is shorter). Unlike the reference implementation, which maps the tail ``j -> j`` after the last swapped
    word and so misaligns it when token counts differ, every following token is aligned ``i -> j``.
    """
    length = _check_windows(source, target)
    if len(source.words) != len(target.words):
        raise ValueError(
            f"word swap needs prompts with the same number of words: the source has {len(source.words)}, "
            f'the target has {len(target.words)}; use the "refine" mode to insert or delete words'
        )
    mapper = torch.zeros(length, length, dtype=torch.float32)
    for p in range(target.start):
        mapper[p, p] = 1.0
    i = j = target.start
    for src_tokens, tgt_tokens in zip(source.word_tokens, target.word_tokens, strict=True):
        n_src, n_tgt = len(src_tokens), len(tgt_tokens)
        if n_src == n_tgt:
            for k in range(n_src):
                mapper[i + k, j + k] = 1.0
        elif n_tgt:
            mapper[i : i + n_src, j : j + n_tgt] = 1.0 / n_tgt
        i += n_src
        j += n_tgt
    mapper[source.end, target.end] = 1.0
    for p in range(target.end + 1, length):
        mapper[_pad_source(source, target, p), p] = 1.0
    return mapper


def _align(source: list[int], target: list[int]) -> list[int | None]:
    """Needleman-Wunsch global alignment (match 1, mismatch -1, gap 0): for each target item, the index of
    its aligned source item, or ``None`` when it is inserted.

    With these scores a mismatch never beats two gaps, so the alignment is a longest common subsequence.
    Ties are broken walking left to right: an equal pair is aligned whenever that keeps the score optimal
    (so repeated tokens pair with their earliest optimal partners); otherwise a source item is dropped
    before a target item is inserted.
    """
    m, n = len(source), len(target)
    best = [[0] * (n + 1) for _ in range(m + 1)]
    for a in range(m - 1, -1, -1):
        for b in range(n - 1, -1, -1):
            pair = best[a + 1][b + 1] + (1 if source[a] == target[b] else -1)
            best[a][b] = max(pair, best[a + 1][b], best[a][b + 1])
    aligned: list[int | None] = [None] * n
    a = b = 0
    while a < m and b < n:
        if source[a] == target[b] and best[a][b] == best[a + 1][b + 1] + 1:
            aligned[b] = a
            a += 1
            b += 1
        elif best[a][b] == best[a + 1][b]:
            a += 1
        else:
            b += 1
    return aligned


def refinement_mapper(source: PromptTokens, target: PromptTokens) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine-mode alignment: ``(index, alphas)``, each [length], over target positions.

    The sequences ``start tokens + ids + [EOS]`` of both prompts (as they lie in the window) are aligned globally
    (see ``_align`` for the scores and the tie-breaking rule); start and end tokens get placeholder ids that no real
    token has. An aligned
    target position takes its source position as ``index`` with alpha 1; an inserted target token has no
    source token, so index 0 and alpha 0 (it keeps its own attention). Padding after the target's EOS is
    aligned from EOS onward like ``replacement_mapper``, with alpha 1.
    """
    length = _check_windows(source, target)
    starts = [_BOS] * target.start
    aligned = _align([*starts, *source.ids, _EOS], [*starts, *target.ids, _EOS])
    index = torch.zeros(length, dtype=torch.long)
    alphas = torch.zeros(length, dtype=torch.float32)
    for position, src in enumerate(aligned):
        if src is not None:
            index[position] = src
            alphas[position] = 1.0
    for p in range(target.end + 1, length):
        index[p] = _pad_source(source, target, p)
        alphas[p] = 1.0
    return index, alphas


_FACTOR_FORMAT = '"word:factor, word:factor"'


def parse_word_factors(spec: str) -> list[tuple[str, float]]:
    """Parse ``"silver:2.0, cat:0.5"`` into ``[("silver", 2.0), ("cat", 0.5)]``.

    Entries are separated by commas or newlines (empty entries are skipped); a word may contain spaces and
    its factor follows the last colon. Factors must be finite and non-negative.
    """
    factors: list[tuple[str, float]] = []
    for raw in re.split(r"[,\n]", spec):
        entry = raw.strip()
        if not entry:
            continue
        word, colon, value = entry.rpartition(":")
        word = word.strip()
        try:
            factor = float(value)
        except ValueError:
            factor = math.nan
        if not colon or not word or not math.isfinite(factor) or factor < 0:
            raise ValueError(
                f"cannot read the word factor {entry!r}: expected {_FACTOR_FORMAT} with finite, non-negative factors"
            )
        factors.append((word, factor))
    return factors


def equalizer(prompt: PromptTokens, factors: list[tuple[str, float]], tokenize: TokenizeFn) -> torch.Tensor:
    """Per-position attention scales [length]: 1, except each named word's tokens, which get its factor.

    Later entries win where words overlap; a word missing from the prompt raises ``find_phrase``'s error.
    """
    scales = torch.ones(prompt.length, dtype=torch.float32)
    for word, factor in factors:
        scales[find_phrase(prompt, word, tokenize)] = factor
    return scales
