"""Seeded train/validation/test splits, stratified by a key when given."""
from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def split(items: Sequence[T], fractions: Sequence[float], seed: int,
          key: Callable[[T], Any] | None = None) -> tuple[list[T], list[T], list[T]]:
    """Split into (train, validation, test) by fractions. With ``key``, each class is split separately
    (stratified) so every split keeps the class balance. Deterministic for a seed."""
    rng = random.Random(seed)
    groups: dict[Any, list[T]] = defaultdict(list)
    for item in items:
        groups[key(item) if key else None].append(item)
    out: tuple[list[T], list[T], list[T]] = ([], [], [])
    for group_key in sorted(groups, key=str):
        group = groups[group_key]
        rng.shuffle(group)
        n = len(group)
        n_train = round(n * fractions[0])
        n_val = round(n * fractions[1])
        if fractions[2] == 0:
            n_val = n - n_train
        out[0].extend(group[:n_train])
        out[1].extend(group[n_train:n_train + n_val])
        out[2].extend(group[n_train + n_val:])
    for part in out:
        rng.shuffle(part)
    return out
