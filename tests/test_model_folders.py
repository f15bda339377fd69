"""Model folders a user brings that do not hold what they claim: weights that do not fit config.json, damaged
weight files, a tokenizer larger than the embedding, a checkpoint without the task's head -- each one line (or a
warning), never a random layer trained in silence."""
import json

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerFast

from conftest import tiny_config
from lm_helpers import model_folder
from tiny import model_dir, save_folder, word_tokenizer
from tuneforge.config import ConfigError, load_config
from tuneforge.models import check_vocabulary, load_labelled, load_pretrained
from tuneforge.tasks import get


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


def test_weights_that_do_not_fit_their_config_are_refused_naming_the_tensor(tmp_path):
    """A classifier's head may be replaced (another label count); a backbone layer re-initialised would train from
    random in silence (it did, as a 'fresh module')."""
    bert = _edit_config(model_dir(tmp_path / "bert", "bert"), intermediate_size=96)
    cfg = load_config(overrides={"model": {"name": str(bert)}})
    with pytest.raises(ConfigError, match=r"do not fit its config.json \(bert.encoder.layer.0.intermediate.dense.bias: "
                                          r"\(64,\) saved, \(96,\) in config.json; 6 tensor\(s\) differ\)"):
        load_labelled(AutoModelForSequenceClassification, bert, cfg, ["a", "b"], pad_id=0)
    llama = _edit_config(model_folder(tmp_path / "llama"), vocab_size=200)
    with pytest.raises(ConfigError, match=r"do not fit its config.json \(\S+: \(\d+, 32\) saved, \(200, 32\)"):
        load_pretrained(AutoModelForCausalLM, llama)


def test_a_damaged_weights_file_is_named(tmp_path):
    folder = model_dir(tmp_path / "bert", "bert")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ConfigError, match="a weights file is damaged \\(.*\\); copy the model folder again"):
        load_pretrained(AutoModelForSequenceClassification, folder)


def test_a_tokenizer_larger_than_the_embedding_is_refused():
    model = AutoModelForSequenceClassification.from_config(tiny_config("bert"))
    check_vocabulary(model, word_tokenizer(), "m")  # 128 tokens, 128 rows
    grown = word_tokenizer()
    grown.add_tokens(["zzz1", "zzz2"])
    with pytest.raises(ConfigError, match="its tokenizer has 130 tokens but the model embeds 128"):
        check_vocabulary(model, grown, "m")


def test_a_token_id_past_the_embedding_is_refused_though_the_tokenizer_is_small():
    """Three tokens, but the pad token's id is 200 of 128 rows: training died in F.embedding (IndexError)."""
    model = AutoModelForSequenceClassification.from_config(tiny_config("bert"))
    vocab = {"[UNK]": 0, "good": 1, "[PAD]": 200}
    small = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")),
                                    unk_token="[UNK]", pad_token="[PAD]")
    with pytest.raises(ConfigError, match=r"its tokenizer gives '\[PAD\]' the id 200 but the model embeds only 128 "
                                          r"tokens \(ids 0-127\)"):
        check_vocabulary(model, small, "m")


def test_an_added_token_past_the_embedding_is_refused_where_the_vocabulary_omits_it():
    """A slow (e.g. remote-code) tokenizer can leave its added tokens out of get_vocab() and len()."""
    from transformers import PreTrainedTokenizer

    class Slow(PreTrainedTokenizer):
        words = {"[UNK]": 0, "good": 1}

        @property
        def vocab_size(self):
            return len(self.words)

        def __len__(self):
            return len(self.words)

        def get_vocab(self):
            return dict(self.words)

        def _tokenize(self, text):
            return text.split()

        def _convert_token_to_id(self, token):
            return self.words.get(token, 0)

        def _convert_id_to_token(self, index):
            return {i: w for w, i in self.words.items()}.get(index, "[UNK]")

    slow = Slow(unk_token="[UNK]")
    slow.add_tokens(["<tool>"])  # id 2
    two_rows = torch.nn.Module()
    two_rows.get_input_embeddings = lambda: torch.nn.Embedding(2, 4)
    with pytest.raises(ConfigError, match=r"its tokenizer gives '<tool>' the id 2 but the model embeds only 2"):
        check_vocabulary(two_rows, slow, "m")


def test_a_config_pad_id_past_its_vocabulary_is_one_line(tmp_path):
    """transformers asserted ('Padding_idx must be within num_embeddings'): a traceback."""
    bert = _edit_config(model_dir(tmp_path / "bert", "bert"), pad_token_id=200)
    with pytest.raises(ConfigError, match="config.json's pad_token_id is not below its vocab_size"):
        load_pretrained(AutoModelForSequenceClassification, bert)


def test_a_checkpoint_without_a_language_model_head_is_said_to_start_one_random(tmp_path, capsys):
    torch.manual_seed(0)
    folder = model_folder(tmp_path / "lm")
    classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    save_folder(tmp_path / "cls", classifier, word_tokenizer())
    cfg = load_config(overrides={"model": {"name": str(tmp_path / "cls"), "task": "causal_lm"}})
    _, fresh = get("causal_lm").load_model(tmp_path / "cls", cfg, {}, 0, torch.device("cpu"))
    assert fresh == ["lm_head"]
    assert "holds no pre-trained lm_head; it starts random and trains in full (the checkpoint is a " \
           "LlamaForSequenceClassification)" in capsys.readouterr().err


@pytest.mark.parametrize("labels, reordered", [(["negative", "positive"], True), (["spam", "ham"], False)])
def test_a_saved_heads_rows_follow_the_datas_labels_where_they_name_the_same(tmp_path, capsys, labels, reordered):
    """A fine-tuned classifier (id2label 0: positive, 1: negative) given data labelled negative/positive: its head
    keeps answering 'positive' for what it called positive (it answered 'negative' before)."""
    torch.manual_seed(0)
    config = tiny_config("bert", num_labels=2, id2label={0: "positive", 1: "negative"})
    model = AutoModelForSequenceClassification.from_config(config)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([5.0, -5.0]))  # answers its class 0, "positive"
    folder = save_folder(tmp_path / "sst", model, word_tokenizer())
    cfg = load_config(overrides={"model": {"name": str(folder)}})
    loaded, fresh = load_labelled(AutoModelForSequenceClassification, folder, cfg, labels, pad_id=0)
    assert fresh == []
    answer = labels[int(loaded.eval()(input_ids=torch.tensor([[5, 6, 7]])).logits.argmax())]
    assert answer == ("positive" if reordered else "spam")
    err = capsys.readouterr().err
    assert ("are reordered to this data's negative, positive" in err) is reordered
    assert ("it is kept and trained for this data's spam, ham" in err) is not reordered
