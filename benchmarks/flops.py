"""Model FLOPs utilisation (MFU) for the benchmarks: training FLOPs per real token from the model's shapes,
and the machine's matrix-multiply rate measured in the same sitting. Every benchmark counts FLOPs here, so
every row of every table uses one convention.

Convention (the same for tuneforge and Trainer rows: it counts the model's *useful* work, not what a
framework happens to compute, so MFU ratios equal tokens/s ratios):

* **forward, per example of n real tokens**
  - blocks: 2 x P_blocks x n, where P_blocks = weights of every ``nn.Linear`` / GPT-2 ``Conv1D`` inside the
    transformer blocks (embeddings, norms, biases and element-wise work are not counted);
  - attention scores and values: 2 x 2 x n x d_attn per token per layer (QK^T and AV; d_attn = heads x
    head_dim, all query heads), i.e. 4 x n^2 x d_attn per example per layer, with n the example's own length
    (padding-free: no attention across examples or to padding). Summed over examples this is "seq = the
    token-weighted mean example length" (sum n^2 / sum n). Counted in full (not halved for causal masks);
  - head: 2 x P_head per head position, where P_head = weights of the Linear/Conv1D modules outside the
    blocks (LM head; pooler + classifier). Head positions: for a causal LM only the trained (answer) tokens
    (tuneforge computes logits only there; that is counted as the useful work on *both* sides, even where
    Trainer computes logits at every position); for sequence classification one per example;
  - LoRA adapters: 2 x r x (in + out) per token for every adapted Linear in the blocks (an adapter on the
    per-example pooler is left out: < 0.01 %).
* **training = forward + backward**
  - full fine-tuning: backward = 2 x forward (activation and weight gradients) -> 3 x forward in all;
  - LoRA (frozen base): frozen matmuls (blocks, head) need activation gradients only -> 2 x their forward;
    the adapters and the attention score/value products (no weights; gradients of both operands) -> 3 x.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CONVENTION = (
    "training FLOPs per real token from the model's shapes: forward = 2 x (Linear/Conv1D weights in the blocks) "
    "per token + 2 x 2 x n x d_attn per layer per token for attention scores/values (n = the example's own "
    "length) + 2 x (head weights) at head positions only (LM head: trained answer tokens, the useful work "
    "counted identically for both sides; classifier + pooler: one per example) + 2 x r x (in + out) per "
    "adapted Linear for LoRA; training = 3 x forward for full fine-tuning, 2 x forward for LoRA's frozen "
    "matmuls (activation gradients only) and 3 x for adapters and attention products; embeddings, norms, "
    "biases and element-wise work are not counted (benchmarks/flops.py)")


@dataclass
class Shapes:
    """What the FLOP count needs of a model, read from its modules (no weights loaded)."""
    block_matmul_params: int  # Linear/Conv1D weights inside the transformer blocks
    head_matmul_params: int  # Linear/Conv1D weights outside the blocks (LM head, pooler, classifier)
    layers: int
    attention_width: int  # query heads x head_dim
    lora_params_per_rank: int  # sum of (in + out) over the blocks' Linear/Conv1D layers


def model_shapes(path: str | Path, auto_cls: Any, **kwargs: Any) -> Shapes:
    """Shapes of the Hugging Face model at ``path`` built by ``auto_cls.from_config`` on the meta device (no
    memory, no weights read). ``kwargs`` go to the config (e.g. ``num_labels``)."""
    import torch
    from transformers import AutoConfig
    from tuneforge.methods.layers import LINEAR, find_layers, linear_features

    config = AutoConfig.from_pretrained(str(path), **kwargs)
    with torch.device("meta"):
        model = auto_cls.from_config(config)
    blocks_name, blocks = find_layers(model)
    inside = {id(m) for m in blocks.modules()}
    block = head = per_rank = 0
    for module in model.modules():
        if not isinstance(module, LINEAR):
            continue
        fan_in, fan_out = linear_features(module)
        if id(module) in inside:
            block += fan_in * fan_out
            per_rank += fan_in + fan_out
        else:
            head += fan_in * fan_out
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head")
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return Shapes(block, head, len(blocks), heads * head_dim, per_rank)


def train_flops(shapes: Shapes, lengths: list[int], head_positions: list[int], method: str,
                rank: int = 0) -> dict[str, float]:
    """Training FLOPs of one pass over examples of real lengths ``lengths`` with ``head_positions`` head
    evaluations each (see the module docstring) -> totals by part and ``per_token`` (per real token)."""
    tokens = sum(lengths)
    squares = sum(n * n for n in lengths)
    fwd = {"blocks": 2.0 * shapes.block_matmul_params * tokens,
           "attention": 4.0 * shapes.attention_width * shapes.layers * squares,
           "head": 2.0 * shapes.head_matmul_params * sum(head_positions),
           "adapters": 2.0 * rank * shapes.lora_params_per_rank * tokens if method == "lora" else 0.0}
    if method == "full":
        train = {k: 3.0 * v for k, v in fwd.items()}
    elif method == "lora":
        train = {"blocks": 2.0 * fwd["blocks"], "head": 2.0 * fwd["head"], "attention": 3.0 * fwd["attention"],
                 "adapters": 3.0 * fwd["adapters"]}
    else:
        raise ValueError(f"no FLOP convention for method '{method}' (lora, full)")
    total = sum(train.values())
    return {"per_token": total / max(1, tokens), "forward_per_token": sum(fwd.values()) / max(1, tokens),
            "total_per_pass": total, "tokens_per_pass": tokens,
            "mean_length": tokens / max(1, len(lengths)), "attention_seq": squares / max(1, tokens),
            "head_positions_per_token": sum(head_positions) / max(1, tokens),
            **{f"share_{k}": v / total for k, v in train.items()}}


def per_token_table(shapes: Shapes, lengths: list[int], head_positions: list[int], methods: list[str],
                    rank: int) -> dict[str, Any]:
    """``train_flops`` for each method, plus the shapes (what a results file records)."""
    return {"shapes": asdict(shapes), "convention": CONVENTION,
            **{m: train_flops(shapes, lengths, head_positions, m, rank) for m in methods}}


def matmul_rate(dtype_name: str, device: str = "cpu", size: int = 2048, repeats: int = 5,
                budget_s: float = 20.0, max_product_s: float = 1.0) -> dict[str, Any]:
    """FLOP/s of ``size`` x ``size`` matrix products in ``dtype_name`` (bfloat16 / float32) with torch's current
    thread count: median over ``repeats`` timed samples (fewer, but at least 2, once ``budget_s`` has passed)
    after one warm-up. On a CPU without native bf16 (emulated: one 2048 product takes minutes) the size is
    halved until one product takes at most ``max_product_s``; the size used is recorded. On CUDA a sample is
    many products between synchronisations (about 50 ms)."""
    import torch

    dtype = getattr(torch, dtype_name)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    requested = size
    native = dev.type == "cuda" or dtype != torch.bfloat16 or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if not native:  # emulated bf16 (no AVX512-BF16/AMX) runs at ~0.1-1 GFLOP/s: a 2048 product would take
        small = torch.randn(256, 256).to(dtype)  # minutes, so shrink until one product takes <= max_product_s
        seconds_256 = float("inf")
        for _ in range(2):
            t = time.perf_counter()
            torch.mm(small, small)
            seconds_256 = min(seconds_256, time.perf_counter() - t)
        while size > 256 and seconds_256 * (size / 256) ** 3 > max_product_s:
            size //= 2
    a = torch.randn(size, size, device=dev).to(dtype)
    b = torch.randn(size, size, device=dev).to(dtype)
    per_sample = 1
    torch.mm(a, b)
    sync()
    if dev.type == "cuda":  # aim at ~50 ms per sample
        t = time.perf_counter()
        for _ in range(10):
            torch.mm(a, b)
        sync()
        per_sample = max(1, int(0.05 / max(1e-6, (time.perf_counter() - t) / 10)))
    rates, started = [], time.perf_counter()
    for i in range(repeats):
        t = time.perf_counter()
        for _ in range(per_sample):
            torch.mm(a, b)
        sync()
        rates.append(2.0 * size ** 3 * per_sample / (time.perf_counter() - t))
        if i >= 1 and time.perf_counter() - started > budget_s:
            break
    return {"dtype": dtype_name, "size": size, "requested_size": requested, "native": native, "samples": len(rates),
            "flops": statistics.median(rates), "min": min(rates), "max": max(rates),
            "threads": torch.get_num_threads(), "device": device}


def matmul_rates(device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """bf16 and fp32 matmul rates in this process (one sitting), e.g. ``{"bfloat16": {...}, "float32": {...}}``."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return {name: matmul_rate(name, device) for name in ("bfloat16", "float32")}


def pooled_rates(probes: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The highest FLOP/s per dtype over several probes of one invocation (before, between and after the runs;
    the median and min-max beside it), so MFU uses the machine's rate of the same sitting: the highest, so a
    probe slowed by noise never raises MFU."""
    out = {}
    for name in ("bfloat16", "float32"):
        values = [p[name]["flops"] for p in probes if name in p]
        if values:
            last = [p[name] for p in probes if name in p][-1]
            out[name] = {"flops": max(values), "median": statistics.median(values), "min": min(values), "max": max(values),
                         "probes": len(values), "size": last["size"], "native": last["native"]}
    return out


if __name__ == "__main__":  # python benchmarks/flops.py [THREADS] [cuda]: this machine's matmul rates now
    import json
    import sys

    print(json.dumps(matmul_rates("cuda" if "cuda" in sys.argv[2:] else "cpu",
                                  int(sys.argv[1]) if len(sys.argv) > 1 else None), indent=2))
