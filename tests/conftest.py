"""Tiny randomly initialised models (built from configs, no downloads) shared by the tests."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pytest-xdist runs one worker per CPU: each worker (and the processes it starts) gets its share of the cores,
# so workers never oversubscribe them
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
)

if _WORKERS > 1:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

VOCAB = 128


def tiny_config(family: str, **extra):
    """A 2-layer config of the given family ('bert', 'llama', 'gpt2')."""
    if family == "bert":
        return BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=64, pad_token_id=0, **extra)
    if family == "llama":
        return LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                           pad_token_id=0, tie_word_embeddings=False, **extra)
    if family == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                          pad_token_id=0, **extra)
    raise ValueError(family)


def tiny_classifier(family: str, num_labels: int = 2) -> torch.nn.Module:
    """Tiny sequence classifier, eval mode, seeded."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config(family, num_labels=num_labels))
    return model.eval()


def tiny_causal_lm(family: str) -> torch.nn.Module:
    """Tiny causal LM ('llama' or 'gpt2'), eval mode, seeded."""
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config(family)).eval()


def tiny_batch(batch: int = 3, seq: int = 10, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random token ids with right padding in the last row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, seq - 3:] = 0
    ids[-1, seq - 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def logits_and_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list]:
    """``model``'s logits on ``batch`` and the gradients of their mean square (every parameter that gets one)."""
    model.zero_grad()
    out = model(**batch).logits
    out.float().square().mean().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def assert_same_logits_and_grads(a: tuple[torch.Tensor, list], b: tuple[torch.Tensor, list]) -> None:
    """Two :func:`logits_and_grads` results agree to float32 rounding."""
    assert torch.allclose(a[0], b[0], atol=1e-5)
    assert len(a[1]) == len(b[1]) and all(torch.allclose(x, y, rtol=1e-4, atol=1e-6) for x, y in zip(a[1], b[1]))


@pytest.fixture(params=["bert", "llama", "gpt2"])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny BERT classifier folder (weights + tokenizer), built once per test module."""
    from tiny import model_dir  # tiny imports this module

    return model_dir(tmp_path_factory.mktemp("bert"), "bert")
