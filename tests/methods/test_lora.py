import math

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from conftest import tiny_batch, tiny_causal_lm, tiny_classifier
from tuneforge.config import ConfigError
from tuneforge.methods import lora, registry

HEADS = ["classifier", "score"]


def _apply(model, **options):
    return registry.apply(model, "lora", registry.make_config("lora", options), always_train=HEADS)


def _randomise_b(model):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, lora.LoRALinear):
                m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.1)


def test_only_lora_and_head_train(family):
    model = _apply(tiny_classifier(family), rank=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n or n.split(".")[0] in HEADS for n in trainable)
    assert any(n.split(".")[0] in HEADS for n in trainable)
    # every wrapped layer contributes exactly its A and B
    n_wrapped = sum(isinstance(m, lora.LoRALinear) for m in model.modules())
    assert sum(".lora_" in n for n in trainable) == 2 * n_wrapped > 0


def test_zero_b_reproduces_base_exactly(family):
    base = tiny_classifier(family)
    batch = tiny_batch()
    expected = base(**batch).logits
    model = _apply(base, rank=4)
    assert torch.equal(model(**batch).logits, expected)


def test_merge_matches_unmerged_and_unwraps(family):
    batch = tiny_batch()
    model = _apply(tiny_classifier(family), rank=4, alpha=8)
    _randomise_b(model)
    unmerged = model(**batch).logits
    base_keys = set(tiny_classifier(family).state_dict())
    plain = lora.merge(model)
    assert not any(isinstance(m, lora.LoRALinear) for m in plain.modules())
    assert set(plain.state_dict()) == base_keys  # a plain Hugging Face model again
    assert torch.allclose(plain(**batch).logits, unmerged, atol=1e-5)  # stated tolerance: 1e-5 (float32)


def test_gpt2_conv1d_is_wrapped_and_merges_transposed():
    model = _apply(tiny_causal_lm("gpt2"), rank=2, target_modules=["c_attn"])
    wrapped = [m for m in model.modules() if isinstance(m, lora.LoRALinear)]
    assert wrapped and all(isinstance(m.base, Conv1D) and m.transposed for m in wrapped)
    _randomise_b(model)
    batch = tiny_batch()
    before = model(**batch).logits
    assert torch.allclose(lora.merge(model)(**batch).logits, before, atol=1e-5)


def test_merging_into_a_tied_output_layer_leaves_the_input_embedding_as_it_was(tmp_path):
    """GPT-2 ties lm_head to the token embedding: the merged update went into both, and the saved model's logits
    changed (SmolLM2, Qwen2 and Gemma are tied too)."""
    from transformers import AutoModelForCausalLM
    model = _apply(tiny_causal_lm("gpt2"), rank=2, target_modules=["c_attn", "lm_head"])
    assert model.lm_head.base.weight is model.transformer.wte.weight
    _randomise_b(model)
    batch = tiny_batch()
    before, embedding = model(**batch).logits, model.transformer.wte.weight.detach().clone()
    plain = lora.merge(model)
    assert torch.equal(plain.transformer.wte.weight, embedding) and not plain.config.tie_word_embeddings
    assert torch.allclose(plain(**batch).logits, before, atol=1e-5)
    plain.save_pretrained(tmp_path)
    assert torch.allclose(AutoModelForCausalLM.from_pretrained(tmp_path)(**batch).logits, before, atol=1e-5)


def test_merging_into_bart_s_output_layer_keeps_its_encoder_and_decoder_embeddings(tmp_path):
    """BART ties lm_head and both embed_tokens to ``shared`` through one config flag: with the flag off after the
    merge, the folder lacked the two embed_tokens and transformers loaded them random (Pegasus, mBART too)."""
    from transformers import AutoModelForSeq2SeqLM, BartConfig

    from conftest import VOCAB
    torch.manual_seed(0)
    config = BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)
    model = _apply(AutoModelForSeq2SeqLM.from_config(config).eval(), rank=2, target_modules=["lm_head", "q_proj"])
    _randomise_b(model)
    batch = {"input_ids": tiny_batch()["input_ids"], "decoder_input_ids": tiny_batch(seed=2)["input_ids"]}
    before = model(**batch).logits
    lora.merge(model).save_pretrained(tmp_path)
    loaded, info = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"]
    assert torch.allclose(loaded.eval()(**batch).logits, before, atol=1e-5)


def test_a_mamba_mixers_output_projection_is_never_a_target(capsys):
    """Falcon-H1's (Bamba's, Jamba's) fused scan reads ``mamba.out_proj.weight`` directly on a GPU, past any LoRA
    branch, and PEFT refuses the layer: the run's export did not load."""
    import transformers as T

    from conftest import VOCAB
    def falcon_h1():
        return T.AutoModelForCausalLM.from_config(T.FalconH1Config(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8, mamba_d_state=4))
    wrapped = lambda m: sorted(n for n, x in m.named_modules() if isinstance(x, lora.LoRALinear))
    every = wrapped(_apply(falcon_h1()))
    assert "model.layers.0.mamba.in_proj" in every and not any(n.endswith("mamba.out_proj") for n in every)
    assert capsys.readouterr().err == ""  # all-linear leaves it out quietly
    named = wrapped(_apply(falcon_h1(), target_modules=["out_proj", "o_proj"]))
    assert named == ["model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"]
    assert "note: LoRA leaves out out_proj of the Mamba mixers (2 layers)" in capsys.readouterr().err


def test_target_selection_by_names_regex_and_all_linear():
    names = lambda m: sorted(n for n, x in m.named_modules() if isinstance(x, lora.LoRALinear))
    by_name = names(_apply(tiny_classifier("llama"), target_modules=["q_proj", "v_proj"]))
    assert by_name and all(n.endswith(("q_proj", "v_proj")) for n in by_name) and len(by_name) == 4
    by_regex = names(_apply(tiny_classifier("llama"), target_regex=r".*layers\.1\.mlp\..*"))
    assert by_regex == [f"model.layers.1.mlp.{p}" for p in ("down_proj", "gate_proj", "up_proj")]
    every = names(_apply(tiny_classifier("llama")))
    assert len(every) == 14 and not any(n.startswith("score") for n in every)  # 7 linears x 2 layers, no head


def test_rslora_scaling():
    model = _apply(tiny_classifier("bert"), rank=4, alpha=8, rslora=True)
    m = next(x for x in model.modules() if isinstance(x, lora.LoRALinear))
    assert m.scaling == pytest.approx(8 / math.sqrt(4))


def test_unmatched_targets_name_the_layers_that_exist():
    with pytest.raises(ConfigError, match="matches no linear layer.*q_proj"):
        _apply(tiny_classifier("llama"), target_modules=["query"])
    with pytest.raises(ConfigError, match="method.target_regex: 'zzz' matches no linear layer"):
        _apply(tiny_classifier("llama"), target_regex="zzz")
    both = _apply(tiny_classifier("bert"), target_modules=["query", "q_proj"])  # one list for two families
    wrapped = [n for n, x in both.named_modules() if isinstance(x, lora.LoRALinear)]
    assert wrapped and all(n.endswith(".query") for n in wrapped)
    for family, head in (("bert", "classifier"), ("llama", "score")):  # the head trains in full: not offered either
        for options in ({"target_modules": [head]}, {"target_regex": f".*{head}"}):
            with pytest.raises(ConfigError, match=f"names only the task head \\({head}\\), which trains in full") as err:
                _apply(tiny_classifier(family), **options)
            assert head not in str(err.value).split("named: ")[1].split(", ")
