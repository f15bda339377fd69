"""A finished run reloaded from its directory alone: predict, evaluate, generate, merge; and the model folder
a run starts from (``model.name``, or task 1's merged model in the sequential set-up)."""
from __future__ import annotations

import contextlib
import io
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from tuneforge import assets, checkpoint, resume_check, scope, tasks
from tuneforge.config import ConfigError, RunConfig
from tuneforge.data import dataset, templates
from tuneforge.files import new_folder
from tuneforge.generate import eos_ids
from tuneforge.strict import saved_config
from tuneforge.user_inputs import prompt_list, path_arg, text_list
from tuneforge.methods import registry
from tuneforge.models import (DamagedWeights, apply_method, bf16_supported, head_modules, load_tokenizer,
                              pretrained_config, resolve_device, saved_dtype, store_frozen_in_bf16)
from tuneforge.tasks import Prepared, Runtime


@contextmanager
def start_model(cfg: RunConfig) -> Iterator[tuple[Run | None, Path]]:
    """(task-1 Run or None, model folder) a run starts from: ``model.name``, or in the sequential set-up
    (``forgetting.previous_run``) task 1's merged model, in a temporary folder removed on exit."""
    if not cfg.forgetting.previous_run:
        yield None, assets.resolve_model(cfg.model.name)
        return
    try:
        prev = Run(cfg.forgetting.previous_run, device="cpu")
    except ConfigError as exc:  # missing, unfinished, not a run
        raise ConfigError(f"forgetting.previous_run: {exc}") from None
    if prev.cfg.model.task != cfg.model.task:
        raise ConfigError(f"forgetting.previous_run must be a run of the same task (model.task): it is a "
                          f"{prev.cfg.model.task} run, this one {cfg.model.task}")
    with tempfile.TemporaryDirectory(prefix="tuneforge-task1-") as tmp:
        folder = Path(tmp) / "model"
        try:
            prev.merge(folder, dtype="float32")  # task 2 trains from task 1's weights as they are
        except ConfigError as exc:  # a method that cannot merge into the backbone
            raise ConfigError(f"forgetting.previous_run: a sequential run starts from task 1's merged model, and "
                              f"{str(exc).split(';')[0]}; train task 1 with a method that merges (e.g. lora, "
                              "full)") from None
        yield prev, folder


DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Run:
    """A finished run reloaded from its directory (on ``device``: auto, cpu, cuda), whatever device it was
    trained on."""

    @scope.quietly
    def __init__(self, run_dir: str | Path, device: str = "auto") -> None:
        with saved_config():  # the options it trained with, even those tuneforge now refuses for new runs
            self.files = checkpoint.read_run(path_arg(run_dir, "run_dir"))
        self.cfg = self.files.config
        self.meta = self.files.meta
        self.task = tasks.get(self.cfg.model.task)
        self.device = resolve_device(device, "--device")
        full = self.files.full_model_dir
        base = full or assets.resolve_model(self.cfg.model.name)
        self.tokenizer = load_tokenizer(base, self.cfg.model.trust_remote_code)
        previous = self.cfg.forgetting.previous_run  # task 1's run: its merged model is this run's base
        if full is None and (old := resume_check.base_changed(self.files.path, base, previous)) is not None:
            print(f"warning: the {'run' if previous else 'model'} {run_dir} was trained on ({old}) changed since (its "
                  f"files differ): the run's {self.cfg.method_name} weights now apply to another model",
                  file=sys.stderr)
        self.task.setup_tokenizer(self.tokenizer, self.cfg, self.meta)
        bf16 = self.cfg.train.precision != "fp32" and bf16_supported(self.device)  # as trained, where possible
        self.rt = Runtime(device=self.device, bf16=bf16, pad_id=self.tokenizer.pad_token_id)
        self.heads: list[str] = []  # modules trained in full beside the method (e.g. a fresh classification head)
        self._cast = False
        self._model, self.base_names = self._load_model()  # None once merge() folded the method into it

    def inputs(self) -> dict[str, Path]:
        """The folders this run reads (an output replacing one of them would break it)."""
        found = {"the run": self.files.path}
        with contextlib.suppress(ConfigError):  # a base that is gone (a full run merges without it)
            found["the run's base model"] = assets.resolve_model(self.cfg.model.name)
        return found

    @property
    def model(self) -> nn.Module:
        """The run's model (loaded again where :meth:`merge` folded the method into it)."""
        if self._model is None:
            self._model, self.base_names = self._load_model()
            self._cast = False
        return self._model

    def _load_model(self) -> tuple[nn.Module, set[str]]:
        """The run's model on its device, and the parameter names of the model before the method."""
        with saved_config():
            return self._build_model()

    def _build_model(self) -> tuple[nn.Module, set[str]]:
        full = self.files.full_model_dir
        if full is not None:
            try:
                model, _ = self.task.load_model(full, self.cfg, self.meta, self.rt.pad_id, self.device)
            except (*checkpoint.DAMAGED, DamagedWeights) as exc:
                raise checkpoint.damaged(full, exc) from None
            names = {n for n, _ in model.named_parameters(remove_duplicate=False)}  # tied ones too: merge unties
        else:  # the base model (sequential set-up: task 1's merged model) + this run's trained weights
            with start_model(self.cfg) as (_, base), contextlib.redirect_stderr(io.StringIO()):
                # its notes (a saved head reordered, a pad id followed) were said when the run trained
                model, fresh = self.task.load_model(base, self.cfg, self.meta, self.rt.pad_id, self.device)
            names = {n for n, _ in model.named_parameters(remove_duplicate=False)}  # tied ones too: merge unties
            model, self.heads = apply_method(model, self.cfg, head_modules(model, fresh))
            weights = self.files.trainable_weights()
            missing = sorted(set(weights) - {n for n, _ in model.named_parameters()})
            if missing:
                raise self._unfit(missing[0])
            try:  # torch checks the shapes (a method may reshape its module as it loads: prefix tuning's folded prefix)
                model.load_state_dict(weights, strict=False)
            except RuntimeError as exc:
                found = re.search(r"size mismatch for (\S+): copying a param with shape torch.Size\(\[(.*?)\]\) from "
                                  r"checkpoint, the shape in current model is torch.Size\(\[(.*?)\]\)", str(exc))
                if found is None:
                    raise
                raise self._unfit(f"{found[1]}: ({found[2]}) saved, ({found[3]}) in the model") from None
        return model.to(self.device).eval(), names

    def _here(self) -> None:
        """Refuse to read the run directory's files once it is gone (moved or deleted since it was loaded)."""
        if not self.files.path.is_dir():
            raise ConfigError(f"run directory {self.files.path} no longer exists (moved or deleted since it was "
                              "loaded); load it again from where it is now")

    def _unfit(self, what: str) -> ConfigError:
        return ConfigError(f"{self.files.path}: saved weights do not fit the model (e.g. {what}); the run directory "
                           "mixes files of different runs: train it again or restore it from a copy")

    def _ready(self) -> nn.Module:
        """The model for inference in training's precision: frozen matmul weights stored in bf16 as during
        training, so metrics match the run's own (merge/export reload the float32 weights)."""
        if self.rt.bf16 and not self._cast:
            store_frozen_in_bf16(self.model)
            self._cast = True
        return self.model

    def _float_model(self) -> nn.Module:
        if self._cast:  # cast to bf16 for inference: the float32 weights again
            self._model = None  # freed before the reload: one model in memory at a time
        return self.model

    def prepared(self) -> Prepared:
        """The run's own splits, tokenised as in training (from its stored split)."""
        self._here()
        manifest = self.files.split()
        if manifest is None:
            raise ConfigError(f"{self.files.path} has no stored split ({checkpoint.SPLIT})")
        parts = {k: dataset.restore(manifest, k, self.task, self.cfg) for k in dataset.SPLITS}
        records = {k: v[0] for k, v in parts.items()}
        where = {k: v[1] for k, v in parts.items()}
        enc = {k: self.task.encode(records[k], self.cfg, self.tokenizer, self.meta, where[k]) for k in records}
        return Prepared(enc["train"], enc["validation"], enc["test"], self.meta, records["test"])

    @scope.quietly
    def evaluate(self, data_file: str | None = None, progress: bool = False) -> dict[str, Any]:
        """Metrics on ``data_file`` (any supported file) or on exactly the run's own test rows (refused when
        a source changed since training); ``progress``: a progress bar on stderr."""
        meta = self.meta
        if data_file is not None:
            data_file = str(path_arg(data_file, "data_file"))
            records, where = dataset.source_records(self.task, data_file, self.cfg, training=False)
            meta = self.task.source_meta(records, self.cfg, meta, where)  # a chat run on an input->output file
            self._note_trained_on(records, data_file)
        else:
            self._here()
            manifest = self.files.split()
            if manifest is None:
                raise ConfigError(f"{self.files.path} has no stored split; give a data file (--data FILE)")
            records, where = dataset.restore(manifest, "test", self.task, self.cfg)
        if not records:
            raise ConfigError("no test examples to evaluate on; give a data file (--data FILE)")
        examples = self.task.encode(records, self.cfg, self.tokenizer, meta, where)
        if data_file and (note := dataset.cut_note(examples, self.cfg.model.max_length)):
            print(note, file=sys.stderr)  # the run's own test rows: said when it trained
        return self.task.evaluate(self._ready(), examples, self.rt, self.cfg, meta, tokenizer=self.tokenizer,
                                  raw=records, progress=progress)

    def _note_trained_on(self, records: list[dict[str, Any]], data_file: str) -> None:
        """A warning when rows of ``data_file`` repeat the run's training examples (the same input text): their
        metrics overstate how the model does on new data. The training data is read back (its notes unprinted);
        skipped where it cannot be."""
        manifest = self.files.split()
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # training's reading notes: said when it trained
                train, _ = dataset.restore(manifest, "train", self.task, self.cfg) if manifest else ([], [])
            seen = {dataset.normalise(self.task.input_text(r, self.cfg)) for r in train}
            repeats = sum(dataset.normalise(self.task.input_text(r, self.cfg)) in seen for r in records)
        except (ConfigError, OSError, KeyError, TypeError, ValueError):  # moved sources, another layout
            return
        if repeats:
            print(f"warning: {repeats} of {len(records)} row(s) of {data_file} are training examples of this run (the "
                  "same input text); their metrics overstate how it does on new data", file=sys.stderr)

    @scope.quietly
    def predict(self, texts: list[str], pairs: list[str] | None = None) -> list[dict[str, Any]]:
        """The task's predictions for each text (a label and probabilities; the entities found...); ``pairs``:
        the second texts, for a classifier trained on text pairs (``data.text_pair_column``), one per text."""
        texts = text_list(texts, "texts")
        pairs = None if pairs is None else text_list(pairs, "pairs")
        if pairs is not None and len(pairs) != len(texts):
            raise ConfigError(f"{len(texts)} texts but {len(pairs)} second texts: give one second text per text")
        if not texts:
            return []
        inputs = list(zip(texts, pairs)) if pairs is not None else list(texts)
        return self.task.predict(self._ready(), inputs, self.rt, self.cfg, self.meta, self.tokenizer)

    def check_generates(self, chat: bool = False) -> None:
        """Refuse a run that cannot answer prompts (a classifier, a tagger), or for ``chat`` messages (a run
        trained on plain text), in one line."""
        if not self.task.generates:
            raise ConfigError(f"{self.files.path} is a {self.task.name} run; generation needs a causal_lm run "
                              "(`tuneforge predict RUN TEXT` gives this run's predictions)")
        if chat and self.meta.get("format") == "text":
            raise ConfigError(f"{self.files.path} was trained on plain text, which it continues: `tuneforge generate "
                              "RUN TEXT`; chat needs a run trained on conversations or prompt/answer pairs")

    @scope.quietly
    def generate(self, prompts: list[str | list[dict[str, str]]], **settings: Any) -> list[str]:
        """Answers of a causal-LM run: each prompt is a user message or a list of {role, content} messages,
        rendered with the run's chat template. ``settings``: max_new_tokens, sample, temperature, top_p,
        top_k, seed (see :class:`tuneforge.generate.Sampling`); ``stream`` (a file) streams one answer."""
        from tuneforge.generate import generate_answers
        prompts = prompt_list(prompts)  # blank, non-UTF-8 or not text: one line
        self.check_generates()
        return generate_answers(self._ready(), self.tokenizer, self.meta, self.cfg, self.rt, prompts, **settings)

    def save_tokenizer(self, folder: Path) -> None:
        """The tokenizer as the run prompted with it: a chat run's ``data.system_prompt`` goes into the saved chat
        template for conversations without a system message (a pipeline on an export left it out)."""
        tok, system = self.tokenizer, self.cfg.data.system_prompt
        template, used = getattr(tok, "chat_template", None), templates.own_template(tok)  # named: 'default' ran
        if not system or self.meta.get("format") not in ("chat", "pairs") or used is None:
            tok.save_pretrained(folder)
            return
        wrapped = templates.with_system(used, system)
        tok.chat_template = {**template, "default": wrapped} if isinstance(template, dict) else wrapped
        try:
            tok.save_pretrained(folder)
        finally:
            tok.chat_template = template

    @scope.quietly
    def merge(self, out: str | Path, overwrite: bool = False, dtype: str = "auto") -> Path:
        """Write a plain Hugging Face model folder with the method merged in (where the method can merge), its
        weights in ``dtype`` (auto: the base model's, e.g. bfloat16, else float32; float32, bfloat16, float16);
        the output folder is touched only once the merge succeeded."""
        out = path_arg(out, "out")
        self._here()
        saved = self._save_dtype(dtype)
        model = registry.call_optional(self.cfg.method_name, "merge", self._float_model())
        leftovers = [n for n, _ in model.named_parameters() if n not in self.base_names]
        if leftovers:
            self._model = None  # the merge hook may have changed the model: loaded again when next needed
            other = ("export it with `tuneforge export RUN OUT --format peft`, or load the run with tuneforge"
                     if hasattr(registry.get(self.cfg.method_name), "to_peft") else
                     "it has no PEFT form either: load the run with tuneforge (`tuneforge predict`/`evaluate`, "
                     "`tuneforge.load`)")
            raise ConfigError(f"method '{self.cfg.method_name}' cannot be merged into the base weights "
                              f"(e.g. {leftovers[0]}); {other}")
        self._model = None  # merged in place: the run's own model is loaded again when next needed
        if self.task.generates and getattr(model, "generation_config", None) is not None:  # stop where generate does
            ids = eos_ids(model, self.tokenizer)  # the reply end its chat template taught, beside the base's EOS
            model.generation_config.eos_token_id = ids[0] if len(ids) == 1 else ids
        with new_folder(Path(out), overwrite, "merged", keep=self.inputs()) as tmp:  # moved in place once complete
            model.to(saved).save_pretrained(tmp, safe_serialization=True)
            self.save_tokenizer(tmp)
        if saved != torch.float32:
            print(f"note: the merged weights are saved in {str(saved).removeprefix('torch.')}"
                  f"{', as the base model' if dtype == 'auto' else ''} (--dtype float32 keeps them unrounded)",
                  file=sys.stderr)
        return Path(out)

    def _save_dtype(self, dtype: str) -> torch.dtype:
        """``merge``'s dtype: auto reads the base model's config (``dtype``, or ``torch_dtype`` before
        transformers 5), so a bfloat16 model is not exported at twice its size."""
        if dtype not in DTYPES:
            raise ConfigError(f"--dtype: unknown dtype '{dtype}'; choose {', '.join(DTYPES)}")
        if dtype != "auto":
            return DTYPES[dtype]
        try:
            config = pretrained_config(assets.resolve_model(self.cfg.model.name), self.cfg.model.trust_remote_code)
        except ConfigError:  # a full run loads without its base model, which may be gone
            config = None
        if config is None:
            print("note: the base model's config cannot be read, so the merged weights are saved in float32 "
                  "(--dtype chooses)", file=sys.stderr)
        return DTYPES.get(str(saved_dtype(config)), torch.float32)


def load(run_dir: str | Path, device: str = "auto") -> Run:
    """Reload a run directory (see :class:`Run`)."""
    return Run(run_dir, device)
