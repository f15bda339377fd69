"""Tasks: what a model is trained to do. Each ``tasks/<name>.py`` defines a ``Task`` class implementing the
:class:`Task` protocol below; the pipeline, the loop, saving, export and the CLI only call it (they never
check a task's name)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from tuneforge.config import ConfigError, RunConfig
from tuneforge.data.batching import Shapes

TASKS = {
    "classification": "tuneforge.tasks.classification",
    "causal_lm": "tuneforge.tasks.causal_lm",
    "token_classification": "tuneforge.tasks.token_classification",
    "seq2seq": "tuneforge.tasks.seq2seq",
}

Record = dict[str, Any]
Example = dict[str, Any]  # token ids etc. of one training/evaluation example


@dataclass
class Runtime:
    """Where and how tensors are computed, shared by training and evaluation."""
    device: torch.device
    bf16: bool
    pad_id: int
    padding_free: bool = False  # training batches packed into rows (see data.batching.collate_packed)
    shapes: Shapes = Shapes()  # how batch lengths are rounded (a training run's: see data.batching.Shapes)


@dataclass
class Prepared:
    """Tokenised splits plus what must be stored with the run to reuse the model (e.g. the label names)."""
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    meta: dict[str, Any] = field(default_factory=dict)
    raw_test: list[Record] = field(default_factory=list)  # untokenised test records (generation, entities)


class Task(Protocol):
    """What every task declares and does."""

    name: str
    metric: str  # validation metric that picks the best checkpoint
    greater_is_better: bool
    table_metrics: tuple[str, ...]  # test metrics shown in the result table
    peft_task_type: str  # PEFT's task type for `export --format peft`
    generates: bool  # answers prompts with text (generation, own-answer probes, self-replay)
    perplexity: bool  # its evaluation reports perplexity, which forgetting.reference measures
    predict_generates: bool  # `predict` writes text (seq2seq outputs), as long as eval.max_new_tokens allows
    group_by_length: bool  # default of train.group_by_length
    auto_patience: int | None  # default of train.early_stopping under the automatic length (None: the whole plan)
    loss_unit: str  # what the loss averages over: "example" or "token"
    packs: bool  # data.packing concatenates its examples into rows

    # -- data ---------------------------------------------------------------------------------------------
    def read_source(self, path: str, cfg: RunConfig) -> list[Record]:
        """Every record of a data file (the task's file formats)."""

    def required_columns(self, cfg: RunConfig) -> list[str]:
        """Columns a data file must have (checked before any row)."""

    def row_problem(self, record: Record, cfg: RunConfig) -> str | None:
        """What is wrong with one row (missing column, blank label, ...), or None."""

    def input_text(self, record: Record, cfg: RunConfig) -> str:
        """The row's input as text: duplicates share it (after whitespace normalisation)."""

    def prompt_texts(self, record: Record, cfg: RunConfig) -> list[str]:
        """The row's input texts one by one (a conversation's user turns): what a probe's prompts and sentences are
        matched with, so that replay never trains on them."""

    def stratum(self, record: Record, cfg: RunConfig) -> str | None:
        """The class a split is stratified by, or None for an unstratified split."""

    def augment_columns(self, cfg: RunConfig) -> list[str]:
        """Text columns that word-level augmentation may change ([] refuses augmentation)."""

    def prepare(self, cfg: RunConfig, tokenizer: Any, records: dict[str, list[Record]],
                where: dict[str, list[str]]) -> Prepared:
        """Label map / layout (``meta``) from the training split and the tokenised splits."""

    def encode(self, records: list[Record], cfg: RunConfig, tokenizer: Any, meta: dict[str, Any],
               where: list[str]) -> list[Example]:
        """Tokenise records of a known layout (``where`` names each row in errors)."""

    def encode_any(self, records: list[Record], cfg: RunConfig, tokenizer: Any, meta: dict[str, Any],
                   where: list[str]) -> list[Example]:
        """Tokenise records of another source (reference and replay data), whose layout may differ."""

    def source_meta(self, records: list[Record], cfg: RunConfig, meta: dict[str, Any], where: list[str]
                    ) -> dict[str, Any]:
        """The run's ``meta`` for records of another source (``evaluate --data``): with that source's layout."""

    def setup_tokenizer(self, tokenizer: Any, cfg: RunConfig, meta: dict[str, Any]) -> None:
        """Adjust a loaded tokenizer to the run (e.g. a named chat template)."""

    def pack(self, examples: list[Example], cfg: RunConfig, keep_apart: bool) -> list[Example]:
        """Training examples packed into rows (``data.packing``), or unchanged."""

    # -- model and loss -----------------------------------------------------------------------------------
    def load_model(self, path: str | Path, cfg: RunConfig, meta: dict[str, Any], pad_id: int,
                   device: torch.device) -> tuple[nn.Module, list[str]]:
        """The pre-trained model for the task -> (model, freshly initialised module names)."""

    def packing_ok(self, model: nn.Module, examples: list[Example], rt: Runtime) -> bool:
        """Whether padding-free rows give this model (method applied) the losses of padded ones."""

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's summed loss (float32 scalar) over its ``units``."""

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        """How many examples/tokens the batch's loss sums over."""

    # -- evaluation and use ---------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, examples: list[Example], rt: Runtime, cfg: RunConfig,
                 meta: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """Metrics of the examples (``metric`` among them); extra: tokenizer, raw, run_dir, tag, progress."""

    def predict(self, model: nn.Module, inputs: list[Any], rt: Runtime, cfg: RunConfig, meta: dict[str, Any],
                tokenizer: Any) -> list[dict[str, Any]]:
        """Predictions for user inputs (``tuneforge predict``)."""

    def describe(self, prediction: dict[str, Any]) -> str:
        """One prediction as a line of text for the terminal."""

    def default_probes(self, cfg: RunConfig) -> list[str]:
        """Probes of ``forgetting.probes: [auto]`` (names of tuneforge.forgetting_config.PROBES)."""

    def default_reference(self, cfg: RunConfig) -> str | None:
        """Data whose perplexity measures forgetting by default (``forgetting.reference``), or None."""


def get(name: str) -> Task:
    """A task instance by name."""
    if name not in TASKS:
        raise ConfigError(f"model.task: unknown task '{name}'; choose one of {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name]).Task()


def one_line(text: str) -> str:
    """``text`` on one printed line: backslashes, line breaks and tabs written ``\\\\``, ``\\n``, ``\\t`` (``--json``
    keeps texts as they are)."""
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


@torch.no_grad()
def token_loss(task: Task, model: nn.Module, examples: list[Example], rt: Runtime, batch_size: int,
               progress: bool = False) -> dict[str, Any]:
    """Token-weighted mean of ``task.loss`` over ``examples`` (summed over ``task.units`` tokens), its perplexity and
    the token count: the evaluation of the tasks that learn text (causal LM, seq2seq)."""
    from tuneforge.data.batching import batch_order, iterate
    from tuneforge.evaluate import perplexity
    from tuneforge.models import autocast
    from tuneforge.progress import bar as progress_bar

    model.eval()
    order = batch_order([len(e["input_ids"]) for e in examples], batch_size, 0, 0, shuffle=False, group_by_length=True)
    total, count = 0.0, 0
    for batch in progress_bar(iterate(examples, order, rt.pad_id, shapes=rt.shapes), total=len(order),
                              desc="evaluate", leave=False, disable=not progress):
        batch = {k: v.to(rt.device) for k, v in batch.items()}
        with autocast(rt.device, rt.bf16):
            total += float(task.loss(model, batch))
        count += task.units(batch)
    return {"loss": total / count, "perplexity": perplexity(total / count), "tokens": count}
