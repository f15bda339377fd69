"""Architectures whose layout differs from BERT/Llama/GPT-2 in ways the methods must follow (found by a sweep
over tiny random models): heads of several layers (RoBERTa, DistilBERT, DeBERTa-v2), task models that call an
inner decoder directly (OPT), multi-query key/value caches (Falcon-7B) and position tables with an offset
(RoBERTa). Each model is tiny and random; a saved bare backbone plays the pre-trained model, so the head is
fresh exactly as in a run."""
import json

import pytest
import torch
import transformers as T
from peft import PeftModel
from safetensors.torch import save_file

from conftest import VOCAB, tiny_batch
from test_architectures import CONFIGS
from tuneforge.config import ConfigError
from tuneforge.methods import registry
from tuneforge.methods.layers import attention_heads, position_limit
from tuneforge.methods.virtual_tokens import backbone_of
from tuneforge.models import load_pretrained

N = 3  # virtual tokens
PEFT_WARNINGS = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
# family -> the fresh modules of its sequence classifier: the outermost ones, as PEFT saves them
FRESH = {"roberta": ["classifier"], "electra": ["classifier"], "distilbert": ["classifier", "pre_classifier"],
         "deberta-v2": ["classifier", "pooler"]}


@torch.no_grad()
def _randomise(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    for p in model.parameters():
        if p.requires_grad:
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


def _tuned(tmp_path, family, method, options, task_type="SEQ_CLS"):
    """(tuned model, fresh heads, config, base folder): a saved backbone loaded with a fresh head, as in a run."""
    torch.manual_seed(0)
    T.AutoModel.from_config(CONFIGS[family]()).save_pretrained(tmp_path / "base")
    auto = T.AutoModelForSequenceClassification if task_type == "SEQ_CLS" else T.AutoModelForCausalLM
    model, fresh = load_pretrained(auto, tmp_path / "base")
    config = registry.make_config(method, options)
    model = registry.apply(model, method, config, always_train=fresh).eval()
    _randomise(model)
    return model, fresh, config, auto


def _peft(tmp_path, model, method, config, task_type, heads, auto):
    adapter_config, tensors = registry.get(method).to_peft(model, config, task_type, heads)
    adapter_config["base_model_name_or_path"] = str(tmp_path / "base")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(adapter_config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "adapter" / "adapter_model.safetensors")
    return PeftModel.from_pretrained(auto.from_pretrained(tmp_path / "base"), tmp_path / "adapter").eval()


@PEFT_WARNINGS
@torch.no_grad()
@pytest.mark.parametrize("method", ["lora", "ia3"])
@pytest.mark.parametrize("family", list(FRESH))
def test_heads_of_several_layers_export_to_peft(tmp_path, family, method):
    """The fresh head is saved as whole top-level modules and no layer of it gets a LoRA branch (it trains in
    full), so PEFT loads the adapter and gives tuneforge's logits."""
    model, fresh, config, auto = _tuned(tmp_path, family, method, {})
    assert fresh == FRESH[family]
    wrapped = [n for n, m in model.named_modules() if hasattr(m, "base") and n.split(".")[0] in fresh]
    assert wrapped == []
    theirs = _peft(tmp_path, model, method, config, "SEQ_CLS", fresh, auto)
    batch = tiny_batch()
    torch.testing.assert_close(theirs(**batch).logits, model(**batch).logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", ["prompt", "p-tuning"])
@pytest.mark.parametrize("family", ["roberta", "distilbert", "deberta-v2"])
def test_prompt_classifier_pooling_outside_the_backbone_is_not_exported(tmp_path, family, method):
    """PEFT's head would read the first virtual token, tuneforge's the first real one: refused, not written."""
    model, fresh, config, _ = _tuned(tmp_path, family, method, {"num_virtual_tokens": N})
    with pytest.raises(ConfigError, match="first virtual token"):
        registry.get(method).to_peft(model, config, "SEQ_CLS", fresh)


def test_lora_all_linear_leaves_an_output_layer_alone():
    """XLNet names its LM head ``lm_loss``: all-linear skips it (the model's output embeddings), as PEFT does."""
    torch.manual_seed(0)
    model = T.XLNetLMHeadModel(T.XLNetConfig(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_inner=64))
    model = registry.apply(model, "lora", registry.make_config("lora", {}))
    assert type(model.lm_loss) is torch.nn.Linear
    assert [n for n, m in model.named_modules() if hasattr(m, "lora_A")][-1] == "transformer.layer.1.ff.layer_2"


OPT = {"prompt": {"num_virtual_tokens": N, "init": "random"}, "p-tuning": {"num_virtual_tokens": N},
       "prefix": {"num_virtual_tokens": N}}


@PEFT_WARNINGS
@torch.no_grad()
@pytest.mark.parametrize("method", list(OPT))
def test_opt_causal_lm_sees_its_virtual_tokens(tmp_path, method):
    """OPTForCausalLM calls ``model.decoder`` directly: the hooks sit there, so the model's own forward (what
    generate, chat and the exported adapter use) is the tuned one and matches PEFT's."""
    model, _, config, auto = _tuned(tmp_path, "opt", method, OPT[method], "CAUSAL_LM")
    assert backbone_of(model) is model.model.decoder
    batch = tiny_batch()
    ours = model(**batch).logits
    base = auto.from_pretrained(tmp_path / "base").eval()
    assert (ours - base(**batch).logits).abs().max() > 1e-2
    theirs = _peft(tmp_path, model, method, config, "CAUSAL_LM", [], auto)(**batch).logits
    torch.testing.assert_close(theirs if method == "prefix" else theirs[:, N:], ours, rtol=0, atol=1e-4)


@torch.no_grad()
def test_falcon_multi_query_prefix():
    """Falcon-7B's layout caches one key/value head (``multi_query``), Falcon-40B's every head."""
    small = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    assert attention_heads(T.FalconConfig(**small, multi_query=True), 32) == (4, 1, 8)
    assert attention_heads(T.FalconConfig(**small, new_decoder_architecture=True, num_kv_heads=2), 32) == (4, 4, 8)
    assert attention_heads(T.FalconConfig(**small, multi_query=False, num_kv_heads=2), 32) == (4, 2, 8)
    for extra in ({"multi_query": True}, {"new_decoder_architecture": True, "num_kv_heads": 2}):
        torch.manual_seed(0)
        model = T.AutoModelForCausalLM.from_config(T.FalconConfig(**small, **extra))
        model = registry.apply(model, "prefix", registry.make_config("prefix", {"num_virtual_tokens": N})).eval()
        assert model(**tiny_batch()).logits.shape == (3, 10, VOCAB)


def test_position_table_offset_is_respected():
    """RoBERTa's positions start after its padding index: 66 rows hold 64 tokens (roberta-base: 514, 512)."""
    torch.manual_seed(0)
    model = T.AutoModelForSequenceClassification.from_config(CONFIGS["roberta"]())  # 66 rows, padding index 1
    assert position_limit(model) == 64
    ids = torch.full((1, 64), 5)
    assert model(input_ids=ids).logits.shape == (1, 2)  # 64 tokens fit; 65 would index past the table
    model = registry.apply(model, "prompt", registry.make_config("prompt", {"num_virtual_tokens": N}))
    with pytest.raises(ConfigError, match="62 input tokens \\+ 3 virtual tokens exceed the 64 positions"):
        model(input_ids=torch.full((1, 62), 5))
    assert model(input_ids=torch.full((1, 61), 5)).logits.shape == (1, 2)


@pytest.mark.parametrize("config", [T.GPTJConfig, T.CodeGenConfig])
def test_a_fixed_sin_cos_table_limits_the_positions(config):
    """GPT-J and CodeGen index a sin/cos buffer of n_positions rows (no embedding table): that is their limit
    (model.max_length is checked against it and generation stops at it); 64 tokens fit."""
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                      rotary_dim=4, pad_token_id=0)).eval()
    assert position_limit(model) == 64
    assert model(input_ids=torch.full((1, 64), 5)).logits.shape == (1, 64, VOCAB)
