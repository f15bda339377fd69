"""Generated answers as text: a character whose bytes the token limit cut short is dropped, not shown as U+FFFD."""
import io

import torch

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel
from transformers import PreTrainedTokenizerFast

from tuneforge.generate import _Streamer, answer_text


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte, decoded as GPT-2's byte-level tokenizers decode: a multi-byte character is several."""
    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_an_answer_cut_inside_a_character_ends_before_it():
    tok = byte_tokenizer()
    ids = tok("café 😀")["input_ids"]  # the emoji is its last four tokens
    assert "\ufffd" in tok.decode(ids[:-1])  # what decoding the cut answer gives as it is
    assert answer_text(tok, ids[:-1]) == "café"
    assert answer_text(tok, ids[:4]) == "caf"  # the é cut after its first byte
    assert answer_text(tok, ids) == "café 😀"


def test_a_streamed_answer_cut_inside_a_character_ends_before_it():
    tok = byte_tokenizer()
    ids = tok("ok 😀")["input_ids"]
    out = io.StringIO()
    streamer = _Streamer(tok, out)
    streamer.skip_prompt = False
    for i in ids[:-2]:
        streamer.put(torch.tensor([i]))
    streamer.end()
    assert out.getvalue() == "ok \n"
