"""LoRA: low-rank adapters beside frozen linear weights (Hu et al. 2021, arXiv 2106.09685).

``W' = W + s * B @ A`` with ``A: (r, in)``, ``B: (out, r)``, ``B`` zero-initialised and
``s = alpha / r`` (or ``alpha / sqrt(r)`` with rsLoRA, Kalajdzievski 2023). The forward never builds
the full weight: ``base(x) + s * B(A(dropout(x)))`` (torchtune's LoRALinear), with the low-rank product
accumulated into the base output by the GEMM itself (``addmm_``; under autocast the input is cast once for both
branches). With a frozen base and no LoRA dropout (the defaults) one autograd function (:class:`LoRAProduct`)
computes the branch's gradients with its rank-wide products laid out the way the compute dtype's CPU BLAS
multiplies them fastest (:func:`rank_columns`; autograd's own ``linear`` backward multiplies ``dB = g.T @ h``,
up to 7x slower; docs/performance.md), and adds the branch's input gradient inside the base one's GEMM. Works on
``nn.Linear`` and GPT-2's transposed ``Conv1D``.
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from tuneforge.config import ConfigError
from tuneforge.methods import peft_format
from tuneforge.methods.layers import HEAD_NAMES, LINEAR, Wrapper, replace

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


def rank_columns(dtype: torch.dtype) -> bool:
    """Whether :class:`LoRAProduct` lays its rank-wide products out as ``(tokens, r)`` columns (else ``(r, tokens)``
    rows): the columns for bf16/fp16, whose CPU matmuls are oneDNN's (interleaved probes, bf16, Xeon with AMX:
    SmolLM2 LoRA SFT +3.3 %, MiniLM LoRA classification +3.2 % real tokens/s), the rows for float32, whose
    matmuls are MKL's (on the AMD EPYC ``dh = g @ B`` ran 3-4x slower than ``B.T @ g.T``; docs/performance.md)."""
    return dtype != torch.float32


class LoRAProduct(torch.autograd.Function):
    """``x @ W.T + bias + s * (x @ A.T) @ B.T`` for a frozen ``W``/``bias``; gradients for ``x``, ``A``, ``B``.

    The rank-wide products are laid out by :func:`rank_columns`: ``h = x @ A.T`` or ``h.T = A @ x.T`` and,
    backward, ``dh = s * g @ B`` or ``dh.T = s * B.T @ g.T``; then ``dA = dh.T @ x`` and ``dB = s * (h.T @ g).T``
    (autograd's ``linear`` backward computes ``dB = g.T @ h``, a ``(out, tokens) @ (tokens, r)`` product 7x slower
    on CPU BLAS at MiniLM's sizes); ``dx = g @ W + dh @ A`` accumulates the branch in the base GEMM."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor,
                b: torch.Tensor, scaling: float) -> torch.Tensor:
        # x: (T, in); weight: (out, in); bias: (out,) or None; a: (r, in); b: (out, r) -> (T, out)
        dtype = x.dtype  # the compute dtype (autocast's, cast by the caller)
        weight, a, b = weight.to(dtype), a.to(dtype), b.to(dtype)
        out = x @ weight.t() if bias is None else torch.addmm(bias.to(dtype), x, weight.t())  # (T, out)
        ctx.columns = rank_columns(dtype)
        h_t = (x @ a.t()).t() if ctx.columns else a @ x.t()  # (r, T): a transposed view of (T, r) columns
        out.addmm_(h_t.t(), b.t(), alpha=scaling)
        ctx.save_for_backward(x, weight, a, b, h_t)
        ctx.scaling = scaling
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # grad: (T, out)
        x, weight, a, b, h_t = ctx.saved_tensors
        dh_t = (grad @ b).t() if ctx.columns else b.t() @ grad.t()  # (r, T)
        dh_t.mul_(ctx.scaling)
        grad_a = dh_t @ x  # (r, in)
        grad_b = (h_t @ grad).mul_(ctx.scaling).t()  # (out, r)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ weight).addmm_(dh_t.t(), a)  # (T, in)
        return grad_x, None, None, grad_a, grad_b, None


class LoRALinear(Wrapper):
    """A frozen ``nn.Linear``/``Conv1D`` plus a trainable low-rank branch."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float, rslora: bool) -> None:
        super().__init__()
        self.base = base
        self.transposed = isinstance(base, Conv1D)  # Conv1D stores weight as (in, out)
        in_f, out_f = (base.weight.shape if self.transposed else base.weight.shape[::-1])
        self.lora_A = nn.Linear(in_f, rank, bias=False)  # weight (r, in)
        self.lora_B = nn.Linear(rank, out_f, bias=False)  # weight (out, r)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.lora_A.to(base.weight.device)
        self.lora_B.to(base.weight.device)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
        self.merged = False
        self.shared = None  # a lora_stack.SharedInput: computed with the layers that read the same input

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in) -> (..., out)
        if self.merged:
            return self.base(x)
        given = x
        if torch.is_autocast_enabled(x.device.type):  # cast once for both branches (autocast would cast twice)
            x = x.to(torch.get_autocast_dtype(x.device.type))
        rows = x.reshape(-1, x.shape[-1])  # (T, in)
        out = self.shared.output(self, given, rows) if self.shared is not None else None  # (T, out) or None
        if out is None and self._product_applies():
            w = self.base.weight
            out = LoRAProduct.apply(rows, w.t() if self.transposed else w, self.base.bias,
                                    self.lora_A.weight, self.lora_B.weight, self.scaling)  # (T, out)
        elif out is None:
            out = self.base(rows)  # (T, out)
            h = self.lora_A(self.dropout(rows))  # (T, r)
            # out += s * h @ B.T inside the GEMM (beta 1): no separate (T, out) product, scaling or sum tensors
            out = out.addmm_(h.to(out.dtype), self.lora_B.weight.t().to(out.dtype), alpha=self.scaling)
        return out.view(*x.shape[:-1], out.shape[-1])

    def _product_applies(self) -> bool:
        """:class:`LoRAProduct` computes this layer: a plain frozen base, no dropout on the branch."""
        w, bias = self.base.weight, self.base.bias
        return (type(self.base) in (nn.Linear, Conv1D) and isinstance(self.dropout, nn.Identity)
                and not w.requires_grad and not (bias is not None and bias.requires_grad))

    def delta(self) -> torch.Tensor:
        """The dense update ``s * B @ A`` in the base weight's layout."""
        d = (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling  # (out, in)
        return d.T if self.transposed else d

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update to the base weight in place (the branch is skipped from then on)."""
        if not self.merged:
            w = self.base.weight
            w.copy_((w.float() + self.delta()).to(w.dtype))
            self.merged = True


def _is_target(name: str, module: nn.Module, config: Config, output: nn.Module | None) -> bool:
    """A linear layer the config names; never one that trains in full (a fresh head: DistilBERT's
    ``pre_classifier``) and, for all-linear, never an output layer (GPT-NeoX's ``embed_out``), as in PEFT."""
    if not isinstance(module, LINEAR) or any(p.requires_grad for p in module.parameters()):
        return False
    if config.target_regex is None and "all-linear" in config.target_modules:
        return name.split(".")[0] not in HEAD_NAMES and module is not output
    return _named(name, config)


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
    targets = [(n, m) for n, m in model.named_modules() if _is_target(n, m, config, output)]
    _check_targets(model, config, targets)
    for name, module in targets:  # the new lora_A/lora_B train; the wrapped base stays frozen
        replace(model, name, LoRALinear(module, config.rank, config.alpha, config.dropout, config.rslora))
    return model


def _lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def training(model: nn.Module, sample: dict[str, torch.Tensor] | None, bf16: bool
             ) -> contextlib.AbstractContextManager:
    """While training, LoRA layers that read one input (q/k/v, gate/up) run together (:mod:`.lora_stack`)."""
    from tuneforge.methods import lora_stack  # it builds on this module's LoRALinear
    return lora_stack.shared_inputs(model, sample, bf16)


def merge(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight and unwrap, leaving a plain model."""
    for name, module in _lora_modules(model):
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
