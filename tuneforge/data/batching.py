"""Batching: length-grouped batch order (cuts padding), rank sharding for torch.distributed, padding collate."""
from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch

# How to pad each per-token field; fields not listed here are per-example scalars.
PAD_FIELDS = {"input_ids": None, "labels": -100, "token_type_ids": 0}


def batch_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                group_by_length: bool = True, rank: int = 0, world_size: int = 1, window: int = 64
                ) -> list[list[int]]:
    """Indices of each batch for one epoch.

    With ``group_by_length`` the data is shuffled, cut into windows of ``window`` batches
    (``train.length_group_batches``), each sorted by length and cut into batches whose order is shuffled
    again (Trainer's ``group_by_length`` idea; it uses windows of 50): similar lengths share a batch, yet
    batches stay random. Smaller windows give more varied batches and more padding. With several ranks each
    rank takes every ``world_size``-th batch (batches are dropped to an equal count, like DistributedSampler).
    """
    idx = list(range(len(lengths)))
    rng = random.Random(seed * 1_000_003 + epoch)
    if shuffle:
        rng.shuffle(idx)
    if group_by_length:
        mega = batch_size * window
        idx = [i for s in range(0, len(idx), mega)
               for i in sorted(idx[s:s + mega], key=lambda i: -lengths[i])]
    batches = [idx[s:s + batch_size] for s in range(0, len(idx), batch_size)]
    if shuffle and group_by_length:
        rng.shuffle(batches)
    if world_size > 1:
        usable = len(batches) - len(batches) % world_size
        batches = batches[:usable][rank::world_size]
    return batches


def collate(examples: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad per-token fields to the longest example; build ``attention_mask``."""
    longest = max(len(e["input_ids"]) for e in examples)
    batch: dict[str, torch.Tensor] = {}
    for name in examples[0]:
        values = [e[name] for e in examples]
        if isinstance(values[0], (list, tuple)):
            pad = pad_id if PAD_FIELDS.get(name, 0) is None else PAD_FIELDS.get(name, 0)
            batch[name] = torch.tensor([list(v) + [pad] * (longest - len(v)) for v in values])  # (batch, seq)
        else:
            batch[name] = torch.tensor(values)  # (batch,)
    batch["attention_mask"] = torch.tensor(
        [[1] * len(e["input_ids"]) + [0] * (longest - len(e["input_ids"])) for e in examples])  # (batch, seq)
    return batch


def iterate(examples: Sequence[dict[str, Any]], batches: list[list[int]], pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """Yield collated batches in the given order."""
    for b in batches:
        yield collate([examples[i] for i in b], pad_id)
