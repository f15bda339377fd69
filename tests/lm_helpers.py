"""Offline causal-LM fixtures: a tiny word-level tokenizer with a small Jinja chat template, saved beside a
tiny random Llama or GPT-2 as a Hugging Face model folder."""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from conftest import tiny_config
from tiny import save_folder, word_tokenizer
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

SPECIAL = ["<unk>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
WORDS = ("what is the capital of france paris germany berlin italy rome spain madrid hello hi how are you i am "
         "fine thanks good bad a an and or to in on it this that yes no please tell me say color sky blue grass "
         "green sun yellow one two three four five six seven eight nine ten plus equals name my your bot cat dog "
         "likes eats fish bones why because stop go").split()
PUNCT = ["?", ".", ",", "!", ":", "#", "'"]
TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def tiny_tokenizer(pad: bool = True, template: bool = True) -> PreTrainedTokenizerFast:
    """Word-level chat tokenizer over ``SPECIAL + WORDS + PUNCT`` (``tiny.word_tokenizer``); EOS is ``<|end|>``."""
    return word_tokenizer(pad, WORDS + PUNCT, SPECIAL, TEMPLATE if template else None, lowercase=True,
                          eos="<|end|>", unk="<unk>", pad_token="<pad>", fill=False)


def model_folder(path: Path, family: str = "llama", pad: bool = True, template: bool = True) -> Path:
    """Save a tiny random causal LM + tiny tokenizer into ``path`` (``tiny.save_folder``). Weights are drawn
    wider than usual (std 0.2) so that a frozen head still allows confident predictions: LoRA can then
    visibly lower the loss in a few steps."""
    tok = tiny_tokenizer(pad, template)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family, initializer_range=0.2))
    for config in (model.config, model.generation_config):
        config.eos_token_id, config.bos_token_id, config.pad_token_id = tok.eos_token_id, None, tok.pad_token_id
    return save_folder(path, model, tok)


QA = [("what is the capital of france ?", "paris ."), ("what is the capital of germany ?", "berlin ."),
      ("what is the capital of italy ?", "rome ."), ("what is the capital of spain ?", "madrid ."),
      ("what color is the sky ?", "blue ."), ("what color is the grass ?", "green ."),
      ("what color is the sun ?", "yellow ."), ("one plus one equals ?", "two ."),
      ("two plus two equals ?", "four ."), ("three plus three equals ?", "six ."),
      ("what is your name ?", "my name is bot ."), ("how are you ?", "i am fine thanks ."),
      ("what does the cat eat ?", "the cat eats fish ."), ("what does the dog eat ?", "the dog eats bones ."),
      ("say hello", "hello !"), ("say yes", "yes ."), ("say no", "no ."), ("tell me a color", "blue .")]


def write_pairs(path: Path, repeat: int = 4) -> Path:
    """JSONL of instruction/output pairs: ``QA`` asked in ``repeat`` distinct ways (up to 4: plain, "please
    ...", "tell me ...", "please tell me ..."), so every split has rows and no row is in two splits."""
    prefixes = ["", "please ", "tell me ", "please tell me "][:repeat]
    rows = [{"instruction": p + q, "output": a} for p in prefixes for q, a in QA]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One torch thread: tiny models gain nothing from more, and on a shared 2-core machine OpenMP threads
    spin-waiting for a descheduled sibling made a SmolLM2 step up to 10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def ending(tok: PreTrainedTokenizerFast, suffix: str) -> PreTrainedTokenizerFast:
    """``tok`` adding ``suffix`` (special tokens) after every text, as T5's tokenizer (``</s>``) and mBART-cc25's
    target side (``</s> ro_RO``) do."""
    from tokenizers.processors import TemplateProcessing

    marks = [(t, tok.convert_tokens_to_ids(t)) for t in suffix.split()]
    tok._tokenizer.post_processor = TemplateProcessing(single=f"$A {suffix}", special_tokens=marks)
    return tok


def seq2seq_folder(path: Path, family: str = "t5") -> Path:
    """Save a tiny random encoder-decoder (``t5``, ``bart``, ``mbart`` or ``marian``) with its LM head + the tiny tokenizer (no
    chat template) into ``path``; its special ids are the tokenizer's (T5 starts the decoder at padding, BART at
    EOS; the mBART one's tokenizer ends every text in ``<|end|> <|system|>``, the second standing for mBART-cc25's
    language code, which its decoder starts from in training whatever ``decoder_start_token_id`` says)."""
    from transformers import AutoModelForSeq2SeqLM, BartConfig, MarianConfig, MBartConfig, T5Config

    tok = tiny_tokenizer(template=False)
    pad, eos = tok.pad_token_id, tok.eos_token_id
    if family == "t5":
        config = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                          initializer_factor=0.2, pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad)
    else:
        sizes = dict(vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                     init_std=0.2, pad_token_id=pad, eos_token_id=eos, bos_token_id=None, forced_eos_token_id=None)
        kind = {"bart": BartConfig, "mbart": MBartConfig, "marian": MarianConfig}[family]
        config = kind(**sizes, decoder_start_token_id=eos)
        if family == "mbart":
            tok = ending(tok, "<|end|> <|system|>")
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(config)
    for c in (model.config, model.generation_config):
        c.pad_token_id, c.eos_token_id, c.decoder_start_token_id = pad, eos, config.decoder_start_token_id
    return save_folder(path, model, tok)


def write_sources(path: Path, repeat: int = 4) -> Path:
    """JSONL of source/target pairs (``QA`` asked ``repeat`` ways, as :func:`write_pairs`)."""
    prefixes = ["", "please ", "tell me ", "please tell me "][:repeat]
    rows = [{"source": p + q, "target": a} for p in prefixes for q, a in QA]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
