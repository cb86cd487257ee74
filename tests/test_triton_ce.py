"""The Triton fused output-layer loss (tinystories/kernels/triton_ce.py) against plain_head_loss:
the loss and both gradients, in fp32 and under bf16 autocast, with ragged chunks, several vocabulary
tiles and ignored targets, alone and inside the GPT.

Without CUDA the kernel runs in Triton's CPU interpreter. Triton decides between compiling and
interpreting when it and each @triton.jit function are imported, so this module asks for the
interpreter (TRITON_INTERPRET=1) before it imports triton; it stays on for the rest of the pytest
session, where nothing else runs Triton on a CPU-only machine. With CUDA the same tests run the
compiled kernel, marked `gpu` (`make test-gpu`), plus one at the real size.
"""
import os
import sys

import pytest
import torch
from conftest import rel_err

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="triton is not installed (pip install 'triton==3.7.1')")

from tinystories.config import GPTConfig  # noqa: E402
from tinystories.kernels import triton_ce  # noqa: E402
from tinystories.model import GPT, plain_head_loss  # noqa: E402


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    """Where the kernel runs: the CPU through Triton's interpreter, or CUDA compiled."""
    if request.param == "cpu" and not triton_ce.INTERPRETED:
        pytest.skip("Triton's interpreter is off (CUDA is present, or triton was imported before this module)")
    if request.param == "cuda" and (not torch.cuda.is_available() or triton_ce.INTERPRETED):
        pytest.skip("needs CUDA and the compiled kernel")
    return torch.device(request.param)


def make_inputs(N, C, V, device, seed=0):
    """h (N, C), weight (V, C) fp32 leaf tensors and targets (N,), sized like trained activations."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, C, generator=g)
    weight = torch.randn(V, C, generator=g) * 0.3
    targets = torch.randint(0, V, (N,), generator=g)
    return h.to(device).requires_grad_(), weight.to(device).requires_grad_(), targets.to(device)


def loss_and_grads(loss_fn, h, weight, targets, autocast: bool, grad_scale=1.0):
    """loss_fn's loss and the gradients of grad_scale * loss in h and weight, on fresh leaf copies."""
    h, weight = h.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    with torch.autocast(h.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = loss_fn(h, weight, targets)
    (grad_scale * loss).backward()
    return loss.detach(), h.grad, weight.grad


@pytest.mark.parametrize("N, C, V, chunk_rows", [
    (37, 32, 1000, 16),  # ragged last chunk; padded_V 1024, one vocabulary tile
    (37, 32, 5000, 10),  # four chunks reusing one buffer; two tiles, the second past padded_V (5056)
    (37, 32, 1000, triton_ce.CHUNK_ROWS),  # default chunking: one chunk
])
def test_fp32_matches_plain(device, N, C, V, chunk_rows):
    h, weight, targets = make_inputs(N, C, V, device)
    fused = loss_and_grads(lambda *a: triton_ce.triton_head_loss(*a, chunk_rows=chunk_rows), h, weight, targets,
                           autocast=False, grad_scale=2.5)
    plain = loss_and_grads(plain_head_loss, h, weight, targets, autocast=False, grad_scale=2.5)
    assert fused[0].dtype == torch.float32 and fused[1].dtype == fused[2].dtype == torch.float32
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused[1], plain[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fused[2], plain[2], rtol=1e-4, atol=1e-6)


def test_bf16_autocast_matches_plain_and_float64(device):
    h, weight, targets = make_inputs(37, 32, 5000, device, seed=1)
    fused = loss_and_grads(lambda *a: triton_ce.triton_head_loss(*a, chunk_rows=16), h, weight, targets, autocast=True)
    plain = loss_and_grads(plain_head_loss, h, weight, targets, autocast=True)
    exact = loss_and_grads(plain_head_loss, h.double(), weight.double(), targets, autocast=False)
    assert fused[1].dtype == fused[2].dtype == torch.float32  # gradients in the parameters' dtype
    for ours, same_precision, float64 in zip(fused, plain, exact):
        assert rel_err(ours, same_precision) < 1e-2
        assert rel_err(ours, float64) < 2e-2


def test_ignored_targets_count_for_nothing(device):
    h, weight, targets = make_inputs(37, 32, 1000, device, seed=2)
    targets[::5] = -100
    fused = loss_and_grads(lambda *a: triton_ce.triton_head_loss(*a, chunk_rows=16), h, weight, targets, autocast=False)
    plain = loss_and_grads(plain_head_loss, h, weight, targets, autocast=False)
    for ours, reference in zip(fused, plain):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)
    assert fused[1][::5].abs().max() == 0  # ignored rows get no gradient


def test_without_grad_gives_the_same_loss_and_no_graph(device):
    h, weight, targets = make_inputs(37, 32, 1000, device, seed=3)
    with torch.no_grad():
        loss = triton_ce.triton_head_loss(h, weight, targets, chunk_rows=16)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, plain_head_loss(h, weight, targets).detach(), rtol=1e-4, atol=1e-5)


def test_gpt_with_fused_head_has_the_plain_gradients(device):
    """In the model: every parameter's gradient matches, and the padding rows of wte get none."""
    config = GPTConfig(block_size=16, vocab_size=300, n_layer=2, n_head=2, n_embd=32)
    idx = torch.randint(0, config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(4)).to(device)
    x, y = idx[:, :-1].contiguous(), idx[:, 1:].contiguous()

    def gradients(head_loss):
        model = GPT(config, head_loss)
        model.init_weights(seed=0)
        model.to(device)
        loss = model(x, y)
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    fused_loss, fused_grads = gradients(lambda *a: triton_ce.triton_head_loss(*a, chunk_rows=12))
    plain_loss, plain_grads = gradients(plain_head_loss)
    torch.testing.assert_close(fused_loss, plain_loss, rtol=1e-5, atol=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert fused_grads["wte.weight"][config.vocab_size:].abs().max() == 0


@pytest.mark.gpu
def test_real_size_bf16_on_cuda():
    """The default model's head at B=32, T=256 (N = 8192, two chunks of 4096 rows) under autocast."""
    if not torch.cuda.is_available() or triton_ce.INTERPRETED:
        pytest.skip("needs CUDA and the compiled kernel")
    h, weight, targets = make_inputs(8192, 128, 50257, torch.device("cuda"), seed=5)
    fused = loss_and_grads(triton_ce.triton_head_loss, h, weight, targets, autocast=True)
    plain = loss_and_grads(plain_head_loss, h, weight, targets, autocast=True)
    for ours, reference in zip(fused, plain):
        assert rel_err(ours, reference) < 1e-2
