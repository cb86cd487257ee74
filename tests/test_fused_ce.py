"""The PyTorch output-layer loss (tinystories/kernels/fused_ce.py) against plain_head_loss, whose
gradients come from ordinary autograd: the loss and both gradients in fp32 (the vocabulary-tiled CPU
operator: ragged tiles, several row passes, the overflow fallback) and under bf16 autocast (the
chunk loop: a ragged last chunk), at the real vocabulary and a small one, under no_grad, with frozen
inputs, repeated calls, inside the GPT, and the operator's registration for torch.compile."""
import functools

import pytest
import torch
from conftest import rel_err, run

from tinystories.config import GPTConfig
from tinystories.kernels import fused_ce
from tinystories.kernels.fused_ce import fused_head_loss
from tinystories.model import GPT, plain_head_loss

GPT2_VOCAB = 50257


def make_inputs(N, C, V, seed=0):
    """h (N, C), weight (V, C) fp32 leaf tensors needing grad, and targets (N,) int64."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, C, generator=g).requires_grad_()
    weight = (0.1 * torch.randn(V, C, generator=g)).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=g)
    return h, weight, targets


def loss_and_grads(head_loss, h, weight, targets, autocast=False):
    """The loss and the gradients wrt h and weight (None where not needed) after one backward."""
    h.grad = weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = head_loss(h, weight, targets)
    loss.backward()
    return loss.detach(), h.grad, weight.grad


def assert_matches_plain(head_loss, h, weight, targets):
    expected = loss_and_grads(plain_head_loss, h, weight, targets)
    actual = loss_and_grads(head_loss, h, weight, targets)
    assert actual[0].dtype == torch.float32
    assert rel_err(actual[0], expected[0]) <= 1e-5
    assert rel_err(actual[1], expected[1]) <= 1e-4  # grad wrt h
    assert rel_err(actual[2], expected[2]) <= 1e-4  # grad wrt weight


@pytest.mark.parametrize("V, vocab_tile", [(GPT2_VOCAB, 256), (GPT2_VOCAB, 1000), (1000, 128), (1000, 7),
                                           (1000, 1), (1000, 4096)])
def test_fp32_matches_plain(V, vocab_tile):
    h, weight, targets = make_inputs(N=300, C=64, V=V)  # 1000 and 50257 columns: a ragged last tile
    assert_matches_plain(functools.partial(fused_head_loss, vocab_tile=vocab_tile), h, weight, targets)


@pytest.mark.parametrize("rows", [128, 1])
def test_fp32_in_several_row_passes(monkeypatch, rows):
    """More rows than one pass takes: grad_w is written by the first pass, added to by the others."""
    monkeypatch.setattr(fused_ce, "TILED_ROWS", rows)
    h, weight, targets = make_inputs(N=300 if rows > 1 else 5, C=64, V=1000)  # 300 rows: 128 + 128 + 44
    assert_matches_plain(functools.partial(fused_head_loss, vocab_tile=128), h, weight, targets)


def test_fp32_overflow_falls_back_to_the_chunk_loop(monkeypatch):
    """Logits 88 or more above a row's target logit overflow exp: the operator redoes the call with
    the chunk loop, which subtracts each row's maximum, and still matches plain autograd."""
    h, weight, targets = make_inputs(N=300, C=64, V=1000)
    with torch.no_grad():
        h.mul_(100.0)  # logits of a few hundred: most rows have one far above the target's
        logits = h @ weight.T
        assert (logits.max(dim=1).values - logits[torch.arange(300), targets]).max() > 100
    calls = []
    chunk_loop = fused_ce.chunked_loss_and_grads
    monkeypatch.setattr(fused_ce, "chunked_loss_and_grads", lambda *args: calls.append(1) or chunk_loop(*args))
    assert_matches_plain(fused_head_loss, h, weight, targets)
    assert calls


@pytest.mark.parametrize("with_grads", [True, False])
def test_tiled_operator_registration(with_grads):
    """What torch.compile relies on: the fake (meta) implementation agrees with the real one on
    shapes and dtypes, and the schema is right (torch.library.opcheck)."""
    h, weight, targets = make_inputs(N=40, C=16, V=300)
    torch.library.opcheck(torch.ops.tinystories.tiled_head, (h.detach(), weight.detach(), targets, with_grads, 64))


@pytest.mark.parametrize("V", [GPT2_VOCAB, 1000])
def test_bf16_autocast_close_to_fp32(V):
    h, weight, targets = make_inputs(N=300, C=64, V=V)
    exact = loss_and_grads(plain_head_loss, h, weight, targets)
    plain_bf16 = loss_and_grads(plain_head_loss, h, weight, targets, autocast=True)
    fused_bf16 = loss_and_grads(fused_head_loss, h, weight, targets, autocast=True)
    assert fused_bf16[1].dtype == fused_bf16[2].dtype == torch.float32  # grads stay in the inputs' dtype
    for actual, expected in zip(fused_bf16, exact):
        assert rel_err(actual, expected) <= 1e-2
    # the same rounding as the autocast reference: the logits, then bf16 gradient matmuls
    assert rel_err(fused_bf16[0], plain_bf16[0]) <= 1e-5
    for actual, expected in zip(fused_bf16[1:], plain_bf16[1:]):
        assert rel_err(actual, expected) <= 1e-2


@pytest.mark.parametrize("autocast", [False, True])
def test_no_grad_gives_the_same_loss(autocast):
    h, weight, targets = make_inputs(N=300, C=64, V=1000)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        expected = plain_head_loss(h, weight, targets)
        actual = fused_head_loss(h, weight, targets)
    assert actual.grad_fn is None and not actual.requires_grad
    assert rel_err(actual, expected) <= 1e-5


@pytest.mark.parametrize("frozen", ["h", "weight"])
def test_frozen_input_gets_no_gradient(frozen):
    h, weight, targets = make_inputs(N=300, C=64, V=1000)
    {"h": h, "weight": weight}[frozen].requires_grad_(False)
    expected = loss_and_grads(plain_head_loss, h, weight, targets)
    actual = loss_and_grads(fused_head_loss, h, weight, targets)
    assert rel_err(actual[0], expected[0]) <= 1e-5
    for got, want in zip(actual[1:], expected[1:]):
        assert (got is None) == (want is None)
        if want is not None:
            assert rel_err(got, want) <= 1e-4


def test_repeated_calls_and_scaled_backward():
    """Two forward+backward passes in a row accumulate the same gradients as plain autograd,
    and the backward pass scales by grad_output (here 3)."""
    results = {}
    for name, head_loss in [("plain", plain_head_loss), ("fused", fused_head_loss)]:
        h, weight, targets = make_inputs(N=200, C=32, V=1000)
        losses = []
        for _ in range(2):
            loss = head_loss(h, weight, targets)
            (3 * loss).backward()
            losses.append(loss.item())
        results[name] = losses, h.grad, weight.grad
    (plain_losses, *plain_grads), (fused_losses, *fused_grads) = results["plain"], results["fused"]
    assert fused_losses[0] == fused_losses[1]
    assert fused_losses == pytest.approx(plain_losses, rel=1e-5)
    for actual, expected in zip(fused_grads, plain_grads):
        assert rel_err(actual, expected) <= 1e-4


def test_gpt_with_fused_head_matches_plain():
    config = GPTConfig(block_size=16, vocab_size=1000, n_layer=2, n_head=2, n_embd=32)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, config.vocab_size, (3, 16), generator=g)  # (B, T): 48 rows
    targets = torch.randint(0, config.vocab_size, (3, 16), generator=g)
    results = []
    for head_loss in (plain_head_loss, functools.partial(fused_head_loss, chunk_size=20)):
        model = GPT(config, head_loss)
        model.init_weights(seed=0)
        loss = model(idx, targets)
        loss.backward()
        results.append((loss.item(), {name: p.grad for name, p in model.named_parameters()}))
    (plain_loss, plain_grads), (fused_loss, fused_grads) = results
    assert fused_loss == pytest.approx(plain_loss, rel=1e-5)
    assert plain_grads.keys() == fused_grads.keys()
    for name, expected in plain_grads.items():
        assert rel_err(fused_grads[name], expected) <= 1e-4, name
    assert not fused_grads["wte.weight"][config.vocab_size:].any()  # padding rows get no gradient


FIRST_CALL = """
import hashlib, torch
from tinystories.kernels.fused_ce import fused_head_loss
g = torch.Generator().manual_seed(0)
h = torch.randn(64, 32, generator=g).requires_grad_()
weight = (0.1 * torch.randn(50257, 32, generator=g)).requires_grad_()
targets = torch.randint(0, 50257, (64,), generator=g)
torch.mm(torch.ones(512, 512), torch.ones(512, 512))  # a matmul just before, as in a model's forward pass
with torch.autocast("cpu", dtype=torch.bfloat16):
    fused_head_loss(h, weight, targets).backward()
print(hashlib.sha256(h.grad.numpy().tobytes() + weight.grad.numpy().tobytes()).hexdigest())
"""


def test_bf16_gradients_are_the_same_in_every_process():
    """The bf16 chunk loop's first call gives the same gradients in fresh processes. (It once took
    the softmax as torch.exp of the log-probabilities, MKL's vector exp on the CPU: on an Intel Xeon
    with AMX, in about a third of processes one thread's half of the rows came out of a less accurate
    exp, and a resumed run drifted from the run it resumed.)"""
    digests = {run("-c", FIRST_CALL).stdout.strip() for _ in range(8)}
    assert len(digests) == 1, digests
