"""Prompt tuning: N trainable "soft prompt" embeddings prepended to the input; the model stays frozen
(Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning", arXiv 2104.08691).

The prompts live at ``model.base_model.prompt_encoder.embedding`` ``(N, hidden)`` (PEFT's name); the
prepend/strip mechanics (outputs keep the real input's length, real tokens sit at positions N..N+L-1) are
in :mod:`tuneforge.methods.virtual_tokens`. Initialisation: ``random`` (normal with the standard deviation of
the vocabulary embeddings, so prompts start at the scale of real tokens), ``vocab`` (embeddings of N
tokens sampled from the vocabulary, Lester et al.'s best choice) or ``text`` (embeddings of ``init_text``,
repeated/truncated to N; PEFT's TEXT init, except that no special tokens are added).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from tuneforge.config import ConfigError
from tuneforge.strict import refuse
from tuneforge.methods import peft_format
from tuneforge.methods.virtual_tokens import VirtualTokens, attach, backbone_of, encoder_of

TRAIN_DEFAULTS = {"lr": 3e-2}

INITS = ("random", "vocab", "text")


@dataclass
class Config:
    num_virtual_tokens: int = 20  # N: soft prompt length (occupies N positions of the model's context)
    init: Literal["random", "vocab", "text"] = "vocab"  # how the prompt embeddings start
    init_text: str | None = None  # text whose token embeddings initialise the prompt (init: text)
    tokenizer: str | None = None  # tokenizer folder for init_text; default: the model's own folder

    def __post_init__(self) -> None:
        if self.num_virtual_tokens <= 0:
            raise ConfigError(f"method.num_virtual_tokens must be positive, got {self.num_virtual_tokens}")
        if self.init not in INITS:
            raise ConfigError(f"method.init: {self.init!r} is not allowed; choose one of {', '.join(INITS)}")
        if self.init == "text" and not self.init_text:
            raise ConfigError("method.init_text is required with method.init=text (e.g. 'Classify the review:')")
        if self.init != "text" and (self.init_text or self.tokenizer):
            given = "method.init_text" if self.init_text else "method.tokenizer"
            refuse(f"{given} is read only with method.init=text (the prompt starts from method.init={self.init} "
                   f"here): set method.init=text or drop {given}")


class PromptEmbedding(VirtualTokens):
    """N free embedding vectors: the whole of prompt tuning."""

    def __init__(self, prompts: torch.Tensor) -> None:
        super().__init__(prompts.shape[0])
        self.embedding = nn.Parameter(prompts.detach().float().clone())  # (N, hidden)

    def forward(self) -> torch.Tensor:  # -> (N, hidden)
        return self.embedding


def _text_ids(model: nn.Module, config: Config) -> torch.Tensor:
    from transformers import AutoTokenizer

    path = config.tokenizer or getattr(model, "name_or_path", "") or ""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - any loading failure becomes one clear message
        raise ConfigError(
            f"method.tokenizer: cannot load a tokenizer from {path!r} to encode method.init_text "
            f"({type(exc).__name__}); set method.tokenizer to a tokenizer folder or use method.init=vocab"
        ) from None
    ids = tokenizer(config.init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"method.init_text {config.init_text!r} encodes to no tokens; give a longer text")
    if tokenizer.unk_token_id is not None and set(ids) == {tokenizer.unk_token_id}:
        refuse(f"method.init_text {config.init_text!r} holds no word the tokenizer knows (every token is "
               f"{tokenizer.unk_token!r}); write it in the model's language")
    reps = -(-config.num_virtual_tokens // len(ids))
    return torch.tensor((ids * reps)[: config.num_virtual_tokens])


def initial_prompts(model: nn.Module, config: Config) -> torch.Tensor:
    """The starting prompt embeddings ``(N, hidden)`` in float32."""
    table = backbone_of(model).get_input_embeddings().weight.detach()  # (vocab, hidden)
    n = config.num_virtual_tokens
    if config.init == "random":
        return torch.randn(n, table.shape[1], device=table.device) * table.float().std()
    if config.init == "vocab":  # uniform over the vocabulary, skipping the padding token
        pad = getattr(model.config, "pad_token_id", None)
        skip = pad is not None and 0 <= pad < table.shape[0]
        ids = torch.randint(0, table.shape[0] - int(skip), (n,), device=table.device)
        if skip:
            ids += (ids >= pad).long()
    else:
        ids = _text_ids(model, config).to(table.device)
        if int(ids.max()) >= table.shape[0]:
            raise ConfigError("method.tokenizer: init_text token ids exceed the model's vocabulary; wrong tokenizer?")
    return table[ids].float()


def apply(model: nn.Module, config: Config) -> nn.Module:
    """Add the soft prompt to ``model.base_model``; its new ``prompt_encoder.embedding`` trains."""
    attach(model, PromptEmbedding(initial_prompts(model, config)), "prompt_encoder")
    return model


def to_peft(model: nn.Module, config: Config, task_type: str, modules_to_save: list[str]
            ) -> tuple[dict, dict[str, torch.Tensor]]:
    """The prompt in PEFT 0.21's ``PROMPT_TUNING`` format: ``prompt_embeddings`` ``(N, hidden)`` (heads as
    ``modules_to_save``), ``prompt_tuning_init`` RANDOM (the values come from the file). PEFT returns N extra
    leading positions in causal-LM and token-classification logits; see :mod:`.virtual_tokens` for where
    PEFT's decoder classifiers pool."""
    prompts = encoder_of(model, "prompt_encoder").embedding  # (N, hidden)
    return peft_format.prompt_learning(model, "PROMPT_TUNING", task_type, modules_to_save, prompts,
                                       prompt_tuning_init="RANDOM")
