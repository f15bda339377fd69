"""How many of SmolLM2's own greedy answers `eval.max_new_tokens` cuts, and the own-answers probe's perplexity
with the cut answers' end-of-turn scored (as before 2026-12-06) and not (now), on the untrained model.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/own_answers_cut.py 24 32 48

Settings of `bench_forgetting.py`'s chat part (max length 64, 24 prompts, seed 42), float32, one thread.
"""
from __future__ import annotations

import sys

import torch
from transformers import AutoModelForCausalLM

from tuneforge import tasks
from tuneforge.assets import resolve_model
from tuneforge.data.dataset import prepare
from tuneforge.forgetting import probes
from tuneforge.generate import answer_ids, answer_text
from tuneforge.models import load_pretrained, load_tokenizer
from tuneforge.run import resolve_config


def main(limits: list[int]) -> None:
    torch.set_num_threads(1)
    path = resolve_model("smollm2")
    tok = load_tokenizer(path)
    model = load_pretrained(AutoModelForCausalLM, path)[0].eval()
    task = tasks.get("causal_lm")
    rt = tasks.Runtime(device=torch.device("cpu"), bf16=False, pad_id=tok.pad_token_id)
    for limit in limits:
        cfg = resolve_config({"model": {"name": "smollm2", "task": "causal_lm", "max_length": 64},
                              "data": {"dataset": "chatterbot", "max_examples": 60},
                              "eval": {"max_new_tokens": limit}, "forgetting": {"probe_prompts": 24}})
        meta = prepare(cfg, task, tok)[1].meta
        prompts = probes.general_prompts(24, cfg.data.seed)
        new = answer_ids(model, tok, meta, cfg, rt, prompts, max_new_tokens=limit)
        now = probes.own_answers_probe(model, cfg, task, tok, rt, meta).measure(model)
        chat = {**meta, "format": "chat"}  # before: every answer encoded as a whole turn, its end included
        records = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
                   for p, a in zip(prompts, (answer_text(tok, n) for n in new)) if a]
        examples = task.encode(records, cfg, tok, chat, [str(i) for i in range(len(records))])
        before = task.evaluate(model, examples, rt, cfg, chat)["perplexity"]
        print(f"max_new_tokens={limit}: {sum(len(n) >= limit for n in new)}/{len(new)} answers cut; own-answers "
              f"perplexity {now:.3f} (cut answers' end scored: {before:.3f})", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [24])
