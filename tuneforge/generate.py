"""Text generation from a trained causal LM: batched (left-padded) greedy or sampled generation, and an
interactive chat loop that streams tokens as they are produced."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, TextIO

import torch
import torch.nn as nn
from transformers import GenerationConfig, PreTrainedTokenizerBase, TextStreamer

from tuneforge.config import ConfigError, build_dataclass
from tuneforge.data import chat, templates
from tuneforge.data.json_file import broken_text
from tuneforge.data.layouts import SPEAKERS, trimmed
from tuneforge.methods.virtual_tokens import pads_apart, virtual_count
from tuneforge.models import autocast, position_limit
from tuneforge.tasks import Runtime

Prompt = str | list[dict[str, str]]  # a user message, or a whole conversation of {role, content}


@dataclass
class Sampling:
    max_new_tokens: int = 128  # tokens generated at most per answer
    sample: bool = False  # sample (with temperature / top-p / top-k) instead of greedy decoding
    temperature: float = 1.0  # sampling only: < 1 sharper, > 1 flatter; 0 means greedy decoding
    top_p: float = 1.0  # sampling only: nucleus probability mass
    top_k: int = 50  # sampling only: keep the k most likely tokens (0 disables)
    seed: int | None = None  # sampling only: seed for reproducible samples

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens (--max-new-tokens) must be positive, got {self.max_new_tokens}")
        if self.temperature == 0:  # the limit of ever sharper sampling, as other tools read it
            self.sample, self.temperature = False, 1.0
        if self.temperature < 0:
            raise ConfigError(f"temperature (--temperature) must be positive (or 0 for greedy decoding), got "
                              f"{self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p (--top-p) must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k (--top-k) must be >= 0, got {self.top_k}")


def eos_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """End-of-sequence ids: the tokenizer's EOS, the model's generation config's and the mark its chat template
    ends a reply with, which training taught (Gemma's ``<end_of_turn>``, where a generation config names only
    ``<eos>``: answers ran on past it)."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    template = templates.own_template(tokenizer)
    end = templates.reply_end_id(tokenizer, template) if template else None
    ids += [end] if end is not None else []
    vocab = model.get_input_embeddings().num_embeddings
    return sorted({i for i in ids if 0 <= i < vocab})


def generation_config(model: nn.Module, tokenizer: PreTrainedTokenizerBase, s: Sampling) -> GenerationConfig:
    """An explicit generation config (the model's own sampling defaults do not leak in)."""
    kwargs: dict[str, Any] = {"max_new_tokens": s.max_new_tokens, "do_sample": s.sample,
                              "eos_token_id": eos_ids(model, tokenizer), "pad_token_id": tokenizer.pad_token_id}
    if s.sample:
        kwargs.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
    return GenerationConfig(**kwargs)


def whole_characters(text: str) -> str:
    """``text`` without the U+FFFD that a byte-level tokenizer (GPT-2's, Llama 3's, SmolLM2's) decodes at the end
    when the token limit cut a character's bytes short (an emoji is up to four tokens)."""
    return text.rstrip("\ufffd")


def answer_text(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """The answer that new token ``ids`` spell: special tokens skipped, a character cut short dropped, stripped."""
    return whole_characters(tokenizer.decode(ids, skip_special_tokens=True)).strip()


REASONING = re.compile(r"^\s*(<think>.*?</think>|\[THINK\].*?\[/THINK\])\s*", re.DOTALL)


def without_reasoning(answer: str) -> str:
    """``answer`` without a leading reasoning block (``<think>…</think>``, as Qwen3 and DeepSeek-R1 write, even
    empty; ``[THINK]…[/THINK]``): what BLEU and ROUGE compare with a reference answer."""
    return REASONING.sub("", answer, count=1)


class _Streamer(TextStreamer):
    """Writes decoded text to ``out`` as soon as it is final (word by word)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, out: TextIO) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out = out

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.out.write(whole_characters(text) + "\n" if stream_end else text)
        self.out.flush()


@torch.no_grad()
def generate_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]], rt: Runtime,
                 s: Sampling, batch_size: int = 16, stream: TextIO | None = None) -> list[list[int]]:
    """New token ids for each prompt (ending before EOS). Prompts of similar length share a batch, padded on
    the left so every row ends where generation starts. ``stream`` (one prompt only) receives text live."""
    if stream is not None and len(prompts) != 1:
        raise ConfigError("streaming works for one prompt at a time")
    model.eval()
    config = generation_config(model, tokenizer, s)
    limit = position_limit(model)
    limit = limit - virtual_count(model) if limit is not None else None  # virtual tokens take positions too
    eos = set(config.eos_token_id)
    pad = tokenizer.pad_token_id
    if s.sample and s.seed is not None:
        torch.manual_seed(s.seed)
    out: list[list[int]] = [[] for _ in prompts]
    apart = pads_apart(model, max(map(len, prompts), default=0), s.max_new_tokens)
    alone = limit - s.max_new_tokens if limit is not None else None  # a longer prompt would cut its batch's answers
    full = capped = 0
    for idx in _batches([len(p) for p in prompts], batch_size, equal=apart, alone_above=alone):
        longest = max(len(prompts[i]) for i in idx)
        room = limit - longest if limit is not None else s.max_new_tokens  # positions left in the model's table
        if room < 1:
            full += len(idx)
            continue  # the prompt fills every position: no answer
        config.max_new_tokens = min(s.max_new_tokens, room)
        ids = torch.tensor([[pad] * (longest - len(prompts[i])) + prompts[i] for i in idx])  # (batch, seq)
        mask = torch.tensor([[0] * (longest - len(prompts[i])) + [1] * len(prompts[i]) for i in idx])  # (batch, seq)
        streamer = _Streamer(tokenizer, stream) if stream is not None else None
        with autocast(rt.device, rt.bf16):
            result = model.generate(input_ids=ids.to(rt.device), attention_mask=mask.to(rt.device),
                                    generation_config=config, streamer=streamer)  # (batch, seq + new)
        for row, i in enumerate(idx):
            new = result[row, longest:].tolist()
            cut = next((k for k, t in enumerate(new) if t in eos), len(new))
            out[i] = new[:cut]
            capped += cut == len(new) >= config.max_new_tokens < s.max_new_tokens  # stopped by the table, not EOS
    if capped:
        print(f"note: {capped} answer(s) stopped at the model's {limit} positions, before max_new_tokens "
              f"({s.max_new_tokens}) and before an end of answer (shorter prompts leave more room)", file=sys.stderr)
    if full:
        print(f"note: {full} prompt(s) fill all {limit} positions the model embeds, so they get no answer (shorten "
              "them, or lower model.max_length when training)", file=sys.stderr)
    return out


def _batches(lengths: list[int], batch_size: int, equal: bool, alone_above: int | None = None) -> list[list[int]]:
    """Prompt indices by length, ``batch_size`` at a time; with ``equal`` only prompts of one length share a
    batch (no padding: see ``virtual_tokens.pads_apart``); a prompt longer than ``alone_above`` has a batch of its
    own (its room in the model's position table would cut the answers of shorter ones)."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        last = batches[-1] if batches else None
        if last is not None and len(last) < batch_size and not (equal and lengths[last[0]] != lengths[i]) and \
                (alone_above is None or lengths[i] <= alone_above):
            last.append(i)
        else:
            batches.append([i])
    return batches


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt], template: str | None,
                   max_length: int, system_prompt: str | None = None) -> list[list[int]]:
    """Token ids of each prompt: rendered with the chat template (a string is one user message), or, without
    a template (plain-text runs), the text itself to be continued."""
    out = []
    for k, p in enumerate(prompts, 1):
        if template is None:
            if not isinstance(p, str):
                raise ConfigError("this run was trained on plain text: give prompts as strings to continue")
            ids = tokenizer(p)["input_ids"]
            if ids and ids[-1] == tokenizer.eos_token_id and not p.rstrip().endswith(str(tokenizer.eos_token)):
                ids = ids[:-1]  # a tokenizer that appends its end token (add_eos_token): the text is to go on
            out.append(ids)
            continue
        messages = [{"role": "user", "content": p}] if isinstance(p, str) else _messages(p, k)
        messages = [{**m, "content": trimmed(m["content"])} for m in messages]  # as training trimmed them
        if system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompt}] + messages
        out.append(chat.prompt_ids(tokenizer, template, messages, None))
    long = sum(len(ids) > max_length for ids in out)
    if long:
        print(f"note: {long} prompt(s) longer than model.max_length={max_length} tokens keep their last {max_length} "
              "(the start, e.g. a system prompt or earlier turns, is left out)", file=sys.stderr)
    return [ids[-max_length:] for ids in out]


def _messages(prompt: Any, k: int) -> list[dict[str, str]]:
    """Prompt ``k`` (1-based) given as a conversation: a list of ``{"role": ..., "content": text}`` mappings."""
    ok = isinstance(prompt, (list, tuple)) and len(prompt) > 0 and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt)
    if not ok:
        raise ConfigError(f"prompt {k}: give a string or a list of {{'role': ..., 'content': text}} messages, "
                          f"got {str(prompt)[:60]}")
    unknown = next((m["role"] for m in prompt if m["role"].strip().lower() not in SPEAKERS), None)
    if unknown is not None:
        raise ConfigError(f"prompt {k}: unknown role '{unknown}'; use system, user or assistant (also human for "
                          "user; gpt, bot, model or chatgpt for assistant)")
    return [{**m, "role": SPEAKERS[m["role"].strip().lower()]} for m in prompt]  # spelt as training read them


def generate_answers(model: nn.Module, tokenizer: PreTrainedTokenizerBase, meta: dict[str, Any], cfg: Any,
                     rt: Runtime, prompts: list[Prompt], stream: TextIO | None = None, **settings: Any) -> list[str]:
    """Answers of a trained causal LM (run config ``cfg`` and ``meta``) to each prompt; ``settings`` are
    :class:`Sampling` fields."""
    return [answer_text(tokenizer, n) for n in answer_ids(model, tokenizer, meta, cfg, rt, prompts, stream, **settings)]


def run_template(tokenizer: PreTrainedTokenizerBase, meta: dict[str, Any]) -> str | None:
    """The chat template a run's prompts are rendered with: the one it recorded, else the tokenizer's; none for a
    run trained on plain text."""
    fallback = templates.resolve_template(tokenizer, None) if meta.get("format") != "text" else None
    return meta.get("chat_template") or fallback


def answer_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase, meta: dict[str, Any], cfg: Any, rt: Runtime,
               prompts: list[Prompt], stream: TextIO | None = None, **settings: Any) -> list[list[int]]:
    """The new token ids of :func:`generate_answers` (before EOS; as many as ``max_new_tokens`` when cut)."""
    s = build_dataclass(Sampling, settings, "generate")
    template = run_template(tokenizer, meta)
    ids = encode_prompts(tokenizer, prompts, template, cfg.model.max_length, cfg.data.system_prompt)
    return generate_ids(model, tokenizer, ids, rt, s, cfg.eval.batch_size, stream)


def chat_loop(run: Any, read: Callable[[str], str] = input, out: TextIO | None = None, **settings: Any) -> None:
    """Interactive multi-turn chat with a reloaded run (``tuneforge.loaded.Run``): answers stream as they are
    generated; ends on EOF, 'exit' or 'quit' (also written '/exit', '/quit')."""
    s = build_dataclass(Sampling, settings, "generate")  # bad options fail before the banner, not at the first answer
    out = out or sys.stdout
    history: list[dict[str, str]] = []
    said = False
    out.write("chatting with the model: type a message, or 'exit' (or Ctrl-D) to quit\n")
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            out.write("\n")
            return
        if line.lower().removeprefix("/") in ("exit", "quit"):
            return
        if not line:
            continue
        if broken_text(line) is not None:  # bytes of another encoding: no tokenizer takes them
            out.write("(that message is not UTF-8 text: type it again)\n")
            continue
        history.append({"role": "user", "content": line})
        kept = fitted(run, history, s.max_new_tokens)
        if len(kept) < len(history) and not said:  # said once, before the answer's line starts
            said = bool(out.write("(earlier turns are left out from here on, oldest first, so the conversation fits "
                                  "the model's length)\n"))
        out.write("model> ")
        out.flush()
        answer = run.generate([kept], stream=out, **settings)[0]
        history.append({"role": "assistant", "content": answer or "..."})


def fitted(run: Any, history: list[dict[str, str]], max_new_tokens: int) -> list[dict[str, str]]:
    """The latest whole exchanges of ``history`` (its last message, the new one, always kept) whose prompt fits
    ``model.max_length`` and, where the model has a position table, leaves ``max_new_tokens`` positions for the
    answer (cut at the start of the prompt, a conversation filled the table and its answers came back empty)."""
    template = run_template(run.tokenizer, run.meta)
    budget, limit = run.cfg.model.max_length, position_limit(run.model)
    if limit is not None:
        budget = min(budget, limit - virtual_count(run.model) - max_new_tokens)
    kept = history
    while len(kept) > 1 and len(encode_prompts(run.tokenizer, [kept], template, 10**9,
                                               run.cfg.data.system_prompt)[0]) > budget:
        kept = kept[2:]  # the oldest exchange: a message and its answer
    return kept
