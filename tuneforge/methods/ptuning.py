"""P-tuning: virtual tokens produced by a trainable prompt encoder (Liu et al. 2021, "GPT Understands, Too",
arXiv 2103.10385).

N input embeddings go through an encoder -- a bidirectional LSTM followed by a two-layer MLP head as in the
paper, or a three-layer MLP -- and its outputs ``(N, hidden)`` are prepended to the input like prompt tuning
(same prepend/strip mechanics: :mod:`tuneforge.methods.virtual_tokens`). Module and parameter names follow
PEFT's ``PromptEncoder`` (``embedding``, ``lstm_head``, ``mlp_head``) so weights map one to one.

``fold(model)`` evaluates the encoder once, stores its output in ``prompt_encoder.embedding`` ``(N, hidden)``
and drops the encoder heads (PEFT's inference form, used as plain prompt tuning): the only tensor to save,
under a name the unfolded model also has. Loading a state dict that holds ``embedding`` without the
encoder heads (``model.load_state_dict(sd, strict=False)`` on a freshly applied model) drops the heads
first (a load-state-dict pre-hook detects it), so ``apply`` + load reproduces the folded model.

``to_peft`` exports the folded form as PEFT ``P_TUNING``: PEFT 0.21.2 loads it for inference
(``PeftModel.from_pretrained``, ``inference_mode``), where its ``PromptEncoder`` has no heads and uses the
stored ``prompt_embeddings`` as the virtual tokens -- the form PEFT itself saves. Loaded with
``is_trainable=True`` PEFT would put freshly initialised heads on top of them (as for its own files).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn

from tuneforge.config import ConfigError
from tuneforge.methods import peft_format
from tuneforge.methods.virtual_tokens import VirtualTokens, attach, backbone_of, encoder_of

TRAIN_DEFAULTS = {"lr": 1e-3, "pooler_with_head": True}  # the pooler: docs/benchmarks.md, "BERT's pooler"

ENCODERS = ("mlp", "lstm")


@dataclass
class Config:
    num_virtual_tokens: int = 20  # N: virtual tokens (occupy N positions of the model's context)
    encoder: Literal["mlp", "lstm"] = "mlp"  # prompt encoder: 3-layer MLP, or bidirectional LSTM + MLP head
    encoder_hidden: int | None = None  # hidden width of the encoder; default: the model's hidden size
    lstm_layers: int = 2  # LSTM encoder only: stacked bidirectional LSTM layers
    dropout: float = 0.0  # LSTM encoder only: dropout between LSTM layers

    def __post_init__(self) -> None:
        if self.num_virtual_tokens <= 0:
            raise ConfigError(f"method.num_virtual_tokens must be positive, got {self.num_virtual_tokens}")
        if self.encoder not in ENCODERS:
            raise ConfigError(f"method.encoder: {self.encoder!r} is not allowed; choose one of mlp, lstm")
        if self.encoder_hidden is not None and self.encoder_hidden <= 0:
            raise ConfigError(f"method.encoder_hidden must be positive, got {self.encoder_hidden}")
        if self.lstm_layers <= 0:
            raise ConfigError(f"method.lstm_layers must be positive, got {self.lstm_layers}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"method.dropout must be in [0, 1), got {self.dropout}")


class PromptEncoder(VirtualTokens):
    """Trainable input embeddings -> encoder -> N virtual token embeddings; the embeddings alone once folded."""

    def __init__(self, num_tokens: int, hidden: int, config: Config) -> None:
        super().__init__(num_tokens)
        width = config.encoder_hidden or hidden
        self.encoder_type = config.encoder
        self.embedding = nn.Parameter(torch.randn(num_tokens, hidden))  # (N, hidden) encoder input
        if config.encoder == "lstm":
            self.lstm_head = nn.LSTM(hidden, width, num_layers=config.lstm_layers, dropout=config.dropout,
                                     bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * width, 2 * width), nn.ReLU(), nn.Linear(2 * width, hidden))
        else:
            self.mlp_head = nn.Sequential(nn.Linear(hidden, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                          nn.Linear(width, hidden))
        self.register_load_state_dict_pre_hook(_load_folded)

    @property
    def folded(self) -> bool:
        return "mlp_head" not in self._modules

    def forward(self) -> torch.Tensor:  # -> (N, hidden)
        if self.folded:
            return self.embedding
        # Tiny network, run once per batch: keep it in float32 even under bf16 autocast (LSTM support varies).
        with torch.autocast(self.embedding.device.type, enabled=False):
            x = self.embedding.unsqueeze(0)  # (1, N, hidden)
            if self.encoder_type == "lstm":
                x = self.lstm_head(x)[0]  # (1, N, 2 * width)
            return self.mlp_head(x)[0]  # (N, hidden)

    def _to_folded(self, prompts: torch.Tensor) -> None:
        for name in ("lstm_head", "mlp_head"):
            if hasattr(self, name):
                delattr(self, name)
        self.embedding = nn.Parameter(prompts)  # (N, hidden): the virtual tokens themselves

    def virtual_tokens(self) -> torch.Tensor:  # -> (N, hidden)
        """The encoder's eval-mode output (the folded embeddings), leaving the module as it is. Computed with
        autograd on, like during training: torch's LSTM takes another kernel under no_grad, which differs in
        the last bits (~1e-8)."""
        was_training = self.training
        self.eval()
        with torch.enable_grad():
            prompts = self().detach().clone()
        self.train(was_training)
        return prompts

    def fold_(self) -> None:
        """Replace the encoder by its eval-mode output."""
        if not self.folded:
            self._to_folded(self.virtual_tokens())


def _load_folded(module: PromptEncoder, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Loading ``embedding`` without the encoder heads (a folded model's tensors) folds the module first."""
    heads = (prefix + "mlp_head.", prefix + "lstm_head.")
    if prefix + "embedding" in state_dict and not module.folded and not any(k.startswith(heads) for k in state_dict):
        module._to_folded(torch.zeros_like(module.embedding))


def apply(model: nn.Module, config: Config) -> nn.Module:
    """Add the prompt encoder to ``model.base_model``; its new parameters train."""
    hidden = backbone_of(model).get_input_embeddings().weight.shape[1]
    attach(model, PromptEncoder(config.num_virtual_tokens, hidden, config), "prompt_encoder")
    return model


def fold(model: nn.Module) -> nn.Module:
    """Freeze the encoder output into plain embeddings (``prompt_encoder.embedding``, trainable, to be saved)."""
    backbone_of(model).prompt_encoder.fold_()
    return model


def to_peft(model: nn.Module, config: Config, task_type: str, modules_to_save: list[str]
            ) -> tuple[dict, dict[str, torch.Tensor]]:
    """The folded virtual tokens in PEFT 0.21's ``P_TUNING`` format: ``prompt_embeddings`` ``(N, hidden)``
    (heads as ``modules_to_save``); the encoder settings are recorded but unused in inference mode."""
    encoder = encoder_of(model, "prompt_encoder")
    prompts = encoder.virtual_tokens() if not encoder.folded else encoder.embedding  # (N, hidden)
    hidden = prompts.shape[1]
    return peft_format.prompt_learning(
        model, "P_TUNING", task_type, modules_to_save, prompts,
        encoder_reparameterization_type=config.encoder.upper(), encoder_hidden_size=config.encoder_hidden or hidden,
        encoder_num_layers=config.lstm_layers, encoder_dropout=config.dropout)
