"""benchmarks/results_table.py's verdicts: speed against the fastest Trainer row that ran, memory against the
lowest, MFU against the highest matmul probe; benchmarks/driver.py's schedule."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import driver  # noqa: E402
import results_table as rt  # noqa: E402
from flops import pooled_rates  # noqa: E402

LABELS = {"tuneforge": "tuneforge", "trainer": "default", "trainer_grouped": "grouped",
          "trainer_grouped_bf16w": "grouped bf16 weights"}


def run(fw: str, tokens_per_second: float, memory: float, accuracy: float = 0.8, method: str = "lora") -> dict:
    return {"method": method, "framework": fw, "tokens_per_second": tokens_per_second, "test_accuracy": accuracy,
            "load_1min_before": 0.1, "load_1min_after": 0.1, "trainable_parameters": 10, "train_seconds": 1.0,
            "peak_memory_mb": memory, "padding_factor": 1.0, "tokens_per_cpu_second": tokens_per_second,
            "real_tokens": 100}


def table(runs: list[dict], best: str = "trainer_grouped") -> str:
    rates = {"bfloat16": {"flops": 1e12, "native": True}, "float32": {"flops": 5e11}}
    fws = tuple(LABELS)
    rows = rt.summarise(runs * 3, ["lora"], fws, "test_accuracy", {"lora": 1e6}, rates, "bf16")
    return "\n".join(rt.comparison_table(rows, LABELS, "test_accuracy", "accuracy", ".3f", False,
                                         {"precision": "bf16"}, rates, best))


def test_speed_is_judged_against_the_fastest_trainer_row_not_the_named_one():
    text = table([run("tuneforge", 300, 900), run("trainer_grouped", 190, 1000), run("trainer", 260, 1000)])
    assert "tuneforge 1.15× the real tokens/s of the fastest Trainer + PEFT row (default)" in text
    assert "target ≥ 1.5× at equal or better accuracy: **not met**" in text
    assert "grouped: 1.58×" in text  # the other rows are still shown


def test_memory_is_judged_against_the_lowest_row_and_names_the_rows_that_did_not_run():
    text = table([run("tuneforge", 400, 900), run("trainer_grouped", 200, 1000),
                  run("trainer_grouped_bf16w", 210, 850)])
    assert "vs the lowest Trainer row's 850 MiB (grouped bf16 weights)" in text and "**not met** (of the rows " \
        "that ran; not run: default)" in text
    assert "tuneforge 1.90× the real tokens/s of the fastest Trainer + PEFT row (grouped bf16 weights)" in text


def test_mfu_divides_by_the_highest_probe():
    rates = pooled_rates([{"bfloat16": {"flops": f, "size": 2048, "native": True}} for f in (1e12, 2e12, 1.2e12)])
    assert rates["bfloat16"]["flops"] == 2e12 and rates["bfloat16"]["median"] == 1.2e12


def test_each_framework_goes_first_in_turn_and_bf16_weight_rows_run_only_for_lora_in_bf16(monkeypatch, tmp_path):
    order = []
    monkeypatch.setattr(driver, "matmul_probe", lambda threads, device: {})
    monkeypatch.setattr(driver, "launch", lambda script, spec: order.append((spec["repeat"], spec["method"],
                                                                              spec["framework"])) or {
        "tokens_per_second": 1, "train_seconds": 1, "peak_memory_mb": 1, "q": 0, "padding_factor": 1,
        "autocast_dtype": "x", "process_seconds": 1})
    settings = {"threads": 1, "device": "cpu", "repeats": 2, "n_train": 1, "precision": "bf16", "seed": 0,
                "lr_lora": 1e-3, "lr_full": 1e-5}
    fws = ("tuneforge", "trainer_grouped", "trainer_grouped_bf16w")
    driver.run_interleaved("x.py", settings, ["lora", "full"], fws, {}, tmp_path / "r.md", "q")
    assert order == [(0, "lora", "tuneforge"), (0, "lora", "trainer_grouped"), (0, "lora", "trainer_grouped_bf16w"),
                     (0, "full", "tuneforge"), (0, "full", "trainer_grouped"),
                     (1, "lora", "trainer_grouped"), (1, "lora", "trainer_grouped_bf16w"), (1, "lora", "tuneforge"),
                     (1, "full", "trainer_grouped"), (1, "full", "tuneforge")]
    assert not driver.applies("lora", "trainer_grouped_bf16w", "fp32")


def test_quality_within_the_seed_spread_counts_as_equal_and_beyond_it_as_worse():
    def row(median, lo, hi):
        return {"q": median, "q_range": [lo, hi]}
    assert rt.quality_holds(row(0.78, 0.77, 0.80), row(0.79, 0.78, 0.80), "q", False, ".3f")[0]  # gap 0.01 ≤ 0.03
    held, how = rt.quality_holds(row(0.70, 0.69, 0.71), row(0.79, 0.78, 0.80), "q", False, ".3f")
    assert not held and "beyond the repeats' spread of 0.020" in how
    assert rt.quality_holds(row(7.5, 7.4, 7.6), row(7.9, 7.8, 8.0), "q", True, ".3f") == (True, "better")
    assert not rt.quality_holds(row(8.5, 8.4, 8.6), row(7.9, 7.8, 8.0), "q", True, ".3f")[0]  # perplexity: lower wins


def test_render_writes_an_earlier_invocations_results_again_under_this_codes_verdicts(tmp_path):
    import json

    import bench_classification
    source = Path(__file__).parents[1] / "benchmarks" / "results" / "classification-amx-bf16-2026-12-07.json"
    bench_classification.main(["--render", str(source), "--output", str(tmp_path / "again.md")])
    text = (tmp_path / "again.md").read_text()
    assert "| lora | tuneforge | 6,576 (6,494–6,615) |" in text and "within the repeats' spread" in text
    (tmp_path / "half.json").write_text(json.dumps({**json.loads(source.read_text()), "complete": False}))
    with pytest.raises(SystemExit, match="not the complete JSON"):
        bench_classification.main(["--render", str(tmp_path / "half.json")])
