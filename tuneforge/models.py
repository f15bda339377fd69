"""Load models and tokenizers; parameter counts; precision helpers."""
from __future__ import annotations

import contextlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from tuneforge.config import ConfigError, RunConfig
from tuneforge.methods import registry
from tuneforge.methods.layers import HEAD_NAMES, encoder_and_decoder, is_rms_norm, position_limit


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Tokenizer of a local model folder; a missing pad token falls back to EOS (or UNK)."""
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers' conversions raise TypeError, KeyError ... on odd files
        raise ConfigError(f"cannot load a tokenizer from {path}: {(str(exc) or type(exc).__name__).splitlines()[0]}"
                          ) from None
    needed = getattr(tok, "vocab_files_names", {}).values()  # none: bytes or characters (ByT5, CANINE)
    files = {"tokenizer.json", *needed}
    if needed and Path(path).is_dir() and not any((Path(path) / f).is_file() for f in files):
        raise ConfigError(f"cannot load a tokenizer from {path}: it holds none of the vocabulary files of its "
                          f"{type(tok).__name__} ({', '.join(sorted(files))}); transformers would build an empty "
                          "one that reads every word as unknown. Copy the model's tokenizer files into the folder")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if tok.pad_token_id is None:
        raise ConfigError(f"tokenizer of {path} has no pad, eos or unk token to pad with; add a pad token")
    return tok


def pretrained_config(path: str | Path, trust_remote_code: bool = False) -> Any:
    """The model folder's config (``AutoConfig``), or None where it cannot be read (loading the model says why)."""
    try:
        return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None


def saved_dtype(config: Any) -> str | None:
    """The dtype a model config says its weights are saved in ('bfloat16', 'float32' ...; ``dtype``, or
    ``torch_dtype`` before transformers 5), None where it names none."""
    named = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return None if named is None else str(named).removeprefix("torch.")


class DamagedWeights(ConfigError):
    """A model folder's weights file cannot be read (a run directory's loader names the run instead)."""


def load_pretrained(auto_cls: Any, path: str | Path, trust_remote_code: bool = False, **kwargs: Any
                    ) -> tuple[nn.Module, list[str]]:
    """``auto_cls.from_pretrained`` in float32 -> (model, names of freshly initialised top-level modules)."""
    try:  # mismatched shapes are loaded past, then refused outside a classification head (named, below)
        model, info = auto_cls.from_pretrained(str(path), output_loading_info=True, dtype=torch.float32,
                                               trust_remote_code=trust_remote_code,
                                               **{"ignore_mismatched_sizes": True, **kwargs})
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a model from {path}: {_load_error(exc, auto_cls)}") from None
    except AssertionError as exc:  # nn.Embedding's: a config pad id past its rows
        if not str(exc).startswith("Padding_idx must be within num_embeddings"):
            raise
        raise ConfigError(f"cannot load a model from {path}: {_load_error(exc, auto_cls)}") from None
    except SafetensorError as exc:
        raise DamagedWeights(f"cannot load a model from {path}: a weights file is damaged "
                             f"({str(exc).splitlines()[0]}); copy the model folder again") from None
    mismatched = [k if isinstance(k, tuple) else (k,) for k in info.get("mismatched_keys", ())]
    body = sorted(k for k in mismatched if k[0].split(".")[0] not in HEAD_NAMES or k[0].startswith("lm_head."))
    if body:  # only a task head may be replaced (another label count); a backbone layer would start random
        shapes = f": {tuple(body[0][1])} saved, {tuple(body[0][2])} in config.json" if len(body[0]) == 3 else ""
        raise ConfigError(f"cannot load a model from {path}: its weights do not fit its config.json ({body[0][0]}"
                          f"{shapes}; {len(body)} tensor(s) differ)")
    return model, fresh_modules(model, set(info["missing_keys"]) | {k[0] for k in mismatched})


def check_vocabulary(model: nn.Module, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> None:
    """One line where the tokenizer has more tokens than the model embeds (ids past the table would crash or, if
    never met, hide a mismatched pair): a missing tokenizer_config.json, or tokens added without resizing."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ConfigError(f"model: {path}: its tokenizer has {len(tokenizer)} tokens but the model embeds {rows}, so "
                          f"ids from {rows} on have no embedding; is tokenizer_config.json missing, or were tokens "
                          "added without resizing the model's embeddings?")
    ids = {**tokenizer.get_vocab(), **dict(zip(tokenizer.all_special_tokens, tokenizer.all_special_ids)),
           **{t.content: i for i, t in tokenizer.added_tokens_decoder.items()}}
    token, top = max(ids.items(), key=lambda kv: kv[1] if kv[1] is not None else -1, default=(None, -1))
    if top is not None and top >= rows:  # fewer tokens than rows, yet an id past them (e.g. a pad token's)
        raise ConfigError(f"model: {path}: its tokenizer gives {token!r} the id {top} but the model embeds only "
                          f"{rows} tokens (ids 0-{rows - 1}); fix the id in the tokenizer files or resize the model's "
                          "embeddings")


def _load_error(exc: Exception, auto_cls: Any) -> str:
    """The first line of a loading error; transformers' "Unrecognized configuration class" (an architecture
    without a model for this task, e.g. OPT for token classification) said in the task's words."""
    first = (str(exc) or type(exc).__name__).splitlines()[0]
    if first.startswith("Padding_idx must be within num_embeddings"):
        return "config.json's pad_token_id is not below its vocab_size (no such embedding row); fix pad_token_id"
    found = re.search(r"Unrecognized configuration class <class '[\w.]+\.(\w+)Config'>", first)
    if found is None:
        return first
    task = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", auto_cls.__name__.removeprefix("AutoModelFor")).lower()
    return (f"transformers has no {task} model for its architecture ({found[1]}; {auto_cls.__name__} does not "
            f"support it); choose a model of a family that has one")


def fresh_modules(model: nn.Module, new_keys: set[str]) -> list[str]:
    """The outermost modules all of whose saved tensors are in ``new_keys`` (not loaded): RoBERTa's two-layer
    head is ``classifier``, not ``classifier.dense`` + ``classifier.out_proj`` (PEFT saves whole modules)."""
    saved = list(model.state_dict())
    out = set()
    for key in new_keys:
        parts = key.split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i]) + "."
            if all(k in new_keys for k in saved if k.startswith(prefix)):
                out.add(prefix[:-1])
                break
    return sorted(out)


def load_labelled(auto_cls: Any, path: str | Path, cfg: RunConfig, names: list[str], pad_id: int
                  ) -> tuple[nn.Module, list[str]]:
    """A pre-trained backbone with a fresh head over the label ``names`` (a saved head of another label count, as
    in sequential tasks, is replaced; one of as many labels is kept, see :func:`_match_saved_head`) -> (model,
    fresh module names). Decoders get a pad id: they find the last real token by it."""
    model, fresh = load_pretrained(auto_cls, path, cfg.model.trust_remote_code, num_labels=len(names),
                                   id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    if not fresh:  # a saved head of as many labels, e.g. a fine-tuned classifier's
        _match_saved_head(model, path, cfg.model.trust_remote_code, names)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_id
    elif model.config.pad_token_id != pad_id and _finds_last_token_by_pad_id(model):
        print(f"note: {path}: the model's config names pad id {model.config.pad_token_id} but its tokenizer pads with "
              f"{pad_id}; the classifier finds each row's last real token by {pad_id}", file=sys.stderr)
        model.config.pad_token_id = pad_id  # else a padded row is classified at a padding position
    return model, fresh


@torch.no_grad()
def _match_saved_head(model: nn.Module, path: str | Path, trust_remote_code: bool, names: list[str]) -> None:
    """A saved head answers in the checkpoint's label order (its ``id2label``): its output rows are put in the
    order of ``names`` where both name the same labels (case aside); where they name others, a note says the head
    starts from the checkpoint's labels."""
    saved = getattr(pretrained_config(path, trust_remote_code), "id2label", None) or {}
    old = [str(saved[i]) for i in sorted(saved)]
    if len(old) != len(names) or old == names or all(re.fullmatch(r"LABEL_\d+", n) for n in old):
        return
    heads = [m for n, m in model.named_children() if n in HEAD_NAMES]
    outputs = [m for h in heads for m in h.modules() if isinstance(m, nn.Linear) and m.out_features == len(names)]
    where = {n.lower(): i for i, n in enumerate(old)}
    if outputs and len(where) == len(names) and set(where) == {n.lower() for n in names}:
        order = torch.tensor([where[n.lower()] for n in names])  # (labels,): the saved row of each label
        outputs[-1].weight.copy_(outputs[-1].weight[order])
        if outputs[-1].bias is not None:
            outputs[-1].bias.copy_(outputs[-1].bias[order])
        print(f"note: {path}: its head's rows, trained in the order {', '.join(old)}, are reordered to this data's "
              f"{', '.join(names)}", file=sys.stderr)
    else:
        print(f"note: {path}: its head was trained for the labels {', '.join(old)}; it is kept and trained for this "
              f"data's {', '.join(names)} (row by row in that order)", file=sys.stderr)


def _finds_last_token_by_pad_id(model: nn.Module) -> bool:
    """Whether the model's forward reads ``config.pad_token_id`` (a decoder's sequence classifier reads the last
    token that is not padding); encoders use the attention mask and keep their config's pad id (RoBERTa counts
    positions from it)."""
    try:
        return "pad_token_id" in inspect.getsource(type(model).forward)
    except (OSError, TypeError):
        return False


def head_modules(model: nn.Module, fresh: list[str] | None = None) -> list[str]:
    """Module names that always train: freshly initialised ones, else the task head by its usual name."""
    if fresh:
        return fresh
    return [name for name in HEAD_NAMES if isinstance(getattr(model, name, None), nn.Module)
            and name != "lm_head"]


def apply_method(model: nn.Module, cfg: RunConfig, heads: list[str]) -> tuple[nn.Module, list[str]]:
    """The configured method applied to a loaded model (training and reloading share this one place);
    ``heads`` (modules trained in full, e.g. a fresh classification head) are unfrozen. Returns the model and
    every module trained in full beside the method: ``heads`` plus, with ``train.pooler_with_head``, a
    pre-trained pooler the method left frozen (:func:`frozen_pooler`)."""
    options = registry.make_config(cfg.method_name, cfg.method_options())
    model = registry.apply(model, cfg.method_name, options, always_train=heads)
    pooler = frozen_pooler(model) if cfg.train.pooler_with_head else []
    for name in pooler:
        model.get_submodule(name).requires_grad_(True)
    return model, [*heads, *pooler]


def frozen_pooler(model: nn.Module) -> list[str]:
    """``["bert.pooler"]`` where a sequence classifier reads its input through a pre-trained pooler (BERT,
    ALBERT: ``tanh(dense(h[CLS]))``) of which no parameter trains, else ``[]``. all-MiniLM-L6-v2's pooler maps
    every input to nearly the same vector (it varies ~0.01 across inputs against ~0.05 in size), so the fresh
    head of a method that leaves it frozen has little to separate (prompt tuning, P-tuning, adapters, freeze;
    measured in ``benchmarks/pooler_probe.py``)."""
    prefix = getattr(model, "base_model_prefix", "")
    pooler = getattr(getattr(model, prefix, None), "pooler", None) if prefix else None
    params = list(pooler.parameters()) if isinstance(pooler, nn.Module) else []
    return [f"{prefix}.pooler"] if params and not any(p.requires_grad for p in params) else []


def check_max_length(model: nn.Module, cfg: RunConfig) -> None:
    """``model.max_length`` plus the method's virtual tokens (prompt, prefix) must fit the model's position table:
    one line before anything runs instead of an index error."""
    limit = position_limit(model)
    options = registry.make_config(cfg.method_name, cfg.method_options())
    virtual = getattr(options, "num_virtual_tokens", 0)  # positions in front of the real tokens
    if encoder_and_decoder(model) is not None:
        virtual = 0  # such methods are refused on an encoder-decoder (say that, not how to shorten the rows)
    if limit is not None and virtual >= limit:
        raise ConfigError(f"method.num_virtual_tokens={virtual} leaves no position for real tokens: "
                          f"{cfg.model.name} embeds {limit} positions (its position table); use fewer virtual "
                          f"tokens, e.g. method.num_virtual_tokens={min(20, limit // 2)}")
    if limit is not None and cfg.model.max_length + virtual > limit:
        plus = f" + {virtual} virtual tokens" if virtual else ""
        raise ConfigError(f"model.max_length={cfg.model.max_length}{plus} exceeds the {limit} positions "
                          f"{cfg.model.name} can embed (its position table); set model.max_length to "
                          f"{limit - virtual} or less")


def count_parameters(model: nn.Module) -> dict[str, float]:
    """Trainable and total parameter counts (shared tensors counted once) and the trainable share in %."""
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"trainable": trainable, "total": total, "trainable_pct": 100.0 * trainable / max(total, 1)}


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; errors name ``setting`` (a command's ``--device``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{setting}: unknown device '{name}'; use auto, cpu or cuda") from None
    if device.type not in ("cpu", "cuda"):  # mps, xpu, meta ...: torch names them, tuneforge does not run there
        raise ConfigError(f"{setting}: device '{name}' is not supported; use auto, cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting}: cuda requested but no CUDA device is available; use auto or cpu")
    return device


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_bf16(precision: str, device: torch.device) -> bool:
    """Resolve ``train.precision`` (auto | bf16 | fp32)."""
    if precision == "fp32":
        return False
    supported = bf16_supported(device)
    if precision == "bf16" and not supported:
        raise ConfigError(f"train.precision=bf16 but {device.type} has no native bf16 support; use auto or fp32")
    return supported


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device, or a no-op."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def store_frozen_in_bf16(model: nn.Module) -> int:
    """Store frozen matmul weights (Linear, Conv1D) in bf16 so autocast does not re-cast them on every step;
    trainable parameters (and so optimizer state) stay float32. Returns tensors cast. Embeddings are not cast
    (bf16 lookups were slower), except a frozen one tied to a cast LM head (SmolLM2): the residual stream is
    then bf16, which left SmolLM2's test perplexity on the demo-chat data unchanged (18.33 vs 18.42 fp32).
    Frozen RMSNorm weights (Llama, Qwen, Mistral, T5 ...) are stored in bf16 too: those norms return ``weight *
    normed.to(input dtype)``, which a float32 weight turns into a float32 tensor that every linear layer reading it
    casts to bf16 again, forward and backward (SmolLM2 LoRA SFT: +4.0 % tokens/s, -128 MiB peak RSS, interleaved
    probe, benchmarks/results/path-probe-rms-bf16.md; the norm's weight, not its arithmetic, is rounded).
    LayerNorm, which autocast runs in float32 anyway, keeps float32 weights."""
    cast = 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, Conv1D)) or is_rms_norm(module):
            for name, p in module.named_parameters(recurse=False):
                if not p.requires_grad and p.dtype == torch.float32 and name == "weight":
                    p.data = p.data.to(torch.bfloat16)
                    cast += 1
    if cast:  # from_pretrained memory-maps the checkpoint: while any tensor still views the mapping, the float32
        #      pages read for the cast stay resident; owning copies of the rest release it (SmolLM2: -513 MiB)
        for t in (*model.parameters(), *model.buffers()):
            if t.dtype != torch.bfloat16:
                t.data = t.data.clone()
    return cast
