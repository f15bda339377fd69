"""Layer helpers shared by the methods: find the stack of transformer blocks in any Hugging Face model (no
per-architecture subclasses), recognise linear and norm layers, and swap a sub-module for a wrapper."""
from __future__ import annotations

import re
from typing import Any

import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from tuneforge.config import ConfigError

# Top-level output modules of Hugging Face task models: never wrapped by adapters, trained as heads.
HEAD_NAMES = ("classifier", "classification_head", "score", "lm_head", "qa_outputs")  # BART, T5: classification_head
# Linear layers: ``nn.Linear`` (weight (out, in)) and GPT-2's transposed ``Conv1D`` (weight (in, out)).
LINEAR = (nn.Linear, Conv1D)


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return ``(qualified_name, module_list)`` of the transformer blocks.

    The blocks are the longest ``nn.ModuleList`` whose children all share one class
    (BERT ``encoder.layer``, Llama ``model.layers``, GPT-2 ``transformer.h``).
    """
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            kinds = {type(child) for child in module}
            if len(kinds) == 1 and (best is None or len(module) > len(best[1])):
                best = (name, module)
    if best is None:
        raise ConfigError(f"cannot find the transformer layers of {type(model).__name__}: no nn.ModuleList of blocks")
    return best


def encoder_and_decoder(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """An encoder-decoder model's (T5's, BART's) encoder and decoder, or None for a model with one stack. Told
    from the structure: UMT5's token classifier keeps ``is_encoder_decoder`` but holds the encoder alone (its
    ``get_decoder()`` returns the encoder model around it)."""
    if not getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return None
    encoder, decoder = (getattr(model, f"get_{part}", lambda: None)() for part in ("encoder", "decoder"))
    if encoder is None or decoder is None or model in (encoder, decoder):
        return None
    if any(m is encoder for m in decoder.modules()) or any(m is decoder for m in encoder.modules()):
        return None  # one holds the other
    return encoder, decoder


def block_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every stack of transformer blocks in forward order: an encoder-decoder's (T5, BART) encoder blocks then its
    decoder blocks, else the one stack of :func:`find_layers`."""
    coders = encoder_and_decoder(model)
    if coders is None:
        return [find_layers(model)]
    names = {id(m): n for n, m in model.named_modules()}
    stacks = []
    for coder in coders:
        name, layers = find_layers(coder)
        stacks.append((f"{names[id(coder)]}.{name}".lstrip("."), layers))
    return stacks


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every transformer block with its qualified name, in forward order (:func:`block_stacks`)."""
    return [(f"{name}.{i}", block) for name, layers in block_stacks(model) for i, block in enumerate(layers)]


def layer_index(param_name: str, layers_name: str) -> int | None:
    """The block index a parameter belongs to (``encoder.layer.3.x`` -> 3), or None outside the blocks."""
    m = re.match(re.escape(layers_name) + r"\.(\d+)\.", param_name)
    return int(m.group(1)) if m else None


def hidden_size(model: nn.Module) -> int:
    """Width of the residual stream the blocks work in: ``config.hidden_size`` (ALBERT's embeddings are
    narrower and projected up), else the input embeddings' width."""
    return getattr(model.config, "hidden_size", None) or model.get_input_embeddings().weight.shape[1]


def attention_heads(config: Any, hidden: int) -> tuple[int, int, int] | None:
    """``(heads, key/value heads, head_dim)`` from a model config (grouped-query attention: fewer key/value
    heads), or None when it names no attention heads."""
    heads = getattr(config, "num_attention_heads", None)
    if not heads:
        return None
    if getattr(config, "new_decoder_architecture", False):  # Falcon-40B layout: its cache holds every head
        kv_heads = heads
    elif getattr(config, "multi_query", False):  # Falcon-7B, GPT-BigCode: one key/value head
        kv_heads = 1
    else:  # grouped-query attention names them num_key_value_heads (Falcon: num_kv_heads)
        kv_heads = getattr(config, "num_key_value_heads", None) or getattr(config, "num_kv_heads", None) or heads
    return heads, kv_heads, getattr(config, "head_dim", None) or hidden // heads


def position_limit(model: nn.Module) -> int | None:
    """The most real tokens the model can embed when it has an absolute position table (BERT, GPT-2), else None
    (rotary models such as Llama have no hard limit). A table's first ``padding_idx + 1`` rows are unused where
    positions count from after the padding index (RoBERTa: 514 rows, 512 tokens), and OPT's table has ``offset``
    extra rows. GPT-J and CodeGen index a fixed sin/cos buffer ``embed_positions`` of ``n_positions`` rows; MPT
    slices an ALiBi bias of ``max_seq_len`` positions."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:  # MPT: an ALiBi bias of max_seq_len positions, built once, is all it attends with
        return getattr(config, "max_seq_len", None)
    inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    for module in model.modules():
        table = module._buffers.get("embed_positions")
        if table is not None and table.shape[0] == limit:
            return int(limit)
        if not isinstance(module, nn.Embedding) or module is inputs:
            continue
        if module.num_embeddings == limit + getattr(module, "offset", 0):
            pad = module.padding_idx
            return int(limit) - (pad + 1 if pad is not None else 0)
    return None


def linear_features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of an ``nn.Linear`` or a transposed GPT-2 ``Conv1D``."""
    w = module.weight
    return (w.shape[0], w.shape[1]) if isinstance(module, Conv1D) else (w.shape[1], w.shape[0])


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and other normalisation layers (recognised by class name)."""
    return isinstance(module, nn.LayerNorm) or "Norm" in type(module).__name__


def is_rms_norm(module: nn.Module) -> bool:
    """An RMSNorm of any model family (``LlamaRMSNorm``, ``Qwen2RMSNorm``, ...; recognised by class name)."""
    return type(module).__name__.endswith("RMSNorm")


class Wrapper(nn.Module):
    """A module that wraps a frozen projection ``base`` (LoRA, adapters, IA3). Reads of ``weight`` and ``bias``
    go to the base: model code reads them (T5's feed-forward casts its input to ``wo.weight.dtype``)."""

    base: nn.Module

    @property
    def weight(self) -> nn.Parameter:
        return self.base.weight

    @property
    def bias(self) -> nn.Parameter | None:
        return getattr(self.base, "bias", None)


def tied_wrapped(model: nn.Module) -> list[str]:
    """Names of the wrapped projections (:class:`Wrapper`) whose frozen weight another module of ``model`` shares
    (a tied output layer: GPT-2's ``lm_head`` and ``wte``)."""
    return [n for n, m in model.named_modules() if isinstance(m, Wrapper) and _holders(model, m.base)]


def _holders(model: nn.Module, module: nn.Module) -> list[tuple[nn.Module, str]]:
    """The other modules of ``model`` that hold ``module``'s weight, with the parameter's name in each."""
    weight = module.weight
    return [(m, n) for m in model.modules() for n, p in m._parameters.items() if p is weight and m is not module]


def replace(root: nn.Module, name: str, new: nn.Module) -> None:
    """Set sub-module ``name`` of ``root`` (dotted, e.g. ``model.layers.0.mlp``) to ``new``."""
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def untie(model: nn.Module, module: nn.Module) -> bool:
    """Give ``module`` a weight of its own where it shares it with another module of ``model`` (a tied output
    layer and input embedding), so that merging an update into it leaves the other as it was; the model's config
    then saves and loads the two apart. Returns whether it was shared. The config's ``tie_word_embeddings`` also
    ties BART's, Pegasus's and mBART's encoder and decoder embeddings to ``shared``: once it is off they load
    from keys of their own, so each of the other holders gets its own copy too (saved once each)."""
    weight, holders = module.weight, _holders(model, module)
    shared = bool(holders)
    if shared:
        module.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
        for m, n in holders[1:]:
            setattr(m, n, nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad))
        for config in {id(c): c for c in (getattr(model, "config", None),
                                          getattr(getattr(model, "config", None), "get_text_config", lambda: None)())
                       if c is not None}.values():
            if getattr(config, "tie_word_embeddings", False):
                config.tie_word_embeddings = False
    return shared


STATEFUL_TYPES = {"conv", "hybrid", "hybrid_sliding", "linear_attention", "mamba"}  # transformers' layer_types
STATEFUL_CLASSES = re.compile(r"Mamba|ShortConv|GatedDeltaNet|Rwkv|LinearAttention")  # models without layer_types


def stateful_layers(model: nn.Module) -> list[str]:
    """The kinds of layer that carry a state along the sequence besides (or instead of) attention: Mamba mixers,
    short convolutions, linear attention (Falcon-H1, LFM2, Qwen3-Next, Bamba, Zamba2); [] for a transformer."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    found = [t for t in dict.fromkeys(map(str, getattr(text, "layer_types", None) or [])) if t in STATEFUL_TYPES]
    return found or list(dict.fromkeys(type(m).__name__ for m in model.modules()
                                       if STATEFUL_CLASSES.search(type(m).__name__)))
