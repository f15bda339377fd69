"""LoRA: low-rank adapters beside frozen linear weights (Hu et al. 2021, arXiv 2106.09685).

``W' = W + s * B @ A`` with ``A: (r, in)``, ``B: (out, r)``, ``B`` zero-initialised and
``s = alpha / r`` (or ``alpha / sqrt(r)`` with rsLoRA, Kalajdzievski 2023). The forward never builds
the full weight: the layer (:mod:`.lora_layer`, torchtune's LoRALinear) computes ``base(x) + s * B(A(dropout(x)))``
with its own backward; while training, layers that read one input run together (:mod:`.lora_stack`). This module
chooses the target layers, merges them back and writes PEFT's format. Works on ``nn.Linear`` and GPT-2's
transposed ``Conv1D``.
"""
from __future__ import annotations

import contextlib
import re
import sys
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from tuneforge.config import ConfigError
from tuneforge.methods import lora_stack, peft_format
from tuneforge.methods.layers import HEAD_NAMES, LINEAR, replace, untie
from tuneforge.methods.lora_layer import LoRALinear

# token classification: on WNUT-16 + MiniLM at the automatic length, 3e-3 beat 1e-3 on validation and test at
# 496 training sentences (test entity F1 0.416 vs 0.339) and 1,915 (0.449 vs 0.431); 9e-3 fell apart at both
# (0.18, 0.00) (bench_defaults.py, docs/benchmarks.md)
TRAIN_DEFAULTS = {"lr": {"default": 5e-4, "token_classification": 3e-3}}


@dataclass
class Config:
    rank: int = 8  # r: inner dimension of the low-rank update
    alpha: float = 16.0  # scaling numerator: update is (alpha / r) * B @ A
    dropout: float = 0.0  # dropout on the LoRA branch input
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # module names, or all-linear
    target_regex: str | None = None  # regex on full module names (replaces target_modules)
    rslora: bool = False  # scale by alpha / sqrt(r) instead of alpha / r

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ConfigError(f"method.rank must be positive, got {self.rank}")
        if self.alpha <= 0:
            raise ConfigError(f"method.alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"method.dropout must be in [0, 1), got {self.dropout}")
        if self.target_regex is not None:
            try:
                re.compile(self.target_regex)
            except re.error as exc:
                raise ConfigError(f"method.target_regex: invalid regex ({exc})") from None


def _is_target(name: str, module: nn.Module, config: Config, output: nn.Module | None, fused: set[str]) -> bool:
    """A linear layer the config names; never one that trains in full (a fresh head: DistilBERT's
    ``pre_classifier``) or whose weight a fused kernel reads past its forward (``fused``), and, for all-linear,
    never an output layer (GPT-NeoX's ``embed_out``), as in PEFT."""
    if not isinstance(module, LINEAR) or any(p.requires_grad for p in module.parameters()):
        return False
    if name in fused:  # a Mamba mixer's output projection: never a target, as in PEFT
        return False
    if config.target_regex is None and "all-linear" in config.target_modules:
        return name.split(".")[0] not in HEAD_NAMES and module is not output
    return _named(name, config)


def _kernel_read(model: nn.Module) -> set[str]:
    """Names of the linear layers whose weight a fused kernel reads directly: a Mamba mixer's (its ``A_log``
    marks it; Falcon-H1, Bamba, Jamba, Zamba2) ``out_proj``, handed to the CUDA scan as ``outproj_weight``."""
    return {f"{n}.out_proj" if n else "out_proj" for n, m in model.named_modules()
            if isinstance(getattr(m, "A_log", None), nn.Parameter) and isinstance(getattr(m, "out_proj", None), LINEAR)}


def _named(name: str, config: Config) -> bool:
    """Whether the module ``name`` is one the config names (its regex, or a name or dotted suffix it lists)."""
    if config.target_regex is not None:
        return re.fullmatch(config.target_regex, name) is not None
    return any(name == t or name.endswith("." + t) for t in config.target_modules)


def _check_targets(model: nn.Module, config: Config, targets: list[tuple[str, nn.Module]]) -> None:
    """One line where the targets select nothing: saying whether they name only the task head (which trains in full)
    or no layer at all. Names that match nothing beside names that do are fine (a list for several model families,
    as PEFT allows)."""
    if targets:
        return
    linear = {n: m for n, m in model.named_modules() if isinstance(m, LINEAR)}
    trains = [n for n, m in linear.items() if any(p.requires_grad for p in m.parameters())]
    frozen = ", ".join(sorted({n.split(".")[-1] for n in linear if n not in trains})) or "none"
    key, wanted = (("target_regex", config.target_regex) if config.target_regex is not None
                   else ("target_modules", ", ".join(config.target_modules)))
    head = [n for n in trains if _named(n, config)]
    why = (f"'{wanted}' names only the task head ({head[0]}), which trains in full (not a LoRA target)" if head else
           f"'{wanted}' matches no linear layer of {type(model).__name__}")
    raise ConfigError(f"method.{key}: {why}; the linear layers LoRA can wrap are named: {frozen}")


def apply(model: nn.Module, config: Config) -> nn.Module:
    """Wrap every targeted linear layer in a :class:`LoRALinear`; only ``lora_A``/``lora_B`` train."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    fused = _kernel_read(model)
    targets = [(n, m) for n, m in model.named_modules() if _is_target(n, m, config, output, fused)]
    if named := sorted(n for n in fused if _named(n, config)):
        print(f"note: LoRA leaves out {named[0].rsplit('.', 1)[-1]} of the Mamba mixers ({len(named)} layers): their "
              "fused scan kernel reads its weight directly, past a LoRA branch (PEFT refuses it too)", file=sys.stderr)
    _check_targets(model, config, targets)
    for name, module in targets:  # the new lora_A/lora_B train; the wrapped base stays frozen
        replace(model, name, LoRALinear(module, config.rank, config.alpha, config.dropout, config.rslora))
    return model


def _lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def training(model: nn.Module, sample: dict[str, torch.Tensor] | None, bf16: bool
             ) -> contextlib.AbstractContextManager:
    """While training, LoRA layers that read one input (q/k/v, gate/up) run together (:mod:`.lora_stack`)."""
    return lora_stack.shared_inputs(model, sample, bf16)


def merge(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight and unwrap, leaving a plain model."""
    for name, module in _lora_modules(model):
        untie(model, module.base)  # a tied output layer: its update leaves the input embedding as it was
        module.merge()
        replace(model, name, module.base)
    return model


def to_peft(model: nn.Module, config: Config, task_type: str, modules_to_save: list[str]
            ) -> tuple[dict, dict[str, torch.Tensor]]:
    """The adapter in PEFT 0.21's LoRA format: (``adapter_config.json`` dict, ``adapter_model.safetensors``
    tensors keyed ``base_model.model.<module>.lora_A.weight``; ``modules_to_save`` heads keyed
    ``base_model.model.<module>.<param>``). The caller adds ``base_model_name_or_path``."""
    wrapped = _lora_modules(model)
    if not wrapped:
        raise ConfigError("the model holds no LoRA layers to export")
    if any(m.merged for _, m in wrapped):
        raise ConfigError("the LoRA layers are merged into the base weights; export before merging")
    # module suffixes when they pick exactly the wrapped layers, else a regex PEFT full-matches on names
    targets = peft_format.target_modules(model, [n for n, _ in wrapped])
    adapter_config = {
        "peft_type": "LORA", "task_type": task_type, "r": config.rank, "lora_alpha": config.alpha,
        "lora_dropout": config.dropout, "use_rslora": config.rslora, "target_modules": targets,
        "fan_in_fan_out": all(m.transposed for _, m in wrapped), "bias": "none",
        "modules_to_save": list(modules_to_save) or None, "init_lora_weights": True, "inference_mode": True,
    }
    tensors = {}
    for name, m in wrapped:
        tensors[f"{peft_format.LAYER_TUNER}{name}.lora_A.weight"] = m.lora_A.weight.detach().float()  # (r, in)
        tensors[f"{peft_format.LAYER_TUNER}{name}.lora_B.weight"] = m.lora_B.weight.detach().float()  # (out, r)
    tensors |= peft_format.head_tensors(model, modules_to_save, peft_format.LAYER_TUNER)
    return adapter_config, tensors
