"""Cheaper training steps, each equivalent to the plain path (tests/test_fast.py):

- **dropout masks from 16-bit integers** (CPU): four uniform 16-bit draws per random int64 compared with the
  drop threshold, instead of a float Bernoulli draw per element; the keep probability is resolved to 1/65,536.
  A (16, 32, 384) MiniLM hidden-state dropout costs 0.9 ms instead of 2.7 ms on 2 threads (AMD EPYC); CUDA's
  own dropout is already cheap and is kept there;
- **gradient clipping inside the fused AdamW kernel**: the total norm is measured as usual and the kernel
  divides each gradient by ``1 / clip coefficient`` (its ``grad_scale``) as it reads it, sparing a separate
  pass that rescales every gradient in memory;
- **fewer page faults**: glibc's heap grows and is trimmed in 64 MiB steps (``M_TOP_PAD``), so each step's
  large temporaries reuse pages instead of faulting in fresh zeroed ones from the kernel (50 full MiniLM
  steps: 835k -> 286k minor faults, system CPU time 4.1 -> 1.9 s; peak RSS within 30 MiB).
"""
from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Iterator

import torch
from torch import nn

M_TOP_PAD = -2  # glibc mallopt parameter
TOP_PAD_BYTES = 64 << 20


def tune_allocator() -> bool:
    """Grow and trim glibc's heap in 64 MiB steps; False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_TOP_PAD, TOP_PAD_BYTES))
    except (OSError, AttributeError):
        return False


def keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """Bool mask shaped like ``x``, each element kept with probability ``1 - p`` (resolved to 1/65,536)."""
    n = x.numel()
    words = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)  # (ceil(n/4),)
    bits = words.view(torch.int16)[:n].view(x.shape)  # uniform over [-32768, 32767]
    return bits >= round(p * 65536) - 32768


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with masks from :func:`keep_mask`; same ``p``, same scaling of kept values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p >= 1:
            return x * 0
        return x * keep_mask(x, self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))


@contextlib.contextmanager
def fast_dropout(model: nn.Module, device: torch.device) -> Iterator[int]:
    """Within the block, every ``nn.Dropout`` of ``model`` with ``p > 0`` is a :class:`FastDropout` (on a CPU;
    elsewhere nothing changes); the original modules are put back afterwards. Yields how many were swapped."""
    swapped = []
    if device.type == "cpu":
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Dropout and child.p > 0:
                    fast = FastDropout(child.p)
                    fast.train(child.training)
                    setattr(parent, name, fast)
                    swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            child.train(getattr(parent, name).training)
            setattr(parent, name, child)


def clip_gradients(params: list[nn.Parameter], max_norm: float, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """``clip_grad_norm_(params, max_norm)``; with a fused optimizer that accepts ``grad_scale`` (AdamW/Adam)
    the rescaling happens inside its next ``step``. Returns the total norm before clipping."""
    if not optimizer.defaults.get("fused"):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)  # what clip_grad_norm_ multiplies the gradients by
    optimizer.grad_scale = coef.reciprocal().to(torch.float32)  # the kernel divides each gradient by it
    return total
