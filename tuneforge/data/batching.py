"""Batching: length-grouped batch order (cuts padding), optimizer steps split into ranks and micro-batches
(``step_plan``), padding collate,
and padding-free (packed) collate for causal LMs."""
from __future__ import annotations

import bisect
import heapq
import random
from dataclasses import dataclass
from collections.abc import Iterator, Sequence
from typing import Any

import torch

# How to pad each per-token field; fields not listed here are per-example scalars. Padding positions 0 makes
# every padding token a sequence of its own (see ``collate``).
PAD_FIELDS = {"input_ids": None, "decoder_input_ids": None, "labels": -100, "token_type_ids": 0, "position_ids": 0}


@dataclass(frozen=True)
class Shapes:
    """How batch lengths are rounded up: a padded batch's length to a multiple of ``padded`` (never beyond
    ``limit``, the run's ``model.max_length``; 0: no limit), a packed row's width to a multiple of ``packed``.
    On a CPU under bf16, oneDNN builds and caches a kernel for every matmul shape it meets (~1,000 of them, up
    to ~0.5 GiB); variable-length batches meet a new shape nearly every step. Rounding keeps the shapes few.
    Rounding also spares building those kernels, which pays for the extra padding. Medians of 2 runs, bf16,
    2-core EPYC: MiniLM LoRA on 2,000 Rotten Tomatoes sentences, padded length x 4: peak RSS 1,670 -> 1,253 MiB,
    3,353 -> 3,776 tokens/s (x 8: 1,149 MiB, 3,387); full SmolLM2 SFT on ChatterBot, packed width x 16 and LM
    head rows x 64 (``tasks.causal_lm.LM_HEAD_ROWS``): 4,574 -> 4,079 MiB, 231 -> 221 tokens/s (noise: +-15 %).
    Float32 matmuls on a CPU are MKL's, which builds no kernel per shape: there rounding is only padding
    (``training``)."""
    padded: int = 1
    packed: int = 1
    limit: int = 0

    @classmethod
    def training(cls, max_length: int, rounded: bool = True) -> Shapes:
        """A training run's rounding (its evaluations too): padded lengths to 4, packed widths to 16 where
        matmul kernels are built per shape (``rounded``: bf16 on a CPU, and CUDA); none for float32 on a CPU."""
        return cls(padded=4, packed=16, limit=max_length) if rounded else cls(limit=max_length)


LONGEST_FIRST = True  # length-grouped epochs start with the longest example's batch (False: benchmarks' A/B only)


def batch_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                group_by_length: bool = True, window: int = 64) -> list[list[int]]:
    """Indices of each batch for one epoch.

    With ``group_by_length`` the data is shuffled, cut into windows of ``window`` batches
    (``train.length_group_batches``), each sorted by length and cut into batches whose order is shuffled
    again (Trainer's ``group_by_length`` idea; it uses windows of 50): similar lengths share a batch, yet
    batches stay random. Smaller windows give more varied batches and more padding. The batch holding the longest
    example comes first, as in Trainer's: a batch too large for memory fails at the first step, and the step's
    largest activations take their memory before the optimizer's state does (less heap fragmentation).
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
        if LONGEST_FIRST and batches:
            first = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))  # the longest's
            batches.insert(0, batches.pop(first))
    return batches


def step_plan(lengths: Sequence[int], batch_size: int, grad_accum: int, seed: int, epoch: int,
              group_by_length: bool = True, window: int = 64, rank: int = 0, world_size: int = 1
              ) -> list[list[list[int]]]:
    """One epoch of optimizer steps: for each step, this rank's micro-batches (lists of example indices).

    A step trains one global batch of ``batch_size x grad_accum x world_size`` examples (``batch_order`` on the
    global size, so the same examples make a step whatever the split into processes and micro-batches). Rank
    ``r`` takes every ``world_size``-th example of the global batch, starting at ``r`` (ranks get similar
    lengths), and cuts its share into ``grad_accum`` micro-batches of ``batch_size`` in order (length-grouped
    examples stay together). The epoch's last global batch may be smaller: its share is cut into at most
    ``grad_accum`` micro-batches of near-equal size; with fewer examples than processes it is dropped.
    """
    size = batch_size * grad_accum * world_size
    plan = []
    for batch in batch_order(lengths, size, seed, epoch, True, group_by_length, window=window):
        if len(batch) < world_size:
            continue  # too small to give every process an example
        share = batch[rank::world_size]
        n = min(grad_accum, len(share))
        cuts = [len(share) * k // n for k in range(n + 1)]
        plan.append([share[cuts[k]:cuts[k + 1]] for k in range(n)])
    return plan


def positions(example: dict[str, Any]) -> list[int]:
    """An example's ``position_ids``: its own (rows of ``data.packing`` restart them at each packed example)
    or 0, 1, 2, ..."""
    return example.get("position_ids") or list(range(len(example["input_ids"])))


def without_positions(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The examples without ``position_ids``: packed rows become plain concatenations."""
    return [{k: v for k, v in e.items() if k != "position_ids"} for e in examples]


def round_up(n: int, multiple: int, limit: int = 0) -> int:
    """``n`` rounded up to a multiple of ``multiple``, not beyond ``limit`` (0: none) unless ``n`` already is."""
    up = -(-n // multiple) * multiple
    return max(n, min(up, limit)) if limit else up


def collate(examples: list[dict[str, Any]], pad_id: int, multiple: int = 1, limit: int = 0
            ) -> dict[str, torch.Tensor]:
    """Right-pad per-token fields to the longest example, its length rounded up to ``multiple`` (not beyond
    ``limit``; see ``Shapes``; a seq2seq example's ``labels``, the decoder's, to the longest output); build
    ``attention_mask``. Fields whose name starts
    with ``_`` are the task's bookkeeping and stay out of the batch. Where some example has
    ``position_ids`` (a ``data.packing`` row) every one gets them; padding sits at position 0, so each padding
    token is a sequence of its own and the model (given no attention mask) keeps packed examples apart."""
    longest = round_up(max(len(e["input_ids"]) for e in examples), multiple, limit)
    if any("position_ids" in e for e in examples):
        examples = [{**e, "position_ids": positions(e)} for e in examples]
    batch: dict[str, torch.Tensor] = {}
    for name in examples[0]:
        if name.startswith("_"):  # bookkeeping of the task (e.g. word ids), not a model input
            continue
        values = [e[name] for e in examples]
        if isinstance(values[0], (list, tuple)):
            pad = pad_id if PAD_FIELDS.get(name, 0) is None else PAD_FIELDS.get(name, 0)
            width = round_up(max(map(len, values)), multiple, limit)  # longest, or a seq2seq output's own
            batch[name] = torch.tensor([list(v) + [pad] * (width - len(v)) for v in values])  # (batch, seq)
        else:
            batch[name] = torch.tensor(values)  # (batch,)
    batch["attention_mask"] = torch.tensor(
        [[1] * len(e["input_ids"]) + [0] * (longest - len(e["input_ids"])) for e in examples])  # (batch, seq)
    return batch


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing: indices of ``lengths`` grouped into rows of at most ``capacity`` tokens, each item
    into the row it fills most, the earliest such row on a tie (an item longer than ``capacity`` gets a row of
    its own). The rows are kept by the space they have left: a sorted list of the distinct amounts (at most
    ``capacity`` + 1 of them) and a heap of row indices for each, so a million items pack in seconds, not
    minutes (one sorted list of every row's space cost a shift of that list per item). O(n log n)."""
    rows: list[list[int]] = []
    spaces: list[int] = []  # sorted distinct amounts of space that rows have left
    holding: dict[int, list[int]] = {}  # space left -> heap of the indices of the rows with that much

    def put(space: int, row: int) -> None:
        if space not in holding:
            holding[space] = []
            bisect.insort(spaces, space)
        heapq.heappush(holding[space], row)

    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        k = bisect.bisect_left(spaces, lengths[i])
        if k == len(spaces):
            rows.append([i])
            put(capacity - lengths[i], len(rows) - 1)
            continue
        space = spaces[k]
        row = heapq.heappop(holding[space])
        if not holding[space]:
            del holding[space]
            spaces.pop(k)
        rows[row].append(i)
        put(space - lengths[i], row)
    return rows


def packed_layout(lengths: Sequence[int], tries: int = 32, multiple: int = 1) -> list[list[int]]:
    """Rows for ``collate_packed``: ``pack_rows`` with ``tries`` capacities between the longest length
    and twice it (each also rounded up to ``multiple``, the width the batch will have), keeping the layout with
    the fewest computed tokens (rows x the rounded width; then the narrowest).
    ChatterBot batches of 16: padded/real 1.05, against 1.15 with the capacity fixed at twice the longest; widths
    rounded to 16 (``Shapes.training``): 1.10, against 1.13 when the layout ignored the rounding."""
    longest = max(lengths)
    steps = {longest + longest * k // tries for k in range(tries + 1)}
    best: tuple[tuple[int, int], list[list[int]]] | None = None
    for capacity in sorted(steps | {round_up(c, multiple) for c in steps}):
        rows = pack_rows(lengths, capacity)
        width = round_up(max(sum(lengths[i] for i in row) for row in rows), multiple)
        key = (len(rows) * width, width)
        if best is None or key < best[0]:
            best = (key, rows)
    return best[1]


def collate_packed(examples: list[dict[str, Any]], pad_id: int, rows: list[list[int]] | None = None,
                   multiple: int = 1) -> dict[str, torch.Tensor]:
    """Padding-free batch for causal LMs: the examples packed end to end into rows (``packed_layout``: about
    twice the longest example at most), with ``position_ids`` restarting at 0 for each example. Given
    ``position_ids`` and no attention mask, transformers' causal mask (``masking_utils``) keeps each example
    to itself (a block-diagonal causal mask); ``attention_mask`` marks real tokens for counting only and is
    not passed to the model. Each example's first label is -100 (the previous example must not predict it);
    the row tail is padded with a segment of its own, labels -100, the width rounded up to ``multiple``.
    ``rows`` fixes the layout (indices per row).
    An example with ``position_ids`` of its own (a ``data.packing`` row) keeps them.
    SmolLM2 LoRA on the ChatterBot pairs
    (16 x <=64 tokens, forward + backward, 12 batches): 1.22x (LoRA) and 1.26x (full) faster than padded rows;
    one row per batch was no faster than padding (eager attention over a 600-token row cost what it saved)."""
    lengths = [len(e["input_ids"]) for e in examples]
    rows = rows or packed_layout(lengths, multiple=multiple)
    width = round_up(max(sum(lengths[i] for i in row) for row in rows), multiple)
    ids = torch.full((len(rows), width), pad_id)  # (rows, width)
    labels = torch.full((len(rows), width), -100)  # (rows, width)
    pos = torch.zeros((len(rows), width), dtype=torch.long)  # (rows, width)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (rows, width): 1 on real tokens
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            n = lengths[i]
            ids[r, start:start + n] = torch.tensor(examples[i]["input_ids"])
            labels[r, start + 1:start + n] = torch.tensor(examples[i]["labels"][1:])
            pos[r, start:start + n] = torch.tensor(positions(examples[i]))
            mask[r, start:start + n] = 1
            start += n
        pos[r, start:] = torch.arange(width - start) % max(lengths)  # the padding tail: segments of their own, no
        # longer than an example (a row is up to twice one: GPT-2's position table ends at model.max_length)
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "attention_mask": mask}


def iterate(examples: Sequence[dict[str, Any]], batches: list[list[int]], pad_id: int, packed: bool = False,
            shapes: Shapes | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Yield collated batches in the given order; ``packed``: padding-free rows (``collate_packed``); lengths
    rounded as ``shapes`` says (default: not rounded)."""
    s = shapes or Shapes()
    for b in batches:
        chosen = [examples[i] for i in b]
        yield (collate_packed(chosen, pad_id, multiple=s.packed) if packed
               else collate(chosen, pad_id, s.padded, s.limit))
