"""What a run logs while it trains: ``log.jsonl``, TensorBoard scalars and the loss-curve plot (rank 0 only)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class Logger:
    """Metrics to ``log.jsonl`` and TensorBoard (rank 0 only)."""

    def __init__(self, run_dir: Path | None, enabled: bool, resumed_at: int | None = None) -> None:
        """``resumed_at``: the step a resumed run continues from; later records (written before the run was
        interrupted, and about to be written again) are dropped from ``log.jsonl``."""
        self.enabled = enabled and run_dir is not None
        self.path = run_dir / "log.jsonl" if self.enabled else None
        self.tb = None
        if self.enabled and resumed_at is not None and self.path.is_file():
            from tuneforge.files import atomic_write_text
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resumed_at]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "step":
                self.tb.add_scalar(key, value, record.get("step", 0))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_loss_curve(history: list[dict[str, Any]], path: Path, metric: str) -> None:
    """Training loss (and validation loss) against steps, saved as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(f"loss curve (best checkpoint by validation {metric})")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.partial")  # written whole, then renamed (a crash leaves no half PNG)
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    tmp.replace(path)
