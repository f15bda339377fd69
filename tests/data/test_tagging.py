import random
import zlib

import pytest
from tokenizers import ByteLevelBPETokenizer, SentencePieceBPETokenizer, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tuneforge import assets
from tuneforge.config import ConfigError
from tuneforge.data.conll_file import wnut16
from tuneforge.data.tagging import (DEFAULT_STRIDE, IGNORE, align, encode_words, needs_word_spaces, stitch,
                                    window_spans)

SENTENCES = [r["tokens"] for r in wnut16()[:400]]


def _gpt2_like() -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE tokenizer (no GPT-2 download offline): trained on a few tweets."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(s) for s in SENTENCES[:200]], vocab_size=600, min_frequency=2,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>")


def _sentencepiece_like() -> PreTrainedTokenizerFast:
    """A Llama-2-style SentencePiece BPE tokenizer (Metaspace, prepend_scheme "first")."""
    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator([" ".join(s) for s in SENTENCES[:200]], vocab_size=600,
                           special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    sp._tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    return PreTrainedTokenizerFast(tokenizer_object=sp._tokenizer, unk_token="<unk>", bos_token="<s>")


# tokenizer -> whether words need a leading space with is_split_into_words (byte-level BPE does)
NEEDS_SPACES = {"bert": False, "llama": True, "gpt2": True, "sentencepiece": False}


@pytest.fixture(scope="module", params=list(NEEDS_SPACES))
def tokenizer(request):
    if request.param == "bert":
        return AutoTokenizer.from_pretrained(str(assets.minilm_dir()))
    if request.param == "llama":  # SmolLM2: Llama architecture, byte-level BPE tokenizer
        return AutoTokenizer.from_pretrained(str(assets.smollm2_dir()))
    return _gpt2_like() if request.param == "gpt2" else _sentencepiece_like()


def test_align_is_the_hugging_face_recipe():
    word_ids = [None, 0, 0, 1, 2, 2, 2, None]
    assert align(word_ids, [3, 4, 1]) == [IGNORE, 3, IGNORE, 4, 1, IGNORE, IGNORE, IGNORE]
    assert align(word_ids, [3, 4, 1], label_all_subtokens=True) == [IGNORE, 3, 3, 4, 1, 1, 1, IGNORE]
    b_to_i = [0, 2, 2, 4, 4]  # O, B-X, I-X, B-Y, I-Y
    assert align(word_ids, [3, 4, 1], True, b_to_i) == [IGNORE, 3, 4, 4, 1, 2, 2, IGNORE]


def test_words_are_tokenised_as_in_running_text(tokenizer, request):
    words = ["John", "lives", "in", "New", "York", "."]
    natural = tokenizer(" ".join(words))["input_ids"]
    (window,) = encode_words(tokenizer, words, [0] * len(words), max_length=512)
    assert window["input_ids"] == natural
    assert needs_word_spaces(tokenizer) == NEEDS_SPACES[request.node.callspec.params["tokenizer"]]
    assert window["word_ids"].count(None) == len(natural) - len(tokenizer(" ".join(words),
                                                                           add_special_tokens=False)["input_ids"])


def test_tweets_are_tokenised_as_in_running_text(tokenizer):
    for words in SENTENCES[:150]:  # @mentions, #hashtags, URLs, emoji, split contractions ("It", "'s")
        (window,) = encode_words(tokenizer, words, None, max_length=10_000)
        assert window["input_ids"] == tokenizer(" ".join(words))["input_ids"]


def test_labels_on_first_subtokens(tokenizer):
    words = SENTENCES[3]
    labels = [i % 5 for i in range(len(words))]
    (window,) = encode_words(tokenizer, words, labels, max_length=512)
    kept = [(w, y) for w, y in zip(window["word_ids"], window["labels"]) if y != IGNORE]
    assert kept == list(enumerate(labels))  # every word exactly one label, on its first sub-token
    assert all(y == IGNORE for w, y in zip(window["word_ids"], window["labels"]) if w is None)
    assert ("token_type_ids" in window) == ("token_type_ids" in tokenizer("x"))


def _model(window):
    """A deterministic per-token 'model': the prediction depends on the token id only."""
    return [zlib.crc32(str(t).encode()) % 7 for t in window["input_ids"]]


@pytest.mark.parametrize("seed", range(3))
def test_windows_and_stitching_equal_one_long_pass(tokenizer, seed):
    rng = random.Random(seed)
    for words in rng.sample(SENTENCES, 60):
        labels = [rng.randrange(5) for _ in words]
        (full,) = encode_words(tokenizer, words, labels, max_length=10_000)
        n_special = sum(w is None for w in full["word_ids"])
        max_length = rng.randint(n_special + 2, n_special + 14)
        stride = rng.randint(0, max_length - n_special - 1)
        windows = encode_words(tokenizer, words, labels, max_length, stride)
        assert all(len(w["input_ids"]) <= max_length for w in windows)
        assert all(len(set(map(len, w.values()))) == 1 for w in windows)
        long_pass = stitch([full["word_ids"]], [_model(full)], len(words))
        assert stitch([w["word_ids"] for w in windows], [_model(w) for w in windows], len(words)) == long_pass
        by_word = [[t for t, w in zip(full["labels"], full["word_ids"]) if w == i and t != IGNORE] for i in
                   range(len(words))]
        assert by_word == [[y] for y in labels]  # every word exactly one label
        _check_cover(full, windows, n_special, max_length, stride)


def _check_cover(full, windows, n_special, max_length, stride):
    """Each window is the special tokens around a contiguous slice of the sentence; together they cover it,
    each reaching past the one before."""
    content = [i for i, w in enumerate(full["word_ids"]) if w is not None]
    spans = window_spans([full["word_ids"][i] for i in content], max_length - n_special, stride)
    assert len(spans) == len(windows) and spans[0][0] == 0 and spans[-1][1] == len(content)
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert s0 < s1 <= e0 < e1
    for (start, end), window in zip(spans, windows):
        keep = [i for i, w in enumerate(full["word_ids"]) if w is None and i < content[0]] + content[start:end] + \
               [i for i, w in enumerate(full["word_ids"]) if w is None and i > content[-1]]
        assert window == {k: [v[i] for i in keep] for k, v in full.items()}


def test_window_spans_overlap_by_stride_between_words():
    word_ids = [0, 1, 1, 2, 3, 4, 4, 5, 6, 7, 8, 9]
    spans = window_spans(word_ids, budget=5, stride=2)
    assert spans[0][0] == 0 and spans[-1][1] == len(word_ids)
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert e0 - s1 >= 2 and e1 > e0 and e1 - s1 <= 5
        assert word_ids[s1] != word_ids[s1 - 1] and (e1 == len(word_ids) or word_ids[e1] != word_ids[e1 - 1])
    assert window_spans(word_ids, budget=20, stride=3) == [(0, 12)]
    assert window_spans([0] * 7, budget=3, stride=1) == [(0, 3), (3, 6), (6, 7)]  # one word longer than a window


def test_stitch_prefers_the_window_with_most_context():
    windows = [[None, 0, 1, 2, 3, None], [None, 2, 3, 4, 5, None]]
    preds = [[9, 0, 1, 2, 30, 9], [9, 20, 3, 4, 5, 9]]
    assert stitch(windows, preds, 6) == [0, 1, 2, 3, 4, 5]  # word 2 from window 1, word 3 from window 2
    with pytest.raises(ValueError, match="word 6 has no token"):
        stitch(windows, preds, 7)


def test_a_word_without_tokens_gets_the_unknown_token():
    bert = AutoTokenizer.from_pretrained(str(assets.minilm_dir()))
    (window,) = encode_words(bert, ["hi", "\u200b", "there"], [1, 2, 3], max_length=16)
    assert window["input_ids"][2] == bert.unk_token_id and window["labels"][1:4] == [1, 2, 3]


def test_bad_lengths_give_clear_errors():
    bert = AutoTokenizer.from_pretrained(str(assets.minilm_dir()))
    with pytest.raises(ConfigError, match="leaves no room"):
        encode_words(bert, ["hi"], [0], max_length=2)
    with pytest.raises(ConfigError, match="stride 4 must be"):
        encode_words(bert, ["hi"], [0], max_length=6, stride=4)
    with pytest.raises(ValueError, match="2 labels for 1 words"):
        encode_words(bert, ["hi"], [0, 1], max_length=6)
    assert encode_words(bert, [], [], max_length=6) == []
    (window,) = encode_words(bert, ["hi"], None, max_length=6)
    assert "labels" not in window and window["word_ids"] == [None, 0, None]


def test_the_default_stride_fits_a_short_window_and_an_explicit_one_is_checked():
    """data.stride unset: 32 tokens, or under half a window when model.max_length is short (a user who only
    shortens max_length gets windows, not an error about a setting never made); a value given is kept or refused."""
    bert = AutoTokenizer.from_pretrained(str(assets.minilm_dir()))
    words = [f"w{i}" for i in range(100)]  # "w", "##N": two tokens a word
    for max_length, expected in ((12, 4), (32, 14), (128, DEFAULT_STRIDE)):
        windows = encode_words(bert, words, None, max_length, stride=None)
        assert len(windows) > 1 and windows == encode_words(bert, words, None, max_length, stride=expected)
        assert windows != encode_words(bert, words, None, max_length, stride=expected - 2)
    with pytest.raises(ConfigError, match="stride 32 must be"):
        encode_words(bert, words, None, max_length=32, stride=32)


def test_python_tokenizers_without_word_ids_are_aligned_word_by_word(tmp_path):
    """BERTweet, PhoBERT, ESM, XLM tokenizers are Python-only in transformers 5.24: their encodings have no
    word_ids(); each word owns the tokens its own tokenisation gives, as the tokenizer joins them."""
    from transformers import BertweetTokenizer

    (tmp_path / "vocab.txt").write_text("".join(f"{w} 1\n" for w in "Pe@@ ter New York in".split()))
    (tmp_path / "bpe.codes").write_text("P e 1\nt e 1\nte r</w> 1\ni n</w> 1\n")
    tok = BertweetTokenizer(str(tmp_path / "vocab.txt"), str(tmp_path / "bpe.codes"), normalization=False)
    assert not tok.is_fast
    words = ["Peter", "in", "New", "York", "Peter"]
    (window,) = encode_words(tok, words, [1, 0, 2, 3, 1], max_length=64)
    assert window["input_ids"] == tok(" ".join(words))["input_ids"]
    assert window["word_ids"] == [None, 0, 0, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, None]  # New -> N@@ e@@ w (unknown)
    assert window["labels"] == [IGNORE, 1, IGNORE, 0, 2, IGNORE, IGNORE, 3, IGNORE, IGNORE, IGNORE, 1, IGNORE,
                                IGNORE]
    windows = encode_words(tok, words, None, max_length=6, stride=1)
    assert [w for win in windows for w in win["word_ids"] if w is not None][:3] == [0, 0, 1]
