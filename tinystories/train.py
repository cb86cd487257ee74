"""The training loop: one loop for CPU, CUDA and torchrun (DDP).

    model file -> GPT -> [batch -> TrainStep (loss, backward, clip, optimizer)] x steps -> checkpoint

The Trainer composes small parts and runs the loop; each part is a module of its own:
    Runtime     runtime.py     how the run computes (process group, device, precision, head loss,
                               torch.compile, CUDA graphs), decided once, in order
    TrainStep   step.py        the device work of a step, and the compile and CUDA-graph fall backs
    RunState    checkpoint.py  everything a checkpoint restores besides weights and optimizer state
    optimizer   optim.py       --optimizer's parts (registry.py) and the LR schedule
    loaders     loader.py      (x, y) batches from the token files, this rank's share of each
    sinks       metrics.py     the console, the JSON-lines log, TensorBoard, W&B
    retention   retention.py   the --keep step files and the best checkpoint

A step takes `grad_accum` micro-batches; the global batch of a step is -b sequences of -t tokens
(times grad_accum), split evenly over the ranks when run under torchrun, so the same flags give the
same losses on 1 or N processes. Checkpoints (-c) are written atomically by rank 0, never from
non-finite weights, and a periodic save is skipped while the latest step was bad. Starting from a
checkpoint resumes exactly; -n always counts steps from the start of the run, so the same command
resumes where an interrupted run would have gone.
"""
import math
import os
import signal
import sys
import time
from dataclasses import asdict

import torch

from . import checkpoint, evaluate, metrics, tokenizer
from .checkpoint import RunState
from .config import TrainConfig
from .errors import BadInput
from .formats import read_tokens, remove_stale_temp_files
from .generate import sample_story
from .loader import TokenLoader
from .metrics import Console
from .model import read_gpt
from .optim import learning_rate, make_optimizer
from .outputs import OutputLock
from .retention import Retention
from .runtime import training_runtime
from .step import TrainStep


class StopSignals:
    """First SIGINT/SIGTERM/SIGHUP (the terminal or the ssh session closed; not when ignored, as
    under nohup): finish the current step, save, exit cleanly. Second SIGINT: exit now (every file
    is written atomically, so nothing is corrupted)."""

    def __init__(self):
        self.requested = None
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
                          if signal.getsignal(s) is not signal.SIG_IGN}

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            print("\nsecond interrupt: exiting now", file=sys.stderr, flush=True)
            os._exit(130)
        self.requested = signal.Signals(signum)
        print(f"\n{self.requested.name}: stopping after this step (or this validation batch)", file=sys.stderr,
              flush=True)

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def check_step_size(cfg: TrainConfig, train_tokens: int, seq_len: int) -> None:
    """BadInput when one step (-b sequences of -t tokens, --grad-accum times) needs more tokens than
    the whole train file holds: its micro-batches would be built before the first step."""
    tokens_per_step = cfg.batch_size * seq_len * cfg.grad_accum
    if cfg.grad_accum > 1 and tokens_per_step > train_tokens - 1:  # one micro-batch too many: the loader says so
        raise BadInput(f"--grad-accum {cfg.grad_accum}: a step of -b {cfg.batch_size} x -t {seq_len} x {cfg.grad_accum} "
                       f"= {tokens_per_step:,} tokens is more than the train file -i {cfg.train_tokens} holds "
                       f"({train_tokens:,}); lower --grad-accum or -b")


def run_length(cfg: TrainConfig, train_tokens: int, seq_len: int) -> int:
    """The run's steps: -n, or one epoch of the train file (-1)."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, (train_tokens - 1) // (cfg.batch_size * seq_len) // cfg.grad_accum)


class Trainer:
    """One training run, composed in __init__ from a TrainConfig; run() is the loop. While it lives,
    rank 0 holds -c's lock (outputs.OutputLock): one run per checkpoint."""

    def __init__(self, cfg: TrainConfig):
        self.lock = None
        try:
            self._compose(cfg)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Give up -c's lock (a killed run's is released by the kernel)."""
        if self.lock is not None:
            self.lock.release()

    def _compose(self, cfg: TrainConfig) -> None:
        cfg.validate()
        metrics.check_extras(cfg)
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.model, model_file = read_gpt(cfg.model)
        config = self.model.config
        self.seq_len = T = cfg.seq_len or config.block_size
        if T > config.block_size:
            raise BadInput(f"-t/--seq-len {T} exceeds the model's block size {config.block_size} ({cfg.model})")
        if cfg.keep and not cfg.checkpoint:
            raise BadInput(f"--keep {cfg.keep}: needs -c, the checkpoint whose saves it keeps")
        self.tokenizer = tokenizer.for_training(cfg.train_tokens, cfg.val_tokens if cfg.val_every else None,
                                                cfg.model, model_file)
        train_tokens = read_tokens(cfg.train_tokens, config.vocab_size)
        self.total_steps = run_length(cfg, train_tokens.size, T)
        check_step_size(cfg, train_tokens.size, T)
        self.runtime = rt = training_runtime(cfg, self.total_steps)
        self.model.head_loss = rt.head_loss.load()
        self.model.to(rt.device)
        self.optimizer = make_optimizer(self.model, cfg, capturable=rt.cuda_graphs)
        self.setup = checkpoint.training_setup(cfg, T, rt.dist.world, train_tokens.size)
        resumed = model_file.state is not None
        self.state = checkpoint.restore(model_file, cfg.model, self.model, self.optimizer, self.setup) if resumed else RunState()
        self.complete = resumed and self.state.step >= self.total_steps  # the same command again, once it finished
        if self.complete:
            return  # run() says so, and writes nothing
        self._check_outputs()
        B = cfg.batch_size // rt.dist.world
        self.train_loader = TokenLoader(cfg.train_tokens, B, T, rt.dist.rank, rt.dist.world, tokens=train_tokens)
        self.train_loader.position = self.state.data_position
        self.val_loader = TokenLoader(cfg.val_tokens, B, T, rt.dist.rank, rt.dist.world, config.vocab_size) if cfg.val_every else None
        self.val_nats = self._val_scoring() if cfg.val_every else None
        self.train_step = TrainStep(self.model, self.optimizer, rt, cfg.grad_accum, cfg.grad_clip,
                                    self.state.skipped_steps, self.state.loss_scale)
        self.console = Console(self.total_steps, enabled=rt.dist.master)
        self.sinks = (metrics.open_sinks(cfg, self.console, self.metrics_path, self.state.run_id,
                                         self.state.step if resumed else None, {**asdict(cfg), "model_config": config.record()})
                      if rt.dist.master else metrics.Sinks([]))
        self.console.started(cfg, rt, config, T, self.train_loader, self.tokenizer.name)
        if resumed:
            self.console.resumed(self.state, checkpoint.changed_setup(model_file, self.setup),
                                 checkpoint.changed_setup(model_file, self.setup, checkpoint.SCHEDULE_KEYS))
        self.saved_step = None  # the step of this run's last save to -c
        self.last_batch = None  # the latest step's (last) micro-batch

    def _val_scoring(self):
        """The function that scores --val-batches all (evaluate.window_nats, compiled when the run compiles
        and its validations score enough tokens in all); BadInput for a --val-max-tokens without it, or
        shorter than a window."""
        cfg, T = self.cfg, self.seq_len
        if cfg.val_max_tokens and cfg.val_batches != "all":
            raise BadInput(f"--val-max-tokens {cfg.val_max_tokens}: needs --val-batches all (it bounds the tokens "
                           f"that scores)")
        if cfg.val_batches != "all":
            return None
        if 0 < cfg.val_max_tokens < T + 1:
            raise BadInput(f"--val-max-tokens {cfg.val_max_tokens}: less than one window of -t + 1 = {T + 1} tokens")
        per_validation = evaluate.prefix(self.val_loader.tokens, cfg.val_max_tokens, T).size
        validations = self.total_steps // cfg.val_every + 2  # step 0, every -v steps, the last
        return evaluate.scoring_function("auto" if self.runtime.compile else "off", per_validation * validations,
                                         self.runtime.device)

    def _check_outputs(self) -> None:
        """-c and the metrics log can be written without overwriting an input or another run's files;
        remove the temp files of saves that a kill cut short."""
        cfg = self.cfg
        self.metrics_path = metrics.metrics_path(cfg.metrics, cfg.checkpoint)
        self.retention = Retention(cfg.checkpoint, cfg.keep, self.state.run_id) if cfg.checkpoint else None
        derived = self.retention.paths(self.total_steps, cfg.val_every > 0) if self.retention else []
        checkpoint.check_output_paths(cfg, self.metrics_path, derived)
        if cfg.checkpoint and self.runtime.dist.master:
            self.lock = OutputLock(cfg.checkpoint, "-c")
        if cfg.checkpoint and not cfg.overwrite:
            checkpoint.check_not_another_run(cfg.checkpoint, self.state.run_id)
        if cfg.metrics and self.state.step == 0 and not cfg.overwrite:
            metrics.check_fresh_log(cfg.metrics)
        if self.runtime.dist.master:
            for path in filter(None, (cfg.checkpoint, self.metrics_path)):
                remove_stale_temp_files(path)
            if self.retention:
                self.retention.remove_stale_temp_files()

    # -- the loop

    def run(self) -> signal.Signals | None:
        """Train to the last step, or until a signal; returns the signal that stopped the run early, if any."""
        cfg, state, dist = self.cfg, self.state, self.runtime.dist
        if self.complete:
            if dist.master:
                print(f"-e {cfg.model}: the run is complete (at step {state.step}; this command trains to step "
                      f"{self.total_steps}); nothing to train, nothing written")
            dist.close()
            return None
        tokens_per_step = cfg.batch_size * self.seq_len * cfg.grad_accum
        signals = StopSignals()
        start_time = time.time()
        try:
            interrupted = cfg.val_every and state.step == 0 and not self.validate(signals)
            window_start, window_steps = time.perf_counter(), 0
            while not interrupted and state.step < self.total_steps:
                loss, norm = self.train_step(self.next_batches(), learning_rate(cfg, state.step, self.total_steps))
                state.step += 1
                state.tokens += tokens_per_step
                window_steps += 1
                last = state.step == self.total_steps
                due = {name: every > 0 and state.step % every == 0 for name, every in (
                    ("log", cfg.log_every), ("val", cfg.val_every), ("sample", cfg.sample_every),
                    ("save", cfg.checkpoint_every))}
                if not (last or any(due.values())):
                    continue  # let the device run ahead: nothing is read back until a log step
                self.runtime.synchronize()
                seconds = (time.perf_counter() - window_start) / window_steps
                state.results.update(last_train_loss=loss.item(), last_train_step=state.step)
                self.sinks.write({"step": state.step, "train_loss": loss.item(),
                                  "lr": learning_rate(cfg, state.step - 1, self.total_steps),  # -l's rate at this step
                                  "grad_norm": norm.item(), "ms_per_step": seconds * 1000, "tokens_per_s": tokens_per_step / seconds,
                                  "tokens": state.tokens, "time": time.time() - start_time})
                self._check_divergence()
                if cfg.val_every and (due["val"] or last) and not self.validate(signals):
                    break  # a signal during validation: save now
                if due["sample"] and dist.master:
                    self.sinks.write({"step": state.step, "sample": sample_story(
                        self.model, self.tokenizer, cfg.seed + state.step, cfg.sample_length)})
                if due["save"] and not last:
                    self.save()
                if dist.any(signals.requested is not None):
                    break
                window_start, window_steps = time.perf_counter(), 0
            stopped = state.step < self.total_steps
            if stopped:
                self.console.stopped(signals.requested.name if signals.requested else "a signal on another rank", state.step)
            self.save(final=True)
            return (signals.requested or signal.SIGTERM) if stopped else None
        finally:
            signals.restore()
            self.sinks.close()
            dist.close()
            self.release()

    def next_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of the next step's grad_accum micro-batches, on the device."""
        batches = [self.runtime.to_device(self.train_loader.next_batch()) for _ in range(self.cfg.grad_accum)]
        self.last_batch = batches[-1]  # what a save checks the weights on
        return batches

    def _check_divergence(self) -> None:
        bad = int(self.train_step.bad_in_a_row)
        if bad >= self.cfg.max_bad_steps:
            if not self.cfg.checkpoint:
                kept = "no checkpoint is written (no -c)"
            elif self.saved_step is None:
                kept = f"{self.cfg.checkpoint} is as it was before this run"
            else:
                kept = f"{self.cfg.checkpoint} holds step {self.saved_step}, saved before the first of them"
            raise BadInput(f"training diverged: {bad} consecutive steps with a non-finite loss or gradient "
                           f"(at step {self.state.step}); {kept}; try a lower -l")

    # -- validation and saves

    def validate(self, signals: StopSignals) -> bool:
        """Score the val file and record it; False, recording nothing, when a signal (on any rank) cut it short."""
        dist = self.runtime.dist
        figures = evaluate.val_loss(self.model, self.val_loader, self.cfg.val_batches, self.runtime, self.tokenizer,
                                    self.cfg.val_max_tokens, self.val_nats,
                                    stop=lambda: dist.any(signals.requested is not None))
        if figures is None:
            return False
        loss, bits_per_byte = figures
        if not dist.master:
            return True
        state = self.state
        record = {"step": state.step, "val_loss": loss, "tokens": state.tokens}
        if bits_per_byte is not None:
            record["val_bits_per_byte"] = bits_per_byte
        self.sinks.write(record)
        state.results.update(last_val_loss=loss, last_val_step=state.step, last_val_bits_per_byte=bits_per_byte)
        if math.isfinite(loss) and loss < state.results.get("best_val_loss", math.inf):
            state.results.update(best_val_loss=loss, best_val_step=state.step)
            if self.retention:
                self._write(self.retention.best_path)
                self.console.saved_best(self.retention.best_path, loss)
        return True

    def save(self, final: bool = False) -> None:
        """Write -c (rank 0), unless the latest step was bad or the weights now give a non-finite loss on
        its batch: a diverging run never replaces a good checkpoint. Skipped with a note, or for the
        final save with BadInput (the run did not end with a checkpoint)."""
        if self.cfg.checkpoint and self.runtime.dist.master:
            bad = int(self.train_step.bad_in_a_row) or (self.state.step > 0 and not self.train_step.finite_loss(self.last_batch))
            if bad and final:
                raise BadInput(f"{self.cfg.checkpoint}: not saved at step {self.state.step}: the weights give a non-finite "
                               f"loss (a diverged run); the file on disk is unchanged; try a lower -l")
            if bad:
                self.console.not_saved(self.cfg.checkpoint, self.state.step)
            else:
                self._write(self.cfg.checkpoint)
                self.saved_step = self.state.step
                self.retention.after_save(self.state.step)
                self.console.saved(self.cfg.checkpoint, self.state.step)
        self.runtime.dist.barrier()

    def _write(self, path: str) -> None:
        """Save the run as it stands to `path` (checkpoint.save: atomic, never non-finite weights)."""
        self.state.skipped_steps = int(self.train_step.skipped_steps)
        self.state.loss_scale = self.train_step.loss_scale()
        self.state.data_position = self.train_loader.position
        checkpoint.save(path, self.model, self.optimizer, self.state, self.setup, self.tokenizer)


def train(cfg: TrainConfig) -> signal.Signals | None:
    """Run ./train; returns the signal that stopped it before its last step, if any."""
    return Trainer(cfg).run()
