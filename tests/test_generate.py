"""Generated answers as text: a character whose bytes the token limit cut short is dropped, not shown as U+FFFD."""
import io

import pytest
import torch

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel
from transformers import PreTrainedTokenizerFast

from conftest import tiny_causal_lm
from tuneforge.generate import _Streamer, answer_text, encode_prompts


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


def test_prompts_longer_than_max_length_keep_their_end_with_a_note(capsys):
    tok = byte_tokenizer()
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    short, long = encode_prompts(tok, ["hi", "x" * 40], template, 32, system_prompt="be brief")
    assert tok.decode(short) == "stem>be brief<user>hi<assistant>"  # 35 bytes: its first 3 cut too
    assert len(short) == 32 and tok.decode(long).endswith("x<assistant>") and len(long) == 32
    assert capsys.readouterr().err == ("note: 2 prompt(s) longer than model.max_length=32 tokens keep their last 32 "
                                       "(the start, e.g. a system prompt or earlier turns, is left out)\n")
    assert encode_prompts(tok, ["plain text"], None, 32) == [tok("plain text")["input_ids"]]
    assert capsys.readouterr().err == ""


def test_chat_prompts_are_trimmed_as_training_trimmed_messages_and_plain_text_is_not():
    tok = byte_tokenizer()
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    assert encode_prompts(tok, ["hi there \n", [{"role": "user", "content": "\nhi there  "}]], template, 64) == \
        encode_prompts(tok, ["hi there", "hi there"], template, 64)
    assert encode_prompts(tok, ["the cat "], None, 64) == [tok("the cat ")["input_ids"]]  # a text to continue


def test_a_plain_text_prompt_does_not_end_in_the_end_token_a_tokenizer_appends():
    """A tokenizer that appends its end token (add_eos_token) made every text to continue a finished one."""
    from lm_helpers import ending, tiny_tokenizer

    tok = ending(tiny_tokenizer(template=False), "<|end|>")
    assert tok("the film")["input_ids"][-1] == tok.eos_token_id
    assert encode_prompts(tok, ["the film", "the film <|end|>"], None, 64) == [
        tok("the film")["input_ids"][:-1], tok("the film <|end|>")["input_ids"]]  # written by the user: kept


@pytest.mark.parametrize("bad", [[], [{"role": "user"}], [{"content": "hi"}], ["hi"], [{"role": "user", "content": 3}],
                                 3])
def test_a_conversation_that_is_not_a_list_of_messages_is_named(bad):
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    from tuneforge.config import ConfigError
    with pytest.raises(ConfigError, match=r"^prompt 2: give a string or a list of \{'role': \.\.\., 'content': text\} "
                                          r"messages, got "):  # a KeyError, TypeError or AttributeError before
        encode_prompts(byte_tokenizer(), ["fine", bad], template, 64)


def test_conversation_roles_are_spelt_as_training_read_them_and_unknown_ones_named():
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    from tuneforge.config import ConfigError
    spelt = [{"role": "System", "content": "be brief"}, {"role": "human", "content": "hi"},
             {"role": "gpt", "content": "hello"}, {"role": "user", "content": "bye"}]
    plain = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
    assert encode_prompts(byte_tokenizer(), [spelt], template, 256) == encode_prompts(byte_tokenizer(), [plain],
                                                                                       template, 256)
    with pytest.raises(ConfigError, match=r"^prompt 1: unknown role 'narrator'; use system, user or assistant"):
        encode_prompts(byte_tokenizer(), [[{"role": "narrator", "content": "once"}]], template, 64)


def test_prompts_of_one_length_share_a_batch_where_pads_must_stay_apart():
    from tuneforge.generate import _batches

    lengths = [5, 3, 5, 3, 4, 5]
    assert _batches(lengths, 2, equal=False) == [[1, 3], [4, 0], [2, 5]]
    assert _batches(lengths, 2, equal=True) == [[1, 3], [4], [0, 2], [5]]


def test_virtual_tokens_under_a_sliding_window_generate_as_one_prompt_at_a_time(tmp_path):
    """Gemma 2 with a 16-token window and a 12-token soft prompt: a padded row would put its pads between the
    prompt and the text (inside the window); batched answers are the answers each prompt gets alone."""
    import transformers as T

    from lm_helpers import tiny_tokenizer
    from tuneforge.generate import Sampling, generate_ids
    from tuneforge.methods import registry
    from tuneforge.tasks import Runtime

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    config = T.Gemma2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=64,
                            sliding_window=16, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                            bos_token_id=None)
    model = T.AutoModelForCausalLM.from_config(config)
    model = registry.apply(model, "prompt", registry.make_config("prompt", {"num_virtual_tokens": 12})).eval()
    with torch.no_grad():
        model.base_model.prompt_encoder.embedding.normal_(0, 1)
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in
               ["what is the capital of france ?", "say hello", "please tell me what color is the sun ?"]]
    rt = Runtime(device=torch.device("cpu"), bf16=False, pad_id=tok.pad_token_id)
    s = Sampling(max_new_tokens=6)
    alone = [generate_ids(model, tok, [p], rt, s)[0] for p in prompts]
    assert generate_ids(model, tok, prompts, rt, s, batch_size=3) == alone
    from tuneforge.methods.virtual_tokens import pads_apart
    assert pads_apart(model, 9, 6) and not pads_apart(model, 2, 1)  # 12 + 9 + 6 > 16 > 12 + 2 + 1 rows
    model.config.sliding_window = 4096  # a window wider than the rows: prompts of all lengths batch together
    assert not pads_apart(model, 9, 6)


def test_virtual_tokens_before_the_pads_of_a_model_with_short_convolutions_keep_rows_apart():
    """LFM2's convolutions (Falcon-H1's Mamba mixers) carry the left pads' state from a prompt-tuned model's
    virtual tokens into the text: batched answers differed from one prompt at a time."""
    import transformers as T

    from lm_helpers import tiny_tokenizer
    from tuneforge.methods import registry
    from tuneforge.methods.virtual_tokens import pads_apart

    tok = tiny_tokenizer()
    model = T.AutoModelForCausalLM.from_config(T.Lfm2Config(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64, full_attn_idxs=[1], pad_token_id=tok.pad_token_id))
    assert not pads_apart(model, 9, 6)  # no virtual tokens: the model's own padding mask keeps pads out
    model = registry.apply(model, "prompt", registry.make_config("prompt", {"num_virtual_tokens": 4}))
    assert pads_apart(model, 2, 1)


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_answers_stop_where_the_position_table_ends_counting_the_virtual_tokens(method):
    """GPT-2's 64 positions, 8 virtual tokens and a prompt of 50: at most 6 new tokens, not an error once the
    answer runs past the table."""
    import transformers as T

    from lm_helpers import tiny_tokenizer
    from tuneforge.generate import Sampling, generate_ids
    from tuneforge.methods import registry
    from tuneforge.tasks import Runtime

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(T.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4,
                                                            n_positions=64, pad_token_id=tok.pad_token_id,
                                                            eos_token_id=tok.eos_token_id, bos_token_id=None))
    model = registry.apply(model, method, registry.make_config(method, {"num_virtual_tokens": 8})).eval()
    ids = tok("what is the capital of france ? " * 8, add_special_tokens=False)["input_ids"][:50]
    rt = Runtime(device=torch.device("cpu"), bf16=False, pad_id=tok.pad_token_id)
    (out,) = generate_ids(model, tok, [ids], rt, Sampling(max_new_tokens=20))
    assert len(out) <= 64 - 8 - 50


def test_a_long_prompt_never_cuts_the_answers_of_the_short_ones_beside_it(capsys):
    """GPT-2's 64 positions: a 62-token prompt in the batch left the others 2 new tokens, a 64-token one none
    (and the test samples' BLEU of a whole eval batch fell to 0)."""
    import transformers as T

    from lm_helpers import tiny_tokenizer
    from tuneforge.generate import Sampling, generate_ids
    from tuneforge.tasks import Runtime

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(T.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4,
                                                            n_positions=64, pad_token_id=tok.pad_token_id,
                                                            eos_token_id=None, bos_token_id=None)).eval()
    words = tok("what is the capital of france ? " * 10, add_special_tokens=False)["input_ids"]
    prompts = [words[:5], words[:9], words[:62], words[:64]]
    rt = Runtime(device=torch.device("cpu"), bf16=False, pad_id=tok.pad_token_id)
    s = Sampling(max_new_tokens=8)
    alone = [generate_ids(model, tok, [p], rt, s)[0] for p in prompts]
    assert [len(a) for a in alone] == [8, 8, 2, 0]  # no end token: as long as each prompt's room allows
    capsys.readouterr()
    assert generate_ids(model, tok, prompts, rt, s, batch_size=4) == alone
    assert capsys.readouterr().err == (  # neither the cut answer nor the missing one passes in silence
        "note: 1 answer(s) stopped at the model's 64 positions, before max_new_tokens (8) and before an end of answer "
        "(shorter prompts leave more room)\nnote: 1 prompt(s) fill all 64 positions the model embeds, so they get no "
        "answer (shorten them, or lower model.max_length when training)\n")


def test_generation_stops_at_the_mark_the_template_ends_a_reply_with():
    """A folder whose generation config names only the end-of-text token (gemma-7b-it's stopped at <eos> only)
    while its template ends replies with an end-of-turn mark: answers ran on past the mark training taught."""
    from lm_helpers import TEMPLATE, tiny_tokenizer
    from tuneforge.generate import eos_ids

    tok = tiny_tokenizer()
    tok.eos_token = "<|system|>"  # not the mark that ends a reply
    model = tiny_causal_lm("llama")
    model.generation_config.eos_token_id = None
    end = tok.convert_tokens_to_ids("<|end|>")
    assert end in eos_ids(model, tok) and tok.eos_token_id in eos_ids(model, tok)
    tok.chat_template = {"default": TEMPLATE}
    assert end in eos_ids(model, tok)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"  # plain text after a reply
    assert eos_ids(model, tok) == [tok.eos_token_id]
