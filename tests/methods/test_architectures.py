"""Every method on architectures beyond the three the other tests use (BERT, Llama, GPT-2): tiny random
sequence classifiers of twelve more families. Each method applies and one backward pass reaches every
trainable parameter, or the method refuses the architecture with a ConfigError that says why (the only
refusals allowed are listed in REFUSED)."""
import pytest
import torch
import transformers as T

from conftest import VOCAB, tiny_batch
from helpers import apply
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
}
# (method, family) -> what the refusal says
REFUSED = {
    **{("prefix", f): "takes no key/value cache" for f in ("distilbert", "deberta-v2", "albert")},
    **{("bitfit", f): "no bias terms" for f in ("qwen3", "mistral", "gemma", "phi3")},
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
    loss = model(**batch, labels=torch.tensor([0, 1, 1])).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert [n for n, p in trainable if p.grad is None] == []
    assert any(p.grad.abs().sum() > 0 for n, p in trainable if n.split(".")[0] not in ("classifier", "score"))
