"""Would a frozen layer's backward run faster with its weight stored transposed? A frozen ``nn.Linear`` computes
``x @ W.T`` forward and only the input gradient ``g @ W`` backward; LoRA's rank-wide products were 3-7x apart
between layouts (docs/performance.md), so the base layer's two products are timed here in every layout at
MiniLM's shapes (1,024 tokens; interleaved, medians of 30), in float32 or bf16, at 1 and 2 threads.

    python benchmarks/matmul_layout_probe.py [--dtype float32|bfloat16] [--tokens 1024] [--repeats 30]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    dtype, n = getattr(torch, args.dtype), args.tokens
    print("| threads | weight (out, in) | " + " | ".join(
        ["x @ W.T (forward)", "g @ W (backward)", "g @ Wt.T (Wt: a transposed copy)", "(W.T @ g.T).T"]) + " |")
    print("|---|---|---|---|---|---|")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for out, inp in ((384, 384), (1536, 384), (384, 1536)):  # attention projections, FFN up, FFN down
            x, g = torch.randn(n, inp, dtype=dtype), torch.randn(n, out, dtype=dtype)  # (tokens, in), (tokens, out)
            w = torch.randn(out, inp, dtype=dtype)
            wt = w.t().contiguous()  # (in, out)
            fns = [lambda: x @ w.t(), lambda: g @ w, lambda: g @ wt.t(), lambda: (w.t() @ g.t()).t()]
            times: list[list[float]] = [[] for _ in fns]
            for _ in range(args.repeats):  # interleaved: every layout in each round
                for f, t in zip(fns, times):
                    start = time.perf_counter()
                    f()
                    t.append(time.perf_counter() - start)
            ms = [statistics.median(t) * 1e3 for t in times]
            print(f"| {threads} | ({out}, {inp}) | " + " | ".join(f"{m:.2f} ms" for m in ms) + " |")


if __name__ == "__main__":
    main()
