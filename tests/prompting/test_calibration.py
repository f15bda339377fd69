from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from conftest import tiny_causal_lm
from tiny import word_tokenizer
from tuneforge.config import ConfigError
from tuneforge.prompting.calibration import (
    PromptClassifier, apply_calibration, contextual_calibration, label_word_scores,
)

TEMPLATE = "review {text} it was"
LABELS = ["bad", "good", "fine"]
TEXTS = ["the movie was dull", "a great story", "this plot is so boring and the actor was awful",
         "fun", "love it", "not very nice but happy"]


class Biased(nn.Module):
    """A causal LM whose next-token logits are shifted toward one token, whatever the input."""

    def __init__(self, model: nn.Module, token_id: int, shift: float) -> None:
        super().__init__()
        self.model, self.token_id, self.shift = model, token_id, shift

    def forward(self, **inputs):
        logits = self.model(**inputs).logits.clone()  # (batch, seq, vocab)
        logits[..., self.token_id] += self.shift
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # gpt2: absolute positions, so position ids matter
def test_batched_left_padding_scores_like_one_at_a_time(tok, family):
    model = tiny_causal_lm(family)
    prompts = [TEMPLATE.replace("{text}", t) for t in TEXTS]
    batched = label_word_scores(model, tok, prompts, LABELS, batch_size=4)
    single = label_word_scores(model, tok, prompts, LABELS, batch_size=1)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    assert batched.shape == (len(TEXTS), 3)
    torch.testing.assert_close(batched.sum(-1), torch.ones(len(TEXTS)))
    # one-token label words: full-sequence scoring equals first-token scoring
    torch.testing.assert_close(label_word_scores(model, tok, prompts, LABELS, mode="sequence", batch_size=4),
                               batched, atol=1e-5, rtol=1e-4)


def test_sequence_mode_scores_multi_token_label_words(tok):
    model = tiny_causal_lm("gpt2")
    words = ["very good", "very bad", "dull"]  # the first two share their first token
    prompts = [TEMPLATE.replace("{text}", t) for t in TEXTS[:3]]
    got = label_word_scores(model, tok, prompts, words, mode="sequence", batch_size=2)
    expected = []
    for prompt in prompts:
        ids = tok(prompt)["input_ids"]
        row = []
        for word in words:
            label = tok(word, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                log_probs = model(input_ids=torch.tensor([ids + label])).logits[0].log_softmax(-1)  # (seq, vocab)
            row.append(sum(float(log_probs[len(ids) - 1 + i, t]) for i, t in enumerate(label)))
        expected.append(torch.tensor(row).softmax(-1))
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=1e-4)


def test_contextual_calibration_makes_content_free_input_uniform(tok):
    model = Biased(tiny_causal_lm("llama"), tok.convert_tokens_to_ids("bad"), shift=4.0)
    clf = PromptClassifier(model, tok, TEMPLATE, LABELS, demonstrations=[("a great story", 1), ("dull", 0)])
    p_cf = clf.content_free_scores()  # (3 content-free inputs, 3 labels)
    assert (p_cf.argmax(-1) == 0).all() and float(p_cf[:, 0].min()) > 0.8  # skewed toward "bad"
    W = clf.calibration()
    uniform = torch.full((3,), 1 / 3)
    # the averaged content-free distribution maps exactly to uniform; each single one to within 0.05
    torch.testing.assert_close(apply_calibration(p_cf.mean(0, keepdim=True), W)[0], uniform)
    assert float((apply_calibration(p_cf, W) - uniform).abs().max()) < 0.05
    assert clf.predict(TEXTS, calibrate=False) == [0] * len(TEXTS)  # every real input is called "bad" too
    report = clf.evaluate(TEXTS, [0, 1, 0, 1, 1, 2])
    assert report["predicted_share"][0] == 1.0 and report["predicted_share_calibrated"][0] < 1.0
    assert report["p_content_free"][0] > 0.8 and report["accuracy"] == pytest.approx(2 / 6)


def test_calibration_cancels_a_constant_label_bias(tok):
    """With one content-free input, a constant logit shift toward a label word is undone exactly: the
    biased model's calibrated probabilities equal the unbiased model's."""
    base = tiny_causal_lm("llama")
    kwargs = dict(template=TEMPLATE, label_words=LABELS, content_free=("N/A",))
    plain = PromptClassifier(base, tok, **kwargs).probabilities(TEXTS, calibrate=True)
    biased = PromptClassifier(Biased(base, tok.convert_tokens_to_ids("bad"), 4.0), tok, **kwargs)
    assert not torch.allclose(biased.probabilities(TEXTS, calibrate=False), plain, atol=0.1)
    torch.testing.assert_close(biased.probabilities(TEXTS, calibrate=True), plain, atol=1e-5, rtol=1e-4)


def test_calibration_formula():
    p_cf = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]])
    W = contextual_calibration(p_cf)
    torch.testing.assert_close(torch.diag(W), 1 / torch.tensor([0.6, 0.25, 0.15]))
    probs = torch.tensor([[0.6, 0.25, 0.15], [0.3, 0.3, 0.4]])
    q = apply_calibration(probs, W)
    torch.testing.assert_close(q[0], torch.full((3,), 1 / 3))
    expected = torch.tensor([0.3 / 0.6, 0.3 / 0.25, 0.4 / 0.15])
    torch.testing.assert_close(q[1], expected / expected.sum())


def test_prompt_rendering_and_errors(tok):
    model = tiny_causal_lm("gpt2")
    clf = PromptClassifier(model, tok, "text: {text} ->", [" good", " bad"], demonstrations=[("fun {x}", 0)])
    assert clf.prompt("dull") == "text: fun {x} -> good\n\ntext: dull ->"
    with pytest.raises(ConfigError, match="{text}"):
        PromptClassifier(model, tok, "no slot", LABELS)
    with pytest.raises(ConfigError, match="label index"):
        PromptClassifier(model, tok, TEMPLATE, LABELS, demonstrations=[("x", 5)])
    with pytest.raises(ConfigError, match="share a first token"):
        label_word_scores(model, tok, ["the movie"], ["good", "good bad"])
    with pytest.raises(ConfigError, match="two or more"):
        label_word_scores(model, tok, ["the movie"], ["good"])


def _llama2_style_tokenizer():
    """A BPE tokenizer laid out as Llama-2's tokenizer.json: "▁" prepended to the text, spaces as "▁", so a word
    tokenised alone with its leading space starts with a lone "▁" that never occurs inside a text."""
    from tokenizers import Tokenizer, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    words = "the good bad fine yes no cat dog : N/A".split()
    raw.train_from_iterator([" ".join(words[i:] + words[:i]) for i in range(len(words))] * 20,
                            trainers.BpeTrainer(vocab_size=100, special_tokens=["<unk>", "<s>", "</s>"],
                                                show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_label_words_are_tokenised_as_they_occur_after_the_prompt():
    from tuneforge.prompting.calibration import label_token_ids
    tok = _llama2_style_tokenizer()
    alone = [tok(w, add_special_tokens=False)["input_ids"] for w in (" yes", " no")]
    assert alone[0][0] == alone[1][0]  # a lone "▁" first: first-token scoring could not tell them apart
    in_text = [tok("the cat :" + w, add_special_tokens=False)["input_ids"] for w in (" yes", " no")]
    prefix = tok("the cat :", add_special_tokens=False)["input_ids"]
    assert label_token_ids(tok, [" yes", " no"], "the cat :") == [ids[len(prefix):] for ids in in_text]
    scores = label_word_scores(tiny_causal_lm("llama"), tok, ["the dog :", "the cat :"], [" yes", " no"])
    assert scores.shape == (2, 2)


def test_prompts_beyond_the_position_table_are_cut_from_the_left(tok, capsys):
    model = tiny_causal_lm("gpt2")  # 64 positions
    long_text = " ".join(["very good story"] * 30)  # ~90 tokens
    prompts = [TEMPLATE.replace("{text}", long_text), TEMPLATE.replace("{text}", "fun")]
    for mode in ("first_token", "sequence"):
        got = label_word_scores(model, tok, prompts, LABELS, mode=mode)
        assert "1 of 2 prompt(s) are longer than the model's 64 positions" in capsys.readouterr().err
        ids = tok(prompts[0])["input_ids"][-(64 - (1 if mode == "sequence" else 0)):]
        cut = tok.decode(ids)  # the word-level tokenizer decodes back to the same tokens
        torch.testing.assert_close(got[0], label_word_scores(model, tok, [cut], LABELS, mode=mode)[0])


def test_sequence_mode_warns_when_a_label_word_begins_another(tok, capsys):
    label_word_scores(tiny_causal_lm("gpt2"), tok, ["the movie"], ["good", "good bad"], mode="sequence")
    assert "label word 'good bad' begins with the tokens of 'good'" in capsys.readouterr().err
