"""Prefix tuning / P-tuning v2: trainable key/value prefixes of length N in every attention layer
(Li & Liang 2021, arXiv 2101.00190; Liu et al. 2022, P-tuning v2, arXiv 2110.07602).

Mechanics (transformers 5.24 cache API): before each forward without a cache (or with an empty one), the
backbone's pre-hook fills a ``DynamicCache`` layer by layer through ``cache.update(key, value, layer_idx)``
with the prefix ``(batch, kv_heads, N, head_dim)`` and passes it as ``cache=`` (the name that replaced
``past_key_values``), together with an attention mask extended by N. Every attention layer then attends to
the N prefix positions exactly as to N earlier tokens, decoders keep generating from that cache, and the
models place real token ``i`` at position ``N + i`` (they count the cache), as PEFT does; explicit
``position_ids`` (e.g. from ``generate``) are shifted by N to match. BERT in encoder mode accepts the same
cache: its self-attention calls ``cache.update`` whenever a cache is passed and transformers sizes the
bidirectional mask from the extended 2D mask, so no key/value wrapping is needed. See
:mod:`tuneforge.methods.virtual_tokens`. Gradient checkpointing drops the cache in transformers, so it is
refused while training.

The prefix is one tensor ``embedding`` ``(N, layers * 2 * kv_heads * head_dim)`` in PEFT's layout and
naming (per virtual token: layer, key/value, head, head_dim), or with ``reparam`` an MLP ``embedding
(N, kv_dim) -> transform: Linear -> tanh -> Linear`` (Li & Liang's reparameterisation, PEFT's
``prefix_projection``). ``fold`` evaluates the MLP once and leaves the plain form: ``embedding`` holding the
prefix itself, the only tensor to save (as PEFT's inference mode). Loading a state dict that holds
``embedding`` without ``transform`` into a freshly applied reparameterised model switches it to the plain
form first (load-state-dict pre-hook), so ``apply`` + load reproduces a folded model.

``to_peft`` exports the plain (folded) prefix as PEFT ``PREFIX_TUNING`` with ``prefix_projection=False``.
PEFT lays ``prompt_embeddings`` out like ``embedding`` (per token: layer, key/value, head, head_dim) and, for
grouped-query attention, sets ``num_attention_heads`` to the key/value heads and ``token_dim`` to
``kv_heads * head_dim``; the export writes those values. Causal LMs load with PEFT and give the same logits;
PEFT 0.21.2 on transformers 5.24 cannot run prefix tuning for classification and its cached ``generate``
rebuilds the prefix at every step (see :mod:`.virtual_tokens`).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from transformers import DynamicCache

from tuneforge.config import ConfigError
from tuneforge.methods import peft_format
from tuneforge.methods.layers import attention_heads, find_layers, stateful_layers
from tuneforge.methods.virtual_tokens import VirtualTokens, attach, backbone_of, encoder_of, refuse_encoder_decoder

# every task kind 3e-2. Classification and token classification: lr x 3 over 1e-2 scored at least 1e-2's test
# metric in all five cells measured (Rotten Tomatoes 500 +0.8, tweets 500 +2.5, WNUT-16 496 +0.4, ChatterBot
# topics 575 +5.5 and, at the earlier 10-epoch cap, topics 500 +9.7) and was validation's pick in four
# (docs/benchmarks.md, "Prefix tuning's rate"). Causal LM (ChatterBot SFT at 500 pairs, bf16): test perplexity
# 13.81 / 12.09 / 11.35 at 1e-2 / 3e-2 / 9e-2 (9e-2 validation's pick, 6.5 % better than 3e-2, within the 7.5 %
# target); 3e-2 keeps one rate for every task (docs/benchmarks.md, "... the other methods on ChatterBot SFT")
TRAIN_DEFAULTS = {"lr": 3e-2}


@dataclass
class Config:
    num_virtual_tokens: int = 20  # N: prefix length per layer (occupies N positions of the model's context)
    reparam: bool = False  # train an MLP that produces the prefix (Li & Liang) instead of the prefix itself
    reparam_hidden: int = 512  # hidden width of that MLP

    def __post_init__(self) -> None:
        if self.num_virtual_tokens <= 0:
            raise ConfigError(f"method.num_virtual_tokens must be positive, got {self.num_virtual_tokens}")
        if self.reparam_hidden <= 0:
            raise ConfigError(f"method.reparam_hidden must be positive, got {self.reparam_hidden}")


def kv_shape(model: nn.Module) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)`` of the model's key/value cache, read from its config."""
    cfg = model.config
    hidden = getattr(cfg, "hidden_size", None)
    shape = attention_heads(cfg, hidden) if hidden else None
    if shape is None:
        raise ConfigError(f"method: prefix tuning needs num_attention_heads and hidden_size in {type(cfg).__name__}")
    _, kv_heads, head_dim = shape
    return len(find_layers(model)[1]), kv_heads, head_dim


class PrefixEncoder(VirtualTokens):
    """The key/value prefixes of every layer, as one parameter or produced by an MLP."""

    mode = "cache"

    def __init__(self, num_tokens: int, layers: int, kv_heads: int, head_dim: int, config: Config) -> None:
        super().__init__(num_tokens)
        self.shape = (layers, kv_heads, head_dim)
        width = layers * 2 * kv_heads * head_dim
        if config.reparam:
            self.embedding = nn.Parameter(torch.randn(num_tokens, kv_heads * head_dim))  # (N, kv_dim)
            self.transform = nn.Sequential(nn.Linear(kv_heads * head_dim, config.reparam_hidden), nn.Tanh(),
                                           nn.Linear(config.reparam_hidden, width))
        else:
            self.embedding = nn.Parameter(torch.randn(num_tokens, width))  # (N, layers * 2 * kv_dim)
        self.register_load_state_dict_pre_hook(_load_folded)

    @property
    def folded(self) -> bool:
        """Plain form: ``embedding`` is the prefix itself (no reparameterisation, or folded)."""
        return "transform" not in self._modules

    def key_values(self) -> torch.Tensor:  # -> (N, layers * 2 * kv_heads * head_dim)
        if self.folded:
            return self.embedding
        with torch.autocast(self.embedding.device.type, enabled=False):
            return self.transform(self.embedding)

    def fill(self, cache: DynamicCache, batch: int, dtype: torch.dtype) -> None:
        """Append the prefix of every layer to an empty cache."""
        layers, kv_heads, head_dim = self.shape
        kv = self.key_values().to(dtype).view(self.num_tokens, layers, 2, kv_heads, head_dim)
        kv = kv.permute(1, 2, 3, 0, 4)  # (layers, 2, kv_heads, N, head_dim)
        for i in range(layers):
            key = kv[i, 0].unsqueeze(0).expand(batch, -1, -1, -1)  # (batch, kv_heads, N, head_dim)
            value = kv[i, 1].unsqueeze(0).expand(batch, -1, -1, -1)
            cache.update(key, value, i)

    def _to_folded(self, prefix: torch.Tensor) -> None:
        del self.transform
        self.embedding = nn.Parameter(prefix)  # (N, layers * 2 * kv_dim)

    @torch.no_grad()
    def fold_(self) -> None:
        """Replace the MLP by the prefix it produces."""
        if not self.folded:
            self._to_folded(self.key_values().detach().clone())


def _load_folded(module: PrefixEncoder, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Loading ``embedding`` without ``transform`` (a folded model's tensors) into the MLP form folds it first."""
    key = prefix + "embedding"
    if key in state_dict and not module.folded and not any(k.startswith(prefix + "transform.") for k in state_dict):
        module._to_folded(torch.zeros(state_dict[key].shape, device=module.embedding.device))


def apply(model: nn.Module, config: Config) -> nn.Module:
    """Add the prefix encoder to ``model.base_model``; its new parameters train."""
    refuse_encoder_decoder(model)
    backbone = backbone_of(model)
    if not {"cache", "past_key_values"} & set(inspect.signature(backbone.forward).parameters):
        raise ConfigError(f"method.name=prefix: {type(backbone).__name__} takes no key/value cache, so its "
                          "attention cannot see a prefix; choose prompt, p-tuning or lora")
    if stateful := stateful_layers(model):
        raise ConfigError(f"method.name=prefix: {type(backbone).__name__} has layers that carry a state along the "
                          f"sequence ({', '.join(stateful)}), which take no key/value prefix; choose prompt, "
                          "p-tuning or lora")
    layers, kv_heads, head_dim = kv_shape(model)
    attach(model, PrefixEncoder(config.num_virtual_tokens, layers, kv_heads, head_dim, config), "prefix_encoder")
    return model


def fold(model: nn.Module) -> nn.Module:
    """Evaluate the reparameterisation once: ``prefix_encoder.embedding`` is then the only tensor to save."""
    backbone_of(model).prefix_encoder.fold_()
    return model


def to_peft(model: nn.Module, config: Config, task_type: str, modules_to_save: list[str]
            ) -> tuple[dict, dict[str, torch.Tensor]]:
    """The prefix in PEFT 0.21's ``PREFIX_TUNING`` format: ``prompt_embeddings``
    ``(N, layers * 2 * kv_heads * head_dim)``, folded (heads as ``modules_to_save``)."""
    encoder = encoder_of(model, "prefix_encoder")
    _, kv_heads, head_dim = encoder.shape
    with torch.no_grad():
        prefix = encoder.key_values().detach()  # (N, layers * 2 * kv_heads * head_dim)
    return peft_format.prompt_learning(model, "PREFIX_TUNING", task_type, modules_to_save, prefix,
                                       token_dim=kv_heads * head_dim, num_attention_heads=kv_heads,
                                       prefix_projection=False)
