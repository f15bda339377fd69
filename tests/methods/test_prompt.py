import pytest
import torch
from peft import PromptTuningConfig, get_peft_model

from conftest import tiny_batch, tiny_causal_lm, tiny_classifier
from helpers import (apply, bf16_step, generate, greedy_reference, lm_labels, loss_after_two_steps, method_params,
                     randomise, saved, word_tokenizer)
from tuneforge.config import ConfigError
from tuneforge.methods import prompt, registry

N = 4
BACKBONE = {"bert": "bert", "llama": "model", "gpt2": "transformer"}
PEFT_WARNINGS = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def test_only_the_prompt_trains(family):
    model = apply(tiny_classifier(family), "prompt", num_virtual_tokens=N)
    assert method_params(model) == {f"{BACKBONE[family]}.prompt_encoder.embedding"}
    assert model.base_model.prompt_encoder.embedding.shape == (N, 32)


def test_a_model_that_shortens_the_sequence_is_refused_in_one_line():
    """Funnel's classifier pools its sequence down: no output position is a virtual token's to strip."""
    from transformers import AutoModelForSequenceClassification, FunnelConfig

    torch.manual_seed(0)
    model = apply(AutoModelForSequenceClassification.from_config(FunnelConfig(
        vocab_size=128, d_model=32, n_head=4, d_head=8, d_inner=64, block_sizes=[1, 1], num_decoder_layers=1)),
        "prompt", num_virtual_tokens=N)
    with pytest.raises(ConfigError, match=r"FunnelBaseModel returns \d+ positions for 14 inputs \(it shortens the "
                                          r"sequence\).*choose lora, ia3 or adapter"):
        model(**tiny_batch())


def test_outputs_keep_the_input_length(family):
    batch = tiny_batch()
    model = apply(tiny_classifier(family), "prompt", num_virtual_tokens=N)
    out = model.base_model(**batch, output_hidden_states=True)
    assert out.last_hidden_state.shape == (3, 10, 32)
    assert all(h.shape == (3, 10, 32) for h in out.hidden_states)
    if family != "gpt2":  # positional call as a loop may do it (GPT-2's 2nd positional argument is the cache)
        hidden = model.base_model(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        assert torch.equal(hidden, out.last_hidden_state)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_causal_lm_hidden_states_feed_the_output_embeddings(family):
    batch = tiny_batch()
    model = apply(tiny_causal_lm(family), "prompt", num_virtual_tokens=N)
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    logits = model.get_output_embeddings()(hidden)  # (batch, L, vocab): aligned with the real tokens
    assert torch.allclose(logits, model(**batch).logits, atol=1e-6)
    # explicit position ids count real tokens only and are shifted like the default ones
    pos = torch.arange(10).expand(3, 10)
    assert torch.allclose(model(**batch, position_ids=pos).logits, model(**batch).logits, atol=1e-6)


def test_inits():
    base = tiny_classifier("bert")
    table = base.bert.embeddings.word_embeddings.weight.detach()
    torch.manual_seed(0)
    model = prompt.apply(tiny_classifier("bert"), prompt.Config(num_virtual_tokens=N, init="vocab"))
    prompts = model.bert.prompt_encoder.embedding.detach()
    assert all(any(torch.equal(row, t) for t in table[1:]) for row in prompts)  # never the padding row 0
    model = prompt.apply(tiny_classifier("bert"), prompt.Config(num_virtual_tokens=N, init="random"))
    assert not any(torch.equal(row, t) for row in model.bert.prompt_encoder.embedding.detach() for t in table)


def test_text_init_repeats_the_text_tokens(tmp_path):
    tok = word_tokenizer(tmp_path / "tok")
    model = apply(tiny_classifier("gpt2"), "prompt", num_virtual_tokens=5, init="text", init_text="w5 w7",
                  tokenizer=str(tok))
    table = model.transformer.wte.weight.detach()
    assert torch.equal(model.transformer.prompt_encoder.embedding.detach(), table[[5, 7, 5, 7, 5]])
    with pytest.raises(ConfigError, match="method.tokenizer"):
        apply(tiny_classifier("gpt2"), "prompt", init="text", init_text="w5", tokenizer=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="holds no word the tokenizer knows"):  # all [UNK]: nothing to start from
        apply(tiny_classifier("gpt2"), "prompt", init="text", init_text="zzz qqq", tokenizer=str(tok))


@PEFT_WARNINGS
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_causal_lm_matches_peft(family):
    """Same prompt weights in PEFT and here: PEFT returns N extra leading logits and extends labels with N
    times -100; ours are already stripped. Logits agree to 1e-6 (float32). The losses agree when the first
    real token is not a target (as for prompts masked by the data pipeline): PEFT additionally scores the
    first real token from the last virtual position, a logit our stripped output does not have."""
    batch = tiny_batch()
    ours = apply(tiny_causal_lm(family), "prompt", num_virtual_tokens=N)
    twin = get_peft_model(tiny_causal_lm(family), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N))
    with torch.no_grad():
        twin.prompt_encoder["default"].embedding.weight.copy_(ours.base_model.prompt_encoder.embedding)
    labels = lm_labels(batch)
    theirs, mine = twin(**batch, labels=labels), ours(**batch, labels=labels)
    assert theirs.logits.shape[1] == N + mine.logits.shape[1]
    assert torch.allclose(theirs.logits[:, N:], mine.logits, atol=1e-6)
    assert not torch.allclose(theirs.loss, mine.loss, atol=1e-6)  # PEFT's extra first-token term
    labels[:, 0] = -100
    assert torch.allclose(twin(**batch, labels=labels).loss, ours(**batch, labels=labels).loss, atol=1e-6)


@PEFT_WARNINGS
def test_classification_matches_peft(family):
    """BERT pools the first virtual token in both. Llama/GPT-2 classifiers pool the last real token here
    (input_ids still reach the head) but the last position in PEFT, which passes only inputs_embeds: the
    two agree on unpadded rows (compared, 1e-6) and differ on right-padded ones."""
    batch = tiny_batch()
    ours = apply(tiny_classifier(family), "prompt", num_virtual_tokens=N)
    twin = get_peft_model(tiny_classifier(family), PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=N))
    with torch.no_grad():
        twin.prompt_encoder["default"].embedding.weight.copy_(ours.base_model.prompt_encoder.embedding)
    rows = slice(None) if family == "bert" else slice(0, 2)  # the last row is right-padded
    full = {k: v[rows] for k, v in batch.items()}
    if family == "bert":  # sentence pairs: both extend token_type_ids with N zeros
        full["token_type_ids"] = (torch.arange(10) >= 5).long().expand(3, 10)
    assert torch.allclose(twin(**full).logits, ours(**full).logits, atol=1e-6)
    if family != "bert":  # ours pools the last real token: same as on the unpadded row
        trimmed = {k: v[-1:, :7] for k, v in batch.items()}
        assert torch.allclose(ours(**batch).logits[-1:], ours(**trimmed).logits, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generate_matches_greedy_full_forwards(family):
    model = apply(tiny_causal_lm(family), "prompt", num_virtual_tokens=N)
    randomise(model)
    ids = tiny_batch(batch=2, seq=6, seed=4)["input_ids"]
    out = generate(model, ids, 5)
    assert out.shape == (2, 11)
    assert torch.equal(out, greedy_reference(model, ids, 5))


def test_saved_prompt_reloads_into_a_fresh_model(family):
    batch = tiny_batch()
    model = apply(tiny_classifier(family), "prompt", num_virtual_tokens=N)
    randomise(model)
    expected = model(**batch).logits
    fresh = apply(tiny_classifier(family), "prompt", num_virtual_tokens=N)
    assert not fresh.load_state_dict(saved(model), strict=False).unexpected_keys
    assert torch.equal(fresh(**batch).logits, expected)


def test_two_adamw_steps_lower_the_loss(family):
    batch = tiny_batch()
    lr = prompt.TRAIN_DEFAULTS["lr"]
    before, after = loss_after_two_steps(apply(tiny_classifier(family), "prompt", num_virtual_tokens=N), batch,
                                         torch.tensor([0, 1, 1]), lr)
    assert after < before
    if family != "bert":
        model = apply(tiny_causal_lm(family), "prompt", num_virtual_tokens=N)
        before, after = loss_after_two_steps(model, batch, lm_labels(batch), lr)
        assert after < before


def test_bf16_frozen_weights_with_autocast(family):
    batch = tiny_batch()
    bf16_step(apply(tiny_classifier(family), "prompt", num_virtual_tokens=N), batch, torch.tensor([0, 1, 1]))
    if family != "bert":
        bf16_step(apply(tiny_causal_lm(family), "prompt", num_virtual_tokens=N), batch, lm_labels(batch))


def test_too_many_virtual_tokens(family):
    with pytest.raises(ConfigError, match="method.num_virtual_tokens=64.*max_position_embeddings=64"):
        apply(tiny_classifier(family), "prompt", num_virtual_tokens=64)
    model = apply(tiny_classifier(family), "prompt", num_virtual_tokens=60)
    batch = tiny_batch()  # 10 tokens + 60 virtual > 64 positions
    if family == "llama":  # rotary positions: no table to overflow
        assert model(**batch).logits.shape == (3, 2)
    else:
        with pytest.raises(ConfigError, match="model.max_length to 4"):
            model(**batch)


@pytest.mark.parametrize("options, key", [
    ({"num_virtual_tokens": 0}, "method.num_virtual_tokens"),
    ({"init": "zeros"}, "method.init"),
    ({"init": "text"}, "method.init_text"),
    ({"init_text": "Classify the review:"}, "method.init_text is read only with method.init=text"),
    ({"init": "random", "tokenizer": "tok"}, "method.tokenizer is read only with method.init=text"),
])
def test_bad_settings_are_config_errors(options, key):
    with pytest.raises(ConfigError, match=key):
        registry.make_config("prompt", options)
    with pytest.raises(ConfigError, match=key):
        prompt.Config(**options)
