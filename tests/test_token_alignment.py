"""Token mappings for Prompt-to-Prompt: positions, phrase lookup, word swap, refine alignment, equalizer."""

from __future__ import annotations

import pytest
import torch

from spdinv_pack.attention_patches.token_alignment import (
    PromptTokens,
    equalizer,
    find_phrase,
    parse_word_factors,
    refinement_mapper,
    replacement_mapper,
)

_VOCAB: dict[str, int] = {}


def _id(piece: str) -> int:
    return _VOCAB.setdefault(piece, 1000 + len(_VOCAB))


def fake_tokenize(text: str) -> list[int]:
    """A CLIP-like fake: lower-case, whitespace words, trailing punctuation as its own token, words longer
    than 6 letters in two tokens."""
    ids: list[int] = []
    for word in text.lower().split():
        punct: list[str] = []
        while len(word) > 1 and word[-1] in ".,!?;":
            punct.insert(0, word[-1])
            word = word[:-1]
        pieces = [word[: len(word) // 2], word[len(word) // 2 :]] if len(word) > 6 else [word]
        ids.extend(_id(p) for p in pieces + punct)
    return ids


def prompt(text: str, length: int = 77, start: int = 1) -> PromptTokens:
    """``text`` split into whitespace words, each tokenized alone (as the nodes build prompts from CLIP's tokenizer);
    ``start=0, length=512``: Wan's umT5 window (no start token)."""
    words = tuple(text.split())
    return PromptTokens(text=text, words=words, word_tokens=tuple(tuple(fake_tokenize(w)) for w in words),
                        length=length, start=start)


def umt5(text: str) -> PromptTokens:
    return prompt(text, length=512, start=0)


def test_content_tokens_are_the_words_tokens_in_order():
    p = prompt("a photo of a cat")
    assert p.words == ("a", "photo", "of", "a", "cat")
    assert p.n_tokens == 5
    assert p.ids == tuple(fake_tokenize("a photo of a cat"))


def test_content_positions_start_after_bos():
    p = prompt("a photo of a cat")
    assert find_phrase(p, "a", fake_tokenize) == [1, 4]
    assert find_phrase(p, "cat", fake_tokenize) == [5]


def test_multi_token_words_and_punctuation_take_consecutive_positions():
    p = prompt("a crocodile swims.")
    assert p.word_tokens[1] == tuple(fake_tokenize("crocodile"))
    assert p.n_tokens == 5
    assert find_phrase(p, "crocodile", fake_tokenize) == [2, 3]
    assert find_phrase(p, "swims.", fake_tokenize) == [4, 5]


def test_empty_prompt_has_no_tokens():
    p = prompt("   ")
    assert p.words == () and p.n_tokens == 0 and p.ids == ()


def test_find_phrase_sees_a_word_before_its_punctuation():
    p = prompt("a cat.")
    assert find_phrase(p, "cat", fake_tokenize) == [2]
    assert find_phrase(p, "cat.", fake_tokenize) == [2, 3]
    assert find_phrase(p, "CAT", fake_tokenize) == [2]


def test_find_phrase_returns_every_token_of_a_multi_token_word():
    assert find_phrase(prompt("a crocodile swims"), "crocodile", fake_tokenize) == [2, 3]


def test_find_phrase_matches_multi_word_phrases_and_every_occurrence():
    p = prompt("a red car on a red road")
    assert find_phrase(p, "red car", fake_tokenize) == [2, 3]
    assert find_phrase(p, "red", fake_tokenize) == [2, 6]
    assert find_phrase(p, "a red", fake_tokenize) == [1, 2, 5, 6]


def test_find_phrase_only_starts_at_word_boundaries():
    p = prompt("a crocodile")
    with pytest.raises(ValueError, match="not found"):
        find_phrase(p, "odile", fake_tokenize)


def test_find_phrase_error_names_the_phrase_and_quotes_the_prompt():
    with pytest.raises(ValueError) as missing:
        find_phrase(prompt("a photo of a cat"), "dog", fake_tokenize)
    assert "'dog'" in str(missing.value) and "'a photo of a cat'" in str(missing.value)
    with pytest.raises(ValueError, match="no tokens"):
        find_phrase(prompt("a cat"), "  ", fake_tokenize)


def test_replacement_keeps_unchanged_words_bos_eos_and_pads_as_identity():
    m = replacement_mapper(prompt("a cat on a mat"), prompt("a dog on a mat"))
    assert m.shape == (77, 77) and m.dtype == torch.float32
    assert torch.equal(m, torch.eye(77))


def test_replacement_swaps_one_token_for_one():
    m = replacement_mapper(prompt("a black cat sits"), prompt("a silver dog sits"))
    assert m[2, 2] == 1.0 and m[3, 3] == 1.0
    assert torch.equal(m, torch.eye(77))


def test_replacement_spreads_one_token_over_two_with_half_weights():
    m = replacement_mapper(prompt("a cat sits"), prompt("a crocodile sits"))
    assert m[2, 2] == 0.5 and m[2, 3] == 0.5
    assert m[:, 2].sum() == 0.5 and m[:, 3].sum() == 0.5
    assert m[2].sum() == 1.0
    sums = m.sum(dim=0)
    others = [n for n in range(77) if n not in (2, 3)]
    assert torch.equal(sums[others], torch.ones(len(others)))
    assert m[3, 4] == 1.0
    assert m[4, 5] == 1.0


def test_replacement_preserves_the_attention_mass_of_a_swapped_word():
    attention = torch.rand(2, 3, 77)
    widened = torch.einsum("hpw,wn->hpn", attention, replacement_mapper(prompt("a cat"), prompt("a crocodile")))
    assert torch.allclose(widened[..., 2:4].sum(-1), attention[..., 2])
    narrowed = torch.einsum("hpw,wn->hpn", attention, replacement_mapper(prompt("a crocodile"), prompt("a cat")))
    assert torch.allclose(narrowed[..., 2], attention[..., 2:4].sum(-1))


def test_replacement_aligns_eos_and_padding_after_a_length_change():
    longer = replacement_mapper(prompt("a cat sits"), prompt("a crocodile sits"))
    assert longer[4, 5] == 1.0
    assert all(longer[p - 1, p] == 1.0 for p in range(6, 77))
    shorter = replacement_mapper(prompt("a crocodile sits"), prompt("a cat sits"))
    assert shorter[5, 4] == 1.0
    assert all(shorter[p + 1, p] == 1.0 for p in range(5, 76))
    assert shorter[76, 76] == 1.0 and shorter[76, 75] == 1.0
    assert torch.equal(shorter.sum(dim=0)[3:], torch.ones(74))


def test_replacement_needs_equal_word_counts_and_suggests_refine():
    with pytest.raises(ValueError, match=r"source has 2.*target has 3.*refine"):
        replacement_mapper(prompt("a cat"), prompt("a black cat"))


def test_replacement_einsum_builds_the_expected_target_maps():
    attention = torch.rand(2, 5, 77)
    src, tgt = prompt("a cat on the grass"), prompt("a crocodile on the grass")
    out = torch.einsum("hpw,wn->hpn", attention, replacement_mapper(src, tgt))
    expected = torch.empty_like(attention)
    expected[..., 0:2] = attention[..., 0:2]
    expected[..., 2] = attention[..., 2] / 2
    expected[..., 3] = attention[..., 2] / 2
    expected[..., 4:77] = attention[..., 3:76]
    assert torch.allclose(out, expected)


def test_refinement_aligns_kept_tokens_and_leaves_an_inserted_word_alone():
    index, alphas = refinement_mapper(prompt("a cat"), prompt("a black cat"))
    assert index.dtype == torch.long and alphas.dtype == torch.float32 and index.shape == alphas.shape == (77,)
    assert index[:5].tolist() == [0, 1, 0, 2, 3]
    assert alphas[:5].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert index[5:].tolist() == list(range(4, 76))
    assert torch.equal(alphas[5:], torch.ones(72))


def test_refinement_inserted_multi_token_word_gets_alpha_zero_on_each_token():
    index, alphas = refinement_mapper(prompt("a cat"), prompt("a crocodile cat"))
    assert index[:6].tolist() == [0, 1, 0, 0, 2, 3]
    assert alphas[:6].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]


def test_refinement_shifts_tokens_after_a_deletion():
    index, alphas = refinement_mapper(prompt("a black cat sits"), prompt("a cat sits"))
    assert index[:5].tolist() == [0, 1, 3, 4, 5]
    assert torch.equal(alphas, torch.ones(77))
    assert index[5:].tolist() == list(range(6, 76)) + [76, 76]


def test_refinement_of_identical_prompts_is_the_identity():
    p = prompt("a photo of a crocodile.")
    index, alphas = refinement_mapper(p, p)
    assert torch.equal(index, torch.arange(77))
    assert torch.equal(alphas, torch.ones(77))


def test_refinement_pairs_repeated_tokens_with_the_earliest_match():
    index, alphas = refinement_mapper(prompt("a cat"), prompt("a cat cat"))
    assert index[:5].tolist() == [0, 1, 2, 0, 3]
    assert alphas[:5].tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]


def test_parse_word_factors_reads_commas_newlines_and_multi_word_entries():
    assert parse_word_factors("silver:2.0, cat:0.5") == [("silver", 2.0), ("cat", 0.5)]
    assert parse_word_factors("red car:1.5\ncat : 0,") == [("red car", 1.5), ("cat", 0.0)]
    assert parse_word_factors("a:b:2") == [("a:b", 2.0)]
    assert parse_word_factors("") == []
    assert parse_word_factors("  \n ") == []


@pytest.mark.parametrize("bad", ["silver", "silver:", ":2", "cat:abc", "cat:inf", "cat:nan", "cat:-1"])
def test_parse_word_factors_refuses_malformed_entries(bad):
    with pytest.raises(ValueError) as refused:
        parse_word_factors(f"dog:1.0, {bad}")
    assert repr(bad) in str(refused.value)
    assert '"word:factor, word:factor"' in str(refused.value)


def test_equalizer_scales_exactly_the_named_tokens():
    p = prompt("a silver crocodile.")
    scales = equalizer(p, [("silver", 2.0), ("crocodile", 0.5)], fake_tokenize)
    assert scales.shape == (77,) and scales.dtype == torch.float32
    expected = torch.ones(77)
    expected[2] = 2.0
    expected[3:5] = 0.5
    assert torch.equal(scales, expected)


def test_equalizer_later_entries_win_and_missing_words_raise():
    p = prompt("a red car")
    assert equalizer(p, [("red car", 2.0), ("car", 3.0)], fake_tokenize)[:5].tolist() == [1.0, 1.0, 2.0, 3.0, 1.0]
    assert torch.equal(equalizer(p, [], fake_tokenize), torch.ones(77))
    with pytest.raises(ValueError, match="'boat'"):
        equalizer(p, [("boat", 2.0)], fake_tokenize)


def test_without_a_start_token_content_starts_at_position_zero_and_eos_follows_it():
    p = umt5("a photo of a cat")
    assert find_phrase(p, "a", fake_tokenize) == [0, 3]
    assert find_phrase(p, "cat", fake_tokenize) == [4]
    assert p.end == 5


def test_without_a_start_token_word_swap_maps_content_eos_and_padding_from_position_zero():
    source, target = umt5("a photo of a cat"), umt5("a photo of a crocodile")
    m = replacement_mapper(source, target)
    assert m.shape == (512, 512)
    assert [m[i, i].item() for i in range(4)] == [1.0] * 4
    assert m[4, 4].item() == m[4, 5].item() == 0.5
    assert m[5, 6].item() == 1.0
    assert m[510, 511].item() == 1.0
    assert torch.equal(m.sum(1)[:5], torch.ones(5))


def test_without_a_start_token_refine_aligns_kept_tokens_and_leaves_an_inserted_word_alone():
    index, alphas = refinement_mapper(umt5("a cat"), umt5("a silver cat"))
    assert index[:4].tolist() == [0, 0, 1, 2]
    assert alphas[:4].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert index[4:].tolist() == list(range(3, 511))


def test_equalizer_without_a_start_token_scales_the_word_at_its_window_position():
    scales = equalizer(umt5("a silver cat"), [("silver", 2.0)], fake_tokenize)
    assert scales[1].item() == 2.0 and scales.sum().item() == 513.0


def test_windows_with_different_start_tokens_are_refused():
    with pytest.raises(ValueError, match="1 vs 0 start tokens"):
        replacement_mapper(prompt("a cat", length=512), umt5("a dog"))
