"""PEFT export of every method PEFT can represent (lora, ia3, prompt, p-tuning, prefix) on tiny random Llama,
GPT-2 and BERT models: the method's ``to_peft`` output, written as ``adapter_config.json`` +
``adapter_model.safetensors`` beside a saved base folder, loads with ``peft.PeftModel.from_pretrained`` and
gives tuneforge's logits (float32, atol 1e-4) and greedy generations.

Where PEFT 0.21.2 itself differs from tuneforge (documented in methods/virtual_tokens.py):
* prompt tuning / P-tuning return N extra leading positions in causal-LM and token-classification logits
  (compared after dropping them); PEFT's Llama/GPT-2 sequence classifiers pool the last position, tuneforge
  the last real token (compared on unpadded and left-padded rows, where they agree);
* prefix tuning for classification (SEQ_CLS, TOKEN_CLS) is refused by PEFT on transformers 5.24 (it looks
  for a ``past_key_values`` argument, now ``cache``): what holds is that the loaded adapter's prefix cache
  (``PeftModel.get_prompt``) passed to the model as ``cache=`` gives tuneforge's logits;
* PEFT's cached ``generate`` mis-handles transformers 5.24's ``cache`` argument for prompt-learning adapters
  (see test_causal_lm_logits_and_greedy_generation): generations are compared with greedy decoding through
  the PEFT model.
"""
import json
import re
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel
from safetensors.torch import save_file
from tokenizers import Tokenizer, models
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification,
                          PreTrainedTokenizerFast, RobertaConfig)

from conftest import VOCAB, tiny_batch, tiny_causal_lm, tiny_classifier, tiny_config
from tuneforge.config import ConfigError
from tuneforge.export import export_peft
from tuneforge.methods import ptuning, registry

N = 3  # virtual tokens
TOL = {"rtol": 0, "atol": 1e-4}
# case id -> (method, options)
CASES = {
    "lora": ("lora", {"rank": 4, "alpha": 8}),
    "ia3": ("ia3", {}),
    "prompt": ("prompt", {"num_virtual_tokens": N, "init": "random"}),
    "p-tuning-mlp": ("p-tuning", {"num_virtual_tokens": N, "encoder": "mlp", "encoder_hidden": 16}),
    "p-tuning-lstm": ("p-tuning", {"num_virtual_tokens": N, "encoder": "lstm", "encoder_hidden": 16}),
    "prefix": ("prefix", {"num_virtual_tokens": N}),
    "prefix-reparam": ("prefix", {"num_virtual_tokens": N, "reparam": True, "reparam_hidden": 16}),
}
VIRTUAL_INPUTS = {"prompt", "p-tuning"}  # PEFT prepends N positions to the outputs
PEFT_WARNINGS = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def tiny_token_classifier(family: str, num_labels: int = 3) -> torch.nn.Module:
    """Tiny token classifier, eval mode, seeded."""
    torch.manual_seed(0)
    return AutoModelForTokenClassification.from_config(tiny_config(family, num_labels=num_labels)).eval()


TASKS = {  # PEFT task type -> (tiny model builder, Auto class, fresh heads)
    "SEQ_CLS": (tiny_classifier, AutoModelForSequenceClassification, ["classifier", "score"]),
    "CAUSAL_LM": (tiny_causal_lm, AutoModelForCausalLM, []),
    "TOKEN_CLS": (tiny_token_classifier, AutoModelForTokenClassification, ["classifier"]),
}


@torch.no_grad()
def _randomise(model: torch.nn.Module, seed: int = 3) -> None:
    """Perturb everything that trains (method and heads), so neither the adapter nor a head is at its start."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


def _pair(tmp_path, family, case, task_type, extra_heads=()):
    """(tuneforge model, PEFT model loaded from the exported files, method name); ``extra_heads``: further
    modules trained in full (e.g. BERT's pooler, ``train.pooler_with_head``)."""
    build, auto, heads = TASKS[task_type]
    base = build(family)
    heads = [h for h in heads if hasattr(base, h)] + list(extra_heads)
    base.save_pretrained(tmp_path / "base")
    name, options = CASES[case]
    config = registry.make_config(name, options)
    ours = registry.apply(build(family), name, config, always_train=heads).eval()
    _randomise(ours)
    adapter_config, tensors = registry.get(name).to_peft(ours, config, task_type, heads)
    adapter_config["base_model_name_or_path"] = str(tmp_path / "base")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(adapter_config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "adapter" / "adapter_model.safetensors")
    theirs = PeftModel.from_pretrained(auto.from_pretrained(tmp_path / "base"), tmp_path / "adapter").eval()
    return ours, theirs, name


def _prefix_refused_then_cache_matches(ours, theirs, batch):
    """PEFT cannot run prefix tuning for classification here; its prefix cache on the plain model can."""
    with pytest.raises(ValueError, match="past key values"):
        theirs(**batch)
    n = batch["input_ids"].shape[0]
    mask = torch.cat([torch.ones(n, N, dtype=torch.long), batch["attention_mask"]], dim=1)
    got = theirs.get_base_model()(input_ids=batch["input_ids"], attention_mask=mask, cache=theirs.get_prompt(n))
    torch.testing.assert_close(got.logits, ours(**batch).logits, **TOL)


@PEFT_WARNINGS
@torch.no_grad()
@pytest.mark.parametrize("case", list(CASES))
def test_classifier_with_its_head(tmp_path, family, case):
    ours, theirs, name = _pair(tmp_path, family, case, "SEQ_CLS")
    batch = tiny_batch()  # the last row is right-padded
    if name == "prefix":
        return _prefix_refused_then_cache_matches(ours, theirs, batch)
    if name in VIRTUAL_INPUTS and family != "bert":  # PEFT pools the last position: pad the last row on the left
        for v in batch.values():
            v[-1] = v[-1].roll(3)  # 7 real tokens, 3 padding -> 3 padding, 7 real tokens
    torch.testing.assert_close(theirs(**batch).logits, ours(**batch).logits, **TOL)


@PEFT_WARNINGS
@torch.no_grad()
@pytest.mark.parametrize("case", ["p-tuning-mlp", "prompt", "ia3"])  # methods that leave the pooler frozen
def test_bert_classifier_with_a_trained_pooler(tmp_path, case):
    ours, theirs, _ = _pair(tmp_path, "bert", case, "SEQ_CLS", extra_heads=["bert.pooler"])
    assert "bert.pooler" in theirs.peft_config["default"].modules_to_save  # saved in full beside the head
    assert not torch.equal(ours.bert.pooler.dense.weight, tiny_classifier("bert").bert.pooler.dense.weight)  # trained
    torch.testing.assert_close(theirs(**tiny_batch()).logits, ours(**tiny_batch()).logits, **TOL)


@torch.no_grad()
def _greedy(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding by full forwards (no KV cache)."""
    for _ in range(steps):
        nxt = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


@PEFT_WARNINGS
@torch.no_grad()
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_causal_lm_logits_and_greedy_generation(tmp_path, family, case):
    """Logits, then greedy generation: tuneforge's cached ``generate`` equals greedy decoding through the PEFT
    model. PEFT 0.21.2's own cached ``generate`` is right for LoRA/IA3 only: with transformers 5.24 the KV cache
    reaches ``prepare_inputs_for_generation`` as ``cache`` (formerly ``past_key_values``), so PEFT re-inserts
    the virtual tokens (prompt, P-tuning) or a fresh prefix cache at every step; ``use_cache=False`` avoids
    that for prompt tuning and P-tuning."""
    ours, theirs, name = _pair(tmp_path, family, case, "CAUSAL_LM")
    batch = tiny_batch()
    got = theirs(**batch).logits
    torch.testing.assert_close(got[:, N:] if name in VIRTUAL_INPUTS else got, ours(**batch).logits, **TOL)
    ids = tiny_batch(batch=2, seq=6, seed=4)["input_ids"]
    settings = {"attention_mask": torch.ones_like(ids), "max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    for model in (ours, theirs.get_base_model()):
        model.generation_config.eos_token_id = None  # random models may emit EOS: run the full length
    expected = ours.generate(ids, **settings)
    assert expected.shape == (2, 10)
    assert torch.equal(_greedy(theirs, ids, 4), expected)
    if name in ("lora", "ia3"):
        assert torch.equal(theirs.generate(input_ids=ids, **settings), expected)
    elif name in VIRTUAL_INPUTS:
        assert torch.equal(theirs.generate(input_ids=ids, use_cache=False, **settings), expected)


@PEFT_WARNINGS
@torch.no_grad()
@pytest.mark.parametrize("case", list(CASES))
def test_bert_token_classifier(tmp_path, case):
    ours, theirs, name = _pair(tmp_path, "bert", case, "TOKEN_CLS")
    batch = tiny_batch()
    if name == "prefix":
        return _prefix_refused_then_cache_matches(ours, theirs, batch)
    got = theirs(**batch).logits
    torch.testing.assert_close(got[:, N:] if name in VIRTUAL_INPUTS else got, ours(**batch).logits, **TOL)


def test_exported_config_and_keys(tmp_path):
    """Spot checks of the files: IA3 targets exactly the wrapped modules (BERT: a regex without
    attention.output.dense; GPT-2: suffixes with the fused c_attn at full width, ones on the query slice),
    prefix tuning records grouped-query attention as PEFT does (key/value heads, kv width)."""
    bert = registry.apply(tiny_classifier("bert"), "ia3", registry.make_config("ia3", {}), always_train=["classifier"])
    cfg, tensors = registry.get("ia3").to_peft(bert, registry.make_config("ia3", {}), "SEQ_CLS", ["classifier"])
    assert isinstance(cfg["target_modules"], str) and "attention\\.output" not in cfg["target_modules"]
    assert tensors["base_model.model.bert.encoder.layer.1.output.dense.ia3_l"].shape == (1, 64)
    assert tensors["base_model.model.bert.encoder.layer.0.attention.self.key.ia3_l"].shape == (32, 1)
    assert "base_model.model.classifier.weight" in tensors and cfg["modules_to_save"] == ["classifier"]
    values = registry.make_config("ia3", {"targets": ["values"]})
    gpt2 = registry.apply(tiny_causal_lm("gpt2"), "ia3", values)
    _randomise(gpt2)
    cfg, tensors = registry.get("ia3").to_peft(gpt2, values, "CAUSAL_LM", [])
    assert cfg["target_modules"] == ["c_attn"] and cfg["feedforward_modules"] == [] and cfg["fan_in_fan_out"]
    vec = tensors["base_model.model.transformer.h.0.attn.c_attn.ia3_l"]  # (96, 1): [q | k | v], values only
    assert vec.shape == (96, 1) and torch.equal(vec[:64], torch.ones(64, 1)) and not torch.equal(vec[64:], vec[:32])
    llama = registry.apply(tiny_causal_lm("llama"), "prefix", registry.make_config("prefix", {"num_virtual_tokens": N}))
    cfg, tensors = registry.get("prefix").to_peft(llama, registry.make_config("prefix", {}), "CAUSAL_LM", [])
    assert (cfg["num_attention_heads"], cfg["token_dim"], cfg["num_layers"]) == (2, 16, 2)  # 2 kv heads x 8
    assert tensors["prompt_embeddings"].shape == (N, 2 * 2 * 16) and cfg["prefix_projection"] is False


@PEFT_WARNINGS
def test_ptuning_export_of_a_folded_model_is_the_same(tmp_path):
    """A reloaded run is folded already; the hook folds an unfolded model without changing it."""
    config = registry.make_config("p-tuning", CASES["p-tuning-lstm"][1])
    model = registry.apply(tiny_causal_lm("gpt2"), "p-tuning", config)
    _randomise(model)
    _, unfolded = registry.get("p-tuning").to_peft(model, config, "CAUSAL_LM", [])
    assert not model.base_model.prompt_encoder.folded
    _, folded = registry.get("p-tuning").to_peft(ptuning.fold(model), config, "CAUSAL_LM", [])
    assert torch.equal(unfolded["prompt_embeddings"], folded["prompt_embeddings"])


def _tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w1"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w1", pad_token="w0")


def _fake_run(tmp_path, method, family="bert", options=None, heads=("classifier",), task_type="TOKEN_CLS",
              build=tiny_token_classifier):
    """What export_peft reads from a Run, without training one."""
    options = options or {}
    base = tmp_path / "base"
    build(family).save_pretrained(base)
    model = registry.apply(build(family), method, registry.make_config(method, options), always_train=list(heads))
    cfg = SimpleNamespace(method_name=method, method_options=lambda: options, model=SimpleNamespace(name=str(base)),
                          forgetting=SimpleNamespace(previous_run=None))  # a run of its own, not a sequential one
    tokenizer = _tokenizer()
    return SimpleNamespace(cfg=cfg, files=SimpleNamespace(full_model_dir=None), model=model, heads=list(heads),
                           task=SimpleNamespace(peft_task_type=task_type), tokenizer=tokenizer,
                           save_tokenizer=tokenizer.save_pretrained, meta={"labels": ["O", "B-x", "I-x"]},
                           inputs=lambda: {"the run's base model": base})


@pytest.mark.parametrize("method, fix", [("adapter", "load the run directory with tuneforge"),
                                         ("bitfit", "use `tuneforge merge`"), ("freeze", "use `tuneforge merge`"),
                                         ("full", "use `tuneforge merge`")])
def test_methods_peft_cannot_represent_fail_before_touching_the_output(tmp_path, method, fix):
    run = _fake_run(tmp_path, method, options={"num_layers": 1} if method == "freeze" else {})
    with pytest.raises(ConfigError) as err:
        export_peft(run, tmp_path / "out")
    message = str(err.value)
    assert f"method '{method}' cannot export to PEFT format" in message and fix in message and "\n" not in message
    assert not (tmp_path / "out").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "file.txt").write_text("mine")
    with pytest.raises(ConfigError, match="cannot export to PEFT format"):
        export_peft(run, tmp_path / "kept", overwrite=True)
    assert (tmp_path / "kept" / "file.txt").read_text() == "mine"  # nothing cleared


@PEFT_WARNINGS
@torch.no_grad()
def test_export_peft_writes_a_loadable_token_classification_folder(tmp_path, monkeypatch):
    run = _fake_run(tmp_path, "prompt", options={"num_virtual_tokens": N})
    _randomise(run.model)
    monkeypatch.chdir(tmp_path)
    out = export_peft(run, "out")  # a relative path, as typed
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["task_type"] == "TOKEN_CLS"
    readme = (out / "README.md").read_text()
    assert "AutoModelForTokenClassification" in readme and f"first {N} positions" in readme
    assert f'PeftModel.from_pretrained(base, "{tmp_path / "out"}")' in readme  # from any working directory
    base = AutoModelForTokenClassification.from_pretrained(config["base_model_name_or_path"])
    theirs = PeftModel.from_pretrained(base, out).eval()
    batch = tiny_batch()
    torch.testing.assert_close(theirs(**batch).logits[:, N:], run.model(**batch).logits, **TOL)


def test_export_of_a_prefix_token_classifier_says_how_to_run_it(tmp_path):
    """PEFT refuses to run prefix tuning on classifiers (transformers 5): the README shows the way that works."""
    run = _fake_run(tmp_path, "prefix", options={"num_virtual_tokens": N})
    readme = (export_peft(run, tmp_path / "out") / "README.md").read_text()
    assert "PEFT 0.21 refuses to run prefix tuning on a classifier" in readme and "cache=model.get_prompt" in readme


@pytest.mark.parametrize("family, build, task_type, said", [
    ("llama", tiny_classifier, "SEQ_CLS", True), ("gpt2", tiny_classifier, "SEQ_CLS", True),
    ("bert", tiny_classifier, "SEQ_CLS", False), ("llama", tiny_token_classifier, "TOKEN_CLS", False)])
def test_a_prompt_tuned_decoder_classifier_export_says_peft_reads_the_last_position(tmp_path, capsys, family,
                                                                                    build, task_type, said):
    """PEFT gives such a classifier embeddings, so transformers pools a padded row's last position (padding):
    test_classifier_with_its_head pads on the left to compare. The README and a note say so."""
    heads = ("score",) if family != "bert" else ("classifier",)
    run = _fake_run(tmp_path, "prompt", family, {"num_virtual_tokens": N}, heads, task_type, build)
    readme = (export_peft(run, tmp_path / "out") / "README.md").read_text()
    assert ("classify one text at a time" in readme) is said
    assert ("note: PEFT reads a padded row's last position" in capsys.readouterr().err) is said


@pytest.mark.parametrize("method, task_type, build, said", [
    ("prompt", "CAUSAL_LM", tiny_causal_lm, True), ("p-tuning", "CAUSAL_LM", tiny_causal_lm, True),
    ("prefix", "CAUSAL_LM", tiny_causal_lm, True), ("lora", "CAUSAL_LM", tiny_causal_lm, False),
    ("prompt", "TOKEN_CLS", tiny_token_classifier, False)])
def test_a_prompt_learning_causal_lm_export_says_how_to_generate(tmp_path, capsys, method, task_type, build, said):
    """PEFT 0.21's generate() mis-applies prompt-learning adapters (test_causal_lm_logits_and_greedy_generation
    decodes greedily through the forward instead): the README and a note say so."""
    options = {} if method == "lora" else {"num_virtual_tokens": N}
    run = _fake_run(tmp_path, method, "llama", options, (), task_type, build)
    readme = (export_peft(run, tmp_path / "out") / "README.md").read_text()
    assert ("greedy decoding\nthrough the PEFT model's forward" in readme) is said
    assert ("note: PEFT 0.21's generate() does not apply" in capsys.readouterr().err) is said


@PEFT_WARNINGS
@torch.no_grad()
def test_the_readme_loads_a_decoder_classifier_with_the_pad_id_it_trained_with(tmp_path):
    """A base whose config names another pad id than its tokenizer pads with (Gemma, OPT, Phi-3 with a borrowed
    tokenizer): tuneforge trains with the tokenizer's, so a padded row's end is found; loaded as the README said
    (the base config's id), PEFT's probabilities on a padded batch were off by 0.05."""
    def padding_with(pad):
        def build(family):
            model = tiny_classifier(family)
            model.config.pad_token_id = pad
            return model
        return build

    run = _fake_run(tmp_path, "lora", "llama", {"rank": 4}, ("score",), "SEQ_CLS", padding_with(100))  # not 0
    _randomise(run.model)
    run.meta = {"labels": ["neg", "pos"]}
    run.model.config.pad_token_id = 0  # as models.load_labelled sets it
    readme = (export_peft(run, tmp_path / "out") / "README.md").read_text()
    load = re.search(r"base = AutoModelForSequenceClassification\.from_pretrained\((.*)\)\n", readme)[1]
    assert load.endswith(", pad_token_id=0")
    base = eval(f"AutoModelForSequenceClassification.from_pretrained({load})")  # the README's own line
    assert base.config.id2label == {0: "neg", 1: "pos"} and base.config.label2id == {"neg": 0, "pos": 1}
    theirs = PeftModel.from_pretrained(base, tmp_path / "out").eval()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])  # the second row padded on the right
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    torch.testing.assert_close(theirs(**batch).logits, run.model(**batch).logits, **TOL)
    (tmp_path / "plain").mkdir()
    plain = _fake_run(tmp_path / "plain", "lora", "llama", {"rank": 4}, ("score",), "SEQ_CLS", padding_with(0))
    plain.meta = {"labels": ["neg", "pos"]}
    assert "pad_token_id" not in (export_peft(plain, tmp_path / "plain-out") / "README.md").read_text()


@PEFT_WARNINGS
@torch.no_grad()
def test_the_readme_keeps_an_encoders_own_pad_id(tmp_path):
    """RoBERTa counts position ids from its config's pad id (1) and trains with it whatever its tokenizer pads with
    (here 0): the README named the tokenizer's, which moved every position by one (logits off by ~1)."""
    def roberta(family):
        torch.manual_seed(0)
        config = RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=70, pad_token_id=1, num_labels=3)
        return AutoModelForTokenClassification.from_config(config).eval()

    run = _fake_run(tmp_path, "lora", "roberta", {"rank": 4}, ("classifier",), "TOKEN_CLS", roberta)
    _randomise(run.model)
    assert run.tokenizer.pad_token_id == 0 and run.model.config.pad_token_id == 1
    readme = (export_peft(run, tmp_path / "out") / "README.md").read_text()
    load = re.search(r"base = AutoModelForTokenClassification\.from_pretrained\((.*)\)\n", readme)[1]
    assert "pad_token_id" not in load
    theirs = PeftModel.from_pretrained(eval(f"AutoModelForTokenClassification.from_pretrained({load})"),
                                       tmp_path / "out").eval()
    batch = tiny_batch()
    torch.testing.assert_close(theirs(**batch).logits, run.model(**batch).logits, **TOL)


@PEFT_WARNINGS
@torch.no_grad()
def test_the_readme_loads_a_base_whose_own_head_has_another_label_count(tmp_path):
    """An SST-2 or NLI checkpoint (2 or 3 labels) trained on another label count: the README's line stopped with
    transformers' 'You set ignore_mismatched_sizes to False'."""
    run = _fake_run(tmp_path, "lora", "bert", CASES["lora"][1], ("classifier",), "SEQ_CLS",
                    lambda family: tiny_classifier(family, 3))
    _randomise(run.model)
    run.meta = {"labels": ["neg", "neutral", "pos"]}
    tiny_classifier("bert", num_labels=2).save_pretrained(tmp_path / "sst2")  # the base: a 2-label classifier
    run.cfg.model.name = str(tmp_path / "sst2")
    readme = (export_peft(run, tmp_path / "out") / "README.md").read_text()
    load = re.search(r"base = AutoModelForSequenceClassification\.from_pretrained\((.*)\)\n", readme)[1]
    base = eval(f"AutoModelForSequenceClassification.from_pretrained({load})")  # the README's own line
    theirs = PeftModel.from_pretrained(base, tmp_path / "out").eval()
    batch = tiny_batch()
    torch.testing.assert_close(theirs(**batch).logits, run.model(**batch).logits, **TOL)


@PEFT_WARNINGS
@torch.no_grad()
def test_a_base_from_the_hub_cache_is_named_by_its_id_and_a_bf16_base_loads_in_float32(tmp_path, monkeypatch):
    """The adapter named this machine's cache snapshot (no other machine has it), and the README loaded a bf16
    base in bf16 (transformers' dtype='auto'), whose logits missed the run's (float32 weights) by 2e-3."""
    import shutil

    import huggingface_hub.constants as hf

    run = _fake_run(tmp_path, "lora", "llama", {"rank": 4}, ("score",), "SEQ_CLS", tiny_classifier)
    _randomise(run.model)
    run.meta = {"labels": ["neg", "pos"]}
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    tiny_classifier("llama").to(torch.bfloat16).save_pretrained(repo / "snapshots" / "abc")  # a bf16 checkpoint
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    shutil.copy(repo / "snapshots" / "abc" / "model.safetensors", tmp_path / "base" / "model.safetensors")
    run.model.load_state_dict({k: v.float() for k, v in AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "base", dtype=torch.float32).state_dict().items()}, strict=False)  # the run's base: bf16 values
    run.cfg.model.name = "acme/tiny-llama"
    out = export_peft(run, tmp_path / "out")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "acme/tiny-llama"
    readme = (out / "README.md").read_text()
    load = re.search(r"base = AutoModelForSequenceClassification\.from_pretrained\((.*)\)\n", readme)[1]
    assert load.startswith('"acme/tiny-llama"') and load.endswith(", dtype=torch.float32")
    theirs = PeftModel.from_pretrained(eval(f"AutoModelForSequenceClassification.from_pretrained({load})"), out)
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(theirs.eval()(input_ids=ids).logits, run.model(input_ids=ids).logits, **TOL)


def test_an_adapter_on_a_tied_output_layer_says_to_merge_with_tuneforge(tmp_path, capsys):
    """PEFT's merge_and_unload() adds a tied lm_head's update to the shared input embedding (logits off by 0.55);
    the export said nothing."""
    run = _fake_run(tmp_path, "lora", "gpt2", {"rank": 4, "target_modules": ["c_attn", "lm_head"]}, (),
                    "CAUSAL_LM", tiny_causal_lm)
    assert run.model.lm_head.base.weight is run.model.transformer.wte.weight  # tied, as GPT-2 is
    readme = (export_peft(run, tmp_path / "out") / "README.md").read_text()
    assert "`lm_head` shares its frozen weight with another layer" in readme and "use `tuneforge merge`" in readme
    assert "note: lm_head shares its weight with another layer" in capsys.readouterr().err
    untied = _fake_run(tmp_path / "u", "lora", "gpt2", {"rank": 4, "target_modules": ["c_attn"]}, (), "CAUSAL_LM",
                       tiny_causal_lm) if (tmp_path / "u").mkdir() is None else None
    assert "shares its frozen weight" not in (export_peft(untied, tmp_path / "u-out") / "README.md").read_text()
