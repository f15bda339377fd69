"""Export a finished run for use without tuneforge: a PEFT-format adapter (``adapter_config.json`` +
``adapter_model.safetensors``) or a merged Hugging Face model folder. The PEFT key/config mapping is the
method's business: its optional ``to_peft(model, config, task_type, modules_to_save)`` hook."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tuneforge import assets, checkpoint, scope
from tuneforge.config import ConfigError
from tuneforge.files import new_folder
from tuneforge.methods import peft_format, registry
from tuneforge.methods.layers import tied_wrapped
from tuneforge.models import pretrained_config, saved_dtype

if TYPE_CHECKING:
    from tuneforge.run import Run

FORMATS = ("peft", "merged")
# PEFT task type -> the transformers Auto class to load the base model with (for the exported README)
AUTO_CLASSES = {"CAUSAL_LM": "AutoModelForCausalLM", "SEQ_CLS": "AutoModelForSequenceClassification",
                "TOKEN_CLS": "AutoModelForTokenClassification", "QUESTION_ANS": "AutoModelForQuestionAnswering",
                "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM", "FEATURE_EXTRACTION": "AutoModel"}

_README = """# PEFT adapter exported by tuneforge

method: {method}, task type: {task_type}, base model: `{base}`

```python
import torch
from peft import PeftModel
from transformers import {auto}
base = {auto}.from_pretrained("{base}"{extra})
model = PeftModel.from_pretrained(base, "{out}")
```
{note}"""
_TIED_NOTE = """
`{modules}` shares its frozen weight with another layer (tied embeddings). The adapter applies its update to
this layer's output alone, as the run trained, but PEFT's `merge_and_unload()` adds it to the shared weight, which
changes the other layer too: for a merged model use `tuneforge merge` (it unties the two first).
"""
def export_peft(run: Run, out: str | Path, overwrite: bool = False) -> Path:
    """Write the run's adapter (plus any fully trained head, as ``modules_to_save``) in PEFT's format,
    with the tokenizer (and its chat template) beside it. Whether the run can be exported is settled before
    the output folder is created or cleared."""
    name = run.cfg.method_name
    method = registry.get(name)
    hook = getattr(method, "to_peft", None)
    if hook is None or run.files.full_model_dir is not None:
        fix = ("use `tuneforge merge` for a plain Hugging Face model" if hasattr(method, "merge")
               else "load the run directory with tuneforge (tuneforge.run.load)")
        raise ConfigError(f"method '{name}' cannot export to PEFT format (PEFT has no equivalent); {fix}")
    if run.cfg.forgetting.previous_run:  # its base is task 1's merged model, which only existed while it trained
        raise ConfigError(f"the run started from the merged model of {run.cfg.forgetting.previous_run} "
                          "(forgetting.previous_run), which no folder holds for PEFT to load as the adapter's base; "
                          "use `tuneforge merge RUN OUT` for a plain Hugging Face model")
    task_type = getattr(run.task, "peft_task_type", None)
    if task_type is None:
        raise ConfigError("the run's task has no PEFT task type, so it cannot export to PEFT format; "
                          "use `tuneforge merge` or load the run directory with tuneforge")
    adapter_config, tensors = hook(run.model, registry.make_config(name, run.cfg.method_options()), task_type,
                                   list(run.heads))
    folder = assets.resolve_model(run.cfg.model.name).resolve()
    base = run.cfg.model.name if assets.is_hub_id(run.cfg.model.name) else str(folder)  # an id loads anywhere
    adapter_config["base_model_name_or_path"] = base
    labels = run.meta.get("labels")
    extra = (f", num_labels={len(labels)}, id2label={dict(enumerate(labels))}, "
             f"label2id={ {name: i for i, name in enumerate(labels)} }" if labels else "")  # both: else LABEL_n
    config = pretrained_config(folder)
    if saved_dtype(config) not in (None, "float32"):  # from_pretrained's dtype="auto": the adapter trained on float32
        extra += ", dtype=torch.float32"
    pad = getattr(getattr(run.model, "config", None), "pad_token_id", None)  # as trained (models.load_labelled):
    # a decoder's classifier finds a row's end by it; an encoder kept its own (RoBERTa counts positions from it)
    if labels and pad is not None and config is not None and getattr(config, "pad_token_id", None) != pad:
        extra += f", pad_token_id={pad}"
    if labels and config is not None and getattr(config, "num_labels", len(labels)) != len(labels):
        extra += ", ignore_mismatched_sizes=True"  # the base's own head (SST-2's 2 labels): the adapter brings one
    note, lines = peft_format.notes(adapter_config, task_type, last_token_head=hasattr(run.model, "score"))
    if tied := tied_wrapped(run.model):
        note += _TIED_NOTE.format(modules=", ".join(tied))
        lines.append(f"{', '.join(tied)} shares its weight with another layer: PEFT's merge_and_unload() would change "
                     "both (the README says so); `tuneforge merge` gives the merged model")
    if run.meta.get("last_first"):  # mBART-cc25: the base folder's generation config starts elsewhere
        note += (f"\nGenerate with `decoder_start_token_id={run.meta['decoder_start']}`: the decoder starts from the "
                 "output's last token (its language code), as it trained.\n")
    for line in lines:
        print(f"note: {line}", file=sys.stderr)
    out = Path(out)
    with new_folder(out, overwrite, "export", keep=run.inputs()) as tmp:  # moved in place once complete
        checkpoint.save_json(adapter_config, tmp / "adapter_config.json")
        checkpoint.save_tensors(tensors, tmp / "adapter_model.safetensors", {"format": "pt"})
        run.save_tokenizer(tmp)
        checkpoint.atomic_write_text(tmp / "README.md", _README.format(
            method=name, task_type=task_type, base=base, auto=AUTO_CLASSES.get(task_type, "AutoModel"), extra=extra,
            out=out.resolve(), note=note))  # loads from any working directory
    return out


@scope.quietly
def export(run: Run, out: str | Path, fmt: str = "peft", overwrite: bool = False, dtype: str = "auto") -> Path:
    """``peft``: adapter in PEFT format; ``merged``: a plain Hugging Face model folder (``Run.merge``) in
    ``dtype``."""
    if fmt == "peft":
        if dtype != "auto":
            raise ConfigError("--dtype applies to merged models; a PEFT adapter keeps its trained float32 weights")
        return export_peft(run, out, overwrite)
    if fmt == "merged":
        return run.merge(out, overwrite, dtype)
    raise ConfigError(f"--format: unknown export format '{fmt}'; choose {', '.join(FORMATS)}")
