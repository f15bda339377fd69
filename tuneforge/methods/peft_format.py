"""Shared pieces of the methods' ``to_peft`` hooks: an adapter in PEFT 0.21's on-disk format
(``adapter_config.json`` as a dict + ``adapter_model.safetensors`` as named tensors).

Key layout in PEFT's files: layer tuners (LoRA, IA3) store ``base_model.model.<module>.<tensor>`` and their
``modules_to_save`` heads as ``base_model.model.<module>.<param>``; prompt-learning methods (prompt tuning,
P-tuning, prefix tuning) store one ``prompt_embeddings`` tensor and their heads as ``base_model.<module>.<param>``
(for them PEFT's ``base_model`` is the transformers model itself).
"""
from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn as nn

from tuneforge.config import ConfigError
from tuneforge.methods.layers import find_layers
from tuneforge.methods.virtual_tokens import backbone_of

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

LAYER_TUNER = "base_model.model."  # key prefix of LoRA/IA3 tensors and of their heads
PROMPT_LEARNING = "base_model."  # key prefix of the heads of prompt-learning adapters


def _plain_names(model: nn.Module, wrapped: list[str]) -> list[str]:
    """Module names of the model as PEFT will see it: without the insides of tuneforge's wrappers."""
    inside = tuple(w + "." for w in wrapped)
    return [n for n, _ in model.named_modules() if n and not n.startswith(inside)]


def _suffix_match(key: str, targets: list[str]) -> bool:
    """PEFT's rule for a list of ``target_modules``: the name, or a dotted suffix of it."""
    return any(key == t or key.endswith("." + t) for t in targets)


def _regex(names: list[str], universe: list[str]) -> str:
    """A regex that full-matches exactly ``names`` among ``universe``: layer indices generalised to ``\\d+``
    when that still picks exactly ``names``, else the escaped names themselves."""
    general = list(dict.fromkeys(r"\.".join(r"\d+" if p.isdigit() else re.escape(p) for p in n.split("."))
                                 for n in names))
    pattern = "|".join(general)
    if {k for k in universe if re.fullmatch(pattern, k)} == set(names):
        return pattern
    return "|".join(re.escape(n) for n in names)


def target_modules(model: nn.Module, wrapped: list[str]) -> list[str] | str:
    """PEFT ``target_modules`` that select exactly the ``wrapped`` modules of the unwrapped model: the shortest
    module-name suffixes (one or two components, e.g. ``q_proj`` / ``mlp.c_proj``) when they do, else a regex
    (PEFT full-matches a string target against every module name)."""
    universe = _plain_names(model, wrapped)
    for depth in (1, 2):
        suffixes = sorted({".".join(n.split(".")[-depth:]) for n in wrapped})
        if {k for k in universe if _suffix_match(k, suffixes)} == set(wrapped):
            return suffixes
    return _regex(wrapped, universe)


def feedforward_modules(targets: list[str] | str, wrapped: list[str], feedforward: list[str]) -> list[str] | str:
    """IA3 ``feedforward_modules``: which of the ``wrapped`` (targeted) modules scale their input. PEFT's list
    rule is a plain ``endswith`` (no dot); a regex is full-matched."""
    if isinstance(targets, list):
        entries = [t for t in targets if any(_suffix_match(n, [t]) for n in feedforward)]
        if {n for n in wrapped if any(n.endswith(t) for t in entries)} == set(feedforward):
            return entries
    return _regex(feedforward, wrapped)


def head_tensors(model: nn.Module, heads: list[str], prefix: str) -> dict[str, torch.Tensor]:
    """The parameters of the ``modules_to_save`` heads, keyed ``<prefix><parameter name>``."""
    return {f"{prefix}{n}": p.detach().float() for n, p in model.named_parameters()
            if any(n == h or n.startswith(h + ".") for h in heads)}


def prompt_learning(model: nn.Module, peft_type: str, task_type: str, heads: list[str], embeddings: torch.Tensor,
                    token_dim: int | None = None, num_attention_heads: int | None = None, **fields: Any
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A prompt-learning adapter: ``prompt_embeddings`` ``(N, width)`` plus heads, and its config (PEFT's
    inference form: nothing to reparameterise). ``token_dim``/``num_attention_heads`` default to the model's
    hidden size and attention heads (prefix tuning passes the key/value width and key/value heads)."""
    if task_type == "SEQ_CLS" and peft_type != "PREFIX_TUNING":
        check_pooling(model)
    cfg = model.config
    adapter_config = {
        "peft_type": peft_type, "task_type": task_type, "num_virtual_tokens": embeddings.shape[0],
        "token_dim": token_dim or embeddings.shape[1], "num_transformer_submodules": 1,
        "num_attention_heads": num_attention_heads or cfg.num_attention_heads,
        "num_layers": len(find_layers(model)[1]), "modules_to_save": list(heads) or None, "inference_mode": True,
        **fields,
    }
    tensors = {"prompt_embeddings": embeddings.detach().float().clone()}  # (N, width)
    tensors |= head_tensors(model, heads, PROMPT_LEARNING)
    return adapter_config, tensors


def check_pooling(model: nn.Module) -> None:
    """A prompt-tuned sequence classifier whose head pools outside the backbone (RoBERTa's ``classifier``,
    DistilBERT's ``pre_classifier``, DeBERTa's ``pooler``) reads the first real token in tuneforge, whose
    backbone drops the virtual positions, but the first virtual token in PEFT: refused. The backbone's own
    pooler (BERT, ALBERT) and decoders' last-token ``score`` read the same position in both."""
    if isinstance(getattr(backbone_of(model), "pooler", None), nn.Module) or hasattr(model, "score"):
        return
    raise ConfigError(
        f"PEFT's {type(model).__name__} would read its prediction from the first virtual token where tuneforge's "
        "reads the first real token, so a PEFT adapter would predict differently; use the run with tuneforge "
        "(tuneforge predict, tuneforge.run.load), or train with lora or ia3 to export to PEFT")


def notes(adapter_config: dict[str, Any], task_type: str, last_token_head: bool) -> tuple[str, list[str]]:
    """What to know when PEFT 0.21 loads this adapter: the exported README's note and one-line notes for the
    terminal (``last_token_head``: the model classifies from a row's last position, as decoder classifiers do)."""
    kind, note, lines = adapter_config["peft_type"], "", []
    prompt_like = kind in ("PROMPT_TUNING", "P_TUNING")
    if prompt_like:
        note = _PROMPT_NOTE.format(n=adapter_config.get("num_virtual_tokens"))
    if prompt_like and task_type == "SEQ_CLS" and last_token_head:
        note += _LAST_TOKEN_NOTE
        lines.append("PEFT reads a padded row's last position, padding included, in this decoder classifier: "
                     "classify one text at a time with the exported adapter (its README.md says why)")
    if kind == "PREFIX_TUNING" and task_type in ("SEQ_CLS", "TOKEN_CLS"):
        note = _PREFIX_CLASSIFIER_NOTE
    if "num_virtual_tokens" in adapter_config and task_type == "CAUSAL_LM":
        note += _GENERATE_NOTE
        lines.append("PEFT 0.21's generate() does not apply this prompt-learning adapter correctly; greedy decoding "
                     "through its forward does (the export's README.md says how)")
    return note, lines
