"""The last block at the head's position only (tuneforge.last_layer) is the plain model to rounding, and is
used only where it is."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import (AutoModelForSequenceClassification, AutoModelForTokenClassification, DistilBertConfig,
                          ElectraConfig, RobertaConfig)

from conftest import VOCAB, tiny_batch, tiny_classifier, tiny_config
from tuneforge import last_layer
from tuneforge.methods import registry

CPU = torch.device("cpu")
SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64, pad_token_id=0, num_labels=3)


def encoder(kind: str, attn: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    config = {"bert": lambda: tiny_config("bert", num_labels=3), "roberta": lambda: RobertaConfig(**SMALL),
              "electra": lambda: ElectraConfig(embedding_size=32, **SMALL)}[kind]()
    return AutoModelForSequenceClassification.from_config(config, attn_implementation=attn).eval()


def loss_and_grads(model: torch.nn.Module, batch: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    logits = model(**batch).logits  # (batch, labels)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["bert", "roberta", "electra"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_first_position_block_gives_the_plain_logits_and_gradients(kind, attn):
    """float32, a padded batch: logits and every parameter's gradient to 1e-5 of the largest (no dropout)."""
    model = encoder(kind, attn)
    batch, labels = tiny_batch(batch=4, seq=9), torch.tensor([0, 2, 1, 2])  # the last row is padded
    plain_logits, plain_grads = loss_and_grads(model, batch, labels)
    seen = []
    hook = last_layer.bert_style_last_block(model).register_forward_hook(lambda m, i, out: seen.append(out.shape))
    with last_layer.head_only(model, batch, CPU, bf16=False) as on:
        logits, grads = loss_and_grads(model, batch, labels)
    hook.remove()
    assert on and seen[-1] == (4, 1, 32)  # the block ran at one position per example
    assert torch.allclose(logits, plain_logits, atol=1e-5 * plain_logits.abs().max().item())
    assert grads.keys() == plain_grads.keys()
    for name, g in plain_grads.items():
        assert torch.allclose(grads[name], g, atol=1e-5 * g.abs().max().item() + 1e-9), name
    assert torch.equal(model(**batch).logits, plain_logits)  # restored on leaving the block


def test_bf16_autocast_agrees_to_its_own_rounding():
    model = encoder("bert")
    batch = tiny_batch(batch=4, seq=9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(**batch).logits.float()
        with last_layer.head_only(model, batch, CPU, bf16=True) as on:
            pruned = model(**batch).logits.float()
    assert on and (pruned - plain).abs().max() <= 3e-2 * plain.abs().max()


@pytest.mark.parametrize("method", ["lora", "adapter", "ia3", "prefix", "prompt"])
def test_methods_keep_the_plain_logits(method):
    """Wrapped projections (LoRA, adapters, IA3) are called as modules; prefix tuning's cache takes the plain
    path; prompt tuning's virtual tokens are the first position the head reads."""
    model = registry.apply(encoder("bert"), method, registry.make_config(method, {}), always_train=["classifier"])
    with torch.no_grad():
        for name, p in model.named_parameters():  # nonzero updates (LoRA's B starts at zero)
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    batch = tiny_batch(batch=4, seq=9)
    plain = model(**batch).logits
    with last_layer.head_only(model, batch, CPU, bf16=False):
        assert torch.allclose(model(**batch).logits, plain, atol=1e-5 * plain.abs().max().item())


def test_models_that_read_other_positions_keep_the_plain_path():
    batch = tiny_batch()
    tagger = AutoModelForTokenClassification.from_config(tiny_config("bert", num_labels=3)).eval()  # every token
    distil = AutoModelForSequenceClassification.from_config(DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64)).eval()
    for model in (tagger, distil, tiny_classifier("llama"), tiny_classifier("gpt2")):
        with last_layer.head_only(model, batch, CPU, bf16=False) as on:
            assert not on
    assert last_layer.bert_style_last_block(distil) is None  # other block shape: not even tried


def test_a_head_reading_every_position_fails_the_check():
    """A BERT whose head mean-pools the last hidden states: the block has BERT's shape, the check refuses."""
    class MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = copy.deepcopy(encoder("bert"))

        def forward(self, **batch):
            hidden = self.inner.bert(**batch).last_hidden_state  # (batch, seq, hidden)
            return type("Out", (), {"logits": self.inner.classifier(hidden.mean(1))})

    model = MeanPooled().eval()
    assert last_layer.bert_style_last_block(model) is not None
    with last_layer.head_only(model, tiny_batch(), CPU, bf16=False) as on:
        assert not on


def test_the_check_runs_on_the_longest_training_examples():
    """One-token rows cannot tell a tagger from a first-position head: the sample is the 4 longest examples."""
    examples = [{"input_ids": [5], "attention_mask": [1]} for _ in range(6)]  # e.g. one-word sentences first
    examples.append({"input_ids": [5, 6, 7, 8], "attention_mask": [1, 1, 1, 1]})
    batch = last_layer.sample_batch(examples, 0, CPU)
    assert batch["input_ids"].shape == (4, 4)
    tagger = AutoModelForTokenClassification.from_config(tiny_config("bert", num_labels=3)).eval()
    with last_layer.head_only(tagger, batch, CPU, bf16=False) as on:
        assert not on
