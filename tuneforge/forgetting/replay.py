"""Experience replay against forgetting: mix a share of "old" examples into each training epoch.

Rehearsal of earlier data is the oldest remedy for catastrophic forgetting (Robins 1995; Rolnick et al. 2019,
"Experience Replay for Continual Learning"). Here the old examples are either general text (causal LM: e.g.
held-out ``chitchat`` conversations, encoded like the training data) or examples of an earlier
classification task.

What is supported:
- causal LM: any encoded examples with the same fields (``input_ids``, ``labels``) -- general text or
  conversations replay directly;
- classification and token classification: examples labelled with this run's own labels (an earlier task's
  examples only where their labels are among them: replayed examples train this run's head). Replay into a
  model that has a separate head per task is not supported (the loop trains one head).
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from tuneforge.config import ConfigError


def replay_count(n_train: int, ratio: float) -> int:
    """Replay examples so that they make up ``ratio`` of the epoch: ``round(ratio / (1 - ratio) * n_train)``
    (then ``n_replay / (n_train + n_replay)`` = ``ratio`` up to rounding)."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"replay ratio must be in [0, 1) (the share of replayed examples per epoch), got {ratio}")
    return round(ratio / (1.0 - ratio) * n_train)


def model_fields(example: dict[str, Any]) -> list[str]:
    """The fields of an example that reach the model: not the task's ``_`` bookkeeping (``_cut`` marks only the
    examples cut to ``model.max_length``)."""
    return sorted(k for k in example if not k.startswith("_"))


def mix(train_examples: Sequence[dict[str, Any]], replay_examples: Sequence[dict[str, Any]], ratio: float,
        seed: int = 0) -> list[dict[str, Any]]:
    """One epoch's examples: all of ``train_examples`` plus :func:`replay_count` replay examples, shuffled.

    Replay examples are drawn without replacement while the pool suffices; a larger count takes the whole
    pool as many times as it fits and draws the remainder without replacement (sampling with replacement,
    but as evenly as possible). The same dicts are reused, not copied. Deterministic for a given ``seed``;
    call with ``seed + epoch`` for a fresh draw each epoch.
    """
    n = replay_count(len(train_examples), ratio)
    if n == 0:
        return list(train_examples)
    if not replay_examples:
        raise ConfigError("replay: the replay data is empty; give replay examples or set the ratio to 0")
    if train_examples and model_fields(replay_examples[0]) != model_fields(train_examples[0]):
        raise ConfigError(f"replay: replay examples have fields {model_fields(replay_examples[0])} but training "
                          f"examples have {model_fields(train_examples[0])}; encode the replay data for the same task")
    rng = random.Random(seed)
    pool = list(replay_examples)
    full, rest = divmod(n, len(pool))
    chosen = pool * full + rng.sample(pool, rest)
    out = list(train_examples) + chosen
    rng.shuffle(out)
    return out
