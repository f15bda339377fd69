"""compare_report: the comparison's rows, table and plots from the runs' metrics."""
from tuneforge import tasks
from tuneforge.compare_report import failed_row, row_from_metrics, write_outputs
from tuneforge.config import load_config


def test_forgetting_column_and_plot(tmp_path):
    task = tasks.get("classification")
    metrics = {"test_before": {"accuracy": 0.5}, "test_after": {"accuracy": 0.9},
               "parameters": {"trainable": 10, "total": 1000, "trainable_pct": 1.0}, "train_seconds": 2.0,
               "tokens_per_second": 100.0, "peak_memory_mb": 500.0,
               "forgetting": {"reference": "task 1 (sentiment) test accuracy", "change": -0.125, "forgotten": 12.5,
                              "unit": "points"}}
    rows = [row_from_metrics("lora", metrics, task, tmp_path / "a"),
            row_from_metrics("full", {k: v for k, v in metrics.items() if k != "forgetting"}, task, tmp_path / "b")]
    write_outputs(rows, task, tmp_path, load_config(None, {"data": {"train_file": "my.csv"}}), in_process=False)
    assert (tmp_path / "forgetting.png").is_file() and (tmp_path / "peak_memory.png").is_file()
    md = (tmp_path / "comparison.md").read_text()
    assert md.startswith("# classification: 2 methods on minilm (my.csv)")  # not data.dataset's unused default
    assert "| lora | 0.5000 | 0.9000 | - | - | 10 | 1.000 |" in md and "| +12.50 points |" in md
    assert "| forgotten (task 1 (sentiment) test accuracy; positive: worse after training) |" in md  # was after -
    assert "no forgetting plot" not in md  # before in the probe's own units, signed opposite ways for accuracy and
    #                                        perplexity


def test_failed_row_keeps_the_method_and_the_reason(tmp_path):
    task = tasks.get("classification")
    row = failed_row("prompt", task, tmp_path / "prompt", "out of memory\nTraceback ...")
    assert row["method"] == "prompt" and row["status"] == "failed" and row["error"] == "out of memory"
    assert row["accuracy_after"] is None and row["peak_memory_mb"] is None
