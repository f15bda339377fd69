"""Bottleneck adapters: ``y + up(act(down(y)))`` after sublayer outputs, ``up`` zero-initialised so the model
starts exactly as the base (Houlsby et al. 2019, arXiv 1902.00751; Pfeiffer et al. 2020, arXiv 2005.00247).

``houlsby`` puts one adapter after the attention output projection and one after the FFN output (down)
projection of every block; ``pfeiffer`` only the one after the FFN. The projection is wrapped, so the adapter
acts on the sublayer output before dropout, the residual addition and (BERT) the LayerNorm -- Houlsby's
placement -- for BERT (``attention.output.dense``, ``output.dense``), Llama (``self_attn.o_proj``,
``mlp.down_proj``) and GPT-2 (``attn.c_proj``, ``mlp.c_proj``, ``Conv1D``) alike.

The projections are found structurally, without per-model tables: the attention output is the last linear
layer inside the block's outermost module whose name contains ``attn``/``attention`` and that holds one; the FFN
output is the last linear layer of the block that maps a wider input to the hidden size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from transformers.activations import ACT2FN

from tuneforge.config import ConfigError
from tuneforge.strict import refuse
from tuneforge.methods.layers import (LINEAR, Wrapper, blocks, hidden_size, is_norm, linear_features,
                                      replace)


def default_lr(shape: tuple[int, int] | None) -> float:
    """3e-3 up to MiniLM's size (384 wide, 6 blocks), where it was measured best (README); on a bigger model less,
    in proportion to its width and to the square root of its depth: every block's adapters add to the residual
    stream, and Adam moves each weight by about the rate, so one step's change of the output grows with both.
    SmolLM2-135M (576 wide, 30 blocks): 8.9e-4, where 1e-3 beat 3e-3 at three seeds (docs/benchmarks.md)."""
    width, depth = shape or (384, 6)
    return 3e-3 * min(1.0, 384 / width * (6 / depth) ** 0.5)


# the pooler: docs/benchmarks.md, "BERT's pooler"
TRAIN_DEFAULTS = {"lr": default_lr, "pooler_with_head": True}

VARIANTS = ("houlsby", "pfeiffer")


@dataclass
class Config:
    variant: Literal["houlsby", "pfeiffer"] = "houlsby"  # houlsby: after attention and FFN; pfeiffer: after FFN
    reduction_factor: int = 16  # bottleneck = hidden size // reduction_factor
    bottleneck_size: int | None = None  # explicit bottleneck width (replaces reduction_factor)
    activation: str = "relu"  # nonlinearity between down and up projection (a transformers ACT2FN name)
    train_layernorms: bool = False  # also train the norm layers inside the blocks (Houlsby et al. did)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"method.variant: {self.variant!r} is not allowed; choose one of houlsby, pfeiffer")
        if self.reduction_factor <= 0:
            raise ConfigError(f"method.reduction_factor must be positive, got {self.reduction_factor}")
        if self.bottleneck_size is not None and self.bottleneck_size <= 0:
            raise ConfigError(f"method.bottleneck_size must be positive, got {self.bottleneck_size}")
        if self.activation not in ACT2FN:
            raise ConfigError(f"method.activation: unknown activation {self.activation!r}; e.g. relu, gelu, silu, tanh")


def attention_output(block: nn.Module, hidden: int) -> str | None:
    """Name (within ``block``) of the attention output projection, or None: in the outermost module named after
    attention that holds a linear layer, the last one mapping to ``hidden`` features, by position (Phi-3 registers
    its ``o_proj`` before its fused ``qkv_proj``; GPT-NeoX's ``post_attention_layernorm``, before its ``attention``,
    holds none; ALBERT's attention sits one level down, in ``albert_layers.0``)."""
    for name, module in block.named_modules():
        leaf = name.rpartition(".")[2].lower()
        if "attn" in leaf or "attention" in leaf:
            names = [n for n, m in module.named_modules() if isinstance(m, LINEAR)]
            if names:
                to_hidden = [n for n in names if linear_features(module.get_submodule(n))[1] == hidden]
                return f"{name}.{(to_hidden or names)[-1]}"
    return None


def ffn_output(block: nn.Module, hidden: int) -> str | None:
    """Name (within ``block``) of the FFN down projection: the last linear layer mapping > hidden -> hidden."""
    found = None
    for name, module in block.named_modules():
        if isinstance(module, LINEAR):
            fan_in, fan_out = linear_features(module)
            if fan_out == hidden and fan_in > hidden:
                found = name
    return found


class Adapter(nn.Module):
    """down (hidden -> bottleneck) -> activation -> up (bottleneck -> hidden); up starts at zero."""

    def __init__(self, hidden: int, bottleneck: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.act = ACT2FN[activation]
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.normal_(self.down.weight, std=1e-2)  # Houlsby et al.: near-identity initialisation
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:  # (batch, seq, hidden) -> (batch, seq, hidden)
        return self.up(self.act(self.down(y)))


class AdapterLayer(Wrapper):
    """A frozen projection followed by an adapter with its own residual: ``y + adapter(y)``."""

    def __init__(self, base: nn.Module, bottleneck: int, activation: str) -> None:
        super().__init__()
        self.base = base
        hidden = linear_features(base)[1]
        self.adapter = Adapter(hidden, bottleneck, activation).to(base.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, seq, in) -> (batch, seq, hidden)
        y = self.base(x)
        # Frozen weights may be bf16 while the adapter is fp32: compute in the adapter's dtype (or autocast's).
        return y + self.adapter(y.to(self.adapter.down.weight.dtype)).to(y.dtype)


def apply(model: nn.Module, config: Config) -> nn.Module:
    """Wrap the attention/FFN output projections of every block; the new adapters train (and, with
    ``train_layernorms``, the blocks' norm layers)."""
    if any(isinstance(m, AdapterLayer) for m in model.modules()):
        raise ConfigError("method: the model already has adapters; apply the adapter method once")
    hidden = hidden_size(model)
    bottleneck = config.bottleneck_size or hidden // config.reduction_factor
    if not bottleneck:
        refuse(f"method.reduction_factor={config.reduction_factor} leaves no bottleneck on a {hidden}-wide model "
               f"({hidden} // {config.reduction_factor} = 0): use at most {hidden}, or set method.bottleneck_size")
        bottleneck = 1  # a run saved before the refusal trained with one unit
    for where, block in blocks(model):  # an encoder-decoder's encoder and decoder blocks alike
        targets = {"FFN output": ffn_output(block, hidden)}
        if config.variant == "houlsby":
            targets["attention output"] = attention_output(block, hidden)
        missing = [what for what, name in targets.items() if name is None]
        if missing:
            raise ConfigError(
                f"method: cannot find the {missing[0]} projection in {where} ({type(block).__name__}); "
                "adapters support BERT-, Llama- and GPT-2-style blocks"
            )
        for name in targets.values():
            replace(block, name, AdapterLayer(block.get_submodule(name), bottleneck, config.activation))
        if config.train_layernorms:
            for module in block.modules():
                if is_norm(module):
                    for p in module.parameters():
                        p.requires_grad_(True)
    return model
