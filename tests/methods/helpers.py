"""Shared checks for the method tests (tiny models come from tests/conftest.py)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from tuneforge.methods import registry
from tuneforge.models import store_frozen_in_bf16

HEADS = ["classifier", "score", "classification_head"]  # fresh classification heads (BERT / Llama, GPT-2 / T5, BART)


def apply(model: nn.Module, name: str, **options) -> nn.Module:
    """Apply method ``name`` through the registry, as the run does (heads unfrozen afterwards)."""
    return registry.apply(model, name, registry.make_config(name, options), always_train=HEADS)


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def method_params(model: nn.Module) -> set[str]:
    """Trainable parameters that are not the classification head."""
    return {n for n in trainable(model) if n.split(".")[0] not in HEADS}


@torch.no_grad()
def randomise(model: nn.Module, scale: float = 0.5, seed: int = 3) -> None:
    """Perturb the method's trainable parameters (not the head), so identity-initialised methods have a
    visible effect."""
    g = torch.Generator().manual_seed(seed)
    for n, p in model.named_parameters():
        if p.requires_grad and n.split(".")[0] not in HEADS:
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * scale)


def saved(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a parameter-efficient run saves: the trainable tensors."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def lm_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)


def loss_after_two_steps(model: nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor,
                         lr: float) -> tuple[float, float]:
    """Loss before and after two AdamW steps on one fixed batch (dropout off for a deterministic check)."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    first = None
    for _ in range(2):
        loss = model(**batch, labels=labels).loss
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in params), "a trainable parameter got no gradient"
        opt.step()
    with torch.no_grad():
        return first, model(**batch, labels=labels).loss.item()


def bf16_step(model: nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
    """One training step the way the loop runs bf16: frozen matmul weights stored in bf16, bf16 autocast."""
    store_frozen_in_bf16(model)
    assert any(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch, labels=labels).loss
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def no_eos(model: nn.Module) -> nn.Module:
    """Let generation run its full length (the tiny configs have EOS ids that random models may emit)."""
    model.generation_config.eos_token_id = None
    return model


@torch.no_grad()
def greedy_reference(model: nn.Module, ids: torch.Tensor, steps: int, mask: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """Greedy decoding by repeated full forwards without a KV cache. With a (left-padding) ``mask`` the
    positions are derived from it the way ``generate`` derives them."""
    for _ in range(steps):
        kwargs = {}
        if mask is not None:
            kwargs = {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        nxt = model(input_ids=ids, use_cache=False, **kwargs).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
    return ids


def generate(model: nn.Module, ids: torch.Tensor, steps: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    mask = torch.ones_like(ids) if mask is None else mask
    return no_eos(model).generate(ids, attention_mask=mask, max_new_tokens=steps, do_sample=False, pad_token_id=0)


def word_tokenizer(path: Path) -> Path:
    """A whitespace word-level tokenizer over ``w0 .. w{VOCAB-1}`` (``tiny.word_tokenizer``) saved to ``path``."""
    from tiny import word_tokenizer as build

    build(words=[], specials=[], unk="w1", pad_token="w0", eos="w2").save_pretrained(path)
    return path
