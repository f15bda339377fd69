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
from tuneforge.methods import registry
from tuneforge.models import pretrained_config

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
from peft import PeftModel
from transformers import {auto}
base = {auto}.from_pretrained("{base}"{extra})
model = PeftModel.from_pretrained(base, "{out}")
```
{note}"""
_PROMPT_NOTE = """
PEFT returns the {n} virtual positions in front of the real ones: drop the first {n} positions of causal-LM
and token-classification logits to align them with the input.
"""

_LAST_TOKEN_NOTE = """
PEFT hands a prompt-tuned decoder classifier embeddings, not token ids, so transformers cannot see where a padded
row's text ends and reads the row's last position, padding included: classify one text at a time (or rows of one
length) with this adapter to get the run's predictions; `tuneforge predict` on the run batches padded rows as
trained.
"""

_PREFIX_CLASSIFIER_NOTE = """
PEFT 0.21 refuses to run prefix tuning on a classifier with transformers 5 ("Model does not support past key
values"); the prefix it loads still works when passed to the plain model:
`model.get_base_model()(input_ids=ids, attention_mask=mask_with_prefix_ones, cache=model.get_prompt(batch))`.
"""

_GENERATE_NOTE = """
PEFT 0.21's `generate` mis-handles transformers 5's `cache` argument for prompt-learning adapters (a prefix is
ignored, a soft prompt drifts after a token or two); the forward pass is right. Generate by greedy decoding
through the PEFT model's forward (no cache), or with `tuneforge generate` on the run.
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
    base = assets.resolve_model(run.cfg.model.name).resolve()
    adapter_config["base_model_name_or_path"] = str(base)
    labels = run.meta.get("labels")
    extra = f", num_labels={len(labels)}, id2label={dict(enumerate(labels))}" if labels else ""
    pad, config = run.tokenizer.pad_token_id, pretrained_config(base)
    if labels and pad is not None and config is not None and getattr(config, "pad_token_id", None) != pad:
        extra += f", pad_token_id={pad}"  # as trained: a decoder's classifier finds a row's end by the pad id
    prompt_like = adapter_config["peft_type"] in ("PROMPT_TUNING", "P_TUNING")
    note = _PROMPT_NOTE.format(n=adapter_config.get("num_virtual_tokens")) if prompt_like else ""
    if prompt_like and task_type == "SEQ_CLS" and hasattr(run.model, "score"):  # a decoder's last-token head
        note += _LAST_TOKEN_NOTE
        print("note: PEFT reads a padded row's last position, padding included, in this decoder classifier: "
              "classify one text at a time with the exported adapter (its README.md says why)", file=sys.stderr)
    if adapter_config["peft_type"] == "PREFIX_TUNING" and task_type in ("SEQ_CLS", "TOKEN_CLS"):
        note = _PREFIX_CLASSIFIER_NOTE
    if "num_virtual_tokens" in adapter_config and task_type == "CAUSAL_LM":
        note += _GENERATE_NOTE
        print("note: PEFT 0.21's generate() does not apply this prompt-learning adapter correctly; greedy decoding "
              "through its forward does (the export's README.md says how)", file=sys.stderr)
    out = Path(out)
    with new_folder(out, overwrite, "export") as tmp:  # moved in place once complete
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
