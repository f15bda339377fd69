"""models.apply_method: a pre-trained pooler that the method leaves frozen trains with the head; models.store_frozen_in_bf16:
frozen RMSNorm weights in bf16, at the float32 norms' loss and gradients under autocast."""
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, OPTConfig

from conftest import tiny_batch, tiny_causal_lm, tiny_classifier
from tiny import model_dir
from tuneforge.config import ConfigError, load_config
from tuneforge.methods import registry
from tuneforge.models import apply_method, frozen_pooler, load_labelled, load_pretrained, store_frozen_in_bf16
from tuneforge.optim import build_optimizer


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return model_dir(tmp_path_factory.mktemp("models") / "bert", "bert")


def _pooler_grads(model):
    return [p.requires_grad for n, p in model.named_parameters() if n.startswith("bert.pooler.")]


def _applied(bert, method, pooler_with_head):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(bert, num_labels=2)
    cfg = load_config(None, {"method": {"name": method}, "train": {"pooler_with_head": pooler_with_head}})
    return apply_method(model, cfg, ["classifier"])


@pytest.mark.parametrize("method", registry.names())
def test_a_frozen_pooler_trains_with_the_head_and_a_trained_one_is_left_to_the_method(bert, method):
    plain, heads = _applied(bert, method, False)
    assert heads == ["classifier"]
    left_frozen = not any(_pooler_grads(plain))
    model, heads = _applied(bert, method, True)
    if left_frozen:  # e.g. adapters, prompt tuning: the pooler trains in full, named with the heads
        assert heads == ["classifier", "bert.pooler"] and all(_pooler_grads(model))
    else:  # full (all of it), LoRA (pooler.dense wrapped), BitFit (its bias): the method's own choice stands
        assert heads == ["classifier"] and _pooler_grads(model) == _pooler_grads(plain)
    other = {n: p.requires_grad for n, p in plain.named_parameters() if not n.startswith("bert.pooler.")}
    assert other == {n: p.requires_grad for n, p in model.named_parameters() if not n.startswith("bert.pooler.")}


def test_the_methods_that_leave_the_pooler_frozen(bert):
    frozen = {m for m in registry.names() if not any(_pooler_grads(_applied(bert, m, False)[0]))}
    assert {"adapter", "prompt", "p-tuning", "prefix", "ia3"} <= frozen and not {"full", "lora", "bitfit"} & frozen


def test_models_without_a_pooler_add_nothing(bert):
    tagger = AutoModelForTokenClassification.from_pretrained(bert, num_labels=3)  # built without a pooler
    assert frozen_pooler(registry.apply(tagger, "adapter", registry.make_config("adapter", {}))) == []


def test_the_pooler_learns_at_the_heads_rate(bert):
    model, heads = _applied(bert, "adapter", True)
    cfg = load_config(None, {"train": {"lr": 1e-4, "head_lr": 3e-3}})
    optimizer, names = build_optimizer(model, cfg, tuple(heads))
    order = iter(names)  # parameter names in the optimizer's order
    rate = {next(order): g["lr"] for g in optimizer.param_groups for _ in g["params"]}
    assert rate["bert.pooler.dense.weight"] == rate["classifier.weight"] == 3e-3
    assert {r for n, r in rate.items() if not n.startswith(("bert.pooler.", "classifier."))} == {1e-4}


def _lora_lm():
    model = registry.apply(tiny_causal_lm("llama"), "lora", registry.make_config("lora", {}))
    for n, p in model.named_parameters():  # a trained-looking update and norm weights away from 1
        if "lora_B" in n or "norm" in n:
            with torch.no_grad():
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in n else 0.0))
    return model


def _loss_and_grads(model, batch):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_frozen_rms_norm_weights_are_stored_in_bf16_and_layer_norms_and_trained_ones_are_not():
    lm = _lora_lm()
    store_frozen_in_bf16(lm)
    norms = [m for m in lm.modules() if type(m).__name__.endswith("RMSNorm")]
    assert norms and all(m.weight.dtype == torch.bfloat16 for m in norms)
    bert = tiny_classifier("bert")
    store_frozen_in_bf16(bert)  # nothing frozen: every weight trains and stays float32
    assert all(p.dtype == torch.float32 for p in bert.parameters())
    bert.requires_grad_(False)
    store_frozen_in_bf16(bert)
    layer_norms = [m for m in bert.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert layer_norms and all(m.weight.dtype == torch.float32 for m in layer_norms)


def test_bf16_rms_norm_weights_keep_the_loss_and_gradients_of_float32_ones_under_autocast():
    batch = tiny_batch()
    plain, ref = _lora_lm(), _lora_lm()
    store_frozen_in_bf16(ref)
    for m in ref.modules():  # the reference: linear weights in bf16 as before, norms back in float32
        if type(m).__name__.endswith("RMSNorm"):
            m.weight.data = m.weight.data.float()
    loss_ref, grads_ref = _loss_and_grads(ref, batch)
    store_frozen_in_bf16(plain)
    loss, grads = _loss_and_grads(plain, batch)
    assert loss == pytest.approx(loss_ref, rel=1e-2)
    for n, g in grads_ref.items():  # bf16 rounding of the norm weights only: within 3 % of the largest entry
        assert (grads[n] - g).abs().max() <= 0.03 * g.abs().max() + 1e-6, n


def test_an_architecture_without_a_model_for_the_task_is_named_in_the_tasks_words(tmp_path):
    OPTConfig().save_pretrained(tmp_path)  # transformers has no OPTForTokenClassification
    with pytest.raises(ConfigError, match=r"has no token classification model for its architecture \(OPT;"):
        load_pretrained(AutoModelForTokenClassification, tmp_path)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_a_decoder_classifier_finds_the_last_real_token_by_the_pad_id_its_batches_use(family, tmp_path, capsys):
    """The config names pad id 0 (as Gemma's or OPT's do) but the tokenizer pads with 5 (e.g. its end-of-text token):
    a decoder classifies each row at its last token that is not the config's pad id, so the two must agree; an
    encoder reads the attention mask, and RoBERTa-style ones count positions from their config's pad id."""
    folder = model_dir(tmp_path / family, family)
    cfg = load_config(overrides={"model": {"name": str(folder)}})
    model, _ = load_labelled(AutoModelForSequenceClassification, folder, cfg, ["a", "b"], pad_id=5)
    decoder = family == "llama"
    assert model.config.pad_token_id == (5 if decoder else 0)
    assert ("tokenizer pads with 5" in capsys.readouterr().err) == decoder
    if decoder:
        model.eval()
        ids = torch.tensor([[7, 8, 9, 10]])
        padded = torch.tensor([[7, 8, 9, 10, 5, 5]])
        mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
        with torch.no_grad():
            alone = model(input_ids=ids).logits
            batched = model(input_ids=padded, attention_mask=mask).logits
        torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


def test_a_folder_without_vocabulary_files_is_refused_and_a_sentencepiece_one_loads(tmp_path):
    """transformers 5 builds an empty T5Tokenizer (every word unknown) for a folder without its spiece.model;
    with the file (and the sentencepiece package) it loads."""
    import json
    import random

    import sentencepiece
    from transformers import T5Config

    from tuneforge.models import load_tokenizer

    folder = tmp_path / "t5"
    folder.mkdir()
    T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4).save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0}))
    with pytest.raises(ConfigError, match="holds none of the vocabulary files of its T5Tokenizer \\(spiece.model"):
        load_tokenizer(folder)
    random.seed(0)
    words = "good bad movie film the a is was very not".split()
    (tmp_path / "corpus.txt").write_text("\n".join(" ".join(random.choices(words, k=8)) for _ in range(500)))
    sentencepiece.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(folder / "spiece"),
                                             vocab_size=30, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                             minloglevel=2)
    tok = load_tokenizer(folder)
    assert tok.unk_token_id not in tok("good movie")["input_ids"]


@pytest.mark.parametrize("name", ["ByT5Tokenizer", "CanineTokenizer"])
def test_a_tokenizer_without_vocabulary_files_loads(tmp_path, name):
    """ByT5 and CANINE read bytes / characters: their folders (google/byt5-small) hold no vocabulary file."""
    import transformers

    from tuneforge.models import load_tokenizer

    getattr(transformers, name)().save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert tok.unk_token_id not in tok("Paris")["input_ids"] and len(tok("Paris", add_special_tokens=False)["input_ids"]) == 5
