"""tasks.lm_head: the LM head's cross-entropy a chunk of the vocabulary at a time equals the plain
``cross_entropy(head(hidden).float())``: loss and gradients for the hidden states, the weight and the bias."""
import pytest
import torch
import torch.nn as nn

from conftest import tiny_batch, tiny_causal_lm
from tuneforge.data.chat import IGNORE
from tuneforge.methods import registry
from tuneforge.tasks import lm_head
from tuneforge.tasks.causal_lm import token_nll


def _case(rows=13, hidden=8, vocab=37, bias=True, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    head = nn.Linear(hidden, vocab, bias=bias).to(dtype)
    h = torch.randn(rows, hidden, dtype=dtype, requires_grad=True)
    target = torch.randint(0, vocab, (rows,))
    target[[2, rows - 1]] = IGNORE
    target[0] = vocab - 1  # a target in the last, partial chunk
    return head, h, target


def _plain(head, h, target):
    return nn.functional.cross_entropy(head(h).float(), target, reduction="sum", ignore_index=IGNORE)


def _grads(loss, head, h):
    head.zero_grad()
    h.grad = None
    loss.backward()
    return [h.grad.clone(), head.weight.grad.clone(), *([head.bias.grad.clone()] if head.bias is not None else [])]


@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 64])
@pytest.mark.parametrize("bias", [True, False])
def test_loss_and_every_gradient_equal_the_plain_path_in_float32(chunk, bias):
    head, h, target = _case(bias=bias)
    want = _plain(head, h, target)
    want_grads = _grads(want, head, h)
    got = lm_head.head_nll(head, h, target, chunk)
    got_grads = _grads(got, head, h)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [5, 64])
def test_an_extra_bias_on_the_output_is_added_in_float32_with_every_gradient(chunk):
    """BART's ``final_logits_bias`` (a buffer added to the head's output): ``head(h) + extra`` to rounding."""
    head, h, target = _case()
    extra = torch.randn(head.out_features) * 3
    want = nn.functional.cross_entropy(head(h).float() + extra, target, reduction="sum", ignore_index=IGNORE)
    want_grads = _grads(want, head, h)
    got = lm_head.head_nll(head, h, target, chunk, extra_bias=extra)
    got_grads = _grads(got, head, h)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_kept_rows_pick_the_trained_positions_in_order_and_pad_with_rows_that_count_for_nothing():
    hidden = torch.arange(12.0).reshape(6, 2)  # (N, H)
    target = torch.tensor([IGNORE, 4, IGNORE, 7, 9, IGNORE])
    rows, chosen, kept = lm_head.kept_rows(hidden, target, multiple=4)
    assert kept == 3
    assert torch.equal(rows, hidden[[1, 3, 4, 0]])
    assert chosen.tolist() == [4, 7, 9, IGNORE]


def test_gradcheck_in_float64_including_the_incoming_gradient():
    head, h, target = _case(rows=5, hidden=4, vocab=11, dtype=torch.float64)
    w = head.weight.detach().clone().requires_grad_(True)
    b = head.bias.detach().clone().requires_grad_(True)
    fn = (lambda h_, w_, b_: lm_head.HeadNLL.apply(h_, w_, b_, target, 3) * 0.37)
    assert torch.autograd.gradcheck(fn, (h.detach().clone().requires_grad_(True), w, b))
    offset = torch.randn(11, dtype=torch.float64)
    fn = (lambda h_, w_, b_: lm_head.HeadNLL.apply(h_, w_, b_, target, 3, offset) * 0.37)
    assert torch.autograd.gradcheck(fn, (h.detach().clone().requires_grad_(True), w, b))


def test_a_frozen_head_under_bf16_autocast_matches_the_plain_path_to_bf16_rounding():
    head, h, target = _case(rows=64, hidden=32, vocab=300, bias=False)
    head.weight.requires_grad_(False)
    head.weight.data = head.weight.data.bfloat16()
    hb = h.detach().bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _plain(head, hb, target)
    want.backward()
    want_grad, hb.grad = hb.grad.float(), None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = lm_head.head_nll(head, hb, target, 128)
    (got * 2).backward()  # the incoming gradient scales the stored one
    assert got.dtype == torch.float32 and got.item() == pytest.approx(want.item(), rel=1e-4)
    assert (hb.grad.float() / 2 - want_grad).abs().max() <= 1e-2 * want_grad.abs().max()


def test_without_gradients_only_the_loss_is_computed():
    head, h, target = _case()
    with torch.no_grad():
        assert lm_head.head_nll(head, h, target, 8).item() == pytest.approx(_plain(head, h, target).item(), rel=1e-6)


def test_token_nll_takes_the_chunked_head_for_a_sum_and_keeps_the_plain_one_for_per_token_losses(monkeypatch):
    torch.manual_seed(0)
    batch = tiny_batch()
    labels = batch["input_ids"].clone()
    labels[:, :4] = IGNORE  # a prompt that does not train
    batch = {**batch, "labels": labels}
    model = tiny_causal_lm("llama").train()
    got = token_nll(model, batch, reduction="sum")
    got.backward()
    got_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    calls = []
    monkeypatch.setattr(lm_head, "applies", lambda head: calls.append(head) and False)
    want = token_nll(model, batch, reduction="sum")
    want.backward()
    assert calls and got.item() == pytest.approx(want.item(), rel=1e-5)
    for n, p in model.named_parameters():  # the tied embedding / LM head weight included
        torch.testing.assert_close(got_grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
    per_token = token_nll(model, batch, reduction="none")
    assert per_token.sum().item() == pytest.approx(want.item(), rel=1e-5)


def test_a_wrapped_or_hooked_head_runs_as_a_module():
    model = registry.apply(tiny_causal_lm("llama"), "lora",
                           registry.make_config("lora", {"target_regex": r".*lm_head"}))
    assert not lm_head.applies(model.get_output_embeddings())
    head = nn.Linear(4, 9)
    assert lm_head.applies(head)
    head.register_forward_hook(lambda *a: None)
    assert not lm_head.applies(head)
