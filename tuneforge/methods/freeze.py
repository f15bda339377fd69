"""Freeze tuning (LLaMA-Factory ``freeze``): train a chosen subset of transformer layers/modules, freeze the rest.
An encoder-decoder's (T5, BART) layers count in forward order, encoder then decoder: the last layers are the
decoder's."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Literal

import torch.nn as nn

from tuneforge.config import ConfigError
from tuneforge.methods.layers import block_stacks, layer_index
from tuneforge.strict import refuse

# token classification: on WNUT-16 + MiniLM, 9e-4 was validation's pick of 1e-4 / 3e-4 / 9e-4 / 2.7e-3 at 496
# training sentences (test entity F1 0.328 / 0.333 / 0.421 / 0.354) and at 1,915 (0.422 / 0.482 / 0.453 / 0.406)
# (1e-4 and 3e-4 in float32, 9e-4 and 2.7e-3 under bf16 autocast; bench_defaults.py, docs/benchmarks.md, "Prefix
# tuning's rate, BitFit's head ...")
TRAIN_DEFAULTS = {"lr": {"default": 1e-4, "token_classification": 9e-4}}

DEFAULT_LAYERS = 2  # method.num_layers left unset: the last two layers train (every layer of a smaller model)


@dataclass
class Config:
    num_layers: int | None = None  # how many transformer layers train (see `which`); default: 2 (every layer
    #                                of a model with fewer)
    which: Literal["last", "first"] = "last"  # train the last or the first `num_layers` layers
    layer_indices: list[int] | None = None  # explicit layer indices (replaces num_layers/which); -1: the last
    patterns: list[str] = field(default_factory=list)  # regexes on parameter names that also train
    extra: list[str] = field(default_factory=list)  # modules that also train: embeddings, encoder.embed_tokens

    def __post_init__(self) -> None:
        if self.num_layers is not None and self.num_layers < 0:
            raise ConfigError(f"method.num_layers must be >= 0, got {self.num_layers}")
        for pattern in self.patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"method.patterns: invalid regex {pattern!r} ({exc})") from None


def selected_layers(n_layers: int, config: Config) -> list[int]:
    """Indices of the layers that train."""
    if config.layer_indices is not None:
        bad = [i for i in config.layer_indices if not -n_layers <= i < n_layers]
        if bad:
            raise ConfigError(f"method.layer_indices {bad} out of range: the model has {n_layers} layers")
        chosen = sorted({i % n_layers for i in config.layer_indices})
        if len(chosen) < len(set(config.layer_indices)):  # e.g. [-1, 1] of 2 layers; a repeated [0, 0] is harmless
            refuse(f"method.layer_indices {config.layer_indices} name a layer twice: negative indices count from the "
                   f"end (-1 is layer {n_layers - 1} of {n_layers})")
        return chosen
    count = min(DEFAULT_LAYERS, n_layers) if config.num_layers is None else config.num_layers
    if count > n_layers:
        raise ConfigError(f"method.num_layers={count} but the model has only {n_layers} layers")
    all_layers = list(range(n_layers))
    return all_layers[n_layers - count:] if config.which == "last" else all_layers[:count]


def block_number(param_name: str, stacks: list[tuple[str, nn.ModuleList]]) -> int | None:
    """The block a parameter belongs to, numbered across ``stacks`` in order, or None outside the blocks."""
    offset = 0
    for name, layers in stacks:
        index = layer_index(param_name, name)
        if index is not None:
            return offset + index
        offset += len(layers)
    return None


def apply(model: nn.Module, config: Config) -> nn.Module:
    """Unfreeze the selected layers, pattern matches and extra modules."""
    stacks = block_stacks(model)
    chosen = set(selected_layers(sum(len(layers) for _, layers in stacks), config))
    regexes = [re.compile(p) for p in config.patterns]
    matched_extra, matched_patterns = set(), set()
    selected, first = False, {}  # first: id(parameter) -> its first name (a tied weight has several)
    for name, p in model.named_parameters(remove_duplicate=False):
        idx = block_number(name, stacks)
        hit_extra = [e for e in config.extra if f".{e}." in f".{name}."]  # whole name parts: embed_tokens, encoder.x
        hit_patterns = [r.pattern for r in regexes if r.search(name)]
        matched_extra.update(hit_extra)
        owner = first.setdefault(id(p), name)
        if (hit_extra or hit_patterns) and owner != name and not p.requires_grad:
            print(f"note: {name} is tied to {owner}: training it trains both", file=sys.stderr)
        if not p.requires_grad:  # a pattern that only names what trains anyway (the task head) selects nothing
            matched_patterns.update(hit_patterns)
        if (idx is not None and idx in chosen) or hit_patterns or hit_extra:
            selected = selected or not p.requires_grad
            p.requires_grad_(True)
    missing = sorted(set(config.extra) - matched_extra)
    if missing:
        raise ConfigError(f"method.extra: no module named {missing[0]!r} in {type(model).__name__}")
    unmatched = [p for p in config.patterns if p not in matched_patterns]
    if unmatched:
        names = [n for n, _ in model.named_parameters()]
        refuse(f"method.patterns: {unmatched[0]!r} matches no frozen parameter of {type(model).__name__} (regexes "
               f"are searched in names such as {names[0]!r}, {names[len(names) // 2]!r}; the task head trains anyway)")
    if not selected and not chosen:
        raise ConfigError("method: freeze selects no parameters; set num_layers, layer_indices, patterns or extra")
    return model


def merge(model: nn.Module) -> nn.Module:
    """Nothing to fold: the trained weights are the model's own (a plain Hugging Face model)."""
    return model
