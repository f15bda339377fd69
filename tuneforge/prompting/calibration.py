"""Classification with a causal LM from a prompt, and contextual calibration.

A prompt template with ``{text}`` plus one label word per class (zero-shot, or few-shot with demonstrations
rendered before the query, as in GPT-3's in-context learning) turns a causal LM into a classifier: the class
scores are the LM's next-token probabilities of the label words after the prompt.

Contextual calibration (Zhao et al. 2021, "Calibrate Before Use: Improving Few-Shot Performance of Language
Models", arXiv 2102.09690): the label probabilities ``p_cf`` the model gives to content-free inputs ("N/A",
"[MASK]", "") put into the same prompt measure its bias toward some label words; ``W = diag(p_cf)^-1``
rescales every prediction (``b = 0``), so a content-free input becomes uniform. We renormalise ``W p`` to sum
to one (the paper applies softmax; both keep the argmax of ``W p``, renormalising keeps probabilities).
"""
from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn

from tuneforge.config import ConfigError
from tuneforge.methods.layers import position_limit

Mode = Literal["first_token", "sequence"]
CONTENT_FREE = ("N/A", "[MASK]", "")


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids, attention mask and position ids (0 at each row's first real token), each (n, seq)."""
    longest = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (longest - len(r)) + r for r in rows])  # (n, seq)
    mask = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in rows])  # (n, seq)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)  # (n, seq)
    return ids, mask, positions


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _pad_id(tokenizer: Any) -> int:
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if token_id is not None:
            return int(token_id)
    return 0  # masked positions: any id works


@torch.no_grad()
def _next_token_log_probs(model: nn.Module, rows: list[list[int]], pad_id: int, keep: int) -> torch.Tensor:
    """Log-probabilities over the vocabulary at the last ``keep`` positions, (n, keep, vocab), float32; rows are
    left-padded so those positions are real tokens. Only those logits are computed where the model's forward
    takes ``logits_to_keep`` (the vocabulary projection dominates for short prompts)."""
    ids, mask, positions = (t.to(_model_device(model)) for t in _left_pad(rows, pad_id))
    extra = {"logits_to_keep": keep} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, **extra).logits
    return logits[:, -keep:].float().log_softmax(-1)  # (n, keep, vocab)


def label_token_ids(tokenizer: Any, label_words: Sequence[str], context: str = "") -> list[list[int]]:
    """Token ids of each label word as it follows ``context`` (the prompt): ``ids(context + word)`` past
    ``ids(context)``, so a tokenizer that marks word starts inside the text (Llama-2's prepended "▁") gives the
    word's in-text tokens, not a lone "▁" first; the word tokenised alone where the two do not line up. No
    special tokens either way (so include a leading space where the tokenizer marks word starts, " positive")."""
    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    base = encode(context) if context else []
    ids = []
    for w in label_words:
        full = encode(context + w) if context else []
        ids.append(full[len(base):] if len(full) > len(base) and full[:len(base)] == base else encode(w))
    empty = [w for w, i in zip(label_words, ids) if not i]
    if empty:
        raise ConfigError(f"label word {empty[0]!r} has no tokens; give a non-empty label word")
    return ids


def _prefix_pairs(label_words: Sequence[str], label_ids: list[list[int]]) -> list[tuple[str, str]]:
    """(a, b) where word a's tokens begin word b's: summed log-probabilities always score b below a."""
    return [(a, b) for a, x in zip(label_words, label_ids) for b, y in zip(label_words, label_ids)
            if a != b and len(x) < len(y) and y[:len(x)] == x]


def _fit_rows(rows: list[list[int]], limit: int | None, extra: int) -> tuple[list[list[int]], int]:
    """Rows cut from the left so that each, plus ``extra`` label tokens, fits a position table of ``limit``
    (the end of a prompt, where the label follows, is what the label's score reads); (rows, how many were cut)."""
    room = None if limit is None else limit - extra
    if room is None or all(len(r) <= room for r in rows):
        return rows, 0
    if room < 1:
        raise ConfigError(f"the label words take {extra} tokens, more than the model's {limit} positions")
    return [r[-room:] for r in rows], sum(len(r) > room for r in rows)


@torch.no_grad()
def label_word_scores(model: nn.Module, tokenizer: Any, prompts: Sequence[str], label_words: Sequence[str],
                      mode: Mode = "first_token", batch_size: int = 16) -> torch.Tensor:
    """Probabilities over the label words after each prompt, (n, k), rows summing to one.

    ``first_token``: the next-token logits of each label word's first token at the position after the prompt,
    softmaxed over the k label words (one forward pass; first tokens must differ).
    ``sequence``: the summed log-probability of each label word's full token sequence appended to the prompt
    (k forward passes), softmaxed over the k words. Prompts are tokenised with the tokenizer's special tokens,
    label words without; the two id lists are concatenated (no re-tokenisation across the boundary).
    Batches are left-padded with matching position ids, so a prompt scores the same in any batch.
    """
    if len(label_words) < 2:
        raise ConfigError("prompt classification needs two or more label words")
    label_ids = label_token_ids(tokenizer, label_words, prompts[0] if prompts else "")
    first = [ids[0] for ids in label_ids]
    if mode == "first_token" and len(set(first)) < len(first):
        raise ConfigError(f"label words {list(label_words)} share a first token; use different words or "
                          "mode='sequence' (--mode sequence)")
    if mode == "sequence" and (pairs := _prefix_pairs(label_words, label_ids)):
        a, b = pairs[0]
        print(f"warning: label word {b!r} begins with the tokens of {a!r}: its summed log-probability can never "
              f"exceed {a!r}'s, so uncalibrated it is never predicted; words that do not begin one another avoid "
              "this", file=sys.stderr)
    limit, extra = position_limit(model), max(len(i) for i in label_ids) if mode == "sequence" else 0
    cut = 0
    pad_id = _pad_id(tokenizer)
    was_training = model.training
    model.eval()
    out = torch.empty(len(prompts), len(label_words))  # (n, k)
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        rows = [list(tokenizer(p)["input_ids"]) for p in chunk]
        if any(not r for r in rows):
            raise ConfigError("a rendered prompt has no tokens; put fixed words in the template")
        rows, n = _fit_rows(rows, limit, extra)
        cut += n
        if mode == "first_token":
            log_probs = _next_token_log_probs(model, rows, pad_id, 1)[:, -1]  # (b, vocab)
            scores = log_probs[:, first]  # (b, k)
        else:
            scores = torch.empty(len(rows), len(label_words))  # (b, k)
            for j, ids in enumerate(label_ids):
                rows_j = [r + ids for r in rows]
                log_probs = _next_token_log_probs(model, rows_j, pad_id, len(ids) + 1)  # (b, len(ids)+1, vocab)
                steps = log_probs[:, :-1]  # (b, len(ids), vocab): the predictions of the label tokens
                target = torch.tensor(ids, device=steps.device).expand(len(rows), -1)  # (b, len(ids))
                scores[:, j] = steps.gather(-1, target.unsqueeze(-1)).squeeze(-1).sum(-1).cpu()
        out[start:start + len(chunk)] = scores.float().softmax(-1).cpu()
    model.train(was_training)
    if cut:
        print(f"note: {cut} of {len(prompts)} prompt(s) are longer than the model's {limit} positions"
              f"{' (with the label word)' if extra else ''} and were cut from the left (their start, or the earliest "
              "demonstrations, left out); fewer shots or shorter texts keep them whole", file=sys.stderr)
    return out


def contextual_calibration(p_cf: torch.Tensor) -> torch.Tensor:
    """``W = diag(p_cf)^-1``, (k, k), from content-free label probabilities (k,) or (m, k) (averaged over the
    m content-free inputs, then renormalised, as in the paper)."""
    p = p_cf.float()
    if p.ndim == 2:
        p = p.mean(0)
    p = p / p.sum()
    return torch.diag(1.0 / p.clamp_min(1e-12))


def apply_calibration(probs: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Calibrated probabilities: ``W p`` for each row of ``probs`` (n, k), renormalised to sum to one."""
    q = probs.float() @ W.T  # (n, k)
    return q / q.sum(-1, keepdim=True)


@dataclass
class PromptClassifier:
    """Zero- or few-shot classifier from a causal LM, a template and label words, with optional calibration.

    The prompt is the demonstrations, each rendered as ``template`` + its label word and joined by
    ``separator``, then the query's ``template`` (``{text}`` replaced literally, so braces in texts are safe).
    A demonstration is ``(text, label index)``. Content-free inputs use the same demonstrations (as in the paper).
    """
    model: nn.Module = field(repr=False)
    tokenizer: Any = field(repr=False)
    template: str
    label_words: Sequence[str]
    demonstrations: Sequence[tuple[str, int]] = ()
    content_free: Sequence[str] = CONTENT_FREE
    separator: str = "\n\n"
    mode: Mode = "first_token"
    batch_size: int = 16
    _W: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if "{text}" not in self.template:
            raise ConfigError("prompt template must contain '{text}' where the input goes")
        if not self.content_free:
            raise ConfigError("contextual calibration needs at least one content-free input (e.g. 'N/A')")
        for text, label in self.demonstrations:
            if not 0 <= label < len(self.label_words):
                raise ConfigError(f"demonstration {text!r}: label index {label} is outside the {len(self.label_words)} "
                                  "label words")

    def prompt(self, text: str) -> str:
        """The full prompt for one input."""
        demos = [self.template.replace("{text}", t) + self.label_words[y] for t, y in self.demonstrations]
        return self.separator.join(demos + [self.template.replace("{text}", text)])

    def scores(self, texts: Sequence[str]) -> torch.Tensor:
        """Uncalibrated label-word probabilities, (n, k)."""
        return label_word_scores(self.model, self.tokenizer, [self.prompt(t) for t in texts], self.label_words,
                                 self.mode, self.batch_size)

    def content_free_scores(self) -> torch.Tensor:
        """Label-word probabilities of the content-free inputs, (m, k)."""
        return self.scores(list(self.content_free))

    def calibration(self) -> torch.Tensor:
        """``W`` (k, k) from the content-free inputs (computed once, then cached)."""
        if self._W is None:
            self._W = contextual_calibration(self.content_free_scores())
        return self._W

    def probabilities(self, texts: Sequence[str], calibrate: bool = True) -> torch.Tensor:
        """Label probabilities, (n, k), calibrated or not."""
        probs = self.scores(texts)
        return apply_calibration(probs, self.calibration()) if calibrate else probs

    def predict(self, texts: Sequence[str], calibrate: bool = True) -> list[int]:
        """Index of the predicted label word for each text."""
        return self.probabilities(texts, calibrate).argmax(-1).tolist()

    def evaluate(self, texts: Sequence[str], labels: Sequence[int]) -> dict[str, Any]:
        """Accuracy without and with calibration (one scoring pass), plus the content-free probabilities."""
        if len(texts) != len(labels) or not texts:
            raise ConfigError(f"evaluation needs one label per text (got {len(texts)} texts, {len(labels)} labels)")
        probs = self.scores(texts)  # (n, k)
        gold = torch.tensor(list(labels))
        raw = probs.argmax(-1)
        cal = apply_calibration(probs, self.calibration()).argmax(-1)
        k = len(self.label_words)
        return {"accuracy": float((raw == gold).float().mean()),
                "accuracy_calibrated": float((cal == gold).float().mean()),
                "p_content_free": self.calibration().diag().reciprocal().tolist(),  # mean content-free probabilities
                "predicted_share": torch.bincount(raw, minlength=k).div(len(gold)).tolist(),
                "predicted_share_calibrated": torch.bincount(cal, minlength=k).div(len(gold)).tolist()}
