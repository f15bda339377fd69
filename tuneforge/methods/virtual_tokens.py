"""Shared machinery for methods that put N virtual positions in front of the real tokens.

* prompt tuning / P-tuning (``mode = "sequence"``): N virtual token embeddings are prepended to the input
  embeddings (Lester et al. 2021; Liu et al. 2021);
* prefix tuning (``mode = "cache"``): N key/value pairs per layer are pre-filled into a ``DynamicCache``
  through its public ``update`` API, exactly as if N tokens had been processed before (Li & Liang 2021).

Both work through two hooks on the backbone (:func:`backbone_of`: ``BertModel``, ``LlamaModel``,
``GPT2Model``, OPT's ``OPTDecoder``), so the task heads and the training loop never see them:

* the forward pre-hook prepends the virtual tokens (or fills an empty cache), prepends N ones to a 2D
  ``attention_mask``, N zeros to ``token_type_ids`` and shifts ``position_ids`` (see below);
* the forward hook strips the N virtual positions from ``last_hidden_state`` (and ``hidden_states``), so
  every output keeps the length of the real input. Labels therefore need no change; this replaces PEFT's
  extension of ``labels`` by N times -100 and gives the same loss whenever the first real token is not a
  target (PEFT also scores it from the last virtual position, a logit the stripped output does not have).
  ``attentions`` keep their N extra rows/columns; tuple outputs (``return_dict=False``) are stripped in
  their first element only. BERT's pooler reads position 0, which is the first virtual token for prompt
  tuning (as in PEFT) and the real ``[CLS]`` for prefix tuning.

Positions: the virtual positions come first, so real token ``i`` sits at position ``N + i`` -- what the
models compute by themselves from the cache length, and what PEFT does. ``position_ids`` given by a caller
(e.g. ``generate``, which derives them from the attention mask) count real tokens only and are shifted by N.

Decoding: a call with a non-empty cache is a continuation; that cache must come from an earlier call of
the same model (it already holds the N virtual positions; a ``DynamicCache``, as ``generate`` creates by
default), so nothing is prepended again and a 2D mask that covers only the real tokens is extended by N.
Attention-mask handling follows transformers 5.24: the mask covers ``cache length + new tokens``; BERT in
encoder mode sizes its mask from it (the special case transformers keeps for prefix tuning), which is why
a mask is always passed for prefix tuning.

PEFT (0.21.2, what the ``to_peft`` hooks export to) computes the same virtual positions but returns them:
causal-LM and token-classification logits carry N extra leading positions (drop them to compare). Its
Llama/GPT-2 sequence classifiers pool the last position (only ``inputs_embeds`` reach the model), tuneforge
the last real token: the two agree on unpadded and left-padded rows. PEFT refuses prefix tuning for
classification on transformers 5.24 (it looks for a ``past_key_values`` argument, now ``cache``); its prefix
cache (``PeftModel.get_prompt``) passed as ``cache=`` to the plain model reproduces tuneforge's logits.
PEFT's cached ``generate`` with these adapters looks for the cache under ``past_key_values`` (transformers 5.24
passes ``cache``) and so re-inserts the virtual tokens, or a fresh prefix, at every step; greedy decoding by
full forwards through PEFT (or ``generate(use_cache=False)`` for prompt tuning / P-tuning) equals tuneforge's.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
import torch.nn as nn
from transformers import DynamicCache, PreTrainedModel

from tuneforge.config import ConfigError
from tuneforge.methods.layers import encoder_and_decoder, find_layers, position_limit, stateful_layers

ATTRS = ("prompt_encoder", "prefix_encoder")  # where the method's module lives on the backbone


class VirtualTokens(nn.Module):
    """Base class of the modules holding the virtual tokens; subclasses set ``mode`` and implement
    ``forward() -> (N, hidden)`` (sequence mode) or ``fill(cache, batch, dtype)`` (cache mode)."""

    mode = "sequence"

    def __init__(self, num_tokens: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.position_limit: int | None = None  # set by attach() for models with a position-embedding table
        self._strip = 0  # virtual positions to strip from the current call's output
        self._length = 0  # the positions of that call's input, virtual ones included

    def fill(self, cache: DynamicCache, batch: int, dtype: torch.dtype) -> None:
        raise NotImplementedError


def virtual_count(model: nn.Module) -> int:
    """The positions the model's virtual tokens take in front of every row (0 without them)."""
    return sum(m.num_tokens for m in model.modules() if isinstance(m, VirtualTokens))


def pads_apart(model: nn.Module, longest: int, new_tokens: int) -> bool:
    """Whether left-padded rows (generation) must not share a batch: the virtual tokens go before a row's left
    padding, so where sliding-window attention (Gemma 2 and 3, Mistral) could span fewer positions than virtual
    tokens + the ``longest`` prompt + ``new_tokens``, the pads would take window room between them and the text;
    a layer with a state along the sequence (Mamba, short convolutions: Falcon-H1, LFM2) carries it across them."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config  # Gemma 3's is inside
    window = getattr(text, "sliding_window", None) if getattr(text, "use_sliding_window", True) else None
    n = virtual_count(model)
    # a Mamba / short-convolution layer carries the pads' state from the virtual tokens into the text
    return n > 0 and (bool(window) and window < n + longest + new_tokens or bool(stateful_layers(model)))


def backbone_of(model: nn.Module) -> nn.Module:
    """The transformer without its task head (``model.bert`` / ``model.model`` / ``model.transformer``): the
    innermost Hugging Face model holding both the input embeddings and the blocks. OPT's and BART's task models
    call ``model.model.decoder`` directly, past ``model.base_model`` and any hook on it."""
    backbone = getattr(model, "base_model", model)
    wanted = {id(model.get_input_embeddings()), id(find_layers(model)[1])}
    while True:
        inner = [c for c in backbone.children() if isinstance(c, PreTrainedModel)
                 and wanted <= {id(m) for m in c.modules()}]
        if not inner:
            return backbone
        backbone = inner[0]


def encoder_of(model: nn.Module, attr: str) -> VirtualTokens:
    """The method's module ``model.base_model.<attr>``; a clear error when the model has none."""
    encoder = getattr(backbone_of(model), attr, None)
    if not isinstance(encoder, VirtualTokens):
        raise ConfigError(f"the model holds no {attr.replace('_', ' ')} (apply the method first)")
    return encoder


def compute_dtype(backbone: nn.Module) -> torch.dtype:
    """The dtype activations have in the current context: the autocast dtype, else the embeddings' dtype."""
    weight = backbone.get_input_embeddings().weight
    if torch.is_autocast_enabled(weight.device.type):
        return torch.get_autocast_dtype(weight.device.type)
    return weight.dtype


def refuse_encoder_decoder(model: nn.Module) -> None:
    """A clear error for an encoder-decoder model (T5 or BART classifiers): the hooks would give its encoder the
    virtual tokens while its decoder reads the bare ``input_ids`` (and BART's head their end-of-text tokens)."""
    if encoder_and_decoder(model) is not None:
        raise ConfigError(f"method: prompt, p-tuning and prefix tuning support encoder-only and decoder-only models; "
                          f"{type(model).__name__} is an encoder-decoder model: choose lora, ia3, adapter, freeze "
                          "or full")


def attach(model: nn.Module, encoder: VirtualTokens, attr: str) -> nn.Module:
    """Register ``encoder`` as ``<attr>`` of the backbone (:func:`backbone_of`) and install the two hooks."""
    refuse_encoder_decoder(model)
    backbone = backbone_of(model)
    if any(hasattr(backbone, a) for a in ATTRS):
        raise ConfigError("method: the model already has prompt/prefix virtual tokens; apply one such method only")
    n = encoder.num_tokens
    limit = position_limit(model)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    max_positions = max_positions if isinstance(max_positions, int) and max_positions > 0 else None  # XLNet: -1
    cap = limit or max_positions  # rotary models (Llama): their trained positions
    if cap is not None and n >= cap:
        raise ConfigError(
            f"method.num_virtual_tokens={n} leaves no position for real tokens: {type(model).__name__} embeds "
            f"{cap} positions (max_position_embeddings={max_positions}); use fewer than {cap} virtual tokens"
        )
    if encoder.mode == "sequence":
        _refuse_ids_only_embedding(backbone)
    encoder.position_limit = limit
    encoder.to(backbone.get_input_embeddings().weight.device)
    backbone.add_module(attr, encoder)
    backbone.register_forward_pre_hook(functools.partial(_before, attr=attr), with_kwargs=True)
    backbone.register_forward_hook(functools.partial(_after, attr=attr), with_kwargs=True)
    return model


@torch.no_grad()
def _refuse_ids_only_embedding(backbone: nn.Module) -> None:
    """Sequence mode hands the backbone ``inputs_embeds`` for the real tokens: refuse a backbone that computes
    otherwise from ``input_ids`` than from their embeddings (Falcon-H1 scales them by its embedding multiplier,
    Gemma 3n adds per-layer token embeddings, ESM rescales for token dropout), whose frozen model the virtual
    tokens would silently change. Three tokens through both paths in eval mode; a backbone that cannot run them
    alone (other required inputs) is not checked."""
    emb = backbone.get_input_embeddings()
    ids = (torch.arange(3, device=emb.weight.device) + emb.num_embeddings // 2).unsqueeze(0)  # (1, 3): no pad id
    training = backbone.training
    backbone.eval()
    try:
        by_ids, by_embeds = (backbone(**inputs)[0] for inputs in ({"input_ids": ids}, {"inputs_embeds": emb(ids)}))
    except (TypeError, ValueError, RuntimeError, IndexError, ConfigError):
        return
    finally:
        backbone.train(training)
    if not torch.allclose(by_ids.float(), by_embeds.float(), rtol=1e-3, atol=1e-4):
        raise ConfigError(f"method: {type(backbone).__name__} computes its input from token ids in a way its token "
                          "embeddings alone do not give (a scale or extra per-token inputs), so prompt tuning and "
                          "P-tuning, which feed it embeddings, would change the frozen model; choose prefix, lora, "
                          "ia3 or adapter")


@functools.lru_cache(maxsize=None)
def _positional_names(cls: type) -> tuple[str, ...]:
    params = list(inspect.signature(cls.forward).parameters.values())[1:]  # drop self
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in params if p.kind in kinds)


def _bind(backbone: nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """All call inputs by name (``model.base_model(ids, mask)`` binds like ``forward`` does)."""
    inputs = dict(zip(_positional_names(type(backbone)), args))
    inputs.update(kwargs)
    if "past_key_values" in inputs:  # the pre-5.40 name of `cache`
        inputs["cache"] = inputs.pop("past_key_values")
    return inputs


def _pad_left(t: torch.Tensor, n: int, value: int) -> torch.Tensor:
    """(batch, L) -> (batch, n + L) with ``value`` in the first n columns."""
    return torch.cat([t.new_full((t.shape[0], n), value), t], dim=1)


def _before(backbone: nn.Module, args: tuple, kwargs: dict[str, Any], attr: str) -> tuple[tuple, dict[str, Any]]:
    """Forward pre-hook: add the virtual tokens (first call) and adapt mask/positions; inputs become kwargs."""
    enc: VirtualTokens = getattr(backbone, attr)
    n = enc.num_tokens
    inputs = _bind(backbone, args, kwargs)
    ids, embeds = inputs.get("input_ids"), inputs.get("inputs_embeds")
    ref = ids if ids is not None else embeds
    if ref is None:
        return (), inputs  # let the model raise its own error
    batch, q = ref.shape[0], ref.shape[1]
    cache = inputs.get("cache")
    past = cache.get_seq_length() if cache is not None else 0
    first = past == 0
    total = (n if first else past) + q  # positions in use after this call
    if enc.position_limit is not None and total > enc.position_limit:
        raise ConfigError(
            f"{q} input tokens + {n} virtual tokens exceed the {enc.position_limit} positions the model embeds "
            f"(max_position_embeddings); lower model.max_length to {enc.position_limit - n} or "
            "method.num_virtual_tokens"
        )
    mask, pos = inputs.get("attention_mask"), inputs.get("position_ids")
    enc._strip = 0
    if first and enc.mode == "sequence":
        if embeds is None:
            embeds = backbone.get_input_embeddings()(ids)  # (batch, L, hidden)
        prompts = enc().to(embeds.dtype)  # (N, hidden)
        inputs["inputs_embeds"] = torch.cat([prompts.unsqueeze(0).expand(batch, -1, -1), embeds], dim=1)
        inputs["input_ids"] = None
        for name in ("token_type_ids", "global_attention_mask"):  # Longformer: virtual tokens attend locally
            if inputs.get(name) is not None:
                inputs[name] = _pad_left(inputs[name], n, 0)
        if pos is not None:  # (b, L) -> (b, N + L): virtual tokens at 0..N-1, real tokens after them
            head = torch.arange(n, device=pos.device, dtype=pos.dtype).expand(pos.shape[0], n)
            inputs["position_ids"] = torch.cat([head, pos + n], dim=1)
        if mask is not None and mask.dim() == 2:
            inputs["attention_mask"] = _pad_left(mask, n, 1)
        enc._strip, enc._length = n, n + q
        return (), inputs
    if first:  # cache mode: pre-fill the cache with the prefix keys/values of every layer
        checkpointing = (getattr(m, "gradient_checkpointing", False) for m in backbone.modules())
        if backbone.training and torch.is_grad_enabled() and any(checkpointing):
            raise ConfigError(
                "prefix tuning keeps its prefix in the KV cache, which transformers drops under gradient "
                "checkpointing; turn gradient checkpointing off"
            )
        if cache is None:
            cache = inputs["cache"] = DynamicCache(config=backbone.config)
        enc.fill(cache, batch, compute_dtype(backbone))
        if mask is None:  # encoders (BERT) size the attention from the 2D mask: always pass one
            mask = torch.ones(batch, q, dtype=torch.long, device=ref.device)
        past = n
    if pos is not None:
        inputs["position_ids"] = pos + n
    if mask is not None and mask.dim() == 2 and mask.shape[1] == past + q - n:
        inputs["attention_mask"] = _pad_left(mask, n, 1)
    return (), inputs


def _after(backbone: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any, attr: str) -> Any:
    """Forward hook: drop the N prepended positions from the outputs."""
    enc: VirtualTokens = getattr(backbone, attr)
    n, enc._strip = enc._strip, 0
    if not n:
        return output
    hidden = output[0] if isinstance(output, tuple) else output["last_hidden_state"]
    if hidden.shape[1] != enc._length:  # Funnel pools the sequence down: no position is a virtual token's
        raise ConfigError(f"method: {type(backbone).__name__} returns {hidden.shape[1]} positions for {enc._length} "
                          "inputs (it shortens the sequence), so the virtual tokens cannot be told from the real "
                          "ones; choose lora, ia3 or adapter")
    if isinstance(output, tuple):
        return (output[0][:, n:],) + output[1:]
    output["last_hidden_state"] = output["last_hidden_state"][:, n:]  # (batch, N + L, hidden) -> (batch, L, hidden)
    if output.get("hidden_states") is not None:
        output["hidden_states"] = tuple(h[:, n:] for h in output["hidden_states"])
    return output
