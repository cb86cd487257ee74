"""Forward + backward time of the output layer + loss: plain_head_loss (the baseline, eager fp32)
against its bf16-autocast and torch.compile variants and fused_head_loss (in fp32 the CPU's
vocabulary-tiled operator at several tile widths, and the chunk loop it replaced there; under bf16
the chunk loop at several chunk sizes), in one run. Prints the best-of-repeats wall time per variant, its speed-up over plain fp32, and
the best CPU time (all threads; it counts no time spent waiting for a core another program holds).

    .venv/bin/python bench/bench_head_loss.py [--rows 1024] [--channels 128] [--vocab 50257]
                                              [--repeats 7] [--tiles 128 256 512] [--chunks 64 128 256 512]
                                              [--no-compile] [--fp32-only]

The variants run in interleaved rounds (one call of each per round), so a slowdown of the machine
hits all of them alike; the minimum over the rounds is the figure least disturbed by other load.
The load average is printed before and after: wall times are only meaningful when it stays below
the number of cores.
"""
import argparse
import functools
import os

import torch

from tinystories.kernels.fused_ce import TorchChunkLoss, chunked_head_loss, fused_head_loss
from tinystories.model import plain_head_loss

from common import best_of_rounds


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1024, help="N = B * T (default 4 * 256)")
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tiles", type=int, nargs="+", default=[128, 256, 512], help="fp32 vocabulary columns per tile")
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 128, 256, 512], help="bf16 rows per chunk")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--fp32-only", action="store_true", help="skip the bf16 variants (slow where bf16 is emulated)")
    return parser.parse_args()


def variants(tiles, chunks, with_compile, with_bf16):
    """name -> (head_loss, use bf16 autocast)."""
    table = {}
    for bf16 in (False, True) if with_bf16 else (False,):
        table[f"plain {'bf16' if bf16 else 'fp32'}"] = (plain_head_loss, bf16)
        if with_compile:
            table[f"plain {'bf16' if bf16 else 'fp32'} compiled"] = (torch.compile(plain_head_loss), bf16)
    table["chunk loop fp32 R=256"] = (functools.partial(chunked_head_loss, chunk_rows=256, chunk_loss=TorchChunkLoss),
                                      False)  # what fused_head_loss did on CPU in fp32 before the tiles
    for tile in tiles:
        table[f"fused fp32 t={tile}"] = (functools.partial(fused_head_loss, vocab_tile=tile), False)
    for chunk in chunks if with_bf16 else ():
        table[f"fused bf16 R={chunk}"] = (functools.partial(fused_head_loss, chunk_size=chunk), True)
    return table


def forward_backward(head_loss, bf16, h, weight, targets):
    """One forward + backward from fresh gradients."""
    h.grad = weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = head_loss(h, weight, targets)
    loss.backward()


def main():
    args = parse_args()
    print("load average before: %.2f %.2f %.2f" % os.getloadavg())
    g = torch.Generator().manual_seed(0)
    h = torch.randn(args.rows, args.channels, generator=g).requires_grad_()  # (N, C)
    weight = (0.02 * torch.randn(args.vocab, args.channels, generator=g)).requires_grad_()  # (V, C)
    targets = torch.randint(0, args.vocab, (args.rows,), generator=g)  # (N,)
    table = variants(args.tiles, args.chunks, not args.no_compile, not args.fp32_only)
    runs = {name: functools.partial(forward_backward, head_loss, bf16, h, weight, targets)
            for name, (head_loss, bf16) in table.items()}
    for name in list(runs):  # warm-up, and the compile itself; a variant that fails is dropped
        try:
            runs[name]()
        except Exception as error:  # noqa: BLE001 - report any compile failure and go on
            print(f"{name}: failed ({type(error).__name__}: {str(error).splitlines()[0]})")
            del runs[name]
    times = best_of_rounds(runs, args.repeats)
    print(f"N={args.rows} C={args.channels} V={args.vocab}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    baseline = times["plain fp32"].best
    print(f"{'variant':<22} {'wall ms':>8} {'median ms':>10} {'speed-up':>9} {'CPU ms':>8}")
    for name, timing in times.items():
        print(f"{name:<22} {timing.best * 1e3:8.1f} {timing.median * 1e3:10.1f} "
              f"{baseline / timing.best:8.2f}x {timing.best_cpu * 1e3:8.1f}")
    print("load average after: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
