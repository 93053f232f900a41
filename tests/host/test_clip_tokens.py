"""Token layout and phrase lookup with ComfyUI's own tokenizers of each family: CLIP-L (SD1.x, pads with the
end token), OpenCLIP-H (SD2.x) and CLIP-L + CLIP-G (SDXL; H and G pad with 0). Tokenizers need no weights, so
the CLIP here is the real tokenizer behind ``clip.tokenize``, as ``comfy.sd.CLIP`` wires it."""

from __future__ import annotations

import types

import pytest

from spdinv_pack.nodes.clip_tokens import phrase_positions, prompt_tokens, token_ids, token_text

PROMPT = "a photo of a fluffy dog, sitting on grass"
END_TOKEN = 49407


@pytest.fixture(scope="module")
def clips(comfy_env) -> dict[str, types.SimpleNamespace]:
    import comfy.sd1_clip
    import comfy.sdxl_clip
    from comfy.text_encoders.sd2_clip import SD2Tokenizer

    def clip(tokenizer):
        return types.SimpleNamespace(tokenizer=tokenizer, tokenize=tokenizer.tokenize_with_weights)

    return {"sd1": clip(comfy.sd1_clip.SD1Tokenizer()), "sd2": clip(SD2Tokenizer()),
            "sdxl": clip(comfy.sdxl_clip.SDXLTokenizer())}


def padding(tokens: dict, key: str) -> int:
    return tokens[key][0][-1][0]


def test_each_family_pads_its_own_way_and_reads_the_same_tokens(clips):
    raw = {name: clip.tokenize(PROMPT) for name, clip in clips.items()}
    assert padding(raw["sd1"], "l") == END_TOKEN and padding(raw["sdxl"], "l") == END_TOKEN
    assert padding(raw["sd2"], "h") == 0 and padding(raw["sdxl"], "g") == 0
    ids = {name: token_ids(clip)(PROMPT) for name, clip in clips.items()}
    assert ids["sd2"] == ids["sd1"] and ids["sdxl"] == ids["sd1"]
    assert token_text(clips["sdxl"], ids["sdxl"]) == ["a", "photo", "of", "a", "fluffy", "dog", ",", "sitting",
                                                      "on", "grass"]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_phrases_are_found_at_the_same_token_positions_in_every_family(clips, family):
    tokenize = token_ids(clips[family])
    prompt = prompt_tokens(clips[family], PROMPT)
    assert prompt.words == ("a", "photo", "of", "a", "fluffy", "dog,", "sitting", "on", "grass")
    assert phrase_positions(prompt, "fluffy dog, grass", tokenize, "blend_target_words") == (5, 6, 10)
    with pytest.raises(ValueError, match="blend_target_words: the phrase 'cat' was not found"):
        phrase_positions(prompt, "cat", tokenize, "blend_target_words")


def test_encoders_that_split_a_prompt_differently_are_refused(clips):
    """A stand-in CLIP-G that drops a word (as ComfyUI does with an embedding only one encoder has)."""
    sdxl = clips["sdxl"].tokenizer

    def tokenize(text, return_word_ids=False):
        tokens = sdxl.tokenize_with_weights(text, return_word_ids)
        return {**tokens, "g": sdxl.tokenize_with_weights(text.replace("fluffy ", ""), return_word_ids)["g"]}

    clip = types.SimpleNamespace(tokenizer=sdxl, tokenize=tokenize)
    with pytest.raises(ValueError, match=r"the text encoders \(g, l\) split .* into different tokens"):
        token_ids(clip)(PROMPT)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_weighted_words_keep_their_tokens_and_positions(clips, family):
    """``(fluffy dog:1.3)`` weights those words in the encoding; their tokens and word boundaries are the plain
    prompt's, so alignment and phrase lookup see the same prompt."""
    clip = clips[family]
    weighted = prompt_tokens(clip, "a photo of a (fluffy dog:1.3) , sitting on (grass)")
    plain = prompt_tokens(clip, "a photo of a fluffy dog , sitting on grass")
    assert weighted.word_tokens == plain.word_tokens and weighted.words == plain.words
    assert phrase_positions(weighted, "fluffy dog", token_ids(clip), "blend_target_words") == (5, 6)
    weights = [w for _, w in clip.tokenize("a photo of a (fluffy dog:1.3)")["l"][0][5:7]]
    assert weights == pytest.approx([1.3, 1.3])


def test_a_prompt_longer_than_the_window_is_refused_naming_the_limit(clips):
    with pytest.raises(ValueError, match="the prompt has 80 tokens, the maximum is 75"):
        prompt_tokens(clips["sd1"], " ".join(["cat"] * 80))
