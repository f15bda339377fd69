"""End to end on the real embedded chat model (SmolLM2-135M-Instruct, converted once into the user cache)
and the embedded ChatterBot pairs: a few LoRA steps lower the test loss; the run reloads and generates.
About 30-60 s on 2 CPU cores once the cache exists (the one-time GGUF conversion adds about 30 s)."""
import json

import pytest

from lm_helpers import single_thread
from tuneforge import assets
from tuneforge.run import load, train


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


def test_smollm2_lora_on_chatterbot_end_to_end(tmp_path):
    folder = assets.resolve_model("smollm2")
    assert (folder / "model.safetensors").is_file() and (folder / "chat_template.jinja").is_file()
    assert not str(folder).startswith(str(assets.package_dir("tuneforge", "tuneforge").parent))  # never the repo
    cfg = {"model": {"name": "smollm2", "task": "causal_lm", "max_length": 64},
           "data": {"dataset": "chatterbot", "max_examples": 64},
           "method": {"name": "lora", "rank": 8}, "train": {"max_steps": 6, "batch_size": 4, "lr": 2e-3},
           "eval": {"generate_samples": 2, "max_new_tokens": 8}, "output_dir": str(tmp_path / "run"),
           # chitchat perplexity, the default reference of smollm2 (the generating probes: tests/forgetting)
           "forgetting": {"reference_examples": 8, "probes": ["reference"]}}
    out = train(cfg, progress=False)
    before, after = out.metrics["test_before"], out.metrics["test_after"]
    assert after["loss"] < before["loss"] and after["perplexity"] < before["perplexity"]
    assert {"bleu", "rouge_l"} <= set(after)
    assert out.metrics["forgetting"]["reference"] == "chitchat perplexity"
    samples = [json.loads(x) for x in (out.run_dir / "samples_after.jsonl").read_text().splitlines()]
    assert len(samples) == 2
    run = load(out.run_dir)
    # the reloaded run holds the trained adapter: same test loss up to bf16 rounding (training stored the
    # frozen weights, embeddings included, in bf16; the reloaded model keeps float32 and autocasts)
    again = run.evaluate()
    assert again["loss"] == pytest.approx(after["loss"], rel=0.02)
    assert isinstance(run.generate([samples[0]["prompt"]], max_new_tokens=8)[0], str)
