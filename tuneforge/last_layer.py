"""The last block of a BERT-style sequence classifier computed only where the head reads it.

A BERT/RoBERTa/ELECTRA classifier reads the final hidden state at one position (the first token: BERT's pooler,
RoBERTa's classification head), so in the last block every other position's query, attention output, feed-forward
network and norms are wasted work: only the keys and values need every position. :func:`head_only` runs that
block for the first position alone (queries ``(B, 1)`` against keys/values ``(B, T)``), which on
all-MiniLM-L6-v2 (6 blocks) skips about 14 % of a training step's matmul FLOPs; Trainer computes them all.

It is used only where it provably changes nothing: before training, the model's logits and the last block's
first-position output are computed both ways on real training examples (evaluation mode, the run's precision)
and must agree to rounding (float32: 1e-4 of the largest value; bf16: 3e-2). A model whose head reads more than
the first position (token classification, causal LM, mean pooling), a block of another shape, or a method that
feeds the attention a cache (prefix tuning) keeps the plain path. Training draws its dropout masks for the
first position only in that block, so runs differ from the plain path by their random masks, not in expectation.
"""
from __future__ import annotations

import contextlib
import heapq
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.data.batching import collate
from tuneforge.methods.layers import find_layers
from tuneforge.models import autocast

TOLERANCE = {False: 1e-4, True: 3e-2}  # of the largest |value|: float32, bf16 autocast


def bert_style_last_block(model: nn.Module) -> nn.Module | None:
    """The last transformer block where it has BERT's parts (``attention.self.query/key/value``,
    ``attention.output``, ``intermediate``, ``output``) and is a plain encoder block; else None."""
    try:
        block = find_layers(model)[1][-1]
    except Exception:  # noqa: BLE001 - no block stack: nothing to prune
        return None
    att = getattr(getattr(block, "attention", None), "self", None)
    needed = ("query", "key", "value", "attention_head_size", "scaling", "dropout")
    if att is None or not all(hasattr(att, n) for n in needed) or getattr(att, "is_decoder", False):
        return None
    if getattr(block, "add_cross_attention", False) or not all(hasattr(block, n) for n in ("intermediate", "output")):
        return None
    return block


def sample_batch(examples: Any, pad_id: int, device: torch.device) -> dict[str, torch.Tensor] | None:
    """Model inputs of the 4 longest training examples, padded: what :func:`head_only` checks on. The longest, so
    that a head reading every position (a tagger) shows it: with one-token rows both ways would agree."""
    if not examples:
        return None
    batch = collate(heapq.nlargest(4, examples, key=lambda e: len(e["input_ids"])), pad_id)
    return {k: v.to(device) for k, v in batch.items() if k != "labels"}


def _first_position_forward(block: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                            *args: Any, **kwargs: Any) -> torch.Tensor:
    """``block`` on hidden states ``(B, T, H)`` -> its output at the first position only, ``(B, 1, H)``."""
    if (args and args[0] is not None) or any(kwargs.get(k) is not None for k in ("cache", "encoder_hidden_states")):
        return type(block).forward(block, hidden_states, attention_mask, *args, **kwargs)  # not a plain encoder call
    att = block.attention.self
    first = hidden_states[:, :1]  # (B, 1, H)
    split = (lambda x: x.view(*x.shape[:2], -1, att.attention_head_size).transpose(1, 2))  # -> (B, heads, n, d)
    q, k, v = split(att.query(first)), split(att.key(hidden_states)), split(att.value(hidden_states))
    mask = attention_mask
    if mask is not None:  # (B, 1, T or 1, T): the first query's row; additive masks in the queries' dtype
        mask = mask[:, :, :1] if mask.dim() == 4 else mask
        mask = mask if mask.dtype == torch.bool else mask.to(q.dtype)
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=att.scaling,
                                         dropout_p=att.dropout.p if att.training else 0.0)  # (B, heads, 1, d)
    ctx = ctx.transpose(1, 2).reshape(first.shape[0], 1, -1)  # (B, 1, H)
    attended = block.attention.output(ctx, first)  # dense, dropout, LayerNorm(. + residual)
    return block.output(block.intermediate(attended), attended)  # (B, 1, H)


@contextlib.contextmanager
def _patched(block: nn.Module) -> Iterator[None]:
    block.forward = types.MethodType(_first_position_forward, block)
    try:
        yield
    finally:
        del block.forward  # back to the class's forward


@torch.no_grad()
def _agrees(model: nn.Module, block: nn.Module, batch: dict[str, torch.Tensor], device: torch.device, bf16: bool
            ) -> bool:
    """Both ways on ``batch`` in evaluation mode: same logits and first-position block output, to rounding."""
    seen: list[torch.Tensor] = []
    hook = block.register_forward_hook(lambda _m, _i, out: seen.append(out if torch.is_tensor(out) else out[0]))
    training = model.training
    model.eval()
    try:
        with autocast(device, bf16):
            plain = model(**batch).logits
            with _patched(block):
                pruned = model(**batch).logits
    except Exception:  # noqa: BLE001 - the block or its callers expect something else: keep the plain path
        return False
    finally:
        hook.remove()
        model.train(training)
    if len(seen) != 2 or plain.shape != pruned.shape or seen[1].shape[1] != 1:
        return False
    tol = TOLERANCE[bf16]
    pairs = ((plain.float(), pruned.float()), (seen[0][:, :1].float(), seen[1].float()))
    return all((a - b).abs().max() <= tol * a.abs().max().clamp(min=1e-6) for a, b in pairs)


@contextlib.contextmanager
def head_only(model: nn.Module, batch: dict[str, torch.Tensor] | None, device: torch.device, bf16: bool
              ) -> Iterator[bool]:
    """Within the block, ``model``'s last block runs at the first position only where :func:`_agrees` shows
    that changes nothing on ``batch`` (model inputs on ``device``; ``bf16``: the run's autocast). Yields whether
    it does."""
    block = bert_style_last_block(model) if batch is not None else None
    if block is None or not _agrees(model, block, batch, device, bf16):
        yield False
        return
    with _patched(block):
        yield True
