"""Method name -> module. The only place that lists method names."""
from __future__ import annotations

import contextlib
import importlib
import io
import sys
from types import ModuleType
from typing import Any

import torch
import torch.nn as nn

from tuneforge.assets import model_shape
from tuneforge.config import ConfigError, build_dataclass

# name -> module path; add a method by adding one line here and one file beside this one.
METHODS: dict[str, str] = {
    "full": "tuneforge.methods.full",
    "freeze": "tuneforge.methods.freeze",
    "lora": "tuneforge.methods.lora",
    "adapter": "tuneforge.methods.adapter",
    "prompt": "tuneforge.methods.prompt",
    "p-tuning": "tuneforge.methods.ptuning",
    "prefix": "tuneforge.methods.prefix",
    "ia3": "tuneforge.methods.ia3",
    "bitfit": "tuneforge.methods.bitfit",
}


def names() -> list[str]:
    """All registered method names, in registry order."""
    return list(METHODS)


def get(name: str) -> ModuleType:
    """The module implementing method ``name``."""
    if name not in METHODS:
        raise ConfigError(f"method.name: unknown method '{name}'; choose one of {', '.join(METHODS)}")
    return importlib.import_module(METHODS[name])


def make_config(name: str, options: dict[str, Any]) -> Any:
    """Build the method's typed Config from a dict (unknown keys are errors)."""
    return build_dataclass(get(name).Config, options, path="method")


def apply(model: nn.Module, name: str, config: Any, always_train: list[str] | tuple[str, ...] = ()) -> nn.Module:
    """Freeze everything but the parameters whose names start with ``always_train`` (e.g. a freshly initialised
    classification head, trained in full, which methods leave alone), then apply the method (which unfreezes
    only what it adds or selects). Parameters the model's ``save_pretrained`` leaves out stay frozen."""
    for pname, p in model.named_parameters():
        p.requires_grad_(any(pname == prefix or pname.startswith(prefix + ".") for prefix in always_train))
    unsaved = getattr(model, "_keys_to_ignore_on_save", None) or ()  # parameter names
    model = get(name).apply(model, config)
    kept = [pname for pname, p in model.named_parameters()  # e.g. Marian's sinusoidal position tables
            if p.requires_grad and any(pname == k or pname.endswith("." + k) for k in unsaved)]
    for pname in kept:  # trained, they would be lost on saving: the saved run would not be the trained one
        model.get_parameter(pname).requires_grad_(False)
    if kept:
        print(f"note: {', '.join(kept)} stay frozen: the model's save_pretrained does not save them (they are rebuilt "
              "when it loads)", file=sys.stderr)
    return model


def check_applies(model: nn.Module, name: str, config: Any, always_train: list[str] | tuple[str, ...] = ()) -> None:
    """Apply the method to a weightless copy of ``model`` (built from its config on the meta device) so that a
    method that does not fit the model (prefix tuning on T5, LoRA targets that match nothing) is refused before a
    run directory exists or the untrained model is evaluated. Only the method's own ConfigError counts: a model
    that cannot be built so is checked when the method is applied for real."""
    try:
        with torch.device("meta"), contextlib.redirect_stderr(io.StringIO()):
            skeleton = type(model)(model.config)
    except Exception:  # noqa: BLE001 - e.g. custom code whose __init__ needs real tensors
        return
    try:
        with torch.device("meta"), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            apply(skeleton, name, config, always_train)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - not the method's verdict: the real application says what it is
        return


def training(name: str, model: nn.Module, sample: dict[str, Any] | None, bf16: bool
             ) -> contextlib.AbstractContextManager:
    """The method's optional ``training(model, sample, bf16)`` context: its faster paths while the loop trains
    (``sample``: model inputs of a training batch, None where the model is sharded; ``bf16``: the run's autocast).
    No hook: nothing changes."""
    fn = getattr(get(name), "training", None)
    return contextlib.nullcontext() if fn is None else fn(model, sample, bf16)


def call_optional(name: str, hook: str, model: nn.Module) -> nn.Module:
    """Call the method's optional ``merge``/``fold`` hook; a no-op when the method has none."""
    fn = getattr(get(name), hook, None)
    if fn is None:
        return model
    out = fn(model)
    return model if out is None else out


def train_defaults(name: str, task: str | None = None, model: str | None = None) -> dict[str, Any]:
    """Recommended ``train.*`` settings of the method for a task and model (may be empty). A method declares them
    in ``TRAIN_DEFAULTS``: a value, a mapping from task name to value (``"default"``: every other task), or a
    function of the model's ``(width, depth)`` (None where unknown: ``model`` not given or unreadable)."""
    out = {}
    for key, value in getattr(get(name), "TRAIN_DEFAULTS", {}).items():
        if isinstance(value, dict):
            value = value.get(task, value.get("default"))
        if callable(value):
            value = value(model_shape(model) if model else None)
        if value is not None:
            out[key] = value
    return out
