"""Token classification task: every method trains on tiny BERT/Llama/GPT-2 token classifiers and virtual tokens
never shift the labels (end to end on tiny model folders: test_token_classification_runs.py)."""

import pytest
import torch
from transformers import AutoModelForTokenClassification

from conftest import tiny_batch, tiny_config
from lm_helpers import single_thread
from tuneforge.config import ConfigError
from tuneforge.data.tagging import IGNORE
from tuneforge.methods import registry
from tuneforge.tasks import get

TASK = get("token_classification")
HEADS = ["classifier", "score"]  # fresh token-classification heads (BERT, GPT-2 / Llama)
N_LABELS = 5
VIRTUAL = {"prompt": {"num_virtual_tokens": 3}, "p-tuning": {"num_virtual_tokens": 3, "encoder_hidden": 16},
           "prefix": {"num_virtual_tokens": 3}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


def _model(family: str, method: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_config(tiny_config(family, num_labels=N_LABELS))
    heads = [h for h in HEADS if hasattr(model, h)]
    return registry.apply(model, method, registry.make_config(method, VIRTUAL.get(method, {})), always_train=heads)


def _labelled(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, N_LABELS, batch["input_ids"].shape, generator=g)
    labels[:, 0] = IGNORE  # e.g. a special token
    return {**batch, "labels": labels.masked_fill(batch["attention_mask"] == 0, IGNORE)}


@pytest.mark.parametrize("method", registry.names())
def test_every_method_trains_two_steps_and_lowers_the_loss(family, method):
    if family == "llama" and method == "bitfit":
        with pytest.raises(ConfigError, match="no bias terms"):
            _model(family, method)
        return
    model = _model(family, method).eval()  # dropout off: a deterministic check
    batch = _labelled(tiny_batch())  # the last row is right-padded
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    assert model(**inputs).logits.shape == (*batch["input_ids"].shape, N_LABELS)  # one row per input token
    own = {n: p for n, p in model.named_parameters() if p.requires_grad and n.split(".")[0] not in HEADS}
    assert own, "the method trains nothing of its own"
    start = {n: p.detach().clone() for n, p in own.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(2):
        loss = TASK.loss(model, batch) / TASK.units(batch)  # as the loop: summed loss / labelled tokens
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in own.values())
        opt.step()
    with torch.no_grad():
        after = (TASK.loss(model, batch) / TASK.units(batch)).item()
    assert TASK.units(batch) == int((batch["labels"] != IGNORE).sum())
    assert after < losses[0]
    assert all(not torch.equal(start[n], p) for n, p in own.items())  # (zero-initialised B / up: from step 2)


@torch.no_grad()
@pytest.mark.parametrize("method", list(VIRTUAL))
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_virtual_tokens_do_not_shift_the_labels(family, method):
    """Decoders see only earlier tokens: with logits aligned to the input, changing the last input token changes
    the last row of logits and nothing before it (shifted by the virtual tokens, it would change none)."""
    model = _model(family, method).eval()
    for p in model.parameters():
        if p.requires_grad:
            p.add_(torch.randn_like(p) * 0.3)  # the virtual tokens make a visible difference
    ids = tiny_batch(batch=2, seq=8)["input_ids"]
    mask = torch.ones_like(ids)
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 7) % 120 + 3
    a, b = model(input_ids=ids, attention_mask=mask).logits, model(input_ids=changed, attention_mask=mask).logits
    assert a.shape == (2, 8, N_LABELS)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-4


def test_an_unknown_suffix_lists_the_conll_names_too(tmp_path):
    from tuneforge.config import load_config
    path = tmp_path / "ner.iob"
    path.write_text("Alice B-PER\nsmiled O\n")
    cfg = load_config(None, {"model": {"task": "token_classification"}})
    with pytest.raises(ConfigError, match=r"ner\.iob: unsupported type '\.iob'; use a CoNLL file \(named \.conll"):
        TASK.read_source(str(path), cfg)
    with pytest.raises(ConfigError, match="is a folder"):
        TASK.read_source(str(tmp_path), cfg)


def _prepare(data: dict, records: dict):
    from transformers import AutoTokenizer

    from tuneforge import assets
    from tuneforge.config import load_config
    cfg = load_config(None, {"model": {"task": "token_classification"}, "data": data})
    splits = {"validation": [], "test": [], **records}
    tokenizer = AutoTokenizer.from_pretrained(str(assets.minilm_dir()))
    where = {k: [f"{k}, row {i}" for i in range(len(v))] for k, v in splits.items()}
    return TASK.prepare(cfg, tokenizer, splits, where)


TRAIN = [{"tokens": ["Ann", "saw", "New", "York"], "tags": ["I-PER", "O", "I-LOC", "I-LOC"]},  # IOB1
         {"tokens": ["Bo", "ran"], "tags": ["B-PER", "O"]}]


def test_tag_repairs_and_unseen_test_types_are_printed(capsys):
    test = [{"tokens": ["Cy", "in", "Rome"], "tags": ["B-PERSON", "O", "B-LOC"]}]
    meta = _prepare({"train_file": "a.conll", "test_file": "t.conll"}, {"train": TRAIN, "test": test}).meta
    assert meta["invalid_sequences"] == 1
    assert capsys.readouterr().err.splitlines() == [
        "note: 1 sentence(s) have an I- tag that starts an entity (IOB1 or loosely written BIO); read as B- "
        "(invalid_sequences in meta.json)",
        "warning: t.conll: entity type(s) PERSON of the test split never occur in training (LOC, PER); tags are "
        "compared by type name, so they are never found"]
    _prepare({}, {"train": TRAIN[1:], "test": [{"tokens": ["Cy"], "tags": ["B-PER"]}]})
    assert capsys.readouterr().err == ""


def test_a_test_file_sharing_no_entity_type_with_training_is_refused():
    test = [{"tokens": ["Cy", "in", "Rome"], "tags": ["b-per", "O", "b-loc"]}]  # types compared by name: per != PER
    with pytest.raises(ConfigError, match=r"t\.conll: entity type\(s\) loc, per of the test split never occur"):
        _prepare({"train_file": "a.conll", "test_file": "t.conll"}, {"train": TRAIN, "test": test})


def test_conll_number_tags_are_named_by_tag_names(tmp_path):
    from tuneforge.config import load_config
    path = tmp_path / "ner.conll"
    path.write_text("Alice\t1\nsmiled\t0\n")
    cfg = load_config(None, {"model": {"task": "token_classification"}, "data": {"tag_names": ["O", "B-PER"]}})
    assert TASK.read_source(str(path), cfg) == [{"tokens": ["Alice", "smiled"], "tags": ["B-PER", "O"]}]


def test_each_input_prints_on_one_line_with_its_entities():
    from tuneforge.tasks.token_classification import Task
    row = {"text": "to New\nYork", "entities": [{"label": "loc", "start": 3, "end": 11, "text": "New\nYork"},
                                              {"label": "per", "start": 0, "end": 2, "text": "to"}]}
    assert Task().describe(row) == "to New\\nYork\tloc: New York | per: to"
    assert Task().describe({"text": "hi", "entities": []}) == "hi\t(no entities)"
