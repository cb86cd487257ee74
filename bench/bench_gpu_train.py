"""Training speed on one GPU: plain PyTorch against the project's fast path, in one run.

    python bench/bench_gpu_train.py [--tokens FILE] [--budget-s 540] [--parts eager,compile,gpt2,parity]
    python bench/bench_gpu_train.py --smoke        # tiny models (vocab 1000) on the CPU, random tokens,
                                                   # Triton kernels in its interpreter: checks the code runs

Parts, in the order they run (each row is skipped, not started, when the time budget cannot hold it):
  eager    (a) the default model (4L/4H/128C, block 256, vocab 50257) at B=32, T=256: ms/step and
           tokens/s of training steps in steady state, data loading included, for
             - the baseline: eager fp32 (TF32 off), F.cross_entropy on the full logits, AdamW foreach;
             - the project's training step as the trainer runs it, eager (step.TrainStep: bf16 autocast,
               TF32, fused AdamW with the divergence guard on the device), with the plain and the Triton head,
               and with the Triton head and the whole step as one CUDA graph (also with other chunk
               sizes of the Triton head, and at larger B);
             - a minimal step with the project's pieces (optim.make_optimizer, device.autocast) and each
               output-layer loss available: plain, triton_head_loss (default chunks, 256, 512, 4096 rows),
               the chunked torch fused_head_loss, liger-kernel's LigerFusedLinearCrossEntropyLoss;
  compile  (a) torch.compile: the trainer's step as ./train runs it by default on CUDA (compiled model,
           Triton head, CUDA graph), then minimal steps with the whole model compiled: default mode
           with the fastest fused head, mode="reduce-overhead" (CUDA graphs), the plain head, only the
           plain loss compiled, mode="max-autotune";
  gpt2     (b) GPT-2 124M (12L/12H/768C, block 1024) at B=16, T=1024: tokens/s and MFU against the bf16
           peak measured in this run (an 8192^3 bf16 matmul on random data), eager and compiled;
  parity   (c) 300 steps from the same init and data, baseline vs the fast path (bf16 + Triton head):
           final losses (mean of the last 10 steps) and their relative difference (target: < 2%).

Model FLOPs per token (GPTConfig.flops_per_token) = 6 * N + 12 * L * T * C (forward and backward),
N = the parameters without the position embedding (the tied wte counted once, as the output layer);
the attention term counts the full T x T scores (not halved for causality), as in the PaLM paper's
appendix. MFU = FLOPs/s / peak.

Rows share one process, run one after another, each from a fresh model, optimizer and data position.
Data: --tokens (an llm.c token file, e.g. made by prepare_data.py) or, without it, random tokens drawn
from a Zipf law over the vocabulary (learnable unigram statistics only: a weak test of parity).
Output: a table on stdout; bench_gpu_train.json and bench_gpu_train.md in --out (default: $OUT), rewritten
after every row so a run cut short keeps what it measured.
"""
import argparse
import functools
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass

import numpy as np
import torch

from tinystories.config import GPTConfig, TrainConfig
from tinystories.device import autocast
from tinystories.formats import atomic_write, write_tokens
from tinystories.loader import TokenLoader
from tinystories.model import GPT, plain_head_loss
from tinystories.optim import make_optimizer
from tinystories.runtime import Runtime
from tinystories.step import TrainStep

from common import best_of_rounds, matmul_peak

PARTS = ("eager", "compile", "gpt2", "parity")
LEARNING_RATE = 1e-3  # the quick start's (make train)


@dataclass(frozen=True)
class Sizes:
    device: str
    small: GPTConfig  # the default model
    small_batch: tuple[int, int]  # B, T
    big: GPTConfig  # GPT-2 124M
    big_batch: tuple[int, int]
    warmup: int  # steps before timing (compilation happens here)
    steps: int  # timed steps, small model
    big_steps: int
    parity_steps: int
    peak_n: int  # side of the square bf16 matmul that measures the peak
    large_batches: tuple[int, ...] = ()  # B of the extra rows of the graphed trainer, small model


FULL = Sizes("cuda", GPTConfig(), (32, 256), GPTConfig(block_size=1024, n_layer=12, n_head=12, n_embd=768),
             (16, 1024), warmup=10, steps=50, big_steps=20, parity_steps=300, peak_n=8192,
             large_batches=(128, 512))
SMOKE = Sizes("cpu", GPTConfig(block_size=32, vocab_size=1000, n_layer=2, n_head=2, n_embd=32), (4, 32),
              GPTConfig(block_size=64, vocab_size=1000, n_layer=2, n_head=2, n_embd=64), (2, 64),
              warmup=1, steps=2, big_steps=1, parity_steps=4, peak_n=256)


@dataclass(frozen=True)
class Variant:
    """One way to train. precision: 'fp32' (TF32 off) or 'bf16' (autocast, TF32 on); head: a key of
    head_losses(); optimizer: 'foreach' (plain AdamW) or 'project' (optim.make_optimizer: fused on
    CUDA); step: 'minimal' (our loop below) or 'trainer' (step.TrainStep, the trainer's step; its head
    is named after a registry.HEAD_LOSSES entry); compile_mode: None for eager, else torch.compile's
    mode (for 'trainer': any mode means --compile on); cuda_graphs: the trainer's --cuda-graphs on;
    cost_s: rough seconds it needs, for the time budget."""
    name: str
    precision: str
    head: str
    optimizer: str = "project"
    step: str = "minimal"
    compile_mode: str | None = None
    cuda_graphs: bool = False  # step 'trainer' only: TrainStep's whole-step CUDA graph
    cost_s: float = 15.0


BASELINE = Variant("eager fp32, plain head, AdamW foreach", "fp32", "plain", optimizer="foreach")


# ----------------------------------------------------------------------------- output-layer losses

def head_losses() -> dict:
    """name -> head loss (h (N, C), weight (V, C), targets (N,)) -> mean loss, or a string saying why
    that one is unavailable here."""
    heads = {"plain": plain_head_loss, "compiled plain": torch.compile(plain_head_loss)}
    try:
        from tinystories.kernels.triton_ce import triton_head_loss
        heads["triton"] = triton_head_loss
        for rows in (256, 512, 4096):  # chunks of 26, 52 and 412 MB of bf16 logits (an H100's L2: 50 MB)
            heads[f"triton {rows} rows"] = functools.partial(triton_head_loss, chunk_rows=rows)
    except ImportError as e:
        heads["triton"] = f"unavailable: {e}"
    try:
        from tinystories.kernels.fused_ce import fused_head_loss
        heads["chunked torch"] = fused_head_loss
    except ImportError as e:
        heads["chunked torch"] = f"unavailable: {e}"
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        liger = LigerFusedLinearCrossEntropyLoss()
        heads["liger"] = lambda h, weight, targets: liger(weight, h, targets)
    except ImportError as e:
        heads["liger"] = f"unavailable: {e}"
    return heads


FUSED_HEADS = ("triton", "chunked torch", "liger")


# ----------------------------------------------------------------------------- one training run

def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def new_model(config: GPTConfig, device: torch.device, head_loss=plain_head_loss, seed: int = 1337) -> GPT:
    model = GPT(config, head_loss)
    model.init_weights(seed)
    return model.to(device)


def minimal_step(variant: Variant, config: GPTConfig, heads: dict, tokens: str, batch: tuple[int, int],
                 device: torch.device):
    """A training step (data, forward, backward, clip, AdamW) without host syncs; returns the loss
    as a device tensor."""
    cfg = TrainConfig(learning_rate=LEARNING_RATE)
    model = new_model(config, device, heads[variant.head])
    if variant.optimizer == "foreach":
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                                      eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=True)
    else:
        optimizer = make_optimizer(model, cfg)
    forward = model if variant.compile_mode is None else torch.compile(model, mode=variant.compile_mode)
    loader = TokenLoader(tokens, *batch, vocab_size=config.vocab_size)
    graphs = variant.compile_mode in ("reduce-overhead", "max-autotune")

    def step() -> torch.Tensor:
        x, y = (t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t
                for t in loader.next_batch())  # (B, T) each, as Runtime.to_device does
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(device, variant.precision):
            loss = forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach().clone()  # a copy: CUDA graphs reuse their output buffers

    return step


def trainer_step(variant: Variant, config: GPTConfig, heads: dict, tokens: str, batch: tuple[int, int],
                 device: torch.device):
    """The project's own training step (step.TrainStep, what train.Trainer runs each step) from the same
    init, its batch loaded as Trainer.next_batches does; compile_mode and cuda_graphs as --compile on and
    --cuda-graphs on (a failure is an error, not a fall back)."""
    cfg = TrainConfig(batch_size=batch[0], seq_len=batch[1], learning_rate=LEARNING_RATE)
    compiled = variant.compile_mode is not None
    runtime = Runtime.single(device, variant.precision, variant.head.split()[0], compile=compiled,
                             cuda_graphs=variant.cuda_graphs, compile_required=compiled,
                             cuda_graphs_required=variant.cuda_graphs)
    model = new_model(config, device, heads[variant.head])
    step = TrainStep(model, make_optimizer(model, cfg, capturable=runtime.cuda_graphs), runtime, cfg.grad_accum,
                     cfg.grad_clip)
    loader = TokenLoader(tokens, *batch, vocab_size=config.vocab_size)
    return lambda: step([runtime.to_device(loader.next_batch())], LEARNING_RATE)


def make_step(variant, config, heads, tokens, batch, device):
    if isinstance(heads.get(variant.head), str):
        raise Unavailable(heads[variant.head])
    if (variant.cuda_graphs or variant.compile_mode in ("reduce-overhead", "max-autotune")) and device.type != "cuda":
        raise Unavailable("CUDA graphs need CUDA")
    set_tf32(variant.precision == "bf16")  # the fast path's setting; the fp32 baseline keeps full fp32
    if variant.compile_mode is not None:
        torch._dynamo.reset()  # each compiled row starts from an empty cache and recompile budget
    if variant.step == "trainer":
        return trainer_step(variant, config, heads, tokens, batch, device)
    return minimal_step(variant, config, heads, tokens, batch, device)


class Unavailable(Exception):
    pass


# ----------------------------------------------------------------------------- results

class Results:
    """Rows of measurements; rewritten to JSON and markdown in `out` after each one."""

    def __init__(self, out: str | None, meta: dict):
        self.out, self.meta, self.rows, self.parity = out, meta, [], None

    def add(self, row: dict) -> None:
        self.rows.append(row)
        print("  " + ", ".join(f"{k} {v}" for k, v in row.items() if v is not None), flush=True)
        self.save()

    def save(self) -> None:
        if not self.out:
            return
        os.makedirs(self.out, exist_ok=True)
        with atomic_write(os.path.join(self.out, "bench_gpu_train.json")) as f:
            f.write(json.dumps({"meta": self.meta, "rows": self.rows, "parity": self.parity}, indent=1).encode())
        with atomic_write(os.path.join(self.out, "bench_gpu_train.md")) as f:
            f.write(self.markdown().encode())

    def markdown(self) -> str:
        head = "| part | variant | ms/step | tokens/s | x baseline | MFU | peak GiB | warm-up s | note |\n"
        lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"]
        for r in self.rows:
            cells = [r["part"], r["name"], fmt(r.get("ms_per_step"), ".2f"), fmt(r.get("tokens_per_s"), ",.0f"),
                     fmt(r.get("vs_baseline"), ".2f"), fmt(r.get("mfu"), ".1%"), fmt(r.get("peak_gib"), ".2f"),
                     fmt(r.get("warmup_s"), ".1f"), r.get("note", "")]
            lines.append("| " + " | ".join(cells) + " |\n")
        meta = ", ".join(f"{k}: {v}" for k, v in self.meta.items())
        text = f"{meta}\n\n" + "".join(lines)
        if self.parity:
            p = self.parity
            text += (f"\nloss parity over {p['steps']} steps ({p['fast']}): baseline {p['baseline_final']:.4f}, "
                     f"fast {p['fast_final']:.4f}, relative difference {p['relative_difference']:.3%} "
                     f"({'within' if p['relative_difference'] < 0.02 else 'OUTSIDE'} 2%)\n")
        return text


def fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


# ----------------------------------------------------------------------------- the parts

class Bench:
    def __init__(self, args, sizes: Sizes, tokens: str):
        self.sizes, self.tokens = sizes, tokens
        self.device = torch.device(sizes.device)
        self.deadline = time.monotonic() + args.budget_s
        self.heads = head_losses()
        self.baseline_ms = None
        self.peak_flops = None
        meta = {"device": torch.cuda.get_device_name() if self.device.type == "cuda" else "cpu",
                "torch": torch.__version__, "tokens": args.tokens or "random (Zipf)", "smoke": args.smoke}
        try:
            import triton
            meta["triton"] = triton.__version__
        except ImportError:
            pass
        self.results = Results(args.out, meta)

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def measure(self, part: str, variant: Variant, config: GPTConfig, batch: tuple[int, int], steps: int,
                flops_per_token: float | None = None, label: str = "") -> float | None:
        """Time one variant and record its row; returns ms/step, or None when it did not run."""
        row = {"part": part, "name": variant.name + (f", {label}" if label else "")}
        if variant.cost_s > self.left_s():
            self.results.add({**row, "note": f"skipped: needs ~{variant.cost_s:.0f} s, {self.left_s():.0f} s left"})
            return None
        print(f"[{part}] {variant.name}", flush=True)
        try:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            step = make_step(variant, config, self.heads, self.tokens, batch, self.device)
            timing = best_of_rounds(step, rounds=1, calls=steps, warmup=self.sizes.warmup, device=self.device)
            warmup_s, ms = timing.warmup_s, timing.best * 1000  # warm-up: compilation included; mean ms/step
        except Unavailable as e:
            self.results.add({**row, "note": f"skipped: {e}"})
            return None
        except Exception as e:  # one broken variant must not cost the others their run
            traceback.print_exc()
            self.results.add({**row, "note": f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"})
            return None
        tokens_per_s = batch[0] * batch[1] / (ms / 1000)
        row.update(ms_per_step=round(ms, 3), tokens_per_s=round(tokens_per_s), warmup_s=round(warmup_s, 1))
        if part == "a" and self.baseline_ms and not label:
            row["vs_baseline"] = round(self.baseline_ms / ms, 3)
        if flops_per_token and self.peak_flops:
            row["mfu"] = round(flops_per_token * tokens_per_s / self.peak_flops, 4)
        if self.device.type == "cuda":
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        self.results.add(row)
        return ms

    def fastest_fused_head(self, timings: dict) -> str:
        measured = {head: ms for head, ms in timings.items() if head in FUSED_HEADS and ms}
        return min(measured, key=measured.get) if measured else "plain"

    # (a), eager
    def eager(self) -> dict:
        s = self.sizes
        self.baseline_ms = self.measure("a", BASELINE, s.small, s.small_batch, s.steps)
        self.measure("a", Variant("trainer: bf16, TF32, fused AdamW, plain head", "bf16", "plain", step="trainer"),
                     s.small, s.small_batch, s.steps)
        self.measure("a", Variant("trainer + triton head", "bf16", "triton", step="trainer"),
                     s.small, s.small_batch, s.steps)
        graphed = Variant("trainer + triton head + CUDA graph", "bf16", "triton", step="trainer", cuda_graphs=True)
        self.measure("a", graphed, s.small, s.small_batch, s.steps)
        for head in (h for h in self.heads if h.startswith("triton ")):
            self.measure("a", Variant(f"trainer + {head} head + CUDA graph", "bf16", head, step="trainer",
                                      cuda_graphs=True), s.small, s.small_batch, s.steps)
        for batch in s.large_batches:
            self.measure("a", graphed, s.small, (batch, s.small_batch[1]), s.steps, label=f"B={batch}")
        timings = {}
        for head in ("plain", *FUSED_HEADS, *(h for h in self.heads if h.startswith("triton "))):
            timings[head] = self.measure("a", Variant(f"bf16 + {head} head", "bf16", head),
                                         s.small, s.small_batch, s.steps)
        return timings

    # (c)
    def parity(self) -> None:
        s = self.sizes
        fast_head = next((h for h in ("triton", "chunked torch", "plain") if not isinstance(self.heads[h], str)))
        fast = Variant(f"bf16 + {fast_head} head", "bf16", fast_head)
        if self.left_s() < 60:
            print("[c] parity skipped: out of time", flush=True)
            return
        print(f"[c] parity: {s.parity_steps} steps, baseline vs {fast.name}", flush=True)
        curves = {}
        for variant in (BASELINE, fast):
            step = make_step(variant, s.small, self.heads, self.tokens, s.small_batch, self.device)
            curves[variant.name] = torch.stack([step() for _ in range(s.parity_steps)]).float().cpu().tolist()
        base, ours = curves[BASELINE.name], curves[fast.name]
        tail = min(10, s.parity_steps)
        base_final, fast_final = float(np.mean(base[-tail:])), float(np.mean(ours[-tail:]))
        self.results.parity = {"steps": s.parity_steps, "fast": fast.name, "baseline_final": base_final,
                               "fast_final": fast_final, "relative_difference": abs(fast_final - base_final) / base_final,
                               "baseline_curve": base, "fast_curve": ours}
        print(f"  first losses {base[0]:.4f} / {ours[0]:.4f}; final (mean of last {tail}) "
              f"{base_final:.4f} / {fast_final:.4f}", flush=True)
        self.results.save()

    # (b)
    def gpt2(self, best_head: str) -> None:
        s, c = self.sizes, self.sizes.big
        self.peak_flops = bf16_peak(s.peak_n, self.device)
        self.results.meta["bf16_peak_tflops"] = round(self.peak_flops / 1e12, 3)
        print(f"[b] bf16 peak ({s.peak_n}^3 matmul): {self.peak_flops / 1e12:.1f} TFLOP/s", flush=True)
        flops = c.flops_per_token(s.big_batch[1])
        self.results.meta["gpt2_flops_per_token"] = flops
        for variant in (Variant("GPT-2 124M: bf16 + plain head", "bf16", "plain", cost_s=30),
                        Variant(f"GPT-2 124M: bf16 + {best_head} head", "bf16", best_head, cost_s=30),
                        Variant(f"GPT-2 124M: compile + {best_head} head", "bf16", best_head,
                                compile_mode="default", cost_s=60)):
            self.measure("b", variant, c, s.big_batch, s.big_steps, flops)

    # (a), compiled
    def compiled(self, best_head: str) -> None:
        s = self.sizes
        for variant in (Variant("trainer + compile + triton head + CUDA graph (./train's default)", "bf16",
                                "triton", step="trainer", compile_mode="default", cuda_graphs=True, cost_s=60),
                        Variant(f"compile + {best_head} head", "bf16", best_head, compile_mode="default", cost_s=60),
                        Variant(f"compile reduce-overhead + {best_head} head", "bf16", best_head,
                                compile_mode="reduce-overhead", cost_s=70),
                        Variant("compile + plain head", "bf16", "plain", compile_mode="default", cost_s=60),
                        Variant("bf16 + compiled plain head", "bf16", "compiled plain", cost_s=60),
                        Variant(f"compile max-autotune + {best_head} head", "bf16", best_head,
                                compile_mode="max-autotune", cost_s=240)):
            self.measure("a", variant, s.small, s.small_batch, s.steps)


def bf16_peak(n: int, device: torch.device) -> float:
    """FLOP/s of an (n, n) @ (n, n) bf16 matmul on random data: the mean of 20 after 3 of warm-up."""
    return matmul_peak(n, device, torch.bfloat16, calls=20, warmup=3)


def random_tokens(path: str, count: int, vocab_size: int, seed: int = 0) -> None:
    """An llm.c token file of `count` tokens drawn from a Zipf law (exponent 1.1) over the vocabulary."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(vocab_size)[np.minimum(rng.zipf(1.1, count) - 1, vocab_size - 1)]
    write_tokens(path, ids.astype(np.uint16))


def print_table(results: Results) -> None:
    print("\n" + results.markdown(), flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", help="llm.c token file to train on (default: random Zipf tokens)")
    p.add_argument("--budget-s", type=float, default=540, help="stop starting rows after this many seconds")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for the JSON and markdown results")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, kernels in Triton's interpreter")
    args = p.parse_args(argv)
    if args.smoke and args.tokens:
        p.error("--smoke trains tiny models on its own random tokens: leave out --tokens")
    args.parts = args.parts.split(",")
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        p.error(f"--parts: unknown {', '.join(sorted(unknown))}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when triton is first imported (head_losses)
    elif not torch.cuda.is_available():
        sys.exit("bench_gpu_train.py: no CUDA device (use --smoke for a CPU run at tiny sizes)")
    sizes = SMOKE if args.smoke else FULL
    with tempfile.TemporaryDirectory() as folder:
        tokens = args.tokens
        if tokens is None:
            tokens = os.path.join(folder, "random_tokens.bin")
            random_tokens(tokens, 4_000_000 if not args.smoke else 20_000, sizes.small.vocab_size)
        bench = Bench(args, sizes, tokens)
        try:
            timings = bench.eager() if "eager" in args.parts else {}
            best = bench.fastest_fused_head(timings) if timings else "triton"
            if "compile" in args.parts:
                bench.compiled(best)
            if "gpt2" in args.parts:
                bench.gpt2(best)
            if "parity" in args.parts:
                bench.parity()
        finally:
            print_table(bench.results)


if __name__ == "__main__":
    main()
