"""Metrics computed from real predictions: classification (accuracy, F1), named entities (seqeval's default,
conlleval-compatible chunking) and text generation (sacreBLEU, rouge-score, perplexity)."""
from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any


def _prf(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    """Precision, recall, F1 with zero_division=0 (scikit-learn / seqeval)."""
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def classification_metrics(preds: Sequence[int], labels: Sequence[int], names: Sequence[str]) -> dict:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support, as scikit-learn computes them: the
    classes are those present in the gold labels or the predictions (sorted by id), macro-F1 is the mean F1
    over them, and 0/0 counts as 0. A class id without a name is keyed by its number."""
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    preds, labels = [int(p) for p in preds], [int(y) for y in labels]
    n = len(labels)
    tp = Counter(y for p, y in zip(preds, labels) if p == y)
    n_pred, n_true = Counter(preds), Counter(labels)
    per_class = {}
    for k in sorted(set(n_pred) | set(n_true)):
        precision, recall, f1 = _prf(tp[k], n_pred[k], n_true[k])
        name = names[k] if 0 <= k < len(names) else str(k)
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": n_true[k]}
    f1s = [c["f1"] for c in per_class.values()]
    accuracy = sum(tp.values()) / n if n else 0.0
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0, "per_class": per_class, "n": n}


# --- named entities -------------------------------------------------------------------------------------------

def _split_tag(tag: str) -> tuple[str, tuple[bool, str]]:
    """(prefix, type key) of a tag: 'B-PER' -> ('B', (False, 'PER')), 'O' -> ('O', ...), a plain label such
    as 'PER' -> ('P', (True, 'PER')): its own type, distinct from prefixed types."""
    if tag == "O":
        return "O", (False, "")
    if tag[:1] in "BIES" and (len(tag) == 1 or tag[1] == "-"):
        return tag[0], (False, tag[2:] or "_")
    return "P", (True, tag)


def _chunk_ends(prev: str, tag: str, prev_type: tuple, type_: tuple) -> bool:
    """conlleval's endOfChunk (as seqeval's default mode)."""
    if prev in ("E", "S") or (prev in ("B", "I") and tag in ("B", "S", "O")):
        return True
    return prev != "O" and prev_type != type_


def _chunk_starts(prev: str, tag: str, prev_type: tuple, type_: tuple) -> bool:
    """conlleval's startOfChunk (as seqeval's default mode)."""
    if tag in ("B", "S") or (prev in ("E", "S", "O") and tag in ("E", "I")):
        return True
    return tag != "O" and prev_type != type_


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entity chunks ``(type, start, end)`` (end inclusive) of one tag sequence, conlleval-style: an ``I-X``
    after ``O`` or another type starts a chunk; a maximal run of one plain label (no ``B-``/``I-``) is one
    chunk. (seqeval reads a plain label's first letter as its prefix, so it treats ``ORG`` as outside and
    merges ``PER XER``; here a plain label is a whole name.)"""
    chunks: list[tuple[str, int, int]] = []
    prev, prev_type, begin = "O", (False, ""), 0
    for i, tag in enumerate([*tags, "O"]):
        cur, type_ = _split_tag(tag)
        if _chunk_ends(prev, cur, prev_type, type_):
            chunks.append((prev_type[1], begin, i - 1))
        if _chunk_starts(prev, cur, prev_type, type_):
            begin = i
        prev, prev_type = cur, type_
    return chunks


def invalid_transitions(tags: Sequence[str] | Sequence[Sequence[str]]) -> int:
    """Number of ``I-X`` tags not preceded by ``B-X`` or ``I-X`` (in one sequence or a list of sequences)."""
    if tags and not isinstance(tags[0], str):
        return sum(invalid_transitions(t) for t in tags)
    count, prev = 0, "O"
    for tag in tags:
        if tag.startswith("I-") and prev not in ("B-" + tag[2:], tag):
            count += 1
        prev = tag
    return count


def entity_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
    """Entity-level micro precision/recall/F1 (exact type and span), macro F1, per-type scores and token
    accuracy, equal to seqeval's default (conlleval) mode; ``invalid_gold``/``invalid_pred`` count ``I-X``
    tags that do not continue an ``X`` chunk (accepted, as conlleval does)."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(pred)} predicted sentences for {len(gold)} gold sentences")
    true_sets: dict[str, set] = defaultdict(set)
    pred_sets: dict[str, set] = defaultdict(set)
    correct = total = 0
    for s, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {s}: {len(p)} predicted tags for {len(g)} gold tags")
        for type_, start, end in get_entities(g):
            true_sets[type_].add((s, start, end))
        for type_, start, end in get_entities(p):
            pred_sets[type_].add((s, start, end))
        correct += sum(a == b for a, b in zip(g, p))
        total += len(g)
    per_type = {}
    for type_ in sorted(set(true_sets) | set(pred_sets)):
        t, q = true_sets.get(type_, set()), pred_sets.get(type_, set())
        precision, recall, f1 = _prf(len(t & q), len(q), len(t))
        per_type[type_] = {"precision": precision, "recall": recall, "f1": f1, "support": len(t)}
    tp = sum(len(true_sets[k] & pred_sets[k]) for k in per_type)
    precision, recall, f1 = _prf(tp, sum(map(len, pred_sets.values())), sum(map(len, true_sets.values())))
    f1s = [m["f1"] for m in per_type.values()]
    return {"precision": precision, "recall": recall, "f1": f1,
            "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0,
            "token_accuracy": correct / total if total else 0.0, "per_type": per_type,
            "n_sentences": len(gold), "invalid_gold": invalid_transitions(gold),
            "invalid_pred": invalid_transitions(pred)}


# --- generation -----------------------------------------------------------------------------------------------

def perplexity(loss: float) -> float:
    """exp of the mean per-token cross-entropy (nats); inf when it overflows. Pass the token-weighted mean
    (summed loss over all scored tokens / their count), not a mean of batch means."""
    return math.exp(loss) if loss < 700 else math.inf


KANA = "\u3040-\u30ff"  # Japanese syllabaries
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs


Refs = Sequence[str | Sequence[str]]  # one reference per hypothesis, or several (a prompt asked with other answers)


def _lists(references: Refs) -> list[list[str]]:
    return [[r] if isinstance(r, str) else list(r) for r in references]


def bleu(hypotheses: Sequence[str], references: Refs) -> float:
    """Corpus BLEU (sacreBLEU, 0-100) against each hypothesis's reference(s): tokenised as sacreBLEU's default
    (13a) does, Chinese with its ``zh`` tokenizer (where any reference holds Chinese characters: it tokenises
    other text as 13a does) and Japanese by character where at least half the references hold kana (13a keeps a
    sentence without spaces as one word). The references decide, never the answers: one stray kana in a model's
    answer had scored every English sentence by character."""
    import sacrebleu

    refs = _lists(references)
    flat = [r for group in refs for r in group if r]
    kana = sum(bool(re.search(f"[{KANA}]", r)) for r in flat) * 2 >= max(len(flat), 1)  # most references Japanese
    tokenize = "char" if kana else "zh" if any(re.search(f"[{HAN}]", r) for r in flat) else "13a"  # zh: 13a's
    streams = [[g[k] if k < len(g) else None for g in refs] for k in range(max(map(len, refs), default=1))]
    # effective order: n-gram orders no answer is long enough for are left out (sacreBLEU's own option), so
    # answers of one to three words, right or wrong, no longer all score 0; with any 4-gram it changes nothing
    return float(sacrebleu.corpus_bleu(list(hypotheses), streams, tokenize=tokenize, use_effective_order=True).score)


def by_prompt(keys: Sequence[str], references: Sequence[str], n: int) -> list[tuple[int, list[str]]]:
    """The first ``n`` distinct prompts (``keys``, one per row) as (the row first asking it, every reference the
    rows give it): a prompt asked again with another answer is generated once, scored against all of them."""
    groups: dict[str, tuple[int, list[str]]] = {}
    for i, (key, ref) in enumerate(zip(keys, references)):
        if key in groups:
            groups[key][1].append(ref)
        elif len(groups) < n:
            groups[key] = (i, [ref])
    return list(groups.values())


class RougeWords:
    """rouge-score's tokenisation (lower-cased runs of letters and digits, Porter-stemmed when longer than 3)
    for every script: its own keeps ``[a-z0-9]`` only, so text in Cyrillic, Greek, accented or CJK scripts
    scored 0 even when identical. English text gives rouge-score's tokens exactly; a CJK character is a word."""

    def __init__(self) -> None:
        from nltk.stem import porter

        self._stemmer = porter.PorterStemmer()
        self._token = re.compile(f"[{KANA}{HAN}]|[^\\W_{KANA}{HAN}]+")

    def tokenize(self, text: str) -> list[str]:
        words = self._token.findall(text.lower())
        return [self._stemmer.stem(w) if len(w) > 3 and w.isascii() else w for w in words]


def rouge_l(hypotheses: Sequence[str], references: Refs) -> float:
    """Mean ROUGE-L F1 (rouge-score's ``rougeL``, stemmed, :class:`RougeWords`; 0-1) over the hypotheses, each
    against its reference (the best of several, as rouge-score's ``score_multi``)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=RougeWords())
    scores = [scorer.score_multi(refs, hyp)["rougeL"].fmeasure for hyp, refs in zip(hypotheses, _lists(references))]
    return sum(scores) / len(scores) if scores else 0.0


def sample(prompt: str, references: list[str], generated: str) -> dict[str, Any]:
    """One generated answer as written to ``samples_*.jsonl``: its prompt, reference (``references`` too where the
    test split gives the prompt several) and the answer."""
    return {"prompt": prompt, "reference": references[0], **({"references": references} if len(references) > 1
                                                              else {}), "generated": generated}


def generation_metrics(samples: list[dict], generated: Sequence[str], references: Refs,
                       run_dir: Any = None, tag: str | None = None) -> dict:
    """BLEU and ROUGE-L of ``generated`` against ``references``; the ``samples`` (prompt, reference, generated) are
    written to ``run_dir/samples_{tag}.jsonl`` when a run directory is given, the first three kept in the result."""
    if run_dir is not None:
        from pathlib import Path

        from tuneforge.checkpoint import atomic_write_text

        path = Path(run_dir) / (f"samples_{tag}.jsonl" if tag else "samples.jsonl")
        atomic_write_text(path, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    return {"bleu": bleu(generated, references), "rouge_l": rouge_l(generated, references),
            "generated": len(samples), "samples": samples[:3]}
