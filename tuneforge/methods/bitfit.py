"""BitFit: train only the bias terms of the model (Ben Zaken et al. 2021, "BitFit: Simple Parameter-efficient
Fine-tuning for Transformer-based Masked Language-models", arXiv 2106.10199).

Every parameter registered as ``bias`` outside the task head trains (the head is unfrozen by the registry);
like the paper this includes LayerNorm biases unless ``layernorm`` is off. Models without bias terms
(the Llama family) are refused with a clear error.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from tuneforge.config import ConfigError
from tuneforge.methods.layers import HEAD_NAMES, is_norm

# classification and token classification: lr x 3 was validation's pick on three of the four tasks measured at
# 500 examples (test points over 1e-3: Rotten Tomatoes +3.3, ChatterBot topics +6.9, WNUT-16 +2.0; tweets -0.8,
# where validation kept 1e-3); causal LM is not measured and keeps 1e-3 (docs/benchmarks.md, "ChatterBot topics'
# prompt, P-tuning and BitFit at the 30-epoch cap")
# a fresh head at 9e-3 or more (other methods: 3e-3): BitFit's biases carry little of the fit, so the head carries
# more. At lr 3e-3, a 9e-3 head against a 3e-3 one (seed 42, bf16 against earlier fp32 runs; test points):
# ChatterBot topics +7.0 at 499 questions and +8.2 at 575, tweets +4.6 at 504 and +10.6 at 1,919, Rotten Tomatoes
# +0.5 at 500 and -0.8 at 2,000, WNUT-16 +0.4 at 496 and 1,915; seed 2, both bf16: topics +15.3 and +12.3, Rotten
# Tomatoes -0.5. lr 9e-3 itself (the head too) fell to 0.66 on Rotten Tomatoes (docs/benchmarks.md, "BitFit's head")
TRAIN_DEFAULTS = {"lr": {"default": 1e-3, "classification": 3e-3, "token_classification": 3e-3},
                  "head_lr": {"classification": 9e-3, "token_classification": 9e-3}}


@dataclass
class Config:
    layernorm: bool = True  # also train LayerNorm biases (the paper trains every bias term)


def apply(model: nn.Module, config: Config) -> nn.Module:
    """Unfreeze the bias terms (the registry froze everything else)."""
    found = 0
    for name, module in model.named_modules():
        bias = module._parameters.get("bias")
        if bias is None or name.split(".")[0] in HEAD_NAMES or (not config.layernorm and is_norm(module)):
            continue
        bias.requires_grad_(True)
        found += 1
    if not found and config.layernorm:
        raise ConfigError(
            f"method.name=bitfit: {type(model).__name__} has no bias terms to train (models of the Llama, T5 and "
            "ModernBERT families have none); choose another method, e.g. lora or ia3"
        )
    if not found:
        raise ConfigError(
            f"method.layernorm=false: {type(model).__name__} has no bias terms outside its norm layers; "
            "set method.layernorm=true or choose another method, e.g. lora or ia3"
        )
    return model


def merge(model: nn.Module) -> nn.Module:
    """Nothing to fold: the trained biases are the model's own (a plain Hugging Face model)."""
    return model
