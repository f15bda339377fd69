"""Token classification (named-entity recognition): words tagged with BIO/IOB2 (or plain) labels -> a tag per
word; entity-level precision/recall/F1 with seqeval's (conlleval) semantics, and token accuracy, both against the
gold tags normalised to IOB2 as the model learned them (an IOB1 file's ``I-X`` opening an entity is ``B-X``: the
same entities, and a predicted ``B-X`` there a correct tag, where conlleval on the file's own tags counts it wrong).

Data: CoNLL files (``.conll``/``.txt``/``.bio``), JSONL/Parquet rows with a list of words and a list of tags
(``data.tokens_column``/``data.tags_column``, integer tags named by ``data.tag_names`` or a Hugging Face
Parquet file's features), or JSONL rows with raw ``text`` and character-offset
``entities`` (``tuneforge.data.conll``, ``spans``). Tags are normalised to IOB2 (``tag_scheme``; invalid ``I-``
starts repaired and counted). Words are labelled on their first sub-token (``data.label_all_subtokens``: on
every one); sentences longer than ``model.max_length`` are split into windows overlapping by ``data.stride``
tokens and their predictions stitched back (``tuneforge.data.tagging``), so nothing is cut.
"""
from __future__ import annotations

import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from transformers import AutoModelForTokenClassification, PreTrainedTokenizerBase

from tuneforge.config import ConfigError, RunConfig
from tuneforge.data import conll, conll_file, tag_scheme
from tuneforge.data.spans import read_spans, span_column, tags_to_spans
from tuneforge.data.words import split_words
from tuneforge.data.batching import batch_order, iterate
from tuneforge.data.readers import source_and_row
from tuneforge.data.readers import SUFFIXES, class_names, read_records, require_file
from tuneforge.data.tagging import IGNORE, encode_words, stitch
from tuneforge.evaluate import entity_metrics, get_entities
from tuneforge.models import autocast, load_labelled
from tuneforge.progress import bar as progress_bar
from tuneforge.tasks import Example, Prepared, Record, Runtime, one_line

SAMPLES = 3  # tagged test sentences kept in the metrics (and shown in the result table)


class Task:
    name = "token_classification"
    metric = "f1"  # entity-level micro F1 picks the best checkpoint
    greater_is_better = True
    table_metrics = ("f1", "precision", "recall", "token_accuracy")
    generates = False  # answers prompts with text (generation, own-answer probes, self-replay)
    perplexity = False  # entity F1 only: forgetting is measured on a previous run's task
    predict_generates = False  # predict gives labels, not text (predict --max-new-tokens does not apply)
    peft_task_type = "TOKEN_CLS"
    loss_unit = "token"
    packs = False
    group_by_length = True  # sentences of similar length share a batch (as for classification)
    auto_patience = None  # the whole automatic plan: entity F1 sits at 0 for epochs before it rises

    # -- data ---------------------------------------------------------------------------------------------
    def read_source(self, path: str, cfg: RunConfig) -> list[Record]:
        if path.lower().endswith(conll_file.CONLL_SUFFIXES):
            return conll_file.read_conll(path, cfg.data.tag_names)
        if not str(require_file(path)).lower().endswith(SUFFIXES):
            raise ConfigError(f"data file {path}: unsupported type '{Path(path).suffix}'; use a CoNLL file (named "
                              f"{', '.join(conll_file.CONLL_SUFFIXES)}) or one of {', '.join(SUFFIXES)}")
        records = read_records(path)
        d = cfg.data
        if d.tokens_column not in records[0] and (column := span_column(records)):
            return read_spans(records, path, d.text_column, column)
        tokens, tags = conll.list_columns(records[0], d.tokens_column, d.tags_column, d.label_column)
        return conll.read_token_lists(records, tokens, tags, path, d.tag_names or class_names(path, tags))

    def required_columns(self, cfg: RunConfig) -> list[str]:
        return []  # the readers above check their own columns

    def row_problem(self, record: Record, cfg: RunConfig) -> str | None:
        if "tokens" not in record or "tags" not in record:
            return "a sentence needs tokens and tags"
        if len(record["tokens"]) != len(record["tags"]):
            return f"{len(record['tokens'])} tokens but {len(record['tags'])} tags"
        return None

    def input_text(self, record: Record, cfg: RunConfig) -> str:
        return " ".join(map(str, record["tokens"]))

    def prompt_texts(self, record: Record, cfg: RunConfig) -> list[str]:
        return [self.input_text(record, cfg)]

    def stratum(self, record: Record, cfg: RunConfig) -> str | None:
        return None

    def augment_columns(self, cfg: RunConfig) -> list[str]:
        return []  # word edits would move tags off their words

    def prepare(self, cfg: RunConfig, tokenizer: PreTrainedTokenizerBase, records: dict[str, list[Record]],
                where: dict[str, list[str]]) -> Prepared:
        """IOB2 tag names from the training split ("O" first) and the tokenised windows of every split."""
        train_tags = [tag_scheme.to_bio(r["tags"]) for r in records["train"]]
        names = ["O"] + sorted({t for tags in train_tags for t in tags} - {"O"})
        if len(names) < 2:
            raise ConfigError("data: the training split holds no entity tag (every tag is O)")
        invalid = sum(tag_scheme.invalid_sentences(list(r["tags"])) for k in records for r in records[k])
        if invalid:
            print(f"note: {invalid} sentence(s) have an I- tag that starts an entity (IOB1 or loosely written BIO); "
                  "read as B- (invalid_sequences in meta.json)", file=sys.stderr)
        for k in ("validation", "test"):
            own_file = cfg.data.train_file and getattr(cfg.data, k + "_file")
            tag_scheme.unseen_types(names, records[k], f"{k} split", own_file)
        meta = {"labels": names, "scheme": tag_scheme.scheme([r["tags"] for r in records["train"]]),
                "invalid_sequences": invalid}
        enc = {k: self.encode(records[k], cfg, tokenizer, meta, where[k]) for k in ("train", "validation", "test")}
        counts = [0] * len(names)  # labelled training sub-tokens per tag: the fresh head's starting bias
        for example in enc["train"]:
            for y in example["labels"]:
                if y != IGNORE:
                    counts[y] += 1
        meta["label_counts"] = counts
        return Prepared(train=enc["train"], validation=enc["validation"], test=enc["test"], meta=meta,
                        raw_test=records["test"])

    def encode(self, records: list[Record], cfg: RunConfig, tokenizer: PreTrainedTokenizerBase,
               meta: dict[str, Any], where: list[str]) -> list[Example]:
        """Windows of every sentence: ``input_ids`` (+ ``token_type_ids``), ``labels`` per sub-token and, for
        evaluation, the sentence number, word ids and gold tags (``_``-fields stay out of batches). A tag the
        run never trained on counts as O for the loss; its entities still count as gold in the metrics."""
        ids = {n: i for i, n in enumerate(meta["labels"])}
        b_to_i = [ids.get("I-" + n[2:], i) if n.startswith("B-") else i for i, n in enumerate(meta["labels"])]
        out: list[Example] = []
        for k, record in enumerate(records):
            words = [str(t) for t in record["tokens"]]
            tags = tag_scheme.to_bio(list(record["tags"])) if record.get("tags") is not None else None
            labels = [ids.get(t, 0) for t in tags] if tags is not None else None
            for window in encode_words(tokenizer, words, labels, cfg.model.max_length, cfg.data.stride,
                                       cfg.data.label_all_subtokens, b_to_i):
                example = {key: window[key] for key in ("input_ids", "token_type_ids", "labels") if key in window}
                example.update(_sentence=k, _word_ids=window["word_ids"], _tags=tags, _n_words=len(words))
                out.append(example)
        return out

    def encode_any(self, records: list[Record], cfg: RunConfig, tokenizer: PreTrainedTokenizerBase,
                   meta: dict[str, Any], where: list[str]) -> list[Example]:
        """Tokenise records of another source (replay data), which trains this run: an entity type the run lacks
        is refused (encoded, it would be tagged O: replay would teach that those entities are none)."""
        if unknown := tag_scheme.foreign_types(meta["labels"], records):
            file = source_and_row(where[0])[0] if where else "the data"
            known = sorted(tag_scheme.entity_types(meta["labels"]))
            raise ConfigError(f"{file}: entity type(s) {', '.join(unknown)} are not among this run's "
                              f"({', '.join(known)}), so they would train as no entity; keep only this run's types")
        return self.encode(records, cfg, tokenizer, meta, where)

    def source_meta(self, records: list[Record], cfg: RunConfig, meta: dict[str, Any], where: list[str]
                    ) -> dict[str, Any]:
        file = source_and_row(where[0])[0] if where else None  # none of the run's types: refused
        tag_scheme.unseen_types(meta["labels"], records, "evaluated data", file)  # else a warning: those count as missed
        return meta  # every source has the run's columns and labels

    def setup_tokenizer(self, tokenizer: PreTrainedTokenizerBase, cfg: RunConfig, meta: dict[str, Any]) -> None:
        return None

    def pack(self, examples: list[Example], cfg: RunConfig, keep_apart: bool) -> list[Example]:
        return examples

    # -- model and loss -----------------------------------------------------------------------------------
    def load_model(self, path: str | Path, cfg: RunConfig, meta: dict[str, Any], pad_id: int,
                   device: torch.device) -> tuple[nn.Module, list[str]]:
        """Pre-trained backbone + fresh token-classification head (encoders and decoders alike)."""
        model, fresh = load_labelled(AutoModelForTokenClassification, path, cfg, meta["labels"], pad_id)
        if meta.get("label_counts"):
            _prior_bias(model, fresh, meta["label_counts"])
        return model, fresh

    def packing_ok(self, model: nn.Module, examples: list[Example], rt: Runtime) -> bool:
        return False

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross-entropy over the labelled sub-tokens of the batch."""
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # (batch, seq, labels)
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(),
                                           ignore_index=IGNORE, reduction="sum")

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != IGNORE).sum())

    # -- evaluation and use ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _token_predictions(self, model: nn.Module, examples: list[Example], rt: Runtime, batch_size: int,
                           progress: bool = False) -> tuple[list[list[int]], float, int]:
        """Per-window predicted label ids (in the order of ``examples``), and the summed loss and token count
        over labelled sub-tokens."""
        model.eval()
        order = batch_order([len(e["input_ids"]) for e in examples], batch_size, 0, 0, shuffle=False)
        preds: dict[int, list[int]] = {}
        total, count = 0.0, 0
        batches = progress_bar(iterate(examples, order, rt.pad_id, shapes=rt.shapes), total=len(order),
                               desc="evaluate", leave=False, disable=not progress)
        for idx, batch in zip(order, batches):
            batch = {k: v.to(rt.device) for k, v in batch.items()}
            with autocast(rt.device, rt.bf16):
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()  # (b, seq, labels)
            if "labels" in batch:
                total += float(nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(),
                                                           ignore_index=IGNORE, reduction="sum"))
                count += int((batch["labels"] != IGNORE).sum())
            for i, row in zip(idx, logits.argmax(-1).cpu().tolist()):
                preds[i] = row[: len(examples[i]["input_ids"])]
        return [preds[i] for i in range(len(examples))], total, count

    def _word_tags(self, examples: list[Example], preds: list[list[int]], names: list[str]
                   ) -> tuple[list[list[str]], list[list[str] | None]]:
        """(predicted tags, gold tags) per sentence, windows stitched back together."""
        windows: dict[int, list[int]] = defaultdict(list)
        for i, e in enumerate(examples):
            windows[e["_sentence"]].append(i)
        predicted, gold = [], []
        for s in sorted(windows):
            idx = windows[s]
            ids = stitch([examples[i]["_word_ids"] for i in idx], [preds[i] for i in idx], examples[idx[0]]["_n_words"])
            predicted.append([names[j] for j in ids])
            gold.append(examples[idx[0]]["_tags"])
        return predicted, gold

    def evaluate(self, model: nn.Module, examples: list[Example], rt: Runtime, cfg: RunConfig,
                 meta: dict[str, Any], raw: list[Record] | None = None, tag: str | None = None,
                 progress: bool = False, **_: Any) -> dict[str, Any]:
        """Entity precision/recall/F1 (micro and per type), token accuracy and the sub-token loss; with the
        untokenised records (``raw``), a few tagged sentences (gold ``reference`` beside ``generated``), except
        for the untrained model (``tag`` "before": its fresh head tags words at random)."""
        if not examples:
            return {}
        preds, total, count = self._token_predictions(model, examples, rt, cfg.eval.batch_size, progress)
        predicted, gold = self._word_tags(examples, preds, meta["labels"])
        metrics = entity_metrics(gold, predicted)
        del metrics["invalid_gold"]  # always 0: the gold was normalised to IOB2 (the file's count: meta.json)
        metrics["loss"] = total / max(count, 1)
        metrics["n"] = len(gold)
        if raw is not None and len(raw) == len(gold) and tag != "before":
            metrics["samples"] = _samples(raw, gold, predicted)
        return metrics

    def predict(self, model: nn.Module, inputs: list[Any], rt: Runtime, cfg: RunConfig, meta: dict[str, Any],
                tokenizer: Any) -> list[dict[str, Any]]:
        """Entities found in each text (words split at whitespace and punctuation, as NER data is): type, text
        and character offsets."""
        if any(isinstance(x, tuple) for x in inputs):
            raise ConfigError("token classification tags single texts: drop the second texts")
        rows = []
        for text in inputs:
            words = split_words(str(text))
            if not words:
                rows.append({"text": text, "entities": []})
                continue
            examples = self.encode([{"tokens": [w for w, _, _ in words], "tags": None}], cfg, tokenizer, meta,
                                   ["input"])
            preds, _, _ = self._token_predictions(model, examples, rt, cfg.eval.batch_size)
            (tags,), _ = self._word_tags(examples, preds, meta["labels"])
            spans = tags_to_spans(tags, [(s, e) for _, s, e in words])
            rows.append({"text": text, "entities": [{**s, "text": text[s["start"]:s["end"]]} for s in spans]})
        return rows

    def describe(self, prediction: dict[str, Any]) -> str:
        """One line per input: the text (:func:`tuneforge.tasks.one_line`), a tab, its entities (``loc: New York |
        per: Ann``) or ``(no entities)``; ``--json`` keeps the character offsets."""
        found = [f"{e['label']}: {' '.join(e['text'].split())}" for e in prediction["entities"]]
        return f"{one_line(prediction['text'])}\t{' | '.join(found) or '(no entities)'}"

    def default_probes(self, cfg: RunConfig) -> list[str]:
        return []

    def default_reference(self, cfg: RunConfig) -> str | None:
        return None


@torch.no_grad()
def _prior_bias(model: nn.Module, fresh: list[str], counts: list[int]) -> None:
    """Start a fresh head's bias at the log frequency of each tag in the training split ("prior
    initialisation", Lin et al. 2017, arXiv 1708.02002), so the untrained model predicts O, as most words are,
    instead of a uniform guess. From a uniform guess the first steps' large loss (ln of the tag count) pushes the
    whole model toward O; with LoRA at 1e-3 on WNUT-16 that push sometimes ended in a model that tagged every
    word O for good."""
    total = sum(counts) + len(counts)
    prior = torch.tensor([math.log((c + 1) / total) for c in counts])  # add-one smoothing: no -inf
    for name in fresh:
        head = model.get_submodule(name)
        if isinstance(head, nn.Linear) and head.out_features == len(counts) and head.bias is not None:
            head.bias.copy_(prior.to(head.bias))


def tagged(words: list[str], tags: list[str]) -> str:
    """Words with their entities marked: ``[Barack Obama](person) visited the [White House](facility)``."""
    out = list(words)
    for label, start, end in get_entities(list(tags)):
        out[start] = "[" + out[start]
        out[end] = f"{out[end]}]({label})"
    return " ".join(out)


def _samples(raw: list[Record], gold: list[list[str] | None], predicted: list[list[str]]) -> list[dict[str, str]]:
    """The first test sentences holding a gold entity, tagged with gold and predicted entities (for the
    result table, as the causal-LM task's generated answers)."""
    out, seen = [], set()
    for record, g, p in zip(raw, gold, predicted):
        words = [str(w) for w in record["tokens"]]
        if g is not None and any(t != "O" for t in g) and " ".join(words) not in seen:  # a repeated sentence once
            seen.add(" ".join(words))
            out.append({"prompt": " ".join(words), "reference": tagged(words, g), "generated": tagged(words, p),
                        "tagged": True})
        if len(out) == SAMPLES:
            break
    return out
