"""Padded/real tokens of a causal-LM run's padding-free training batches: the run's data prepared as
``tuneforge train`` prepares it, random batches (``batch_order``) over a few epochs, each packed by
``collate_packed`` with its width rounded as a training run rounds it (``Shapes.training``: bf16 on a CPU and
CUDA round widths to 16, float32 on a CPU does not; both are printed). Deterministic: no model is run, so the
numbers do not depend on the machine.

    python benchmarks/pad_factor.py                                  # configs/demo-chat.yaml, 5 epochs
    python benchmarks/pad_factor.py --config my.yaml --batch-size 8
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from tuneforge import tasks
    from tuneforge.data.batching import Shapes, batch_order, collate_packed
    from tuneforge.data.dataset import prepare
    from tuneforge.loaded import start_model
    from tuneforge.models import load_tokenizer
    from tuneforge.run import resolve_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/demo-chat.yaml")
    p.add_argument("--epochs", type=int, default=5, help="epochs of random batches to lay out (default 5)")
    p.add_argument("--batch-size", type=int, default=0, help="default: the config's train.batch_size")
    args = p.parse_args()
    cfg = resolve_config(args.config)
    task = tasks.get(cfg.model.task)
    with start_model(cfg) as (_, base):
        _, data = prepare(cfg, task, load_tokenizer(base, cfg.model.trust_remote_code))
    lengths = [len(e["input_ids"]) for e in data.train]
    batch_size = args.batch_size or cfg.train.batch_size
    for rounded in (True, False):
        multiple = Shapes.training(cfg.model.max_length, rounded).packed
        real = computed = 0
        widths = set()
        for epoch in range(args.epochs):
            for b in batch_order(lengths, batch_size, cfg.train.seed, epoch, group_by_length=False):
                ids = collate_packed([data.train[i] for i in b], pad_id=0, multiple=multiple)["input_ids"]  # (rows, width)
                real += sum(lengths[i] for i in b)
                computed += ids.numel()
                widths.add(tuple(ids.shape))
        print(f"{len(lengths)} training examples (mean {real / args.epochs / len(lengths):.1f} tokens), batches of "
              f"{batch_size}, {args.epochs} epochs: padded/real tokens {computed / real:.3f}, "
              f"{len(widths)} batch shapes (widths rounded to {multiple}: {'bf16, CUDA' if rounded else 'fp32 CPU'})")


if __name__ == "__main__":
    main()
