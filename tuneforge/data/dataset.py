"""Records for each split, with where every record came from: read every source, check every row before
anything is created, group exact duplicates, split (seeded, stratified) or take the given files, and record
the split (source fingerprints + row numbers) so a run can be evaluated on exactly its own test rows later.

The task decides how a source is read and what a row must hold (``Task.read_source``, ``Task.row_problem``,
``Task.input_text``, ``Task.stratum``); this module never looks at a task's name.
"""
from __future__ import annotations

import hashlib
import json
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tuneforge.config import ConfigError, RunConfig
from tuneforge.data import embedded, row_numbers
from tuneforge.data.chat import context_note
from tuneforge.data.readers import FIELD_SEP, column_names, file_digest, header_hint, place, require_file
from tuneforge.data.split import sample, split

Record = dict[str, Any]
SPLITS = ("train", "validation", "test")


@dataclass
class Source:
    """One data source: an embedded data set or a file, and the fingerprint of its content."""
    name: str  # as configured
    path: str | None  # absolute path of a file (None for an embedded set)
    fingerprint: str  # sha256 of the file's bytes / of an embedded set's records
    rows: int


@dataclass
class Splits:
    """The three splits' records, each with its (source index, row index)."""
    records: dict[str, list[Record]]
    rows: dict[str, list[tuple[int, int]]]
    sources: list[Source]
    duplicates: int = 0  # rows whose input text (whitespace-normalised) repeats an earlier row's
    skipped: int = 0  # invalid rows left out (data.skip_invalid)
    dropped_overlap: int = 0  # validation/test rows of separate files that repeat a training row
    empty_texts: int = 0
    first_empty: str = ""  # where the first of them is (file and row)
    held_out: set[str] = field(default_factory=set)  # input keys of validation + test (never replayed)
    conflicts: list[tuple[str, list[str]]] = field(default_factory=list)  # (text, its labels) of texts labelled apart

    def where(self, name: str) -> list[str]:
        """``"<source>, row <n>"`` for each record of split ``name`` (1-based rows of the source)."""
        return [place(self.sources[s].name, r) for s, r in self.rows[name]]

    def manifest(self) -> dict[str, Any]:
        """What ``split.json`` stores."""
        return {"sources": [vars(s) for s in self.sources], **{k: [list(x) for x in self.rows[k]] for k in SPLITS},
                "duplicates": self.duplicates, "skipped_invalid": self.skipped,
                "dropped_overlap": self.dropped_overlap, "empty_texts": self.empty_texts}

    def summary(self) -> dict[str, int]:
        """Counts for metrics.json and the result table."""
        return {**{k: len(self.records[k]) for k in SPLITS}, "duplicates": self.duplicates,
                "skipped_invalid": self.skipped, "dropped_overlap": self.dropped_overlap,
                "empty_texts": self.empty_texts}


def normalise(text: str) -> str:
    """Whitespace-normalised text: what makes two examples duplicates. Each text of a pair is normalised on its
    own (``str.split`` counts the separator as whitespace), so ("a b", "c") and ("a", "b c") stay apart."""
    return FIELD_SEP.join(" ".join(part.split()) for part in str(text).split(FIELD_SEP))


def read_source(task: Any, name: str, cfg: RunConfig) -> tuple[list[Record], Source]:
    """Records of an embedded data set or a file, with its :class:`Source`."""
    if embedded.is_embedded(name):
        records = embedded.load(name)
        digest = hashlib.sha256(json.dumps(records, sort_keys=True, default=str).encode()).hexdigest()
        return records, Source(name, None, digest, len(records))
    path = require_file(name)
    records = task.read_source(str(path), cfg)
    row_numbers.alias(name, str(path), len(records))  # messages name the file as configured
    return records, Source(name, str(path.resolve()), file_digest(path), len(records))


def _checked(task: Any, records: list[Record], src: int, source: Source, cfg: RunConfig,
             counts: dict[str, int], training: bool = True) -> list[tuple[Record, tuple[int, int]]]:
    """Every row checked (``Task.row_problem``): one-line error naming file, row and column, or with
    ``data.skip_invalid`` the row is left out and counted. Outside ``training`` (``evaluate --data``) the error's
    fix names no training setting."""
    present = set().union(*(record.keys() for record in records)) if records else set()
    read_from = getattr(task, "source_column", lambda c: c) if source.path else lambda c: c  # a file's own spelling
    for column in map(read_from, task.required_columns(cfg)):
        if column not in present:
            own = {k: v for k, v in records[0].items() if read_from(k) == k} if records else None  # not copies
            raise ConfigError(f"{source.name}: column '{column}' not found; columns are "
                              f"{column_names(own) if own else 'none'} "
                              + ("(choose with --text-column / --label-column, or data.text_column / data.label_column)" if training else
                                 "(evaluate reads the columns the run was trained on: name them so in the file)")
                              + header_hint(source.path, records))
    out = []
    for r, record in enumerate(records):
        problem = task.row_problem(record, cfg)
        if problem is not None:
            if cfg.data.skip_invalid:
                counts["skipped"] += 1
                continue
            fix = ("fix the row, remove it, or skip invalid rows with data.skip_invalid=true (calibrate: "
                   "--skip-invalid)") if training else "fix the row or remove it"
            raise ConfigError(f"{place(source.name, r)}: {problem}; {fix}")
        if "" in normalise(task.input_text(record, cfg)).split(FIELD_SEP):  # a pair's second text counts too
            counts["empty"] += 1
            counts.setdefault("first_empty", place(source.name, r))
        out.append((record, (src, r)))
    return out


def _groups(items: list[tuple[Record, tuple[int, int]]], task: Any, cfg: RunConfig
            ) -> tuple[list[list[tuple[Record, tuple[int, int]]]], int]:
    """Rows grouped by input text (duplicates go to the same split); returns (groups, duplicate rows)."""
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(normalise(task.input_text(item[0], cfg)), []).append(item)
    return list(groups.values()), len(items) - len(groups)


def _conflicts(groups: list[list[tuple[Record, tuple[int, int]]]], task: Any, cfg: RunConfig
               ) -> list[tuple[str, list[str]]]:
    """(text, labels) of each duplicated text whose copies carry different labels (classes: ``task.stratum``)."""
    out = []
    for g in groups:
        labels = sorted({task.stratum(r, cfg) for r, _ in g} - {None}) if len(g) > 1 else []
        if len(labels) > 1:
            out.append((task.input_text(g[0][0], cfg), labels))
    return out


def load_splits(cfg: RunConfig, task: Any) -> Splits:
    """The configured data as checked, deduplicated splits (separate files win over splitting
    ``data.dataset``)."""
    d = cfg.data
    counts = {"skipped": 0, "empty": 0}
    names = [n for n in (d.train_file, d.validation_file, d.test_file)] if d.train_file else [d.dataset]
    sources, checked = [], []
    for i, name in enumerate(names):
        if name is None:
            checked.append([])
            continue
        records, source = read_source(task, name, cfg)
        sources.append(source)
        checked.append(_checked(task, records, len(sources) - 1, source, cfg, counts))
    parts: dict[str, list] = {k: [] for k in SPLITS}
    duplicates = dropped = 0
    if d.train_file:
        groups, duplicates = _groups(checked[0], task, cfg)
        given = {"validation": checked[1], "test": checked[2]}
        missing = [k for k in ("validation", "test") if not given[k]]
        if missing and any(d.split[SPLITS.index(k)] > 0 for k in missing):
            fractions = [d.split[0] + sum(d.split[SPLITS.index(k)] for k in SPLITS[1:] if k not in missing)]
            fractions += [d.split[SPLITS.index(k)] if k in missing else 0.0 for k in SPLITS[1:]]
            parts = _split_groups(groups, fractions, d.seed, task, cfg)
        else:
            parts["train"] = [x for g in groups for x in g]
        seen = {normalise(task.input_text(r, cfg)): "train" for r, _ in parts["train"]}  # text -> its split
        for k in ("validation", "test"):
            repeated = set()
            for record, where in given[k]:
                key = normalise(task.input_text(record, cfg))
                if key in seen:
                    dropped += 1
                    repeated.add(seen[key])
                    continue
                parts[k].append((record, where))
            if given[k] and not parts[k]:
                files = {"data.validation_file" if s == "validation" and given["validation"] else "data.train_file"
                         for s in repeated}  # a validation split drawn from the training file is that file's
                other = " or ".join(sorted(files, key=lambda f: f != "data.train_file"))
                raise ConfigError(f"{getattr(d, k + '_file')}: every row repeats an example of {other}, so nothing "
                                  f"would be left to {'validate' if k == 'validation' else 'test'} on; give "
                                  f"examples that {other} does not hold")
            seen.update((normalise(task.input_text(r, cfg)), k) for r, _ in parts[k])
        if d.max_examples is not None and d.max_examples < len(parts["train"]):  # a seeded sample, in file order,
            strata = [task.stratum(r, cfg) for r, _ in parts["train"]]  # each class in proportion
            parts["train"] = [parts["train"][i] for i in sample(strata, d.max_examples, d.seed)]
    else:
        groups, duplicates = _groups(checked[0], task, cfg)
        if d.max_examples is not None and d.max_examples < sum(len(g) for g in groups):
            random.Random(d.seed).shuffle(groups)
            kept, n = [], 0
            for g in groups:
                if n >= d.max_examples:
                    break
                kept.append(g)
                n += len(g)
            groups = kept
            duplicates = sum(len(g) - 1 for g in groups)  # within the examples kept
        parts = _split_groups(groups, d.split, d.seed, task, cfg)
    if d.skip_invalid:  # rows of a class the training split lacks (a label never seen in training) are invalid too
        known = {task.stratum(r, cfg) for r, _ in parts["train"]}
        if None not in known:
            for k in ("validation", "test"):
                kept = [x for x in parts[k] if task.stratum(x[0], cfg) in known]
                counts["skipped"] += len(parts[k]) - len(kept)
                parts[k] = kept
    if not parts["train"]:
        raise ConfigError("data: the training split is empty; provide more examples or a larger data.split[0]")
    out = Splits({k: [r for r, _ in v] for k, v in parts.items()}, {k: [w for _, w in v] for k, v in parts.items()},
                 sources, duplicates, counts["skipped"], dropped, counts["empty"], counts.get("first_empty", ""))
    out.held_out = {normalise(task.input_text(r, cfg)) for k in ("validation", "test") for r in out.records[k]}
    out.conflicts = _conflicts(groups, task, cfg)
    return out


def _split_groups(groups: list[list], fractions: list[float], seed: int, task: Any, cfg: RunConfig
                  ) -> dict[str, list]:
    """Seeded split of duplicate groups, stratified by the task's stratum (class) of each group: the rarest one
    among its rows, so a class that occurs only on copies of a text labelled otherwise too is not left out of
    training (a class too small for every split is trained on)."""
    counts = Counter(task.stratum(r, cfg) for g in groups for r, _ in g)

    def stratum(group: list) -> Any:
        return min({task.stratum(r, cfg) for r, _ in group}, key=lambda s: (counts[s], str(s)))
    train, val, test = split(groups, fractions, seed, stratum if None not in counts else None)
    return {"train": [x for g in train for x in g], "validation": [x for g in val for x in g],
            "test": [x for g in test for x in g]}


def cut_note(examples: list[dict[str, Any]], max_length: int) -> str | None:
    """The note on the examples the task cut to ``max_length`` (marked ``_cut``), or None."""
    cut = sum("_cut" in e for e in examples)
    return (f"note: {cut} of {len(examples)} examples are longer than model.max_length={max_length} tokens and were "
            "cut to fit; a larger model.max_length keeps more of them") if cut else None


def warnings(s: Splits, data: Any = None, max_length: int = 0, trains: bool = True) -> list[str]:
    """One line per thing the user should know about the data (duplicates, rows left out, empty texts, and,
    given the tokenised ``data``, examples cut to ``max_length``: those the task marked ``_cut``); ``trains``
    False (``calibrate``: nothing is trained) leaves out the missing validation split's consequences."""
    splits = [getattr(data, k) for k in ("train", "validation", "test")] if data is not None else []
    examples = [e for split in splits for e in split]
    out = [line for line in (cut_note(examples, max_length), context_note(examples)) if line]
    if s.duplicates:
        out.append(f"note: the data holds {s.duplicates} duplicate example(s) (the same input text after whitespace "
                   "normalisation, whatever their labels or answers); duplicates are kept in one split")
    if s.conflicts:
        text, labels = s.conflicts[0]
        text = text.replace(FIELD_SEP, " | ")  # a sentence pair, readable
        out.append(f"warning: {len(s.conflicts)} text(s) occur with different labels (e.g. {text[:60]!r}: "
                   f"{', '.join(labels)}); each copy trains with its own label: fix them if that is a mistake")
    if s.dropped_overlap:
        out.append(f"warning: {s.dropped_overlap} validation/test row(s) repeat an example of an earlier split "
                   "(training; validation, for test rows) and were left out")
    if s.skipped:
        out.append(f"warning: {s.skipped} invalid row(s) skipped (data.skip_invalid)")
    if s.empty_texts:
        out.append(f"warning: {s.empty_texts} example(s) have an empty text (the first: {s.first_empty}); they train "
                   "as they are: fix or remove them if that is a mistake")
    if trains and not s.records["validation"]:
        out.append("warning: no validation examples: the last step's weights are kept and nothing stops early "
                   "(more data or a larger data.split[1] gives them)")
    if not s.records["test"]:
        out.append("warning: no test examples: nothing will be evaluated (more data or a larger data.split[2])")
    return out


def prepare(cfg: RunConfig, task: Any, tokenizer: Any) -> tuple[Splits, Any]:
    """The configured data read, checked, split, augmented (training split) and tokenised by the task:
    (``Splits``, ``tasks.Prepared``)."""
    from tuneforge.data.augment import augment_train

    splits = load_splits(cfg, task)
    records, where = dict(splits.records), {k: splits.where(k) for k in SPLITS}
    records["train"] = augment_train(records["train"], cfg, task.augment_columns(cfg))
    where["train"] = [w for w in where["train"] for _ in range(cfg.forgetting.augment.copies + 1)]
    return splits, task.prepare(cfg, tokenizer, records, where)


def restore(manifest: dict[str, Any], name: str, task: Any, cfg: RunConfig) -> tuple[list[Record], list[str]]:
    """The records of split ``name`` exactly as a run stored them (``split.json``), with their row names;
    refuses (one line) when a source changed since training."""
    sources = [Source(**s) for s in manifest["sources"]]
    cache: dict[int, list[Record]] = {}
    for i, s in enumerate(sources):
        try:
            records, now = read_source(task, s.path or s.name, cfg)
        except ConfigError as exc:
            raise ConfigError(f"{exc}; the run's stored split refers to it: restore it, or evaluate on a file "
                              "explicitly with --data FILE") from None
        if now.fingerprint != s.fingerprint:
            raise ConfigError(f"data source {s.path or s.name} changed since training (fingerprint differs); its "
                              "stored split no longer applies: evaluate on a file explicitly with --data FILE")
        row_numbers.alias(s.name, s.path or s.name, len(records))  # read by its path, named as configured
        cache[i] = records
    rows = [tuple(x) for x in manifest[name]]
    return [cache[s][r] for s, r in rows], [place(sources[s].name, r) for s, r in rows]


def source_records(task: Any, name: str, cfg: RunConfig, training: bool = True) -> tuple[list[Record], list[str]]:
    """Every checked record of a data set name or file, with row names (``evaluate --data``: not ``training``;
    replay data)."""
    records, source = read_source(task, name, cfg)
    counts = {"skipped": 0, "empty": 0}
    checked = _checked(task, records, 0, source, cfg, counts, training)
    if counts["skipped"]:
        print(f"note: {name}: {counts['skipped']} invalid row(s) skipped (data.skip_invalid)", file=sys.stderr)
    return [r for r, _ in checked], [place(name, r) for _, (_, r) in checked]

