"""A/B probe of one of tuneforge's CPU code paths: runs as tuneforge trains against runs with one path switched
(the variant), side by side on the two cores (1 thread each, the variant's process started first in odd rounds),
over several rounds. Prints each run's real tokens/s, peak RSS and test metric, then the medians.

Variants (what the switched runs do instead of tuneforge's own path):
  packed-eager  packed causal-LM rows through eager attention, not SDPA (``fast.packed_attention``; float32)
  lora-plain    LoRA layers as ``base(x) + s * B(A(x))`` with autograd's backward, not ``lora_layer.LoRAProduct``
  lora-rows     LoRA's rank-wide products as ``(r, tokens)`` rows in every dtype (``lora_layer.rank_columns`` False)
  lora-unstacked  LoRA layers that read one input (q/k/v, gate/up) computed one by one, not together
                (``lora_stack.shared_inputs``)
  rounded       batch lengths rounded as oneDNN's kernel cache wants them (padded x 4, packed x 16)
  unrounded     batch lengths not rounded (``batching.Shapes()``)
  head-plain    the LM head's logits and cross-entropy over every answer row at once, not ``lm_head.head_nll``
  rms-fp32      frozen RMSNorm weights left in float32 by ``models.store_frozen_in_bf16`` (bf16 runs)
  eager-plain   transformers' own eager attention, not ``grouped_attention.attention``
  rms-plain     transformers' own RMSNorm forward and autograd backward, not ``rms_norm.RMSNormFunction``
  rotary-plain  transformers' own rotary embedding, not ``rotary.apply_rotary_pos_emb``
  plain-layers  all three of the last: eager attention, RMSNorm and rotary embedding as transformers runs them
  embedding-all  the optimizer steps every row of a trained input embedding (``fast.KeptGradient``), not only the
                rows the training data can reach (``embedding_rows.TrainedRows``)
  random-first  length-grouped epochs in shuffled batch order alone, not starting with the longest example's batch
                (``batching.LONGEST_FIRST``)
  mmap-<bytes>  glibc's mmap threshold fixed at <bytes> (``mallopt(M_MMAP_THRESHOLD)``; e.g. mmap-131072): larger
                buffers are mapped and unmapped each time instead of reused from the heap
  trim-<MiB>    glibc's free heap returned to the system (``malloc_trim(0)``) after each optimizer step where it holds
                more than <MiB> (``mallinfo2().fordblks``; e.g. trim-320)

Workloads: ``chat`` (SmolLM2 on the demo-chat pairs, 16 per step, lr 2e-3), ``classification`` (MiniLM on the
demo's Rotten Tomatoes sentences, 32 per step, the default rate) and ``ner`` (MiniLM on the WNUT-16 tweets, 16 per
step, the default rate); LoRA unless ``--method full``; AdamW with ``--weight-decay`` (default 0, tuneforge's).

    python benchmarks/path_probe.py --variant packed-eager --rounds 3          # results/packed-attention-probe.md
    python benchmarks/path_probe.py --variant lora-plain --workload classification --precision bf16 --steps 100
    python benchmarks/path_probe.py --variant embedding-all --workload ner --method full --weight-decay 0.01 --steps 120
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WORKLOADS = {
    "chat": {"model": {"name": "smollm2", "task": "causal_lm", "max_length": 64},
             "data": {"dataset": "chatterbot", "system_prompt": "Reply briefly.", "split": [0.8, 0.1, 0.1], "seed": 42},
             "train": {"lr": 2e-3, "batch_size": 16}, "eval": {"generate_samples": 0}},
    "classification": {"model": {"name": "minilm", "task": "classification", "max_length": 64},
                       "data": {"dataset": "rotten_tomatoes", "split": [0.8, 0.1, 0.1], "seed": 42},
                       "train": {"batch_size": 32}, "eval": {}},
    "ner": {"model": {"name": "minilm", "task": "token_classification", "max_length": 64},
            "data": {"dataset": "wnut16", "split": [0.8, 0.1, 0.1], "seed": 42},
            "train": {"batch_size": 16}, "eval": {}},
}
METRIC = {"chat": "perplexity", "classification": "accuracy", "ner": "f1"}
TOOL = "tuneforge"
VARIANTS = ("packed-eager", "lora-plain", "lora-rows", "lora-unstacked", "rounded", "unrounded", "head-plain",
            "rms-fp32", "eager-plain", "rms-plain", "rotary-plain", "plain-layers",
            "embedding-all", "random-first")  # and mmap-<bytes>, trim-<MiB>
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def switch(variant: str) -> None:
    """Patch this process so that training takes the variant's path."""
    import torch

    from tuneforge import fast
    from tuneforge.data.batching import Shapes
    from tuneforge.methods.lora_layer import LoRALinear

    if variant == "packed-eager":
        fast.packed_attention = lambda model, device, packed, bf16: contextlib.nullcontext(0)
    elif variant == "lora-plain":
        LoRALinear._product_applies = lambda self: False
    elif variant == "lora-rows":
        from tuneforge.methods import lora_layer, lora_stack
        lora_layer.rank_columns = lora_stack.rank_columns = lambda dtype: False
    elif variant == "lora-unstacked":
        from tuneforge.methods import lora_stack
        lora_stack.shared_inputs = lambda model, sample, bf16: contextlib.nullcontext(0)
    elif variant in ("rounded", "unrounded"):
        rounded = variant == "rounded"
        Shapes.training = classmethod(lambda cls, max_length, *_, **__: cls(padded=4 if rounded else 1,
                                                                            packed=16 if rounded else 1,
                                                                            limit=max_length))
    elif variant == "head-plain":
        from tuneforge.tasks import lm_head
        lm_head.applies = lambda head: False
    elif variant == "rms-fp32":
        from tuneforge import run
        from tuneforge.methods.layers import is_rms_norm
        cast = run.store_frozen_in_bf16

        def linear_only(model):
            n = cast(model)
            for m in model.modules():
                if is_rms_norm(m) and m.weight.dtype == torch.bfloat16:
                    m.weight.data = m.weight.data.float()
            return n
        run.store_frozen_in_bf16 = linear_only
    elif variant in ("eager-plain", "rms-plain", "rotary-plain", "plain-layers"):
        from tuneforge import train
        names = {"eager-plain": "grouped_attention", "rms-plain": "fast_rms_norm", "rotary-plain": "fast_rotary"}
        for name in names.values() if variant == "plain-layers" else [names[variant]]:
            setattr(train, name, lambda model, device: contextlib.nullcontext(0))
    elif variant == "embedding-all":
        from tuneforge import train
        train.embedding_hook = lambda *_: fast.KeptGradient
    elif variant == "random-first":
        from tuneforge.data import batching
        batching.LONGEST_FIRST = False
    elif variant.startswith("mmap-"):
        import ctypes
        if not ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, int(variant[5:])):  # 0: refused
            raise SystemExit(f"mallopt refused {variant}")
    elif variant.startswith("trim-"):
        import ctypes
        libc = ctypes.CDLL("libc.so.6")

        class Info(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]
        libc.mallinfo2.restype = Info
        limit = int(variant[5:]) << 20
        trims = [0]

        def hook(opt, args, kwargs):
            if libc.mallinfo2().fordblks > limit:
                libc.malloc_trim(0)
                trims[0] += 1
        from torch.optim.optimizer import register_optimizer_step_post_hook
        register_optimizer_step_post_hook(hook)
        import atexit
        atexit.register(lambda: print("trims", trims[0], file=sys.stderr))
    elif variant != TOOL:
        raise SystemExit(f"unknown variant {variant!r}")


def run_one(variant: str, out: str, args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    from tuneforge.run import train

    switch(variant)
    w = WORKLOADS[args.workload]
    cfg = {**w, "method": {"name": args.method},
           "train": {**w["train"], "max_steps": args.steps, "precision": args.precision, "num_threads": 1,
                     "weight_decay": args.weight_decay},
           "eval": {**w["eval"], "before": False}, "forgetting": {"probes": ["none"]}, "output_dir": out}
    m = train(cfg, progress=False).metrics
    metric = METRIC[args.workload]
    print(json.dumps({"variant": variant, "tokens_per_second": m["tokens_per_second"],
                      "peak_memory_mb": m["peak_memory_mb"], "metric": m["test_after"][metric],
                      "padded_per_real": m["padded_tokens"] / m["real_tokens"], "precision": m["precision"]}))


def interleaved(commands: dict[str, Callable[[int], tuple[list[str], dict[str, str] | None]]],
                rounds: int) -> dict[str, list[dict]]:
    """Run each name's command (argv and environment for round r) once per round, all of them at the same time, the
    start order flipped every other round; each prints a JSON line last. Returns each name's lines, parsed."""
    rows: dict[str, list[dict]] = {k: [] for k in commands}
    for r in range(rounds):
        order = list(commands) if r % 2 else list(commands)[::-1]
        procs = {}
        for k in order:
            argv, env = commands[k](r)
            procs[k] = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        for k, p in procs.items():
            out, _ = p.communicate()
            if p.returncode:
                sys.exit(f"{k} run failed (exit {p.returncode})")
            rows[k].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1} {k}: {rows[k][-1]}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", required=True, help=f"{', '.join(VARIANTS)}, mmap-<bytes> or trim-<MiB>")
    ap.add_argument("--method", default="lora", choices=["lora", "full"])
    ap.add_argument("--workload", default="chat", choices=sorted(WORKLOADS))
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--one", nargs=2, metavar=("VARIANT", "OUT"), help=argparse.SUPPRESS)  # a worker process
    args = ap.parse_args()
    if args.variant not in VARIANTS and not (args.variant[:5] in ("mmap-", "trim-") and args.variant[5:].isdigit()):
        ap.error(f"--variant {args.variant!r}: one of {', '.join(VARIANTS)}, mmap-<bytes> or trim-<MiB>")
    if args.one:
        return run_one(args.one[0], args.one[1], args)
    flags = ["--variant", args.variant, "--method", args.method, "--workload", args.workload,
             "--precision", args.precision, "--steps", str(args.steps), "--weight-decay", str(args.weight_decay)]
    with tempfile.TemporaryDirectory() as tmp:
        rows = interleaved({v: lambda r, v=v: ([sys.executable, __file__, *flags, "--one", v,
                                                 str(Path(tmp) / f"{v}{r}")], None)
                            for v in (TOOL, args.variant)}, args.rounds)
    print(f"\n| {args.workload}, {args.method}, {args.precision}, weight decay {args.weight_decay:g} | real tokens/s (median) | peak RSS MiB (median) "
          f"| test {METRIC[args.workload]} | padded/real tokens |")
    print("|---|---|---|---|---|")
    for v, runs in rows.items():
        med = {k: statistics.median(x[k] for x in runs)
               for k in ("tokens_per_second", "peak_memory_mb", "metric", "padded_per_real")}
        print(f"| {v} | {med['tokens_per_second']:.1f} | {med['peak_memory_mb']:,.0f} | {med['metric']:.5f} "
              f"| {med['padded_per_real']:.3f} |")


if __name__ == "__main__":
    main()
