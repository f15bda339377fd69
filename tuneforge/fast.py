"""Cheaper training steps, each equivalent to the plain path (tests/test_fast.py):

- **dropout masks from 16-bit integers** (CPU): four uniform 16-bit draws per random int64 compared with the
  drop threshold, instead of a float Bernoulli draw per element; the keep probability is resolved to 1/65,536.
  A (16, 32, 384) MiniLM hidden-state dropout costs 0.9 ms instead of 2.7 ms on 2 threads (AMD EPYC); CUDA's
  own dropout is already cheap and is kept there. The comparison writes the mask in the activations' dtype
  directly (a (32, 26, 384) mask, draws included: 0.58 -> 0.37 ms in float32, 0.71 -> 0.40 ms in bf16, 1 thread, Xeon);
- **attention dropout from the same masks** (CPU): transformers' ``sdpa`` attention with dropout runs torch's
  math kernel, which draws a float Bernoulli per attention weight; in training a plain encoder's attention (no
  GQA, not causal) computes its weights as transformers' eager attention does (bf16 matmuls under autocast,
  float32 softmax) and drops them with :func:`dropout_scale` (a MiniLM training step: 6.6 % faster, bf16, AMD EPYC);
- **gradient clipping inside the fused AdamW kernel**: the total norm is measured as usual and the kernel
  divides each gradient by ``1 / clip coefficient`` (its ``grad_scale``) as it reads it, sparing a separate
  pass that rescales every gradient in memory;
- **a sparse input-embedding gradient** (CPU, one process, untied embedding being trained): the embedding's
  backward yields only the rows its batch looked up, which are added into a gradient buffer kept across steps
  (only the previous step's rows are zeroed first), instead of a fresh dense (vocabulary, hidden) gradient
  zero-filled every step (MiniLM's 30,522 x 384: 15.6 ms -> 0.4 ms per step, 2 threads, AMD EPYC); with no
  weight decay the optimizer steps only the rows the training data holds (:mod:`tuneforge.embedding_rows`);
- **no stored attention weights for packed rows** (CPU, float32): a causal LM loaded with eager attention
  (faster on short padded rows) trains padding-free rows through ``sdpa``, whose CPU kernel keeps no (T, T)
  weights for the backward (:func:`packed_attention`);
- **fewer page faults**: glibc's heap grows and is trimmed in 64 MiB steps (``M_TOP_PAD``), so each step's
  large temporaries reuse pages instead of faulting in fresh zeroed ones from the kernel (50 full MiniLM
  steps: 835k -> 286k minor faults, system CPU time 4.1 -> 1.9 s; peak RSS within 30 MiB).
"""
from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

ATTENTION = "tuneforge_sdpa"  # transformers' sdpa, attention dropout by dropout_scale in CPU training
UNSUPPORTED = ("position_bias", "softcap", "sliding_window", "s_aux")  # attention kwargs left to sdpa
M_TOP_PAD = -2  # glibc mallopt parameter
TOP_PAD_BYTES = 64 << 20


def tune_allocator() -> bool:
    """Grow and trim glibc's heap in 64 MiB steps; False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_TOP_PAD, TOP_PAD_BYTES))
    except (OSError, AttributeError):
        return False


def dropout_scale(x: torch.Tensor, p: float) -> torch.Tensor:
    """A dropout mask shaped like ``x`` in ``x``'s dtype: each element kept with probability ``1 - p`` (resolved to
    1/65,536) and then ``1 / (1 - p)``, else 0. The comparison writes straight into that dtype (a bool mask
    converted afterwards cost a third more)."""
    n = x.numel()
    words = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)  # (ceil(n/4),)
    bits = words.view(torch.int16)[:n].view(x.shape)  # uniform over [-32768, 32767]
    kept = torch.ge(bits, round(p * 65536) - 32768, out=torch.empty(x.shape, dtype=x.dtype, device=x.device))
    return kept.mul_(1.0 / (1.0 - p))


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with masks from :func:`dropout_scale`; same ``p``, same scaling of kept values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p >= 1:
            return x * 0
        return x * dropout_scale(x, self.p)


@contextlib.contextmanager
def fast_dropout(model: nn.Module, device: torch.device) -> Iterator[int]:
    """Within the block, every ``nn.Dropout`` of ``model`` with ``p > 0`` is a :class:`FastDropout` (on a CPU;
    elsewhere nothing changes); the original modules are put back afterwards. Yields how many were swapped."""
    swapped = []
    if device.type == "cpu":
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Dropout and child.p > 0:
                    fast = FastDropout(child.p)
                    fast.train(child.training)
                    setattr(parent, name, fast)
                    swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            child.train(getattr(parent, name).training)
            setattr(parent, name, child)


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa`` attention, except for a plain encoder's attention with dropout on a CPU: weights as
    eager attention computes them, dropped with :func:`dropout_scale`. query ``(B, heads, Tq, d)``, key/value
    ``(B, heads, Tk, d)`` -> ``((B, Tq, heads, d), None)``."""
    if (not dropout or query.device.type != "cpu" or key.shape[1] != query.shape[1] or kwargs.get("is_causal")
            or getattr(module, "is_causal", False) or kwargs.get("output_attentions")
            or any(kwargs.get(k) is not None for k in UNSUPPORTED)):
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, dropout=dropout,
                                               scaling=scaling, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    weights = torch.matmul(query, key.transpose(2, 3)) * scale  # (B, heads, Tq, Tk)
    if attention_mask is not None:  # bool: True attends (as sdpa); float: added (as eager)
        weights = (weights.masked_fill(~attention_mask, torch.finfo(weights.dtype).min)
                   if attention_mask.dtype == torch.bool else weights + attention_mask)
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32)
    weights = weights * dropout_scale(weights, dropout)
    out = torch.matmul(weights.to(value.dtype), value)  # (B, heads, Tq, d)
    return out.transpose(1, 2).contiguous(), None


def attention_configs(model: nn.Module, implementation: str) -> list[Any]:
    """The distinct configs of ``model``'s modules that select ``implementation`` of attention."""
    found = {id(m.config): m.config for m in model.modules()
             if getattr(getattr(m, "config", None), "_attn_implementation", None) == implementation}
    return list(found.values())


def bytecode(function: Any) -> tuple | None:
    """A function's instructions, constants and names (None for what has no code): equal for transformers'
    "Copied from" functions, so a model file's function can be recognised as another's."""
    code = getattr(function, "__code__", None)
    return None if code is None else (code.co_code, code.co_consts, code.co_names)


_ABSENT = object()


@contextlib.contextmanager
def patched(name: str, values: list[tuple[Any, Any]]) -> Iterator[int]:
    """Within the block, attribute ``name`` of each object of ``values`` (object, value) is that value; after it,
    what the object's own attributes held before (one they did not hold, e.g. an ``nn.Module``'s ``forward``, is
    removed again, so the class's shows through). Yields how many objects were patched."""
    before = [(obj, vars(obj).get(name, _ABSENT)) for obj, _ in values]
    for obj, value in values:
        setattr(obj, name, value)
    try:
        yield len(values)
    finally:
        for obj, value in before:
            if value is _ABSENT:
                delattr(obj, name)
            else:
                setattr(obj, name, value)


@contextlib.contextmanager
def select_attention(configs: list[Any], implementation: str) -> Iterator[int]:
    """Within the block, ``configs`` select ``implementation`` of attention; each is restored after (a config
    keeps it in a property, not in its own attributes as :func:`patched` requires). Yields how many were
    switched."""
    before = [config._attn_implementation for config in configs]
    for config in configs:
        config._attn_implementation = implementation
    try:
        yield len(configs)
    finally:
        for config, implementation_before in zip(configs, before):
            config._attn_implementation = implementation_before


def packed_attention(model: nn.Module, device: torch.device, packed: bool,
                     bf16: bool) -> contextlib.AbstractContextManager[int]:
    """Within the block, on a CPU training packed (padding-free) rows in float32, configs that select eager
    attention (``causal_lm`` loads short-row models so: faster on padded rows) select transformers' ``sdpa``.
    Eager keeps each layer's ``(rows, heads, T, T)`` attention weights for the backward, mostly masked out in a
    row of several examples; torch's CPU flash kernel keeps none. SmolLM2 LoRA, 16 pairs per step, fp32, 1
    thread: peak RSS 200-340 MiB lower at the same speed and test perplexity. Not under bf16 autocast, where
    SDPA's backward on packed rows was slower (SmolLM2 full fine-tuning, Intel Xeon: 0.83 -> 1.09 s).
    Only models whose class supports SDPA switch (Gemma 2's soft-capped attention and BLOOM's ALiBi do not: under
    an ``sdpa`` config BLOOM builds no causal mask). Yields how many configs were switched."""
    if not packed or bf16 or device.type != "cpu":
        return select_attention([], "sdpa")
    unsupported = {id(m.config) for m in model.modules()
                   if isinstance(m, PreTrainedModel) and not getattr(type(m), "_supports_sdpa", False)}
    return select_attention([c for c in attention_configs(model, "eager") if id(c) not in unsupported], "sdpa")


def fast_attention(model: nn.Module, device: torch.device) -> contextlib.AbstractContextManager[int]:
    """Within the block, ``model``'s configs that select transformers' ``sdpa`` attention select
    :func:`attention` (on a CPU; elsewhere nothing changes). Yields how many configs were switched."""
    configs = attention_configs(model, "sdpa") if device.type == "cpu" else []
    if configs and ATTENTION not in ALL_ATTENTION_FUNCTIONS:  # masks built as for sdpa (unregistered: none at all)
        AttentionInterface.register(ATTENTION, attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return select_attention(configs, ATTENTION)


class KeptGradient:
    """Post-accumulate-grad hook of an embedding weight whose module returns sparse gradients: a sparse
    ``.grad`` (the rows looked up, duplicates summed by ``index_add_``) becomes the kept dense buffer, equal to
    the dense gradient of a non-sparse embedding. Any other gradient is left as it is."""

    def __init__(self, weight: nn.Parameter) -> None:
        self.buffer: torch.Tensor | None = None  # (vocabulary, hidden), like the weight
        self.rows: torch.Tensor | None = None  # rows of the buffer that may be non-zero; None: any of them
        self.handle = weight.register_post_accumulate_grad_hook(self)

    def remove(self) -> None:
        self.handle.remove()

    def __call__(self, weight: nn.Parameter) -> None:
        grad = weight.grad
        if grad is self.buffer:  # a later micro-batch was added into it: any row may be non-zero now
            self.rows = None
            return
        if grad is None or not grad.is_sparse:
            return
        if self.buffer is None:
            self.buffer = torch.zeros_like(weight)
        elif self.rows is None:
            self.buffer.zero_()
        else:
            self.buffer.index_fill_(0, self.rows, 0)
        self.rows = grad._indices()[0]  # (looked-up tokens,)
        self.buffer.index_add_(0, self.rows, grad._values())  # values: (looked-up tokens, hidden)
        weight.grad = self.buffer


def trained_embedding(model: nn.Module) -> nn.Embedding | None:
    """``model``'s input embedding where it is a plain ``nn.Embedding`` being trained whose weight no other
    module shares (a tied LM head reads it densely); else None."""
    try:
        emb = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if type(emb) is not nn.Embedding or not emb.weight.requires_grad or emb.sparse:
        return None
    uses = sum(p is emb.weight for _, p in model.named_parameters(remove_duplicate=False))
    return emb if uses == 1 else None


@contextlib.contextmanager
def sparse_embedding_gradient(model: nn.Module, device: torch.device, processes: int,
                              hook: Any = KeptGradient) -> Iterator[Any]:
    """Within the block, the trained input embedding of ``model`` (:func:`trained_embedding`) has sparse
    gradients, which ``hook(weight)`` takes in: by default a kept dense buffer (:class:`KeptGradient`), or the
    optimizer's stand-in of the trained rows (:class:`tuneforge.embedding_rows.TrainedRows`). On a CPU in one
    process (DDP/FSDP reduce dense gradients); elsewhere nothing changes. Yields the hook, or None."""
    emb = trained_embedding(model) if device.type == "cpu" and processes == 1 else None
    kept = None
    if emb is not None:
        emb.sparse, kept = True, hook(emb.weight)
    try:
        yield kept
    finally:
        if kept is not None:
            emb.sparse = False
            kept.remove()


def clip_gradients(params: list[nn.Parameter], max_norm: float, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """``clip_grad_norm_(params, max_norm)``; with a fused optimizer that accepts ``grad_scale`` (AdamW/Adam)
    the rescaling happens inside its next ``step``. Returns the total norm before clipping."""
    if not optimizer.defaults.get("fused"):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)  # what clip_grad_norm_ multiplies the gradients by
    optimizer.grad_scale = coef.reciprocal().to(torch.float32)  # the kernel divides each gradient by it
    return total
