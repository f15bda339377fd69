"""Sequence classification: labelled texts (or text pairs) -> label ids; accuracy and F1."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from tuneforge.config import ConfigError, RunConfig
from tuneforge.data.batching import batch_order, iterate
from tuneforge.data import text_columns
from tuneforge.data.labels import label_key, label_names
from tuneforge.data.readers import FIELD_SEP, blank, class_names, read_records, structure
from tuneforge.evaluate import classification_metrics
from tuneforge.models import autocast, load_labelled
from tuneforge.progress import bar as progress_bar
from tuneforge.tasks import Example, Prepared, Record, Runtime, end_token, one_line


SHOWN = 5  # predict's text output: the probabilities of up to this many classes (the likeliest)


def _sampled(cfg: RunConfig) -> str:
    """Where ``data.max_examples`` sampled the training data: the hint that it may have left a label out."""
    n = cfg.data.max_examples
    return f" (data.max_examples={n} trains on a sample of {n} rows: raise it, or leave it out)" if n else ""


class Task:
    name = "classification"
    metric = "accuracy"  # validation metric that picks the best checkpoint
    greater_is_better = True
    table_metrics = ("accuracy", "macro_f1")
    generates = False  # answers prompts with text (generation, own-answer probes, self-replay)
    perplexity = False  # accuracy and F1 only: forgetting is measured on a previous run's task
    predict_generates = False  # predict gives labels, not text (predict --max-new-tokens does not apply)
    peft_task_type = "SEQ_CLS"  # what PeftModel.from_pretrained builds around the base model
    loss_unit = "example"
    packs = False
    # train.group_by_length default: on. MiniLM on Rotten Tomatoes reached the same accuracy with random and
    # length-grouped batches (full FT, 3 seeds: 0.780 both) and grouping cut padding from 1.92x to 1.02x.
    group_by_length = True
    read_as: dict[str, str] = {}  # configured column -> the last file's own name for it (row errors name that)
    auto_patience = None  # the automatic length trains its whole plan: early on, accuracy sits on the majority
    #                       class's plateau before it rises (see docs/cli.md)

    # -- data ---------------------------------------------------------------------------------------------
    def _text_columns(self, cfg: RunConfig) -> list[str]:
        d = cfg.data
        return [d.text_column] + ([d.text_pair_column] if d.text_pair_column else [])

    def read_source(self, path: str, cfg: RunConfig) -> list[Record]:
        """Rows of a file. A text or label column left at its default (``text``/``label``) and absent is found
        under its one common other spelling in the first row (``sentence``, ``review`` ...; ``sentiment``,
        ``category`` ...; a note says so), or, for the text, a common text pair (``sentence1`` + ``sentence2`` ...:
        sets ``data.text_pair_column``); integer labels of a ``datasets`` Parquet file take their ``ClassLabel``
        names (-1, its "no label", becomes blank)."""
        records = read_records(path)
        d = cfg.data
        text, label = text_columns.find(records[0], path, cfg)
        names = class_names(path, label)
        self.read_as = {d.text_column: text, d.label_column: label}  # for row_problem's errors about this file
        if text == d.text_column and label == d.label_column and names is None:
            return records
        if text not in records[0] or label not in records[0]:
            return records  # as read: dataset's check names the missing column among the file's own
        for kind, configured, used in (("text", d.text_column, text), ("label", d.label_column, label)):
            if used != configured:  # said, never silent (the note names a text pair's first column)
                print(f"note: {path} has no '{configured}' column: the {kind}s come from '{used}' "
                      f"(data.{kind}_column chooses another)", file=sys.stderr)
        out = []
        for r in records:  # each row under the configured names (a row that has them keeps its own)
            r = dict(r)
            if d.text_column not in r and text in r:  # a row without either stays without: row_problem names it
                r[d.text_column] = r[text]
            if d.label_column in r or label in r:
                r[d.label_column] = text_columns.named(r[d.label_column] if d.label_column in r else r[label], names)
            out.append(r)
        return out

    def required_columns(self, cfg: RunConfig) -> list[str]:
        return self._text_columns(cfg) + [cfg.data.label_column]

    def source_column(self, column: str) -> str:
        """The last file's column that a required column is read from (``review`` for ``text``)."""
        return getattr(self, "read_as", {}).get(column, column)

    def row_problem(self, record: Record, cfg: RunConfig) -> str | None:
        for column in self._text_columns(cfg) + [cfg.data.label_column]:
            if column not in record:
                present = ", ".join(map(str, record)) or "none"
                used = self.read_as.get(column, column)  # the file's own name (its first row's)
                first = " (the first row's columns name every row's)" if used != column else ""
                return (f"column '{used}' is missing (columns: {present}{first}; choose them with data.text_column / "
                        "data.label_column)")
        for column in self._text_columns(cfg):
            if structure(record[column]):
                return (f"the text (column '{column}') is {structure(record[column])}, not a string; give the text "
                        "itself (or choose its column with data.text_column)")
        value = record[cfg.data.label_column]
        if structure(value):
            return (f"the label (column '{cfg.data.label_column}') is {structure(value)}; a classifier predicts "
                    "one label per text (multi-label classification is not supported), given as a string or number")
        if blank(value):
            return f"the label (column '{cfg.data.label_column}') is blank"
        return None

    def input_text(self, record: Record, cfg: RunConfig) -> str:
        return FIELD_SEP.join("" if blank(record.get(c)) else str(record[c]) for c in self._text_columns(cfg))

    def prompt_texts(self, record: Record, cfg: RunConfig) -> list[str]:
        return [str(record[c]) for c in self._text_columns(cfg) if not blank(record.get(c))]

    def stratum(self, record: Record, cfg: RunConfig) -> str | None:
        return label_key(record[cfg.data.label_column])

    def augment_columns(self, cfg: RunConfig) -> list[str]:
        return self._text_columns(cfg)

    def prepare(self, cfg: RunConfig, tokenizer: PreTrainedTokenizerBase, records: dict[str, list[Record]],
                where: dict[str, list[str]]) -> Prepared:
        """Label names from the training split; tokenised splits (unseen labels elsewhere: one-line error)."""
        label = cfg.data.label_column
        names = label_names([r[label] for r in records["train"]])
        if len(names) < 2:
            raise ConfigError(f"{cfg.data.source}: column '{label}' has a single label ({names[0]}) in the training "
                              f"split; classification needs two or more{_sampled(cfg)}")
        every = [r[label] for split in records.values() for r in split]  # not the split alone: 3 rows per label
        n, distinct = len(every), len(label_names(every))  # leave 1 per label for training
        if n >= 20 and distinct > 0.8 * n:  # nearly every example its own label
            raise ConfigError(f"{cfg.data.source}: column '{label}' holds {distinct} different labels in {n} "
                              "examples; a classifier needs each label on several examples (a number to predict, "
                              "like a score, is regression, which tuneforge does not train)")
        cased = [g for g in {n.lower(): [m for m in names if m.lower() == n.lower()] for n in names}.values()
                 if len(g) > 1]
        if cased:
            print(f"note: {cfg.data.source}: labels {'; '.join(' and '.join(map(repr, g)) for g in cased[:3])} differ "
                  "only in case and are separate classes; write them one way if they mean the same", file=sys.stderr)
        listed = [n for n in names if n.startswith("[") and n.endswith("]") and "," in n]  # "[0, 2]": a CSV's list
        if listed:
            print(f"note: {cfg.data.source}: labels such as {listed[0]!r} look like lists; each is one class of its "
                  "own (multi-label classification is not supported)", file=sys.stderr)
        meta = {"labels": names}
        meta.update(end_token.setup(cfg, tokenizer))  # an encoder-decoder's head reads it
        enc = {k: self.encode(records[k], cfg, tokenizer, meta, where[k]) for k in ("train", "validation", "test")}
        return Prepared(train=enc["train"], validation=enc["validation"], test=enc["test"], meta=meta)

    def encode(self, records: list[Record], cfg: RunConfig, tokenizer: PreTrainedTokenizerBase,
               meta: dict[str, Any], where: list[str]) -> list[Example]:
        """Tokenise records; labels must be among ``meta['labels']`` (a record without a label gets -1);
        ``_cut`` marks an example longer than ``model.max_length`` (cut to it)."""
        if not records:
            return []
        d = cfg.data
        ids = {n: i for i, n in enumerate(meta["labels"])}
        labels = []
        for row, r in zip(where, records):
            value = r.get(d.label_column)
            if blank(value):
                labels.append(-1)
            elif (key := label_key(value)) in ids or (key := str(value)) in ids:  # str: runs from before label_key
                labels.append(ids[key])
            else:
                raise ConfigError(f"{row}: label '{value}' (column '{d.label_column}') was not seen in training "
                                  f"(labels: {', '.join(meta['labels'])}); fix the label, or train on data that holds "
                                  f"examples of it{_sampled(cfg)}")
        text = (lambda r, c: "" if blank(r.get(c)) else str(r[c]))  # a null/NaN text is empty, not "None"
        texts = [text(r, d.text_column) for r in records]
        pairs = [text(r, d.text_pair_column) for r in records] if d.text_pair_column else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=cfg.model.max_length, **end_token.encode_kwargs(meta))
        lost = end_token.end_rows(enc, meta, cfg.model.max_length)
        keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
        # an empty text with a tokenizer that adds no special tokens (GPT-2, Llama without BOS) would be a
        # zero-length example, which the model cannot run: it becomes one end-of-text (or unknown) token
        filler = next((t for t in (tokenizer.eos_token_id, tokenizer.unk_token_id, tokenizer.pad_token_id)
                       if t is not None), 0)
        for i, ids in enumerate(enc["input_ids"]):
            if not ids:
                enc["input_ids"][i] = [filler]
                if "token_type_ids" in enc:
                    enc["token_type_ids"][i] = [0]
        overflowing = [bool(e.overflowing) for e in enc.encodings] if enc.encodings else [False] * len(records)
        cut = [o or i in lost for i, o in enumerate(overflowing)]
        return [{**{k: enc[k][i] for k in keys}, "labels": labels[i], **({"_cut": True} if cut[i] else {})}
                for i in range(len(records))]

    def encode_any(self, records: list[Record], cfg: RunConfig, tokenizer: PreTrainedTokenizerBase,
                   meta: dict[str, Any], where: list[str]) -> list[Example]:
        """Tokenise records of another source (replay data): the run's own columns and labels."""
        return self.encode(records, cfg, tokenizer, meta, where)

    def source_meta(self, records: list[Record], cfg: RunConfig, meta: dict[str, Any], where: list[str]
                    ) -> dict[str, Any]:
        return meta  # every source has the run's columns and labels

    def setup_tokenizer(self, tokenizer: PreTrainedTokenizerBase, cfg: RunConfig, meta: dict[str, Any]) -> None:
        return None

    def pack(self, examples: list[Example], cfg: RunConfig, keep_apart: bool) -> list[Example]:
        return examples

    # -- model and loss -----------------------------------------------------------------------------------
    def load_model(self, path: str | Path, cfg: RunConfig, meta: dict[str, Any], pad_id: int,
                   device: torch.device) -> tuple[nn.Module, list[str]]:
        """Pre-trained backbone + fresh classification head -> (model, fresh module names)."""
        return load_labelled(AutoModelForSequenceClassification, path, cfg, meta["labels"], pad_id)

    def packing_ok(self, model: nn.Module, examples: list[Example], rt: Runtime) -> bool:
        """Padding-free batches: never (one label per row; the heads read one position per example)."""
        return False

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross-entropy of the batch's examples."""
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # (batch, labels)
        return nn.functional.cross_entropy(logits.float(), batch["labels"], reduction="sum")

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] >= 0).sum())

    # -- evaluation and use ---------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_proba(self, model: nn.Module, examples: list[Example], rt: Runtime, batch_size: int,
                      progress: bool = False, log: bool = False) -> torch.Tensor:
        """Class probabilities (``log``: their logarithms, exact where a probability rounds to 0), (n, labels), in
        the order of ``examples``."""
        model.eval()
        lengths = [len(e["input_ids"]) for e in examples]
        order = batch_order(lengths, batch_size, 0, 0, shuffle=False, group_by_length=True)
        rows: dict[int, torch.Tensor] = {}
        bar = progress_bar(order, desc="evaluate", leave=False, disable=not progress)
        for idx, batch in zip(bar, iterate(examples, order, rt.pad_id, shapes=rt.shapes)):
            batch = {k: v.to(rt.device) for k, v in batch.items() if k != "labels"}
            with autocast(rt.device, rt.bf16):
                logits = model(**batch).logits  # (batch, labels)
            rows.update(zip(idx, (logits.float().log_softmax(-1) if log else logits.float().softmax(-1)).cpu()))
        return torch.stack([rows[i] for i in range(len(examples))])  # (n, labels)

    def evaluate(self, model: nn.Module, examples: list[Example], rt: Runtime, cfg: RunConfig,
                 meta: dict[str, Any], progress: bool = False, **_: Any) -> dict[str, Any]:
        """Accuracy, macro-F1, per-class P/R/F1 (scikit-learn's semantics) and mean loss over labelled examples."""
        examples = [e for e in examples if e["labels"] >= 0]
        if not examples:
            return {}
        log_probs = self.predict_proba(model, examples, rt, cfg.eval.batch_size, progress, log=True)  # (n, labels)
        labels = torch.tensor([e["labels"] for e in examples])
        metrics = classification_metrics(log_probs.argmax(-1).tolist(), labels.tolist(), meta["labels"])
        metrics["loss"] = float(nn.functional.nll_loss(log_probs, labels))  # the training loss's cross-entropy
        return metrics

    def predict(self, model: nn.Module, inputs: list[Any], rt: Runtime, cfg: RunConfig, meta: dict[str, Any],
                tokenizer: Any) -> list[dict[str, Any]]:
        """Label and class probabilities per input: a text, or a (text, second text) pair for a classifier
        trained on pairs (``data.text_pair_column``)."""
        d = cfg.data
        pairs = [isinstance(x, tuple) for x in inputs]
        if d.text_pair_column and not all(pairs):
            raise ConfigError(f"this run was trained on text pairs ('{d.text_column}' + '{d.text_pair_column}'): give "
                              "a second text for each (--pair / tab-separated stdin lines; Run.predict(texts, pairs))")
        if not d.text_pair_column and any(pairs):
            raise ConfigError("this run classifies single texts: drop the second texts (--pair)")
        records = [{d.text_column: x[0], d.text_pair_column: x[1]} if isinstance(x, tuple) else {d.text_column: x}
                   for x in inputs]
        examples = self.encode(records, cfg, tokenizer, meta, [f"input {i + 1}" for i in range(len(inputs))])
        if cut := sum(bool(e.get("_cut")) for e in examples):
            n = cfg.model.max_length
            print(f"note: {cut} input(s) longer than model.max_length={n} tokens are classified from their first {n} "
                  "(as in training): the rest is not read", file=sys.stderr)
        probs = self.predict_proba(model, examples, rt, cfg.eval.batch_size)
        names = meta["labels"]
        rows = []
        for x, p in zip(inputs, probs):
            row = {"text": x[0], "pair": x[1]} if isinstance(x, tuple) else {"text": x}
            rows.append({**row, "label": names[int(p.argmax())], "probabilities": dict(zip(names, map(float, p)))})
        return rows

    def describe(self, prediction: dict[str, Any]) -> str:
        """``label<TAB>probabilities<TAB>text``: every class's probability, or of many classes the most likely
        (``--json`` holds them all)."""
        p, more = prediction["probabilities"], len(prediction["probabilities"]) - SHOWN
        shown = sorted(p.items(), key=lambda kv: -kv[1])[:SHOWN] if more > 0 else p.items()
        probs = "  ".join(f"{k}={v:.3f}" for k, v in shown) + (f"  (+{more} more)" if more > 0 else "")
        texts = [prediction["text"]] + ([prediction["pair"]] if "pair" in prediction else [])
        text = "\t".join(map(one_line, texts))  # a pair's two texts a tab apart
        return f"{prediction['label']}\t{probs}\t{text}"

    def default_probes(self, cfg: RunConfig) -> list[str]:
        return []

    def default_reference(self, cfg: RunConfig) -> str | None:
        return None
