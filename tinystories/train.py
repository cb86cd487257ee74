"""The training loop: one loop for CPU, CUDA and torchrun (DDP).

    model file -> GPT -> [batch -> loss -> backward -> clip -> AdamW] x steps -> checkpoint

A step takes `grad_accum` micro-batches; the global batch of a step is -b sequences of -t tokens
(times grad_accum), split evenly over the ranks when run under torchrun, so the same flags give the
same losses on 1 or N processes. Speed switches (bf16 autocast, the fused output-layer loss,
torch.compile, fp16 loss scaling; chosen in device.py) live inside this loop, each with the plain
PyTorch path as fallback; a model that fails to compile at the first step runs eagerly instead.

Checkpoints (-c, see checkpoint.py) are written atomically by rank 0. Starting from a checkpoint
resumes exactly; -n always counts steps from the start of the run, so the same command resumes
where an interrupted run would have gone. The optimizer and LR schedule are in optim.py, the
metrics sinks (JSON lines, TensorBoard, W&B) in metrics.py, the --keep / best files in retention.py.
"""
import contextlib
import math
import os
import signal
import sys
import time
import uuid
from dataclasses import asdict

import torch

from . import checkpoint, llmc, metrics
from .config import TrainConfig
from .cuda_graph import CUDAGraphStep
from .device import (Distributed, allow_tf32, autocast, compile_options, resolve_precision, select_head_loss,
                     use_compile, use_cuda_graphs)
from .errors import BadInput
from .formats import ModelFile, read_model, remove_stale_temp_files
from .evaluate import evaluate
from .loader import TokenLoader
from .metrics import metrics_path
from .model import GPT
from .optim import learning_rate, make_optimizer, set_learning_rate
from .retention import Retention


# ----------------------------------------------------------------------------- signals

class StopSignals:
    """First SIGINT/SIGTERM: finish the current step, save, exit cleanly. Second SIGINT: exit now
    (every file is written atomically, so nothing is corrupted)."""

    def __init__(self):
        self.requested = None
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            print("\nsecond interrupt: exiting now", file=sys.stderr, flush=True)
            os._exit(130)
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested}: stopping after this step", file=sys.stderr, flush=True)

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def failure_reason(error: Exception) -> str:
    """'Type: first line' of the root cause of an error (not dynamo's or inductor's wrapper of it)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}{': ' + lines[0] if lines else ''}"


# ----------------------------------------------------------------------------- the loop

class Trainer:
    """One training run: everything is set up from a TrainConfig in __init__; run() is the loop."""

    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        self.cfg = cfg
        metrics.check_extras(cfg)
        self.dist = Distributed(cfg.device)
        self.device = self.dist.device
        model_file = read_model(cfg.model)
        self.config = model_file.config
        self.seq_len = cfg.seq_len or self.config.block_size
        self.metrics_path = metrics_path(cfg.metrics, cfg.checkpoint)
        self._check_flags()
        self.retention = Retention(cfg.checkpoint, cfg.keep) if cfg.checkpoint else None
        if self.dist.master:  # temp files of saves cut short by a kill
            for path in filter(None, (cfg.checkpoint, self.metrics_path)):
                remove_stale_temp_files(path)
            if self.retention:
                self.retention.remove_stale_temp_files()
        torch.manual_seed(cfg.seed)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.model = llmc.load_params(GPT(self.config), model_file.params).to(self.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.model.head_loss = select_head_loss(cfg.head_loss, self.device, self.precision)
        allow_tf32(self.device)
        self.use_cuda_graphs = use_cuda_graphs(cfg.cuda_graphs, self.device, self.dist.enabled, self.precision)
        self.optimizer = make_optimizer(self.model, cfg, capturable=self.use_cuda_graphs)
        # fp16: dynamic loss scaling; a step whose scaled gradients overflow is skipped like any non-finite
        # step (a no-op for other precisions)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.train_loader = self._loader(cfg.train_tokens)
        self.val_loader = self._loader(cfg.val_tokens) if cfg.val_every else None
        self.step, self.run_id = 0, uuid.uuid4().hex
        self.counters = {"skipped_steps": 0, "tokens": 0}
        self.results = {}  # checkpoint.RESULT_KEYS: the last losses and the best val loss so far
        resumed = model_file.state is not None
        if resumed:
            self._resume(model_file)
        # divergence guard, kept on the device so a step never waits for it
        self.skipped_steps = torch.tensor(self.counters["skipped_steps"], device=self.device)
        self.bad_in_a_row = torch.zeros((), dtype=torch.long, device=self.device)
        self.total_steps = self._total_steps()
        self.compiled = use_compile(cfg.compile, self.total_steps, self.device)
        self.forward_model = self._wrap_model()
        self.compile_pending = self.compiled  # until the first step has compiled, or fallen back
        self.graph_step = CUDAGraphStep(self._step_with_fallback) if self.use_cuda_graphs else None
        self.metrics = (metrics.open_sinks(cfg, self.metrics_path, self.run_id, self.step if resumed else None,
                                           {**asdict(cfg), "model_config": asdict(self.config)})
                        if self.dist.master else metrics.Sinks([]))
        self._announce(resumed)

    # -- set-up helpers

    def _check_flags(self) -> None:
        cfg, T, block = self.cfg, self.seq_len, self.config.block_size
        if T > block:
            raise BadInput(f"-t/--seq-len {T} exceeds the model's block size {block} ({cfg.model})")
        if cfg.batch_size % self.dist.world:
            raise BadInput(f"-b/--batch-size {cfg.batch_size} is not divisible by the world size {self.dist.world}")
        if cfg.keep and not cfg.checkpoint:
            raise BadInput(f"--keep {cfg.keep}: needs -c, the checkpoint whose saves it keeps")
        checkpoint.check_output_paths(cfg, self.metrics_path)

    def _loader(self, path: str) -> TokenLoader:
        """This rank's share of each global batch of -b sequences from the token file `path`."""
        return TokenLoader(path, self.cfg.batch_size // self.dist.world, self.seq_len, self.dist.rank,
                           self.dist.world, self.config.vocab_size)

    def _resume(self, model_file: ModelFile) -> None:
        meta = checkpoint.restore(model_file, self.cfg.model, self.model, self.optimizer, self.cfg.optimizer)
        self.step, self.run_id = meta["step"], meta["run_id"]
        self.counters.update(meta.get("counters", {}))
        if self.counters.get("grad_scaler"):
            self.scaler.load_state_dict(self.counters["grad_scaler"])
        self.results = {k: meta[k] for k in checkpoint.RESULT_KEYS if k in meta}
        self.train_loader.position = meta["data_position"]
        changed = [k for k, now in (("batch_size", self.cfg.batch_size), ("seq_len", self.seq_len),
                                    ("grad_accum", self.cfg.grad_accum)) if meta.get(k) != now]
        if changed and self.dist.master:
            print(f"note: {', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'} from the checkpoint's; resuming at its data position "
                  f"anyway (losses will not match an uninterrupted run)", file=sys.stderr)

    def _total_steps(self) -> int:
        if self.cfg.max_steps > 0:
            return self.cfg.max_steps
        return max(1, self.train_loader.batches_per_epoch() // self.cfg.grad_accum)

    def _wrap_model(self):
        """The model the step calls: compiled (self.compiled) and under DDP as the run needs."""
        model = self.model
        if self.compiled:
            model = torch.compile(model, options=compile_options(self.device, self.precision))
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel
            model = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return model

    def _announce(self, resumed: bool) -> None:
        if not self.dist.master:
            return
        c, cfg = self.config, self.cfg
        tokens_per_step = cfg.batch_size * self.seq_len * cfg.grad_accum
        print(f"model {cfg.model}: {c.n_layer} layers, {c.n_head} heads, {c.n_embd} channels, block {c.block_size}, "
              f"{c.num_parameters(padded=False):,} parameters")
        print(f"device {self.device} x {self.dist.world} process(es), precision {self.precision}, "
              f"head loss {self.model.head_loss.__name__}{', compiled' if self.compiled else ''}"
              f"{', CUDA graph' if self.use_cuda_graphs else ''}; "
              f"batch {cfg.batch_size} x {self.seq_len} tokens x {cfg.grad_accum} accumulation = {tokens_per_step:,} tokens/step")
        print(f"train {cfg.train_tokens}: {self.train_loader.tokens.size:,} tokens "
              f"({self.train_loader.batches_per_epoch() // cfg.grad_accum:,} steps/epoch); {self.total_steps} steps")
        if resumed:
            print(f"resuming run {self.run_id} at step {self.step} (data position {self.train_loader.position:,})")

    # -- the step

    def _batch(self, loader: TokenLoader):
        x, y = loader.next_batch()
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def train_step(self, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over grad_accum micro-batches. Returns (mean loss, grad norm) as device
        tensors, without waiting for the device. When either is non-finite, fused AdamW skips the
        update on the device (its found_inf input), so a bad step never reaches the weights (on MPS,
        with foreach AdamW, the step waits for the device to decide)."""
        set_learning_rate(self.optimizer, lr)
        batches = [self._batch(self.train_loader) for _ in range(self.cfg.grad_accum)]
        if self.graph_step is None:
            return self._step_with_fallback(batches)
        try:
            return self.graph_step(batches)
        except BadInput:
            raise
        except Exception as e:  # a capture failure: run eagerly from here on, unless graphs were asked for
            if self.cfg.cuda_graphs == "on":
                raise BadInput(f"--cuda-graphs on: capturing the training step failed: {failure_reason(e)}") from None
            print(f"note: CUDA graph capture failed ({failure_reason(e)}); continuing without graphs", file=sys.stderr)
            self.graph_step = None
            self.optimizer.zero_grad(set_to_none=True)
            return self._device_step(batches)

    def _step_with_fallback(self, batches) -> tuple[torch.Tensor, torch.Tensor]:
        """_device_step; at the first step of a compiled model, where torch.compile compiles, a failure
        falls back to the eager model (under --compile on: BadInput). The failed attempt changed no
        weights: compiling comes before the update, and its partial gradients are dropped."""
        if not self.compile_pending:
            return self._device_step(batches)
        try:
            result = self._device_step(batches)
        except Exception as e:  # anything dynamo, inductor, a C++ compiler or triton may raise
            self._stop_compiling(e)
            result = self._device_step(batches)
        self.compile_pending = False
        return result

    def _stop_compiling(self, error: Exception) -> None:
        reason = failure_reason(error)
        if self.cfg.compile == "on":
            raise BadInput(f"--compile on: torch.compile failed at the first step ({reason}); use --compile off") from None
        print(f"note: torch.compile failed at the first step ({reason}); running eagerly", file=sys.stderr)
        self.compiled = False
        self.forward_model = self._wrap_model()
        self.optimizer.zero_grad(set_to_none=True)

    def _device_step(self, batches) -> tuple[torch.Tensor, torch.Tensor]:
        """The device work of a step on its micro-batches [(x, y) (B, T)]: forward, backward, clip,
        AdamW, guard. Waits for nothing and keeps its state in place, so a CUDA graph can record it."""
        cfg = self.cfg
        total = torch.zeros((), device=self.device)
        for micro, (x, y) in enumerate(batches):
            sync = micro == len(batches) - 1
            with (contextlib.nullcontext() if sync or not self.dist.enabled else self.forward_model.no_sync()):
                with autocast(self.device, self.precision):
                    loss = self.forward_model(x, y) / cfg.grad_accum
                self.scaler.scale(loss).backward()
            total += loss.detach()
        self.scaler.unscale_(self.optimizer)  # fp16: back to true gradients (an overflow stays inf)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        total = self.dist.mean(total)
        finite = torch.isfinite(total) & torch.isfinite(norm)
        if self.optimizer.skips_bad_steps_on_device:
            self.optimizer.step(found_inf=(~finite).float())
        elif bool(finite):  # foreach AdamW (MPS) has no found_inf: decide on the host, waiting for the step
            self.optimizer.step()
        self.scaler.update()  # fp16: halve the scale after an overflow, grow it after 2000 clean steps
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_in_a_row.copy_(torch.where(finite, 0, self.bad_in_a_row + 1))
        self.skipped_steps += (~finite).long()
        return total, norm

    @torch.no_grad()
    def val_loss(self) -> tuple[float, float | None]:
        """(val loss, bits per byte or None): the mean over --val-batches batches from the start of
        the val file, or with --val-batches all the whole file, scored as `tinystories eval` does."""
        if self.cfg.val_batches == "all":
            return self._val_whole_file()
        self.val_loader.position = 0
        self.model.eval()
        total = torch.zeros((), device=self.device)
        batches = min(self.cfg.val_batches, self.val_loader.batches_per_epoch())
        for _ in range(batches):
            x, y = self._batch(self.val_loader)
            with autocast(self.device, self.precision):
                total += self.model(x, y).float()
        self.model.train()
        return self.dist.mean(total / batches).item(), None

    def _val_whole_file(self) -> tuple[float, float | None]:
        share = evaluate(self.model, self.val_loader.tokens, self.seq_len, self.cfg.batch_size // self.dist.world,
                         self.device, self.precision, self.dist.rank, self.dist.world)
        sums = torch.tensor([share.nats, share.targets, share.bytes], dtype=torch.float64, device=self.device)
        nats, targets, nbytes = self.dist.sum(sums).tolist()
        return nats / targets, (nats / math.log(2) / nbytes if nbytes else None)

    def sample(self) -> str:
        from .generate import generate_tokens
        from .tokenizer import EOT, decode

        generator = torch.Generator().manual_seed(self.cfg.seed + self.step)
        self.model.eval()
        ids = generate_tokens(self.model, [EOT], min(self.cfg.sample_length, self.config.block_size), generator)
        self.model.train()
        return decode(ids)

    def save(self) -> None:
        if self.cfg.checkpoint and self.dist.master:
            self.counters["skipped_steps"] = int(self.skipped_steps)
            if self.scaler.is_enabled():  # fp16's loss scale and its growth count
                self.counters["grad_scaler"] = self.scaler.state_dict()
            checkpoint.save(self.cfg.checkpoint, self.model, self.optimizer, self._meta())
            self.retention.after_save(self.step)
            print(f"saved checkpoint {self.cfg.checkpoint} at step {self.step}", flush=True)
        self.dist.barrier()

    def _meta(self) -> dict:
        meta = checkpoint.state_meta(self.cfg, self.config, self.run_id, self.step, self.train_loader.position,
                                     self.counters, self.dist.world, self.seq_len)
        return {**meta, **self.results}

    def save_best(self) -> None:
        """Write <name>.best.bin: this step's state, whose val loss is the lowest so far (rank 0)."""
        checkpoint.save(self.retention.best_path, self.model, self.optimizer, self._meta())
        print(f"saved best checkpoint {self.retention.best_path} (val loss {self.results['best_val_loss']:.6f})", flush=True)

    # -- the loop

    def log(self, record: dict) -> None:
        if self.dist.master:
            self.metrics.write(record)

    def run(self) -> None:
        cfg, master = self.cfg, self.dist.master
        tokens_per_step = cfg.batch_size * self.seq_len * cfg.grad_accum
        signals = StopSignals()
        start_time = time.time()
        try:
            if cfg.val_every and self.step == 0:
                self._report_val()
            window_start, window_steps = time.perf_counter(), 0
            while self.step < self.total_steps:
                loss, norm = self.train_step(learning_rate(cfg, self.step, self.total_steps))
                self.step += 1
                window_steps += 1
                self.counters["tokens"] += tokens_per_step
                last = self.step == self.total_steps
                due = {name: every > 0 and self.step % every == 0 for name, every in (
                    ("log", cfg.log_every), ("val", cfg.val_every), ("sample", cfg.sample_every),
                    ("save", cfg.checkpoint_every))}
                if not (last or any(due.values())):
                    continue  # let the device run ahead: nothing is read back until a log step
                dt = self._sync_time(window_start, window_steps)
                self._report_step(loss.item(), norm.item(), dt, tokens_per_step, time.time() - start_time)
                self._check_divergence()
                if cfg.val_every and (due["val"] or last):
                    self._report_val()
                if due["sample"] and master:
                    text = self.sample()
                    print(f"sample at step {self.step}:\n{text}\n---", flush=True)
                    self.log({"step": self.step, "sample": text})
                if due["save"] and not last:
                    self.save()
                if self.dist.any(signals.requested is not None):
                    break
                window_start, window_steps = time.perf_counter(), 0
            if self.step < self.total_steps and master:
                print(f"stopped by {signals.requested or 'a signal on another rank'} at step {self.step}", flush=True)
            self.save()
        finally:
            signals.restore()
            self.metrics.close()
            self.dist.close()

    def _sync_time(self, window_start: float, window_steps: int) -> float:
        """Seconds per step over the steps since window_start, once the device has finished them."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()
        return (time.perf_counter() - window_start) / window_steps

    def _check_divergence(self) -> None:
        bad = int(self.bad_in_a_row)
        if bad >= self.cfg.max_bad_steps:
            raise BadInput(f"training diverged: {bad} consecutive steps with a non-finite loss or gradient "
                           f"(at step {self.step}); the last checkpoint on disk is the last good one; try a lower -l")

    def _report_step(self, loss, norm, dt, tokens_per_step, elapsed) -> None:
        if not self.dist.master:
            return
        lr = learning_rate(self.cfg, self.step - 1, self.total_steps)  # -l's rate at this step
        finite = math.isfinite(loss) and math.isfinite(norm)
        note = "" if finite else "  (non-finite: update skipped)"
        print(f"step {self.step:5d}/{self.total_steps} | loss {loss:.6f} | norm {norm:.4f} | lr {lr:.2e} | "
              f"{dt * 1000:.1f} ms | {tokens_per_step / dt:,.0f} tok/s{note}", flush=True)
        self.results.update(last_train_loss=loss, last_train_step=self.step)
        self.log({"step": self.step, "train_loss": loss, "lr": lr, "grad_norm": norm, "ms_per_step": dt * 1000,
                  "tokens_per_s": tokens_per_step / dt, "tokens": self.counters["tokens"], "time": elapsed})

    def _report_val(self) -> None:
        loss, bits_per_byte = self.val_loss()
        if not self.dist.master:
            return
        record = {"step": self.step, "val_loss": loss, "tokens": self.counters["tokens"]}
        if bits_per_byte is not None:
            record["val_bits_per_byte"] = bits_per_byte
        bpb = "" if bits_per_byte is None else f" | val bits per byte {bits_per_byte:.6f}"
        print(f"step {self.step:5d}/{self.total_steps} | val loss {loss:.6f}{bpb}", flush=True)
        self.log(record)
        self.results.update(last_val_loss=loss, last_val_step=self.step, last_val_bits_per_byte=bits_per_byte)
        if math.isfinite(loss) and loss < self.results.get("best_val_loss", math.inf):
            self.results.update(best_val_loss=loss, best_val_step=self.step)
            if self.retention:
                self.save_best()


def train(cfg: TrainConfig) -> None:
    Trainer(cfg).run()
