"""Seeded train/validation/test splits, stratified by a key when given."""
from __future__ import annotations

import random
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
MIN_PER_SPLIT = 3  # a class with at least this many items gets one in every split that has a share


def _counts(n: int, fractions: Sequence[float]) -> tuple[int, int]:
    """(train, validation) sizes of a class of ``n`` items; the rest is test. With ``n >= MIN_PER_SPLIT`` every
    split whose fraction is positive gets at least one item."""
    n_train, n_val = round(n * fractions[0]), round(n * fractions[1])
    if fractions[2] == 0:
        n_val = n - n_train
    if n >= MIN_PER_SPLIT:
        wanted = [f > 0 for f in fractions]
        sizes = [n_train, n_val, n - n_train - n_val]
        for k in (1, 2):
            while wanted[k] and sizes[k] < 1:
                donor = max(range(3), key=lambda j: sizes[j])
                sizes[donor] -= 1
                sizes[k] += 1
        n_train, n_val = sizes[0], sizes[1]
    elif n and fractions[0] > 0 and n_train == 0:  # a class too small for every split is trained on (else its
        n_train, n_val = 1, min(n_val, n - 1)         # test rows carry a label the model never saw)
    return n_train, n_val


def split(items: Sequence[T], fractions: Sequence[float], seed: int,
          key: Callable[[T], Any] | None = None) -> tuple[list[T], list[T], list[T]]:
    """Split into (train, validation, test) by fractions. With ``key``, each class is split separately
    (stratified) so every split keeps the class balance, and every class of at least three items appears in
    every split that has a share (a warning names the classes too small for that). Deterministic for a seed."""
    rng = random.Random(seed)
    groups: dict[Any, list[T]] = defaultdict(list)
    for item in items:
        groups[key(item) if key else None].append(item)
    out: tuple[list[T], list[T], list[T]] = ([], [], [])
    small = []
    for group_key in sorted(groups, key=str):
        group = groups[group_key]
        rng.shuffle(group)
        n_train, n_val = _counts(len(group), fractions)
        out[0].extend(group[:n_train])
        out[1].extend(group[n_train:n_train + n_val])
        out[2].extend(group[n_train + n_val:])
        if key is not None and any(f > 0 and not part for f, part in
                                   zip(fractions, (group[:n_train], group[n_train:n_train + n_val],
                                                   group[n_train + n_val:]))):
            small.append(str(group_key))
    if small:
        print(f"warning: class(es) {', '.join(small[:10])} have fewer than {MIN_PER_SPLIT} examples and are missing "
              "from some split", file=sys.stderr)
    for part in out:
        rng.shuffle(part)
    return out


def sample(keys: Sequence[Any], n: int, seed: int) -> list[int]:
    """Indices (in order) of a seeded sample of ``n`` of the items whose stratum ``keys`` gives (None: no
    strata): each stratum in proportion, every one kept while ``n`` allows (largest remainders fill the rest)."""
    rng = random.Random(seed)
    if all(k is None for k in keys):
        return sorted(rng.sample(range(len(keys)), n))
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    order = sorted(groups, key=lambda k: (-len(groups[k]), str(k)))  # largest strata first
    exact = {k: n * len(groups[k]) / len(keys) for k in order}
    take = {k: min(len(groups[k]), max(1, int(exact[k]))) if i < n else 0 for i, k in enumerate(order)}
    while sum(take.values()) > n:  # the ones kept at 1 pushed it over: the largest give back
        take[max(order, key=lambda k: take[k])] -= 1
    short = n - sum(take.values())
    ranked = sorted(order, key=lambda k: exact[k] - int(exact[k]), reverse=True)  # largest remainders first
    while short > 0:  # n <= len(keys): every pass finds room
        for k in ranked:
            if short and take[k] < len(groups[k]):
                take[k], short = take[k] + 1, short - 1
    return sorted(i for k in order for i in rng.sample(groups[k], take[k]))
