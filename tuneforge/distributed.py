"""torch.distributed for ``torchrun``: the process group from the environment, the device from ``LOCAL_RANK``,
DDP or FSDP2 around the training module, and the few collectives the loop needs.

Launched without torchrun (no ``WORLD_SIZE`` in the environment) everything here is a no-op: rank 0 of 1.
With it, every process runs the same pipeline on its own share of each global batch; rank 0 alone writes.
Errors that every rank meets in set-up (bad data, a bad config) are agreed on (:func:`agree`), so rank 0
prints one message and every rank exits; an error on one rank alone (e.g. out of memory) ends that process,
and torchrun then stops the others.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn

from tuneforge.config import ConfigError

T = TypeVar("T")
TIMEOUT = datetime.timedelta(minutes=float(os.environ.get("TUNEFORGE_DIST_TIMEOUT_MIN", "30")))


class ReportedElsewhere(SystemExit):
    """A failure rank 0 reports: the other ranks exit with the same status and print nothing."""

    def __init__(self) -> None:
        super().__init__(2)


@dataclass(frozen=True)
class Dist:
    """Where this process stands: rank, world size, local rank and its device."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes run directories, logs and checkpoints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def launched() -> bool:
    """Whether torchrun (or another launcher) set up a multi-process environment."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Dist:
    """This process's place in the process group (rank 0 of 1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return Dist()


def setup() -> tuple[Dist, torch.device | None]:
    """Initialise the process group from torchrun's environment once (NCCL where CUDA is present, else gloo);
    returns (Dist, this rank's device, or None outside torchrun: ``train.device`` decides)."""
    if not launched():
        return Dist(), None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
        if not current().main and not isinstance(sys.stderr, RankZeroNotes):
            sys.stderr = RankZeroNotes(sys.stderr)
    return current(), device


class RankZeroNotes:
    """stderr of the ranks other than 0: the notes and warnings every rank meets (about the data, the config)
    are printed once, by rank 0; every other line (errors, tracebacks) passes."""
    QUIET = ("note: ", "warning: ")

    def __init__(self, stream: Any) -> None:
        self._stream, self._line = stream, ""

    def write(self, text: str) -> int:
        *lines, self._line = (self._line + text).split("\n")
        for line in lines:
            if not line.startswith(self.QUIET):
                self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self._line and not self._line.startswith(self.QUIET):
            self._stream.write(self._line)
        self._line = ""
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, ...
        return getattr(self._stream, name)


def device_for(name: str, given: torch.device | None) -> torch.device | None:
    """This rank's device under torchrun (``train.device=cpu`` keeps it on the CPU), else None."""
    if given is None:
        return None
    return torch.device("cpu") if name == "cpu" else given


def teardown() -> None:
    """Destroy the process group (end of a torchrun process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(value: float | int | torch.Tensor, device: torch.device | None = None) -> float | int | torch.Tensor:
    """Sum over ranks (the value itself in one process)."""
    if not current().active:
        return value
    tensor = value if torch.is_tensor(value) else torch.tensor(float(value), dtype=torch.float64)
    tensor = tensor.detach().clone().to(_comm_device(device))
    dist.all_reduce(tensor)
    if torch.is_tensor(value):
        return tensor.to(value.device)
    return type(value)(tensor.item())


def _comm_device(device: torch.device | None) -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return device if device is not None and device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not current().active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_comm_device(None))
    return box[0]


def gather(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank."""
    d = current()
    if not d.active:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def agree(fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if it raised a ConfigError on any rank, every rank fails: rank 0 raises the
    error (the lowest failing rank's message, once), the others exit quietly with the same status."""
    d = current()
    if not d.active:
        return fn()
    error: str | None = None
    try:
        result = fn()
    except ConfigError as exc:
        error, result = str(exc) or "failed", None
    errors = gather(error)
    first = next((e for e in errors if e is not None), None)
    if first is None:
        return result  # type: ignore[return-value]
    if d.main:
        raise ConfigError(first)
    raise ReportedElsewhere()


def barrier() -> None:
    if current().active:
        dist.barrier()


# ---- wrapping the training module -------------------------------------------------------------------------

def wrap(module: nn.Module, kind: str, blocks: list[nn.Module], bf16: bool, device: torch.device) -> nn.Module:
    """DDP (default) or FSDP2 around ``module`` (the model + its loss); unchanged in one process. FSDP2 shards
    each transformer block and the rest as the root group; with bf16 it all-gathers parameters in bf16 and
    reduces gradients in float32 (``MixedPrecisionPolicy``)."""
    if not current().active:
        return module
    if kind == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
        for block in blocks:
            fully_shard(block, mp_policy=mp)
        return fully_shard(module, mp_policy=mp)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def inner(module: nn.Module) -> nn.Module:
    """The wrapped module of a DDP wrapper (its parameter names without ``module.``); FSDP2 wraps in place."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def is_fsdp(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(module, FSDPModule)


@contextlib.contextmanager
def gradient_sync(module: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation window (entered once
    per micro-batch, around its forward and backward)."""
    if sync or not current().active:
        yield
    elif is_fsdp(module):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        with module.no_sync():
            yield


@contextlib.contextmanager
def unsharded(module: nn.Module) -> Iterator[None]:
    """FSDP2: all-gather the root group (embeddings, norms, heads) so code may call sub-modules directly
    (evaluation, generation); every rank must enter it together. A no-op otherwise."""
    if not is_fsdp(module):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


def full_state(module: nn.Module, names: set[str] | None = None, copy: bool = True) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable (or the ``names``) parameters as one unsharded state. FSDP2 gathers them on
    rank 0 (every rank must call it together; the others get an empty dict). ``copy=False``: parameters already
    on the CPU are returned as they are (detached, sharing storage), not copied."""
    module = inner(module)
    wanted = names if names is not None else {n for n, p in module.named_parameters() if p.requires_grad}
    if is_fsdp(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {n: v for n, v in state.items() if n in wanted}
    return {n: p.detach().to("cpu", copy=copy) for n, p in module.named_parameters() if n in wanted}


def load_full_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a (partial) unsharded state into ``module``; FSDP2: rank 0's ``state`` is broadcast and sharded."""
    module = inner(module)
    if is_fsdp(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                     strict=False))
        return
    unexpected = module.load_state_dict(state, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"state does not fit the module (e.g. {unexpected[0]})")


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """The RNG states training uses (CPU, and CUDA where present) of every rank, as uint8 tensors named
    ``<rank>.cpu`` / ``<rank>.cuda`` (stored in the safetensors checkpoint, no pickle on disk)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).cpu()
    return {f"{rank}.{k}": v for rank, s in enumerate(gather(state)) for k, v in s.items()}


def set_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore this rank's RNG states saved by :func:`rng_states`."""
    rank = current().rank
    torch.set_rng_state(states[f"{rank}.cpu"])
    if f"{rank}.cuda" in states and device.type == "cuda":
        torch.cuda.set_rng_state(states[f"{rank}.cuda"], device)
