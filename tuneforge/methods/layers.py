"""Find the stack of transformer blocks in any Hugging Face model, without per-architecture subclasses."""
from __future__ import annotations

import re

import torch.nn as nn

from tuneforge.config import ConfigError

# Top-level output modules of Hugging Face task models: never wrapped by adapters, trained as heads.
HEAD_NAMES = ("classifier", "score", "lm_head", "qa_outputs")


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return ``(qualified_name, module_list)`` of the transformer blocks.

    The blocks are the longest ``nn.ModuleList`` whose children all share one class
    (BERT ``encoder.layer``, Llama ``model.layers``, GPT-2 ``transformer.h``).
    """
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            kinds = {type(child) for child in module}
            if len(kinds) == 1 and (best is None or len(module) > len(best[1])):
                best = (name, module)
    if best is None:
        raise ConfigError(f"cannot find the transformer layers of {type(model).__name__}: no nn.ModuleList of blocks")
    return best


def layer_index(param_name: str, layers_name: str) -> int | None:
    """The block index a parameter belongs to (``encoder.layer.3.x`` -> 3), or None outside the blocks."""
    m = re.match(re.escape(layers_name) + r"\.(\d+)\.", param_name)
    return int(m.group(1)) if m else None
