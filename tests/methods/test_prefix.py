import warnings

import pytest
import torch
from peft import PrefixTuningConfig, get_peft_model
from transformers import DynamicCache

from conftest import tiny_batch, tiny_causal_lm, tiny_classifier
from helpers import (apply, bf16_step, generate, greedy_reference, lm_labels, loss_after_two_steps, method_params,
                     randomise, saved)
from tuneforge.config import ConfigError
from tuneforge.methods import prefix, registry

N = 4
BACKBONE = {"bert": "bert", "llama": "model", "gpt2": "transformer"}
WIDTH = {"bert": 2 * 2 * 32, "llama": 2 * 2 * 2 * 8, "gpt2": 2 * 2 * 32}  # layers * (k, v) * kv_heads * head_dim
PEFT_WARNINGS = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning",
                                           "ignore:.*past_key_values.*:FutureWarning")


def _model(family, causal=False, **options):
    base = tiny_causal_lm(family) if causal else tiny_classifier(family)
    return apply(base, "prefix", num_virtual_tokens=N, **options)


def test_exactly_the_prefix_trains(family):
    root = f"{BACKBONE[family]}.prefix_encoder"
    model = _model(family)
    assert method_params(model) == {f"{root}.embedding"}
    assert model.base_model.prefix_encoder.embedding.shape == (N, WIDTH[family])
    model = _model(family, reparam=True, reparam_hidden=16)
    assert method_params(model) == {f"{root}.embedding"} | {f"{root}.transform.{i}.{w}" for i in (0, 2)
                                                              for w in ("weight", "bias")}


def _manual_cache(model, family, batch):
    """The prefix of ``model`` as a DynamicCache filled through the public API, independently of the hook."""
    layers, kv_heads, head_dim = prefix.kv_shape(model)
    kv = model.base_model.prefix_encoder.key_values().detach().view(N, layers, 2, kv_heads, head_dim)
    cache = DynamicCache(config=model.config)
    for i in range(layers):
        k, v = (kv[:, i, j].permute(1, 0, 2).unsqueeze(0).expand(batch, -1, -1, -1) for j in (0, 1))
        cache.update(k, v, i)
    return cache


@pytest.mark.parametrize("reparam", [False, True])
def test_equals_a_hand_filled_cache_on_the_plain_model(family, reparam):
    """What the hook does, spelled out on an untouched model: a DynamicCache holding the prefix, the 2D mask
    extended by N. transformers 5.24 then counts the cache: without position_ids real tokens sit at N..N+L-1
    (decoders: ``arange(L) + cache.get_seq_length()``; BERT: ``position_ids[cache_length:]``), identical to
    passing ``position_ids = N + arange(L)``; and BERT in encoder mode sizes its mask from the 2D mask."""
    batch = tiny_batch()
    causal = family != "bert"
    model = _model(family, causal=causal, reparam=reparam, reparam_hidden=16)
    randomise(model)
    ours = model(**batch).logits
    plain = tiny_causal_lm(family) if causal else tiny_classifier(family)
    mask = torch.cat([torch.ones(3, N, dtype=torch.long), batch["attention_mask"]], dim=1)
    default = plain(input_ids=batch["input_ids"], attention_mask=mask, cache=_manual_cache(model, family, 3)).logits
    explicit = plain(input_ids=batch["input_ids"], attention_mask=mask, cache=_manual_cache(model, family, 3),
                     position_ids=N + torch.arange(10).expand(3, 10)).logits
    assert torch.equal(default, explicit)
    assert torch.allclose(ours, default, atol=1e-6)
    # explicit position ids count real tokens only: the hook shifts them by N
    assert torch.allclose(model(**batch, position_ids=torch.arange(10).expand(3, 10)).logits, ours, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_uses_the_cache_api_without_deprecation_warnings(family):
    batch = tiny_batch()
    model = _model(family, causal=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        out = model.base_model(**batch, use_cache=True)
        generate(model, batch["input_ids"][:2], 3)
    assert isinstance(out.cache, DynamicCache)
    assert out.cache.get_seq_length() == N + 10  # prefix + real tokens
    assert out.last_hidden_state.shape == (3, 10, 32)


@PEFT_WARNINGS
@pytest.mark.parametrize("reparam", [False, True])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_causal_lm_matches_peft(family, reparam):
    """Same prefix weights (same layout: per token, layer, key/value, head, head_dim; same MLP) in PEFT and
    here: logits agree to 1e-6 (float32). PEFT also places real tokens at N..N+L-1."""
    batch = tiny_batch()
    ours = _model(family, causal=True, reparam=reparam, reparam_hidden=16)
    randomise(ours, scale=0.3)
    twin = get_peft_model(tiny_causal_lm(family), PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=N, prefix_projection=reparam, encoder_hidden_size=16))
    enc = ours.base_model.prefix_encoder
    state = {"embedding.weight": enc.embedding}
    if reparam:
        state |= {f"transform.{k}": v for k, v in enc.transform.state_dict().items()}
    twin.prompt_encoder["default"].load_state_dict(state)
    assert torch.allclose(twin(**batch).logits, ours(**batch).logits, atol=1e-6)


@PEFT_WARNINGS
def test_bert_matches_peft_prefix_cache():
    """PEFT 0.21.2 refuses prefix tuning for BERT classification on transformers 5.24 (it looks for a
    ``past_key_values`` argument, now ``cache``). The part that matches: PEFT's own prefix cache
    (``get_prompt``) fed to the plain model with the mask extended by N gives our logits to 1e-6."""
    batch = tiny_batch()
    ours = _model("bert")
    randomise(ours, scale=0.3)
    twin = get_peft_model(tiny_classifier("bert"), PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=N))
    twin.prompt_encoder["default"].load_state_dict({"embedding.weight": ours.base_model.prefix_encoder.embedding})
    with pytest.raises(ValueError, match="past key values"):
        twin(**batch)
    mask = torch.cat([torch.ones(3, N, dtype=torch.long), batch["attention_mask"]], dim=1)
    theirs = tiny_classifier("bert")(input_ids=batch["input_ids"], attention_mask=mask, cache=twin.get_prompt(3))
    assert torch.allclose(theirs.logits, ours(**batch).logits, atol=1e-6)


@pytest.mark.parametrize("reparam", [False, True])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generate_matches_greedy_full_forwards(family, reparam):
    model = _model(family, causal=True, reparam=reparam, reparam_hidden=16)
    randomise(model, scale=0.3)
    ids = tiny_batch(batch=2, seq=6, seed=4)["input_ids"]
    out = generate(model, ids, 5)
    assert out.shape == (2, 11)
    assert torch.equal(out, greedy_reference(model, ids, 5))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generate_with_left_padding(family):
    """generate derives position ids from the mask (real tokens only); the hook shifts them by N and extends
    the mask of every decoding step, so cached decoding equals full forwards with the same positions."""
    model = _model(family, causal=True)
    randomise(model, scale=0.3)
    ids = tiny_batch(batch=2, seq=6, seed=4)["input_ids"]
    mask = torch.ones_like(ids)
    ids[1, :2], mask[1, :2] = 0, 0
    out = generate(model, ids, 5, mask=mask)
    assert torch.equal(out, greedy_reference(model, ids, 5, mask=mask))


def test_fold_then_save_and_reload(family):
    batch = tiny_batch()
    model = _model(family, reparam=True, reparam_hidden=16)
    randomise(model, scale=0.3)
    expected = model(**batch).logits
    prefix.fold(model)
    root = f"{BACKBONE[family]}.prefix_encoder"
    assert method_params(model) == {f"{root}.embedding"}
    assert torch.equal(model(**batch).logits, expected)
    fresh = _model(family, reparam=True, reparam_hidden=16)  # the same config, then what a run saves
    assert set(saved(model)) <= {n for n, _ in fresh.named_parameters()}  # same names as the unfolded model
    assert not fresh.load_state_dict(saved(model), strict=False).unexpected_keys
    assert fresh.base_model.prefix_encoder.folded
    assert torch.equal(fresh(**batch).logits, expected)


def test_unfolded_save_and_reload_and_plain_fold_is_a_no_op():
    batch = tiny_batch()
    model = _model("gpt2", causal=True, reparam=True, reparam_hidden=16)
    randomise(model, scale=0.3)
    expected = model(**batch).logits
    fresh = _model("gpt2", causal=True, reparam=True, reparam_hidden=16)
    assert not fresh.load_state_dict(saved(model), strict=False).unexpected_keys
    assert not fresh.base_model.prefix_encoder.folded  # the MLP's tensors came along: nothing folded
    assert torch.equal(fresh(**batch).logits, expected)
    plain = _model("gpt2", causal=True)
    before = saved(plain)
    prefix.fold(plain)
    assert saved(plain).keys() == before.keys() and all(torch.equal(before[k], v) for k, v in saved(plain).items())


def test_two_adamw_steps_lower_the_loss(family):
    batch = tiny_batch()
    before, after = loss_after_two_steps(_model(family), batch, torch.tensor([0, 1, 1]), 1e-2)
    assert after < before
    if family != "bert":
        model = _model(family, causal=True, reparam=True, reparam_hidden=16)
        before, after = loss_after_two_steps(model, batch, lm_labels(batch), 1e-2)
        assert after < before


def test_bf16_frozen_weights_with_autocast(family):
    batch = tiny_batch()
    bf16_step(_model(family, reparam=True, reparam_hidden=16), batch, torch.tensor([0, 1, 1]))
    if family != "bert":
        bf16_step(_model(family, causal=True), batch, lm_labels(batch))


def test_gradient_checkpointing_is_refused():
    model = _model("llama", causal=True)
    model.activation_checkpointing_enable()
    model.train()
    with pytest.raises(ConfigError, match="gradient checkpointing"):
        model(**tiny_batch())
    model.eval()
    with torch.no_grad():
        assert model(**tiny_batch()).logits.shape == (3, 10, 128)


def test_too_many_virtual_tokens(family):
    with pytest.raises(ConfigError, match="max_position_embeddings=64"):
        apply(tiny_classifier(family), "prefix", num_virtual_tokens=64)
    model = apply(tiny_classifier(family), "prefix", num_virtual_tokens=60)
    if family == "llama":
        assert model(**tiny_batch()).logits.shape == (3, 2)
    else:
        with pytest.raises(ConfigError, match="model.max_length to 4"):
            model(**tiny_batch())


@pytest.mark.parametrize("options, key", [
    ({"num_virtual_tokens": 0}, "method.num_virtual_tokens"),
    ({"reparam_hidden": 0}, "method.reparam_hidden"),
    ({"reparam": "yes"}, "method.reparam"),
])
def test_bad_settings_are_config_errors(options, key):
    with pytest.raises(ConfigError, match=key):
        registry.make_config("prefix", options)


def test_a_model_whose_attention_takes_no_cache_is_refused():
    """DistilBERT (like DeBERTa-v2 and ALBERT) has no cache argument: a prefix could not reach its attention,
    and training failed deep inside with a shape mismatch; it is refused when the method is applied."""
    from transformers import AutoModelForSequenceClassification, DistilBertConfig

    from conftest import VOCAB
    model = AutoModelForSequenceClassification.from_config(
        DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64))
    with pytest.raises(ConfigError, match="DistilBertModel takes no key/value cache"):
        apply(model, "prefix", num_virtual_tokens=N)


def test_a_model_with_layers_that_carry_a_state_along_the_sequence_is_refused():
    """LFM2's short convolutions (Qwen3-Next's linear attention, Falcon-H1's Mamba mixers) take no key/value
    prefix: filling the cache crashed with an AttributeError deep inside."""
    import transformers as T

    from conftest import VOCAB
    model = T.AutoModelForCausalLM.from_config(T.Lfm2Config(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64, full_attn_idxs=[1]))  # layer 0: a short convolution
    with pytest.raises(ConfigError, match=r"Lfm2Model has layers that carry a state along the sequence \(conv\), "
                                          "which take no key/value prefix; choose prompt, p-tuning or lora"):
        apply(model, "prefix", num_virtual_tokens=N)
