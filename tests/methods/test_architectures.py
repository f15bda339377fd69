"""Every method on architectures beyond the three the other tests use (BERT, Llama, GPT-2): tiny random
sequence classifiers of fifteen more families, the encoder-decoders T5 and BART among them. Each method applies and one backward pass reaches every
trainable parameter, or the method refuses the architecture with a ConfigError that says why (the only
refusals allowed are listed in REFUSED)."""
import pytest
import torch
import transformers as T

from conftest import VOCAB, tiny_batch
from helpers import HEADS, apply
from tuneforge.config import ConfigError
from tuneforge.methods import registry

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
GQA = dict(SMALL, num_key_value_heads=2, pad_token_id=0)
CONFIGS = {
    "roberta": lambda: T.RobertaConfig(vocab_size=VOCAB, max_position_embeddings=66, **SMALL),
    "distilbert": lambda: T.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64),
    "electra": lambda: T.ElectraConfig(vocab_size=VOCAB, embedding_size=32, max_position_embeddings=64, **SMALL),
    "deberta-v2": lambda: T.DebertaV2Config(vocab_size=VOCAB, max_position_embeddings=64, **SMALL),
    "albert": lambda: T.AlbertConfig(vocab_size=VOCAB, embedding_size=16, max_position_embeddings=64, **SMALL),
    "qwen2": lambda: T.Qwen2Config(vocab_size=VOCAB, **GQA),
    "qwen3": lambda: T.Qwen3Config(vocab_size=VOCAB, head_dim=8, **GQA),
    "mistral": lambda: T.MistralConfig(vocab_size=VOCAB, **GQA),
    "gemma": lambda: T.GemmaConfig(vocab_size=VOCAB, head_dim=8, **GQA),
    "phi3": lambda: T.Phi3Config(vocab_size=VOCAB, **GQA),
    "opt": lambda: T.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               ffn_dim=64, word_embed_proj_dim=32, pad_token_id=0),
    "gpt_neox": lambda: T.GPTNeoXConfig(vocab_size=VOCAB, pad_token_id=0, **SMALL),
    "bloom": lambda: T.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, pad_token_id=0),
    # encoder-decoders: their heads read the hidden state at each row's end-of-text token (EOS below)
    "t5": lambda: T.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, pad_token_id=0,
                             eos_token_id=EOS, decoder_start_token_id=0),
    "bart": lambda: T.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                 decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=0, eos_token_id=EOS,
                                 bos_token_id=1, decoder_start_token_id=EOS),
}
EOS = 2  # tiny_batch draws ids from 3 up
# (method, family) -> what the refusal says
REFUSED = {
    **{("prefix", f): "takes no key/value cache" for f in ("distilbert", "deberta-v2", "albert")},
    **{("bitfit", f): "no bias terms" for f in ("qwen3", "mistral", "gemma", "phi3", "t5")},
    **{(m, f): "is an encoder-decoder model" for m in ("prompt", "p-tuning", "prefix") for f in ("t5", "bart")},
}


@pytest.mark.parametrize("method", registry.names())
@pytest.mark.parametrize("family", list(CONFIGS))
def test_every_method_trains_or_says_why_not(family, method):
    torch.manual_seed(0)
    model = T.AutoModelForSequenceClassification.from_config(CONFIGS[family]())
    if (method, family) in REFUSED:
        with pytest.raises(ConfigError, match=REFUSED[method, family]):
            apply(model, method)
        return
    model = apply(model, method)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    batch = tiny_batch()
    if model.config.is_encoder_decoder:  # each row ends in EOS (the last row before its padding)
        batch["input_ids"][:-1, -1] = EOS
        batch["input_ids"][-1, batch["attention_mask"][-1].sum() - 1] = EOS
    loss = model(**batch, labels=torch.tensor([0, 1, 1])).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert [n for n, p in trainable if p.grad is None] == []
    assert any(p.grad.abs().sum() > 0 for n, p in trainable if n.split(".")[0] not in HEADS)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_a_saved_head_is_found_by_name_and_trains_whole(family):
    """A classifier whose head was saved (none fresh: e.g. BART fine-tuned on MNLI) trains its head by the
    head's usual name (BART's and T5's ``classification_head`` too), and LoRA wraps none of it."""
    from tuneforge.methods.lora_layer import LoRALinear
    from tuneforge.models import head_modules

    torch.manual_seed(0)
    model = T.AutoModelForSequenceClassification.from_config(CONFIGS[family]())
    heads = head_modules(model, fresh=[])
    assert len(heads) == 1
    model = registry.apply(model, "lora", registry.make_config("lora", {}), always_train=heads)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert wrapped and not [n for n in wrapped if n.split(".")[0] in heads]
    assert all(p.requires_grad for p in model.get_submodule(heads[0]).parameters())
