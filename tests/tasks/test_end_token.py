"""Encoder-decoder classifiers read each row's end-of-text token: every row ends in it and holds it nowhere
else, whatever the text spells or the tokenizer appends (tasks/end_token.py)."""
import pytest
import torch
import transformers as T
from tokenizers.processors import TemplateProcessing

from conftest import VOCAB
from tiny import model_dir, reviews_csv, save_folder, word_tokenizer
from tuneforge.config import ConfigError
from tuneforge.data.batching import collate
from tuneforge.data.dataset import prepare
from tuneforge.run import resolve_config
from tuneforge.tasks import get

EOS = 3  # word_tokenizer's [EOS]


def t5_folder(path, appends: bool = True, pad: bool = True, eos: int = EOS, single: str = "$A [EOS]"):
    tok = word_tokenizer(pad)
    if appends:  # T5's way; mBART's appends a language code after it ("$A [EOS] w5")
        tok._tokenizer.post_processor = TemplateProcessing(single=single, pair="$A [EOS] $B [EOS]",
                                                           special_tokens=[("[EOS]", EOS), ("w5", 9)])
    torch.manual_seed(0)
    config = T.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, pad_token_id=0,
                        eos_token_id=eos, decoder_start_token_id=0)
    return save_folder(path, T.T5ForConditionalGeneration(config), tok)


def prepared(tmp_path, folder, rows=None):
    data = reviews_csv(tmp_path / "r.csv", 60)
    if rows is not None:  # texts that spell the end token
        data.write_text("text,label\n" + "".join(f"{t} w{i},{y}\n" for i in range(40, 60) for t, y in rows))
    cfg = resolve_config({"model": {"name": str(folder), "max_length": 16}, "data": {"dataset": str(data)}})
    task = get("classification")
    from tuneforge.models import load_tokenizer
    return cfg, task, prepare(cfg, task, load_tokenizer(folder))[1]


@pytest.mark.parametrize("appends", [True, False])
def test_every_row_holds_the_end_token_once_whatever_the_text_spells(tmp_path, capsys, appends):
    rows = [("good [EOS] movie", "positive"), ("bad </s> film", "negative"), ("a very very very very very very very "
                                                                             "very very very very very very long one",
                                                                             "positive")]
    cfg, task, data = prepared(tmp_path, t5_folder(tmp_path / "t5", appends), rows)
    assert data.meta["end_token"] == EOS
    examples = data.train + data.validation + data.test
    assert all(e["input_ids"][-1] == EOS and e["input_ids"].count(EOS) == 1 for e in examples)
    assert max(len(e["input_ids"]) for e in examples) == 16  # the long text cut, its end token kept
    assert ("tuneforge appends it" in capsys.readouterr().err) is not appends
    model, _ = task.load_model(cfg.model.name, cfg, data.meta, 0, torch.device("cpu"))
    assert model(**collate(examples[:8], 0)).logits.shape == (8, 2)  # the head finds one end token per row


def test_a_row_cut_to_make_room_for_the_end_token_is_marked_cut(tmp_path):
    _, _, data = prepared(tmp_path, t5_folder(tmp_path / "t5", appends=False),
                          [("the movie was very good and fun w1 w2 w3 w4 w6 w7 w8 w9", "positive"),
                           ("bad film", "negative")])
    examples = data.train + data.validation + data.test
    assert {len(e["input_ids"]): bool(e.get("_cut")) for e in examples}[16] is True  # 16 words: the last lost
    assert all(not e.get("_cut") for e in examples if len(e["input_ids"]) < 16)


def test_a_language_code_after_the_end_token_is_kept_and_nothing_appended(tmp_path, capsys):
    """mBART's tokenizer ends texts with ``</s> en_XX``: the end token is there, so nothing is added."""
    _, _, data = prepared(tmp_path, t5_folder(tmp_path / "mbart", single="$A [EOS] w5"), [("good movie", "positive"),
                                                                                          ("bad film", "negative")])
    assert all(e["input_ids"][-2:] == [EOS, 9] for e in data.train + data.validation + data.test)
    assert "tuneforge appends it" not in capsys.readouterr().err


@pytest.mark.parametrize("appends, ends", [(True, 2), (False, 1)])
def test_text_pairs_hold_as_many_end_tokens_in_every_row(tmp_path, appends, ends):
    data = reviews_csv(tmp_path / "r.csv", 2)
    data.write_text("premise,hypothesis,label\n" + "".join(f"good [EOS] w{i},bad w{i},yes\nfine w{i},</s> x,no\n"
                                                           for i in range(30)))
    folder = t5_folder(tmp_path / "t5", appends)
    cfg = resolve_config({"model": {"name": str(folder), "max_length": 16}, "data": {"dataset": str(data)}})
    from tuneforge.models import load_tokenizer
    _, prepared_data = prepare(cfg, get("classification"), load_tokenizer(folder))
    examples = prepared_data.train + prepared_data.validation + prepared_data.test
    assert {e["input_ids"].count(EOS) for e in examples} == {ends} and all(e["input_ids"][-1] == EOS for e in examples)


def test_a_tokenizer_that_pads_with_the_end_token_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="pads with that token; give the tokenizer a pad token"):
        prepared(tmp_path, t5_folder(tmp_path / "t5", pad=False))


def test_a_config_naming_another_end_token_than_the_tokenizer_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="id 1 in its config .* ends texts with '\\[EOS\\]' \\(id 3\\)"):
        prepared(tmp_path, t5_folder(tmp_path / "t5", eos=1))


def test_an_encoder_classifier_keeps_its_tokenisation(tmp_path):
    _, _, data = prepared(tmp_path, model_dir(tmp_path / "bert", "bert"), [("good [EOS] movie", "positive"),
                                                                         ("bad film", "negative")])
    assert "end_token" not in data.meta
    spelt = word_tokenizer()("good [EOS] movie w40")["input_ids"]
    assert EOS in spelt and spelt in [e["input_ids"] for e in data.train + data.validation + data.test]
