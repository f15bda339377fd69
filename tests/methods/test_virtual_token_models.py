"""Virtual tokens on backbones with their own quirks: one that computes otherwise from token ids than from their
embeddings (Falcon-H1's embedding multiplier, Gemma 3n's per-layer inputs) is refused for prompt tuning / P-tuning, not silently changed;
XLNet's unlimited positions (-1) are no limit; Longformer's global attention mask gets the virtual columns;
MPT's ALiBi table (max_seq_len) is its position limit."""
import pytest
import torch
import transformers as T

from conftest import tiny_batch
from helpers import apply
from tuneforge.config import ConfigError
from tuneforge.methods.layers import position_limit


def _falcon_h1(multiplier):
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(T.FalconH1Config(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8, mamba_d_state=8, mamba_n_groups=1,
        mamba_chunk_size=16, head_dim=8, pad_token_id=0, embedding_multiplier=multiplier))


@pytest.mark.parametrize("method", ["prompt", "p-tuning"])
def test_a_backbone_that_scales_only_token_ids_is_refused(method):
    """The first layer saw the real tokens at 1/5.66 of their scale: trained and exported without a word."""
    with pytest.raises(ConfigError, match=r"FalconH1Model computes its input from token ids in a way its token "
                                          r"embeddings alone do not give.*choose prefix, lora, ia3 or adapter"):
        apply(_falcon_h1(5.656854249492381), method, num_virtual_tokens=2)
    model = apply(_falcon_h1(1.0), method, num_virtual_tokens=2)  # no multiplier: ids and embeddings agree
    assert model.training and model(input_ids=torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, 128)


def test_per_layer_token_inputs_are_refused():
    """Gemma 3n adds per-layer embeddings of the token ids, which embeddings alone do not give (weights drawn
    anew: at its initialisation a zero scale hides them)."""
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(T.Gemma3nTextConfig(
        vocab_size=128, vocab_size_per_layer_input=128, hidden_size=32, hidden_size_per_layer_input=8,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=64,
        pad_token_id=0, layer_types=["full_attention"] * 2, num_kv_shared_layers=0, altup_num_inputs=2, laurel_rank=4,
        activation_sparsity_pattern=[0.0, 0.0], max_position_embeddings=128))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    with pytest.raises(ConfigError, match="Gemma3nTextModel computes its input from token ids"):
        apply(model, "prompt", num_virtual_tokens=2)


@pytest.mark.parametrize("method", ["prompt", "p-tuning"])
def test_xlnet_positions_are_unlimited(method):
    """max_position_embeddings=-1 read as a table of -1 positions: 'use fewer than -1 virtual tokens'."""
    torch.manual_seed(0)
    model = apply(T.AutoModelForSequenceClassification.from_config(T.XLNetConfig(
        vocab_size=128, d_model=32, n_layer=2, n_head=4, d_inner=64)), method, num_virtual_tokens=4)
    assert model(**tiny_batch()).logits.shape == (3, 2)


def test_longformer_classification_takes_virtual_tokens():
    """Its classifier's global attention mask (from input_ids) lacked the virtual columns: a size mismatch."""
    torch.manual_seed(0)
    model = apply(T.AutoModelForSequenceClassification.from_config(T.LongformerConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        attention_window=[4, 4], max_position_embeddings=80, pad_token_id=1)), "prompt", num_virtual_tokens=4)
    assert model(**tiny_batch()).logits.shape == (3, 2)


def test_mpts_alibi_table_is_its_position_limit():
    """Generation ran past max_seq_len and failed in the ALiBi bias (81 vs 80)."""
    model = T.AutoModelForCausalLM.from_config(T.MptConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4,
                                                            max_seq_len=80))
    assert position_limit(model) == 80
