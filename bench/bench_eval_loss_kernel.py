"""Would a hand-written CPU kernel for eval's loss pay? eval's bf16 compiled scorer against the same
scorer with its loss (log-sum-exp over each row's logits minus the target's) in a small C kernel, and
against "before", in one process (issue 31: eval at 4x "before"); and, as the bound on any loss
kernel, the scorer with the loss left out.

The compiled scorer spends about a third of its time in the loss: inductor's fused loop takes each
row's max, then 4,096 exponentials through Sleef's expf (1 ulp). The kernel below does the same two
passes with a cheaper exponential (a degree-6 polynomial on [-ln 2/2, ln 2/2] scaled by 2^n; it
matches a float64 log-sum-exp to 1e-6), vectorised by the C compiler, threaded with OpenMP, called
from the compiled graph as a custom op. It is an experiment, not part of `eval`: it needs a C compiler
with OpenMP (`cc -fopenmp`) at run time.

The model, tokens and the "before" scorer are bench_eval.py's (the fastest preset's model, -b 8, the
first --tokens val-excerpt tokens, a 4,096-token BPE of the train excerpt); rounds alternate between
the variants, each called --calls times in a row per round.

    PYTHONPATH=. .venv/bin/python bench/bench_eval_loss_kernel.py [--tokens 33000] [--rounds 3] [--calls 3]
"""
import argparse
import ctypes
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from tinystories import evaluate
from tinystories.device import autocast

from bench_eval import B, T, before_window_nats, excerpt_setup
from common import best_of_rounds

C_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float from_bf16(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }

/* exp(x) for x <= 0: x = n ln2 + r, |r| <= ln2/2, exp(x) = 2^n p(r) with p a degree-6 polynomial */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = __builtin_roundf(x * 1.44269504f);
    float r = x - n * 0.693145752f - n * 1.42860677e-6f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.166666672f + r * (0.0416664891f
              + r * (0.00833336171f + r * 0.00138925691f)))));
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale; memcpy(&scale, &bits, 4);
    return p * scale;
}

/* losses[i] = logsumexp(logits[i]) - logits[i][targets[i]], 0 where targets[i] < 0 (padding) */
void row_losses(const uint16_t *logits, const int64_t *targets, int64_t rows, int64_t vocab, int threads,
                float *losses) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < rows; i++) {
        const uint16_t *row = logits + i * vocab;
        if (targets[i] < 0) { losses[i] = 0.0f; continue; }
        float top = -INFINITY, sum = 0.0f;
        for (int64_t j = 0; j < vocab; j++) { float v = from_bf16(row[j]); top = v > top ? v : top; }
        for (int64_t j = 0; j < vocab; j++) sum += exp_nonpositive(from_bf16(row[j]) - top);
        losses[i] = top + logf(sum) - from_bf16(row[targets[i]]);
    }
}
"""
KERNEL = None  # the compiled C library (build)


def build(folder: Path) -> ctypes.CDLL:
    """C_SOURCE compiled for this CPU into a shared library in `folder`, loaded."""
    source, library = folder / "row_losses.c", folder / "row_losses.so"
    source.write_text(C_SOURCE)
    wide = ["-mprefer-vector-width=512"] if platform.machine() in ("x86_64", "AMD64") else []
    subprocess.run(["cc", "-O3", "-march=native", *wide, "-ffast-math", "-fopenmp", "-shared", "-fPIC",
                    str(source), "-o", str(library)], check=True)
    return ctypes.CDLL(str(library))


@torch.library.custom_op("bench::row_losses", mutates_args=())
def row_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(rows,) fp32 losses of bf16 logits (rows, V) against targets (rows,), through the C kernel."""
    logits, targets = logits.contiguous(), targets.contiguous()
    losses = torch.empty(logits.size(0), dtype=torch.float32)
    KERNEL.row_losses(ctypes.c_void_p(logits.data_ptr()), ctypes.c_void_p(targets.data_ptr()),
                      ctypes.c_int64(logits.size(0)), ctypes.c_int64(logits.size(1)),
                      ctypes.c_int(torch.get_num_threads()), ctypes.c_void_p(losses.data_ptr()))
    return losses


@row_losses.register_fake
def _(logits, targets):
    return logits.new_empty(logits.size(0), dtype=torch.float32)


def window_nats_with(chunk_loss):
    """evaluate.window_nats with each chunk's losses from chunk_loss(logits (rows, V) bf16, targets
    (rows,)) -> (rows,) fp32 instead of F.cross_entropy."""
    @torch.no_grad()
    def window_nats(model, x, y, precision):
        with autocast(x.device, precision):
            h = model.hidden(x)  # (B, T, C)
        h, y = h.reshape(-1, h.size(-1)), y.reshape(-1)  # (B*T, C), (B*T,)
        weight = model.head_weight()  # (V, C)
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        for start in range(0, h.size(0), evaluate.HEAD_ROWS):
            with autocast(x.device, precision):
                logits = F.linear(h[start : start + evaluate.HEAD_ROWS], weight)  # (rows, V) bf16
            total += chunk_loss(logits, y[start : start + evaluate.HEAD_ROWS]).double().sum()
        return total
    return window_nats


def target_logits(logits, targets):
    """The bound on any loss kernel: the target logits (padding: logit 0), which cost next to nothing;
    not a loss."""
    return logits.gather(1, targets.clamp(min=0)[:, None]).squeeze(1).float()


def main() -> None:
    global KERNEL
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=33_000, help="val tokens scored per call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3, help="calls of each variant in a row, per round")
    args = parser.parse_args()
    torch.manual_seed(0)
    tok, val, model = excerpt_setup()
    tokens = val[: args.tokens]
    cpu = torch.device("cpu")

    def scorer(window_nats, precision):
        return lambda: evaluate.evaluate(model, tokens, tok, T, B, cpu, precision, nats_function=window_nats)

    with tempfile.TemporaryDirectory() as folder:
        KERNEL = build(Path(folder))
        runs = {"before (fp32 eager)": scorer(before_window_nats, "fp32"),
                "bf16 compiled (eval)": scorer(torch.compile(evaluate.window_nats), "bf16"),
                "bf16 compiled, C loss": scorer(torch.compile(window_nats_with(row_losses)), "bf16"),
                "bf16 compiled, no loss": scorer(torch.compile(window_nats_with(target_logits)), "bf16")}
        timings = best_of_rounds(runs, rounds=args.rounds, calls=args.calls, warmup=3)
    scored = timings["before (fp32 eager)"].result.targets
    print(f"CPU: {torch.get_num_threads()} threads; {scored:,} tokens scored per call; -b {B}")
    before = scored / timings["before (fp32 eager)"].best
    for name, timing in timings.items():
        rate = scored / timing.best
        figure = "" if name.endswith("no loss") else f"  bits/byte {timing.result.bits_per_byte:.6f}"
        print(f"{name:22s} {rate:10,.0f} tokens/s  {rate / before:5.2f}x before{figure}")


if __name__ == "__main__":
    sys.exit(main())
