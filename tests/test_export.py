"""Export: merged folders load with plain transformers, PEFT adapters load with PeftModel, same logits."""
import json

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from lm_helpers import TEMPLATE, model_folder, single_thread, write_pairs
from tiny import model_dir, sentiment_rows
from tuneforge import cli
from tuneforge.config import ConfigError
from tuneforge.export import export_peft
from tuneforge.run import load, train

TOL = {"rtol": 1e-5, "atol": 1e-5}  # float32 throughout; merged weights differ only by rounding of W + s*B@A
IDS = torch.tensor([[3, 6, 7, 8, 9, 10, 11, 79, 5, 4], [3, 12, 13, 14, 15, 16, 5, 4, 1, 1]])
MASK = torch.tensor([[1] * 10, [1] * 8 + [0] * 2])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


def _lm_run(tmp_path, family, method="lora", **options):
    folder = model_folder(tmp_path / family, family)
    cfg = {"model": {"name": str(folder), "task": "causal_lm", "max_length": 32},
           "data": {"dataset": str(write_pairs(tmp_path / "pairs.jsonl", repeat=2))},
           "method": {"name": method, **({"rank": 4, "alpha": 8} if method == "lora" else {}), **options},
           "train": {"max_steps": 3, "batch_size": 8, "lr": 1e-2, "precision": "fp32"},
           "eval": {"before": False, "generate_samples": 0}, "output_dir": str(tmp_path / f"run-{family}-{method}")}
    return folder, train(cfg, progress=False).run_dir


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    return _lm_run(tmp_path_factory.mktemp("export"), "llama")


def test_merge_gives_a_plain_transformers_folder_with_same_logits(llama_run, tmp_path):
    folder, run_dir = llama_run
    run = load(run_dir, "cpu")
    expected = _logits(run.model)
    assert not torch.allclose(expected, _logits(AutoModelForCausalLM.from_pretrained(folder)), atol=1e-4)  # trained
    assert cli.main(["merge", str(run_dir), str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(_logits(merged), expected, **TOL)
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tok.chat_template == TEMPLATE and tok.eos_token == "<|end|>"
    assert (tmp_path / "merged" / "generation_config.json").is_file()
    assert merged.generation_config.eos_token_id == tok.eos_token_id


def test_a_run_with_lora_on_a_tied_output_layer_merges_without_changing_the_embedding(tmp_path):
    folder, run_dir = _lm_run(tmp_path, "gpt2", target_modules=["c_attn", "lm_head"])  # GPT-2 ties the two
    expected = _logits(load(run_dir, "cpu").model)
    assert cli.main(["merge", str(run_dir), str(tmp_path / "merged")]) == 0
    merged, base = (AutoModelForCausalLM.from_pretrained(p) for p in (tmp_path / "merged", folder))
    torch.testing.assert_close(_logits(merged), expected, **TOL)
    assert torch.equal(merged.get_input_embeddings().weight, base.get_input_embeddings().weight)


def test_a_merged_chat_model_stops_at_the_reply_end_as_generate_does(tmp_path):
    """A base whose generation config names another EOS than the chat template's reply end: a pipeline on the
    merged folder generated past the reply end that `tuneforge generate` stops at."""
    from tuneforge.generate import eos_ids
    folder = model_folder(tmp_path / "llama", "llama")
    config = json.loads((folder / "generation_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(folder)
    other = next(i for i in range(3) if i != tok.eos_token_id)
    (folder / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": other}))
    cfg = {"model": {"name": str(folder), "task": "causal_lm", "max_length": 32},
           "data": {"dataset": str(write_pairs(tmp_path / "pairs.jsonl", repeat=2))},
           "method": {"name": "lora", "rank": 4}, "train": {"max_steps": 2, "batch_size": 8, "precision": "fp32"},
           "eval": {"before": False, "generate_samples": 0}, "output_dir": str(tmp_path / "run")}
    run = load(train(cfg, progress=False).run_dir, "cpu")
    assert run.model.generation_config.eos_token_id == other and tok.eos_token_id in eos_ids(run.model, run.tokenizer)
    run.merge(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert merged.generation_config.eos_token_id == eos_ids(run.model, run.tokenizer) == sorted({other,
                                                                                                 tok.eos_token_id})


def test_exports_prompt_as_the_run_did_with_its_system_prompt(tmp_path):
    """A run's data.system_prompt was lost from both exports: a pipeline prompted without it and answered otherwise."""
    from tuneforge.generate import encode_prompts

    folder = model_folder(tmp_path / "llama", "llama")
    cfg = {"model": {"name": str(folder), "task": "causal_lm", "max_length": 32},
           "data": {"dataset": str(write_pairs(tmp_path / "pairs.jsonl", repeat=2)), "system_prompt": "be brief ."},
           "train": {"max_steps": 1, "batch_size": 8, "precision": "fp32"},
           "eval": {"before": False, "generate_samples": 0}, "output_dir": str(tmp_path / "run")}
    run = load(train(cfg, progress=False).run_dir, "cpu")
    asked = [[{"role": "user", "content": "say yes"}], [{"role": "system", "content": "no"}, {"role": "user", "content": "hi"}]]
    expected = encode_prompts(run.tokenizer, asked, run.tokenizer.chat_template, 32, "be brief .")
    run.merge(tmp_path / "merged")
    export_peft(run, tmp_path / "peft")
    for out in ("merged", "peft"):
        tok = AutoTokenizer.from_pretrained(tmp_path / out)
        assert [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False) for m in asked
                ] == expected
    assert run.tokenizer.chat_template == TEMPLATE  # the run's own tokenizer is left as it was
    run.tokenizer.chat_template = {"default": TEMPLATE, "tool_use": "{{ 'x' }}"}  # named templates: 'default' ran
    run.merge(tmp_path / "named")
    tok = AutoTokenizer.from_pretrained(tmp_path / "named")
    assert tok.apply_chat_template(asked[0], add_generation_prompt=True, tokenize=True, return_dict=False
                                   ) == expected[0]


def test_peft_export_of_a_causal_lm_loads_with_peft(llama_run, tmp_path):
    from peft import PeftModel

    folder, run_dir = llama_run
    assert cli.main(["export", str(run_dir), str(tmp_path / "peft"), "--format", "peft"]) == 0
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["base_model_name_or_path"] == str(folder.resolve()) and config["r"] == 4
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()
    expected = _logits(load(run_dir, "cpu").model)
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    peft_model = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    torch.testing.assert_close(_logits(peft_model), expected, **TOL)


@pytest.mark.parametrize("family,options,targets", [
    ("gpt2", {}, ["c_attn", "c_fc", "c_proj"]),  # Conv1D layers: fan_in_fan_out
    ("llama", {"target_regex": r"model\.layers\.0\.self_attn\.(q|v)_proj", "rslora": True},
     r"model\.layers\.0\.self_attn\.q_proj|model\.layers\.0\.self_attn\.v_proj"),  # a subset: regex
])
def test_peft_export_of_conv1d_layers_and_of_a_layer_subset(tmp_path, family, options, targets):
    from peft import PeftModel

    folder, run_dir = _lm_run(tmp_path, family, **options)
    run = load(run_dir, "cpu")
    export_peft(run, tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["target_modules"] == targets and config["fan_in_fan_out"] is (family == "gpt2")
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), tmp_path / "peft").eval()
    torch.testing.assert_close(_logits(peft_model), _logits(run.model), **TOL)


def test_peft_export_of_a_lora_classifier_includes_its_head(tmp_path):
    from peft import PeftModel

    folder = model_dir(tmp_path / "base", "llama")
    data = tmp_path / "reviews.csv"
    pd.DataFrame(sentiment_rows(48)).to_csv(data, index=False)
    cfg = {"model": {"name": str(folder), "max_length": 16}, "data": {"dataset": str(data)},
           "method": {"name": "lora", "rank": 4}, "train": {"max_steps": 3, "batch_size": 8, "lr": 1e-2, "precision": "fp32"},
           "eval": {"before": False}, "output_dir": str(tmp_path / "run")}
    run = load(train(cfg, progress=False).run_dir, "cpu")
    assert run.heads == ["score"]
    export_peft(run, tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["score"]
    ids = torch.randint(4, 40, (3, 8))
    with torch.no_grad():
        expected = run.model(input_ids=ids).logits  # (3, labels)
        base = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=2, id2label=dict(enumerate(run.meta["labels"])), pad_token_id=run.model.config.pad_token_id)
        got = PeftModel.from_pretrained(base, tmp_path / "peft").eval()(input_ids=ids).logits
    torch.testing.assert_close(got, expected, **TOL)


def test_method_without_a_peft_hook_is_a_clear_error(tmp_path, capsys):
    _, run_dir = _lm_run(tmp_path, "llama", method="freeze")
    with pytest.raises(ConfigError, match="method 'freeze' cannot export to PEFT format"):
        export_peft(load(run_dir, "cpu"), tmp_path / "peft")
    assert cli.main(["export", str(run_dir), str(tmp_path / "peft2")]) == 2
    assert "cannot export to PEFT format" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
@pytest.mark.parametrize("family,method,options", [
    ("llama", "ia3", {}),
    ("gpt2", "prompt", {"num_virtual_tokens": 3}),
    ("llama", "p-tuning", {"num_virtual_tokens": 3, "encoder": "lstm", "encoder_hidden": 16}),  # saved folded
    ("gpt2", "prefix", {"num_virtual_tokens": 3, "reparam": True, "reparam_hidden": 16}),  # saved folded
])
def test_peft_export_of_other_methods_from_a_reloaded_run(tmp_path, family, method, options):
    """tests/test_export_peft.py checks every method and model family on the hooks; here the whole path:
    train, reload (P-tuning and prefix come back folded), export through the CLI, load with PEFT."""
    from peft import PeftModel

    folder, run_dir = _lm_run(tmp_path, family, method=method, **options)
    assert cli.main(["export", str(run_dir), str(tmp_path / "peft")]) == 0
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    peft_type = {"ia3": "IA3", "prompt": "PROMPT_TUNING", "p-tuning": "P_TUNING", "prefix": "PREFIX_TUNING"}[method]
    assert config["peft_type"] == peft_type and config["task_type"] == "CAUSAL_LM"
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), tmp_path / "peft").eval()
    got = _logits(peft_model)
    n = options.get("num_virtual_tokens", 0) if method in ("prompt", "p-tuning") else 0  # PEFT's leading positions
    torch.testing.assert_close(got[:, n:], _logits(load(run_dir, "cpu").model), rtol=0, atol=1e-4)


def test_a_merge_keeps_the_base_models_dtype_unless_told(tmp_path, capsys):
    """A bfloat16 base was exported in float32, at twice its size."""
    from safetensors import safe_open

    folder = model_folder(tmp_path / "llama", "llama")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    cfg = {"model": {"name": str(folder), "task": "causal_lm", "max_length": 32},
           "data": {"dataset": str(write_pairs(tmp_path / "pairs.jsonl", repeat=2))},
           "train": {"max_steps": 1, "batch_size": 8, "precision": "fp32"},
           "eval": {"before": False, "generate_samples": 0}, "output_dir": str(tmp_path / "run")}
    run_dir = train(cfg, progress=False).run_dir

    def saved(out):
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            return {f.get_slice(k).get_dtype() for k in f.keys()}, json.loads((out / "config.json").read_text())["dtype"]

    capsys.readouterr()
    assert cli.main(["merge", str(run_dir), str(tmp_path / "auto")]) == 0
    assert saved(tmp_path / "auto") == ({"BF16"}, "bfloat16")
    assert "note: the merged weights are saved in bfloat16, as the base model (--dtype float32" in capsys.readouterr().err
    assert cli.main(["export", str(run_dir), str(tmp_path / "f32"), "--format", "merged", "--dtype", "float32"]) == 0
    assert saved(tmp_path / "f32") == ({"F32"}, "float32")
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "f32")),
                               _logits(load(run_dir, "cpu").model), **TOL)
    assert cli.main(["export", str(run_dir), str(tmp_path / "peft"), "--dtype", "float16"]) == 2
    assert "--dtype applies to merged models" in capsys.readouterr().err and not (tmp_path / "peft").exists()


def test_a_full_run_whose_base_model_is_gone_merges_in_float32_with_a_note(tmp_path, capsys):
    """A full run loads without its base folder; merging read the base config for its dtype and failed."""
    folder = model_folder(tmp_path / "llama", "llama")
    cfg = {"model": {"name": str(folder), "task": "causal_lm", "max_length": 32}, "method": {"name": "full"},
           "data": {"dataset": str(write_pairs(tmp_path / "pairs.jsonl", repeat=2))},
           "train": {"max_steps": 1, "batch_size": 8, "precision": "fp32"},
           "eval": {"before": False, "generate_samples": 0}, "output_dir": str(tmp_path / "run")}
    run_dir = train(cfg, progress=False).run_dir
    folder.rename(tmp_path / "moved")
    capsys.readouterr()
    assert cli.main(["merge", str(run_dir), str(tmp_path / "merged")]) == 0
    assert "note: the base model's config cannot be read, so the merged weights are saved in float32" in \
        capsys.readouterr().err
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["dtype"] == "float32"
