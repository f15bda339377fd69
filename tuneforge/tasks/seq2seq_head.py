"""Seq2seq's LM head at the output tokens alone: the encoder-decoder's own forward stopped as it calls its head
(what the head reads in hand), where the model's logits are just that head's output plus BART's
``final_logits_bias`` (checked on a batch against the full forward). The loss itself: ``seq2seq.output_nll``."""
from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn as nn

from tuneforge import distributed
from tuneforge.last_layer import TOLERANCE

IGNORE = -100  # label of a padding position: no loss


def sharded(model: nn.Module) -> bool:
    """Whether FSDP2 shards blocks of the model: a forward stopped before the head would skip its root's hooks."""
    return any(distributed.is_fsdp(m) for m in model.modules())


def forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
    """The model's own forward on a teacher-forced batch (its output: ``.logits`` ``(batch, target, vocab)``)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 decoder_input_ids=batch["decoder_input_ids"], use_cache=False)


class _HeadReached(Exception):
    """Raised as the LM head is called: the decoder's hidden states are in hand."""


def head_input(model: nn.Module, head: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What the LM head reads (T5's rescaling applied), ``(batch, target, hidden)``: the model's own forward,
    stopped as it calls its head."""
    seen: list[torch.Tensor] = []

    def grab(module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.append(args[0])
        raise _HeadReached

    handle = head.register_forward_pre_hook(grab)
    try:
        forward(model, batch)
    except _HeadReached:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"{type(model).__name__} never called its LM head")
    return seen[0]


def logits_bias(model: nn.Module) -> torch.Tensor | None:
    """BART-style models add ``final_logits_bias`` ``(1, vocab)`` to the head's output -> ``(vocab,)``."""
    bias = getattr(model, "final_logits_bias", None)
    return bias.reshape(-1) if isinstance(bias, torch.Tensor) else None


# model -> (what the verdict was reached with: its head and forward hooks, whether its logits are head + bias)
_HEAD_PATH: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def applies(model: nn.Module, head: nn.Module, batch: dict[str, torch.Tensor]) -> bool:
    """Whether the model's logits are ``head(what it reads) + final_logits_bias``: checked on a batch (evaluation
    mode, the run's precision), to ``last_layer.TOLERANCE`` of the largest logit, and checked again once the head
    or the model's forward hooks change. A model that transforms its logits further (soft-capping, scaling), whose
    check fails in any way, or whose blocks FSDP2 shards (:func:`sharded`) keeps the full forward."""
    if sharded(model):
        return False
    state = (id(head), tuple(model._forward_hooks), tuple(model._forward_pre_hooks))
    seen = _HEAD_PATH.get(model)
    if seen is None or seen[0] != state:
        _HEAD_PATH[model] = seen = (state, _head_agrees(model, head, batch))
    return seen[1]


@torch.no_grad()
def _head_agrees(model: nn.Module, head: nn.Module, batch: dict[str, torch.Tensor]) -> bool:
    """The check of :func:`applies`: the full forward's logits against the head's on what it reads."""
    training = model.training
    model.eval()
    try:
        plain = forward(model, batch).logits.float()  # (batch, target, vocab)
        bias = logits_bias(model)
        mine = head(head_input(model, head, batch)).float() + (0 if bias is None else bias.float())
    except Exception:  # noqa: BLE001 - a head never called, another output: the full forward it is
        return False
    finally:
        model.train(training)
    limit = TOLERANCE[torch.is_autocast_enabled(plain.device.type)] * float(plain.abs().max().clamp_min(1e-6))
    return mine.shape == plain.shape and float((mine - plain).abs().max()) <= limit
