"""IA3: learned vectors (initialised to 1) that rescale the attention keys and values and the FFN
intermediate activation (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper
than In-Context Learning", arXiv 2205.05638). At initialisation the model is exactly the base model.

``l_k``/``l_v`` multiply the outputs of the key/value projections (BERT ``key``/``value``, Llama
``k_proj``/``v_proj``, DistilBERT ``k_lin``/``v_lin``; of a fused projection only the key and value outputs: the
k and v slices of GPT-2's ``c_attn`` and Phi-3's ``qkv_proj``, ``[q | k | v]``, and the k and v parts of each head
or group in GPT-NeoX's, BLOOM's and Falcon's ``query_key_value``); ``l_ff`` multiplies the input of the FFN down
projection (found structurally, see :func:`tuneforge.methods.adapter.ffn_output`). Key/value projections are
recognised by a small table of module names (below). Mergeable: ``merge`` scales the weights and unwraps.

PEFT differs in its default targets: for GPT-2 it scales the whole ``c_attn`` output (queries too) and for
BERT it also scales the input of ``attention.output.dense`` (its ``output.dense`` pattern matches both).
``to_peft`` therefore writes explicit targets: module-name suffixes where they select exactly the wrapped
projections (Llama ``k_proj``/``v_proj``/``down_proj``; GPT-2 ``attn.c_attn``/``mlp.c_proj``), else a regex
PEFT full-matches (BERT: ``output.dense`` inside the blocks but not ``attention.output.dense``); a fused
projection's vector becomes a full-width one with ones on the queries. The export reproduces the logits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from tuneforge.config import ConfigError
from tuneforge.methods import peft_format
from tuneforge.methods.adapter import ffn_output
from tuneforge.methods.layers import (LINEAR, Wrapper, attention_heads, blocks, hidden_size, linear_features,
                                      replace, untie)

# classification: lr x 3 was validation's pick on all three tasks measured (Rotten Tomatoes, tweets, topics at 500
# examples: +4.8, +2.5, +4.2 test points over 3e-3, topics at the earlier 10-epoch cap; docs/benchmarks.md,
# "LoRA over three training seeds, LoRA's shape, and the other methods on tweets"); causal LM (ChatterBot SFT at
# 500 pairs, bf16): 9e-3 was validation's pick among 3e-3 / 9e-3 / 2.7e-2, test perplexity 10.68 / 10.23 / 10.47
# (docs/benchmarks.md, "... the other methods on ChatterBot SFT"); token classification keeps 3e-3 (WNUT-16: x 3
# lost on validation)
TRAIN_DEFAULTS = {"lr": {"default": 9e-3, "token_classification": 3e-3}}

TARGETS = ("keys", "values", "ffn")
KEY_NAMES = ("key", "k_proj", "k", "key_proj", "k_lin")  # separate key projections
VALUE_NAMES = ("value", "v_proj", "v", "value_proj", "v_lin")  # separate value projections
FUSED_QKV_NAMES = ("c_attn", "qkv_proj")  # fused projections laid out as [q | k | v] (GPT-2; Phi-3, k and v
#                                          narrower than q under grouped-query attention)
INTERLEAVED_QKV_NAMES = ("query_key_value",)  # q, k, v per head or group (GPT-NeoX, BLOOM, Falcon: _kv_index)
FUSED_LAYOUTS = {  # model type -> roles of a fused projection's head-wide parts, where not [q | k | v]
    "codegen": lambda heads, kv_heads: ("q" * (heads // 4) + "v" * (heads // 4) + "k" * (heads // 4)) * 4,  # 4 blocks
    "minimax": lambda heads, kv_heads: "qkv" * heads,  # its lightning attention's qkv_proj: q k v per head
}


@dataclass
class Config:
    targets: list[str] = field(default_factory=lambda: list(TARGETS))  # what to rescale: keys, values, ffn

    def __post_init__(self) -> None:
        bad = [t for t in self.targets if t not in TARGETS]
        if bad:
            raise ConfigError(f"method.targets: unknown target {bad[0]!r}; choose from keys, values, ffn")
        if not self.targets:
            raise ConfigError("method.targets must name at least one of keys, values, ffn")


class IA3Layer(Wrapper):
    """A frozen projection whose outputs at ``index`` (None: all of them) -- or whose input -- are multiplied by
    a learned vector ``ia3`` of length n (ones at initialisation)."""

    def __init__(self, base: nn.Module, size: int, index: torch.Tensor | None = None, on_input: bool = False) -> None:
        super().__init__()
        self.base, self.on_input = base, on_input
        self.ia3 = nn.Parameter(torch.ones(size, device=base.weight.device))  # (n,)
        self.register_buffer("index", None if index is None else index.to(base.weight.device), persistent=False)

    @property
    def start(self) -> int:
        """The first scaled output position."""
        return 0 if self.index is None else int(self.index[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, seq, in) -> (batch, seq, out)
        if self.on_input:
            return self.base(x * self.ia3.to(x.dtype))
        y = self.base(x)
        scale = self.ia3.to(y.dtype)  # keep the frozen path's dtype (bf16 storage / autocast)
        if self.index is not None:  # (out,): ones where queries are (a fused projection)
            scale = torch.ones(y.shape[-1], dtype=y.dtype, device=y.device).index_copy(0, self.index, scale)
        return y * scale

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The base projection with the scaling folded into its weight (and bias)."""
        w, b = self.base.weight, getattr(self.base, "bias", None)
        s = self.ia3.float()
        out_dim = 1 if isinstance(self.base, Conv1D) else 0  # Conv1D weight is (in, out)
        dim = 1 - out_dim if self.on_input else out_dim
        index = self.index if self.index is not None else torch.arange(s.shape[0], device=w.device)
        shape = [1, 1]
        shape[dim] = -1
        new_w = w.float()
        new_w.index_copy_(dim, index, new_w.index_select(dim, index) * s.view(shape))
        w.copy_(new_w.to(w.dtype))
        if b is not None and not self.on_input:
            b[index] = (b[index].float() * s).to(b.dtype)
        return self.base


def _kv_index(config: Any, hidden: int, leaf: str, fan_out: int, wanted: list[str]) -> torch.Tensor | None:
    """The output positions of the keys and/or values (as ``wanted``) in a fused query/key/value projection, from
    the order of its head-wide parts: ``[q | k | v]`` (GPT-2's ``c_attn``, Phi-3's ``qkv_proj``; three equal parts
    where the config names no heads; ``FUSED_LAYOUTS``: CodeGen's four ``[q | v | k]`` blocks), per head ``q k v``
    (GPT-NeoX's and BLOOM's ``query_key_value``), per key/value group its queries then ``k v`` (Falcon-40B), all
    queries then one ``k v`` (Falcon-7B)."""
    shape = attention_heads(config, hidden)
    heads, kv_heads, d = shape if shape else (1, 1, fan_out // 3)
    if leaf in FUSED_QKV_NAMES:
        layout = FUSED_LAYOUTS.get(getattr(config, "model_type", ""))
        roles = layout(heads, kv_heads) if layout else "q" * heads + "k" * kv_heads + "v" * kv_heads
        if len(roles) * d != fan_out:
            roles, d = "qkv", fan_out // 3
    elif getattr(config, "new_decoder_architecture", False):
        groups = getattr(config, "num_kv_heads", None) or heads
        roles = ("q" * (heads // groups) + "kv") * groups
    elif getattr(config, "multi_query", False):
        roles = "q" * heads + "kv"
    else:
        roles = "qkv" * heads
    if len(roles) * d != fan_out:
        return None
    keep = {role for role, target in (("k", "keys"), ("v", "values")) if target in wanted}
    units = torch.tensor([i for i, r in enumerate(roles) if r in keep])
    return (units[:, None] * d + torch.arange(d)).flatten()  # (n,)


def _targets(model: nn.Module, block: nn.Module, hidden: int, wanted: list[str]
             ) -> list[tuple[str, int, torch.Tensor | None, bool]]:
    """``(name, size, index, on_input)`` for every projection of ``block`` to wrap (:class:`IA3Layer`)."""
    out = []
    for name, module in block.named_modules():
        leaf = name.rpartition(".")[2]
        if not isinstance(module, LINEAR):
            continue
        fan_out = linear_features(module)[1]
        if ("keys" in wanted and leaf in KEY_NAMES) or ("values" in wanted and leaf in VALUE_NAMES):
            out.append((name, fan_out, None, False))
        elif leaf in FUSED_QKV_NAMES + INTERLEAVED_QKV_NAMES and {"keys", "values"} & set(wanted):
            index = _kv_index(model.config, hidden, leaf, fan_out, wanted)
            if index is not None:
                out.append((name, index.numel(), index, False))
    if "ffn" in wanted:
        down = ffn_output(block, hidden)
        if down is not None:
            out.append((down, linear_features(block.get_submodule(down))[0], None, True))
    return out


def apply(model: nn.Module, config: Config) -> nn.Module:
    """Wrap key/value projections and FFN down projections; only the ``ia3`` vectors train."""
    if any(isinstance(m, IA3Layer) for m in model.modules()):
        raise ConfigError("method: the model already has IA3 vectors; apply the ia3 method once")
    hidden = hidden_size(model)
    for where, block in blocks(model):  # an encoder-decoder's encoder and decoder blocks alike
        targets = _targets(model, block, hidden, config.targets)
        n_attn = sum(not on_input for *_, on_input in targets)
        want_attn = {"keys", "values"} & set(config.targets)
        if (want_attn and n_attn == 0) or ("ffn" in config.targets and n_attn == len(targets)):
            linear = sorted({n.rpartition(".")[2] for n, m in block.named_modules() if isinstance(m, LINEAR)})
            kv = want_attn and n_attn == 0
            raise ConfigError(
                f"method.targets: cannot find the {'key/value' if kv else 'FFN down'} projections in "
                f"{where} ({type(block).__name__}; linear layers: {', '.join(linear)})"
                + ("; method.targets=[ffn] scales only the FFN" if kv and "ffn" in config.targets else "")
            )
        for name, size, index, on_input in targets:
            replace(block, name, IA3Layer(block.get_submodule(name), size, index, on_input))
    return model


def merge(model: nn.Module) -> nn.Module:
    """Fold every IA3 vector into its projection's weight and unwrap, leaving a plain model."""
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, IA3Layer)]:
        untie(model, module.base)  # a tied output layer: its scaling leaves the input embedding as it was
        replace(model, name, module.merged())
    return model


def to_peft(model: nn.Module, config: Config, task_type: str, modules_to_save: list[str]
            ) -> tuple[dict, dict[str, torch.Tensor]]:
    """The vectors in PEFT 0.21's IA3 format: (``adapter_config.json`` dict, tensors keyed
    ``base_model.model.<module>.ia3_l``, output-side ``(out, 1)``, FFN input-side ``(1, in)``; heads as
    ``modules_to_save``). The caller adds ``base_model_name_or_path``."""
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, IA3Layer)]
    if not wrapped:
        raise ConfigError("the model holds no IA3 vectors to export (merged already?)")
    names = [n for n, _ in wrapped]
    targets = peft_format.target_modules(model, names)
    tensors = {}
    for name, m in wrapped:
        vec = m.ia3.detach().float()
        if m.on_input:
            vec = vec.view(1, -1)  # (1, in)
        else:  # a fused projection's keys and values: ones on its queries
            full = torch.ones(linear_features(m.base)[1], device=vec.device)
            full[m.index if m.index is not None else slice(None)] = vec
            vec = full.view(-1, 1)  # (out, 1)
        tensors[f"{peft_format.LAYER_TUNER}{name}.ia3_l"] = vec
    tensors |= peft_format.head_tensors(model, modules_to_save, peft_format.LAYER_TUNER)
    adapter_config = {
        "peft_type": "IA3", "task_type": task_type, "target_modules": targets,
        "feedforward_modules": peft_format.feedforward_modules(targets, names, [n for n, m in wrapped if m.on_input]),
        "fan_in_fan_out": all(isinstance(m.base, Conv1D) for _, m in wrapped), "init_ia3_weights": True,
        "modules_to_save": list(modules_to_save) or None, "inference_mode": True,
    }
    return adapter_config, tensors
