"""Records for each split: an embedded data set or files, split by seeded fractions (stratified) or given."""
from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from tuneforge.config import ConfigError, DataConfig
from tuneforge.data import embedded
from tuneforge.data.readers import SUFFIXES, read_records, require_columns
from tuneforge.data.split import split

Records = list[dict[str, Any]]


def source_records(name: str, columns: list[str] = ()) -> Records:
    """Records of an embedded data set name or a file path, checked to have ``columns``."""
    records = embedded.load(name) if embedded.is_embedded(name) else read_records(name)
    require_columns(records, list(columns), name)
    return records


def load_splits(cfg: DataConfig, columns: list[str] = (), key: Callable[[dict[str, Any]], Any] | None = None
                ) -> tuple[Records, Records, Records]:
    """(train, validation, test) records having ``columns``; stratified by ``key``.
    Separate files win over splitting ``cfg.dataset``."""
    if cfg.train_file:
        train = source_records(cfg.train_file, columns)
        val = source_records(cfg.validation_file, columns) if cfg.validation_file else []
        test = source_records(cfg.test_file, columns) if cfg.test_file else []
        if not val or not test:
            # carve the missing splits out of the training file, keeping the configured proportions
            rest = cfg.split[1] + cfg.split[2]
            want_val, want_test = (cfg.split[1] if not val else 0), (cfg.split[2] if not test else 0)
            if rest > 0 and want_val + want_test > 0:
                keep = 1 - want_val - want_test
                train, v, t = split(train, [keep, want_val, want_test], cfg.seed, key)
                val, test = val or v, test or t
    else:
        if not embedded.is_embedded(cfg.dataset) and not cfg.dataset.lower().endswith(SUFFIXES):
            raise ConfigError(
                f"data.dataset: '{cfg.dataset}' is neither an embedded data set ({', '.join(embedded.DATASETS)}) "
                "nor a .csv/.tsv/.jsonl/.json/.parquet file"
            )
        records = source_records(cfg.dataset, columns)
        if cfg.max_examples is not None and cfg.max_examples < len(records):
            records = list(records)
            random.Random(cfg.seed).shuffle(records)
            records = records[: cfg.max_examples]
        train, val, test = split(records, cfg.split, cfg.seed, key)
    if cfg.max_examples is not None and cfg.train_file:
        train = train[: cfg.max_examples]
    if not train:
        raise ConfigError("data: the training split is empty; provide more examples or a larger data.split[0]")
    return train, val, test
