"""The seq2seq loss runs the LM head at the output tokens alone (``tasks/seq2seq_head.py``): the same loss and
gradients as the model's full logits, BART's ``final_logits_bias`` included; a model whose logits are more than
head + bias keeps the full forward."""
import pytest
import torch

from lm_helpers import QA, seq2seq_folder, single_thread, write_sources
from tuneforge.config import load_config
from tuneforge.data import pairs
from tuneforge.data.batching import collate
from tuneforge.models import load_tokenizer
from tuneforge.tasks import lm_head, seq2seq, seq2seq_head
from transformers import AutoModelForSeq2SeqLM


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


def _setup(tmp_path, family):
    folder = seq2seq_folder(tmp_path / family, family)
    cfg = load_config(None, {"model": {"name": str(folder), "task": "seq2seq", "max_length": 32},
                             "data": {"dataset": str(write_sources(tmp_path / "pairs.jsonl"))}})
    tok = load_tokenizer(folder)
    batch = collate(pairs.encode_pairs(QA[:5], tok, 32, pairs.decoding(folder, cfg, tok)), tok.pad_token_id)
    return folder, batch


def _plain(model, batch):
    """The summed cross-entropy from the model's full logits."""
    logits = seq2seq_head.forward(model, batch).logits.float()  # (batch, target, vocab)
    keep = batch["labels"] != seq2seq.IGNORE
    return torch.nn.functional.cross_entropy(logits[keep], batch["labels"][keep], reduction="sum")


def _loss_and_grads(folder, batch, loss_fn, bf16, edit=None):
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).train(False)
    if edit:
        edit(model)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = loss_fn(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _random_bias(model):
    if hasattr(model, "final_logits_bias"):
        model.final_logits_bias.normal_(0, 1.0)


@pytest.mark.parametrize("family", ["t5", "bart", "mbart"])
def test_the_head_at_output_tokens_gives_the_full_logits_loss_and_gradients(family, tmp_path, monkeypatch):
    """float32: equal to rounding; bf16 autocast: no further from the float32 numbers than the full logits' own
    bf16 path (twice its error, relative to each gradient's size)."""
    folder, batch = _setup(tmp_path, family)
    calls = []
    monkeypatch.setattr(lm_head, "head_nll", lambda *a, **k: calls.append(1) or _HEAD_NLL(*a, **k))
    loss, grads = _loss_and_grads(folder, batch, seq2seq.output_nll, False, _random_bias)
    assert calls, "the output-token head path was not taken"
    ref_loss, ref_grads = _loss_and_grads(folder, batch, _plain, False, _random_bias)
    assert grads.keys() == ref_grads.keys()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    loss16, grads16 = _loss_and_grads(folder, batch, seq2seq.output_nll, True, _random_bias)
    plain_loss16, plain16 = _loss_and_grads(folder, batch, _plain, True, _random_bias)
    assert abs(loss16 - ref_loss) <= 2 * abs(plain_loss16 - ref_loss) + 1e-3 * abs(ref_loss)
    for name, ref in ref_grads.items():
        scale = ref.norm() + 1e-6
        ours, theirs = (grads16[name] - ref).norm() / scale, (plain16[name] - ref).norm() / scale
        assert ours <= 2 * theirs + 1e-3, (name, float(ours), float(theirs))


_HEAD_NLL = lm_head.head_nll


def test_a_model_that_rescales_its_logits_keeps_the_full_forward(tmp_path, monkeypatch):
    """Logits doubled after the head (as soft-capping or a logit scale would change them): the check on the first
    batch fails and the loss is the full logits' own."""
    folder, batch = _setup(tmp_path, "t5")
    calls = []
    monkeypatch.setattr(lm_head, "head_nll", lambda *a, **k: calls.append(1) or _HEAD_NLL(*a, **k))

    def doubled(model):
        model.register_forward_hook(lambda m, args, out: out.__setitem__("logits", out.logits * 2) or out)

    loss, grads = _loss_and_grads(folder, batch, seq2seq.output_nll, False, doubled)
    ref_loss, ref_grads = _loss_and_grads(folder, batch, _plain, False, doubled)
    assert not calls
    torch.testing.assert_close(loss, ref_loss)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)


@pytest.mark.parametrize("method", ["full", "freeze"])
def test_parameters_saving_leaves_out_stay_frozen_so_the_saved_run_is_the_trained_one(method, tmp_path, capsys):
    """Marian's sinusoidal position tables are parameters that ``save_pretrained`` drops (rebuilt on loading):
    trained, the run on disk would differ from the trained model. They stay frozen; the reloaded run reproduces
    the run's own test loss."""
    from tuneforge.methods import registry
    from tuneforge.run import load, train

    folder, _ = _setup(tmp_path, "marian")
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    options = {"num_layers": 4, "extra": ["embed_positions"]} if method == "freeze" else {}
    registry.apply(model, method, registry.make_config(method, options))
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trains and not {n for n in trains if "embed_positions" in n}
    assert "embed_positions.weight stay frozen: the model's save_pretrained does not save them" in capsys.readouterr().err
    run = train({"model": {"name": str(folder), "task": "seq2seq", "max_length": 32},
                 "data": {"dataset": str(write_sources(tmp_path / "pairs.jsonl"))}, "method": {"name": "full"},
                 "train": {"max_steps": 8, "batch_size": 8, "lr": 1e-2, "precision": "fp32"},
                 "eval": {"generate_samples": 0, "before": False}, "output_dir": str(tmp_path / "run")},
                progress=False)
    again = load(run.run_dir, "cpu").evaluate()
    assert again["loss"] == pytest.approx(run.metrics["test_after"]["loss"], rel=1e-6)


def test_a_head_the_forward_never_calls_and_a_hook_added_later_take_the_full_forward(tmp_path):
    """The check fails safe: a model computing its logits without calling its head module trains on the full
    forward instead of stopping; a forward hook added after the first check is checked anew."""
    folder, batch = _setup(tmp_path, "t5")
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).train(False)
    ref = _plain(model, batch)
    stand_in = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=False)
    stand_in.weight = model.lm_head.weight  # what the model names as its head, but its forward never calls
    model.get_output_embeddings = lambda: stand_in
    torch.testing.assert_close(seq2seq.output_nll(model, batch), ref)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).train(False)
    torch.testing.assert_close(seq2seq.output_nll(model, batch), ref)  # the head path, checked
    model.register_forward_hook(lambda m, args, out: out.__setitem__("logits", out.logits * 2) or out)
    torch.testing.assert_close(seq2seq.output_nll(model, batch), _plain(model, batch))
