"""Typed run configuration: dataclasses, YAML files and dotted CLI overrides. Unknown keys are errors
(``tuneforge.strict``)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tuneforge.forgetting_config import (PROBES, AugmentConfig, ForgettingConfig, RegularizeConfig,
                                         ReplayConfig)
from tuneforge.strict import (ConfigError, UniqueKeyLoader, build_dataclass, field_hint, is_text, name_key, non_negative,
                              positive, yaml_problem)

__all__ = ["ConfigError", "build_dataclass", "positive", "RunConfig", "load_config", "merge_dicts", "parse_overrides",
           "ForgettingConfig", "ReplayConfig", "AugmentConfig", "RegularizeConfig", "PROBES"]


@dataclass
class ModelConfig:
    name: str = "minilm"  # embedded model (minilm, smollm2), a local Hugging Face folder or a cached Hub id
    task: Literal["classification", "causal_lm", "token_classification", "seq2seq"] = "classification"  # what it learns
    #   to do (seq2seq: an output text per input text, for encoder-decoders such as T5 and BART)
    max_length: int = 128  # tokens per example after truncation
    trust_remote_code: bool = False  # allow custom model code from the folder (off unless asked for)

    def __post_init__(self) -> None:
        positive("model.max_length", self.max_length)


@dataclass
class DataConfig:
    dataset: str = "rotten_tomatoes"  # embedded data set name, or a file (.csv/.jsonl/.json/.parquet)
    train_file: str | None = None  # separate files per split (instead of splitting `dataset`)
    validation_file: str | None = None
    test_file: str | None = None
    text_column: str = "text"  # column holding the text (or the prompt for causal LM pairs)
    text_pair_column: str | None = None  # optional second text column (sentence pairs)
    label_column: str = "label"  # column holding the label (or the answer for causal LM pairs)
    tokens_column: str = "tokens"  # token classification: column holding a list of words (JSONL/Parquet)
    tags_column: str = "tags"  # token classification: column holding their tags (BIO/IOB2 or plain labels)
    tag_names: list[str] | None = None  # token classification: names of integer tags by id, e.g. [O, B-PER, I-PER]
    label_all_subtokens: bool = False  # token classification: every sub-token of a word carries its tag in training
    stride: int | None = None  # token classification: tokens shared by consecutive windows of a sentence over
    #                            max_length; default: 32, or under half a window when max_length is short
    skip_invalid: bool = False  # leave out (and count) invalid rows instead of stopping with an error: rows
    #                             that read but lack a text or label (not a line that is not JSON, a CSV row with
    #                             extra cells, or a token-classification sentence: those readers stop there)
    format: Literal["auto", "pairs", "chat", "text"] = "auto"  # causal LM / seq2seq data layout
    template: str | None = None  # causal LM chat template: alpaca | plain | one the tokenizer names | .jinja file | inline Jinja
    system_prompt: str | None = None  # optional system message for chat-rendered prompts (seq2seq: before the input)
    packing: bool = False  # causal LM: concatenate short examples into rows of max_length (kept apart)
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train/validation/test fractions
    seed: int = 42  # seed of the split
    max_examples: int | None = None  # at most this many examples, shuffled (separate files: the training file's, by class)

    def __post_init__(self) -> None:
        if len(self.split) != 3 or not all(0 <= f < math.inf for f in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise ConfigError(f"data.split must be three non-negative fractions summing to 1, got {self.split}")
        positive("data.max_examples", self.max_examples)
        if self.train_file is None and (self.validation_file or self.test_file):
            given = "data.validation_file" if self.validation_file else "data.test_file"
            raise ConfigError(f"{given} is given without data.train_file: set data.train_file too (separate files "
                              "per split), or give one file as data.dataset to be split")
        if self.stride is not None and self.stride < 0:
            raise ConfigError(f"data.stride must be >= 0, got {self.stride}")

    @property
    def source(self) -> str:
        """The training data's file (separate files per split) or ``dataset``, to name the data in reports."""
        return self.train_file or self.dataset


HEAD_LR = 3e-3  # train.head_lr left unset: a fresh head trains at max(train.lr, HEAD_LR) (docs/benchmarks.md)


@dataclass
class TrainConfig:
    optimizer: Literal["adamw", "sgd", "rmsprop"] = "adamw"
    lr: float | None = None  # learning rate; default: the method's per task and model (tuneforge methods); 0: no update
    head_lr: float | None = None  # learning rate of a freshly initialised task head (classification, token
    #                               classification); null: the larger of train.lr and the method's head floor
    #                               (3e-3 unless `tuneforge methods` shows another; 0 when train.lr is 0)
    pooler_with_head: bool | None = None  # classification: a pre-trained pooler (BERT's) that the method leaves
    #                                       frozen trains in full with the head, at its rate; null: the method's
    #                                       default (on for adapter and P-tuning, see `tuneforge methods`)
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd / rmsprop only
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    warmup_ratio: float = 0.06  # fraction of steps with linear warmup
    epochs: float | None = None  # passes over the training data; unset (and no max_steps): automatic length
    max_steps: int | None = None  # optimizer steps; overrides epochs
    auto_min_steps: int = 250  # automatic length: enough epochs for at least this many optimizer steps ...
    auto_max_epochs: int = 30  # ... but at most this many epochs (validation each epoch, the best kept)
    batch_size: int = 32
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float | None = 1.0  # gradient clipping; null disables
    seed: int = 42
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast where supported, else fp32
    group_by_length: bool | None = None  # batch similar lengths together to cut padding, the longest batch first
    #                                      (too large for memory: it fails at once); default: the task's
    #                                      (classification: on; causal LM: off, it trained worse)
    length_group_batches: int = 64  # group_by_length: batches per length-sorted window (fewer: more varied
    #                                 batches, more padding)
    padding_free: bool = True  # causal LM: pack each batch's examples into rows (no example attends to another);
    #                            used where a start-up check shows the model supports it, else padded rows
    eval_every: int | None = None  # evaluate every N optimizer steps; default: each epoch
    early_stopping: int | None = None  # stop after N evaluations without improvement (0: never); default: none,
    #                                    except under the automatic length for causal LM and seq2seq (3: their
    #                                    validation loss has no plateau)
    log_every: int = 10  # log training loss every N optimizer steps
    save_every: int | None = None  # resumable checkpoint every N optimizer steps; default: at each evaluation; 0: never
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: each process's own GPU, or cpu)
    distributed: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate (DDP) or shard (FSDP2) the model
    num_threads: int | None = None  # torch CPU threads; default: torch's choice

    def __post_init__(self) -> None:
        for key in ("lr", "head_lr", "weight_decay", "momentum"):
            non_negative(f"train.{key}", getattr(self, key))
        positive("train.batch_size", self.batch_size)
        positive("train.grad_accum", self.grad_accum)
        positive("train.epochs", self.epochs)
        positive("train.auto_min_steps", self.auto_min_steps)
        positive("train.auto_max_epochs", self.auto_max_epochs)
        positive("train.max_steps", self.max_steps)
        positive("train.eval_every", self.eval_every)
        non_negative("train.early_stopping", self.early_stopping)
        positive("train.log_every", self.log_every)
        positive("train.length_group_batches", self.length_group_batches)
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"train.num_threads must be positive, got {self.num_threads}; leave it out (null) for "
                              "torch's own choice")
        if self.save_every is not None and self.save_every < 0:
            raise ConfigError(f"train.save_every must be >= 0, got {self.save_every}")
        positive("train.max_grad_norm", self.max_grad_norm)
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class EvalConfig:
    batch_size: int = 64
    before: bool = True  # also evaluate the untrained model on the test split
    generate_samples: int = 32  # causal LM, seq2seq: distinct test prompts answered for BLEU/ROUGE
    max_new_tokens: int = 48  # causal LM, seq2seq: generation length for evaluation (seq2seq: and predict)

    def __post_init__(self) -> None:
        positive("eval.batch_size", self.batch_size)
        non_negative("eval.generate_samples", self.generate_samples)
        positive("eval.max_new_tokens", self.max_new_tokens)


DEFAULT_METHOD = "lora"  # the method of a config that names none (its options alone may be given)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": DEFAULT_METHOD})  # name + the method's options
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig)
    output_dir: str | None = None  # run directory; default runs/<method>-<timestamp>

    def __post_init__(self) -> None:
        self.method = {"name": DEFAULT_METHOD, **self.method}  # the default method when only options are given
        self.method["name"] = name_key(self.method["name"])  # LoRA, IA3 as the papers write them

    @property
    def method_name(self) -> str:
        return str(self.method["name"])

    def method_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.method.items() if k != "name"}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["method.rank=16", "train.lr=1e-3"]`` -> nested dict of YAML scalars; a ``str`` key takes its text as
    given unless quoted ('on', 'Answer: briefly', 'exp #2'; null unsets ``str | None``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            hint = "; give a config file with -c" if pair.lower().endswith((".yaml", ".yml")) else ""
            raise ConfigError(f"override '{pair}' must look like key.sub=value{hint}")
        key, raw = pair.split("=", 1)
        parts = key.strip().split(".")
        hint = field_hint(RunConfig, parts)
        value = _yaml_value(pair, raw) if not is_text(hint) or raw.strip().startswith(("'", '"')) else (
            None if hint is not str and raw.strip() in ("", "~", "null", "Null", "NULL") else raw)
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{pair}': '{part}' is not a section")
        node[parts[-1]] = value
    return out


def _yaml_value(pair: str, raw: str) -> Any:
    """The value of override ``pair`` read as YAML (one line naming the override where it is not YAML)."""
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{pair}': the value is not valid YAML ({str(exc).splitlines()[0]}); "
                          "quote it, e.g. key='value'") from None
    if isinstance(value, dict) and not raw.lstrip().startswith("{"):
        return raw  # 'Answer: briefly' is text, not a one-key mapping (a method option)
    return value


def merge_dicts(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``extra`` wins. Changing ``method.name`` drops the other method's options."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            if key == "method" and "name" in value and (name_key(value["name"]) !=
                                                        name_key(out[key].get("name", DEFAULT_METHOD))):
                out[key] = dict(value)
            else:
                out[key] = merge_dicts(out[key], value)
        elif isinstance(value, dict) and out.get(key) is not None:  # a section given as a number or text
            raise ConfigError(f"{key}: expected a mapping, got {out[key]!r}")
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML file (optional) and apply dotted overrides; validate everything."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} is a folder; give a YAML file" if p.is_dir() else
                              f"config file {p} does not exist")
        try:
            data = yaml.load(p.read_text(encoding="utf-8"), Loader=UniqueKeyLoader) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"{p}: not UTF-8 text; save the config file as UTF-8") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML, {yaml_problem(exc)}") from None
        except ConfigError as exc:  # a key given twice
            raise ConfigError(f"{p}, {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections (model, data, method, train, eval)")
    if overrides:
        extra = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        data = merge_dicts(data, extra)
    return build_dataclass(RunConfig, data)
