"""The training loop: one loop for CPU, CUDA and torchrun (DDP).

    model file -> GPT -> [batch -> loss -> backward -> clip -> AdamW] x steps -> checkpoint

A step takes `grad_accum` micro-batches; the global batch of a step is -b sequences of -t tokens
(times grad_accum), split evenly over the ranks when run under torchrun, so the same flags give the
same losses on 1 or N processes. Speed switches (bf16 autocast, the fused output-layer loss,
torch.compile) live inside this loop, each with the plain PyTorch path as fallback.

Checkpoints (-c) are llm.c model files with our training-state trailer (see formats.py): the
weights, AdamW moments, step, data position and RNG state, written atomically by rank 0. Starting
from a checkpoint resumes exactly; -n always counts steps from the start of the run, so the same
command resumes where an interrupted run would have gone.
"""
import contextlib
import json
import math
import os
import signal
import sys
import time
import uuid
from dataclasses import asdict

import torch
import torch.distributed as dist

from .config import COMPILE_AUTO_MIN_STEPS, GPTConfig, TrainConfig
from .data import TokenLoader
from .errors import BadInput
from .formats import ModelFile, TrainingState, atomic_write, read_model, remove_stale_temp_files, write_model
from .cuda_graph import CUDAGraphStep
from .model import GPT


# ----------------------------------------------------------------------------- set-up

class Distributed:
    """Where this process sits: rank, world size, device. One process without torchrun."""

    def __init__(self, device_flag: str):
        env = os.environ
        self.world = int(env.get("WORLD_SIZE", "1"))
        self.rank = int(env.get("RANK", "0"))
        self.local_rank = int(env.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled:
            missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "RANK") if v not in env]
            if missing:
                raise BadInput(f"WORLD_SIZE={self.world} but {', '.join(missing)} not set: start with torchrun")
        self.device = pick_device(device_flag, self.local_rank if self.enabled else None)
        if self.enabled:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend=backend)
        self.master = self.rank == 0

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Average a scalar tensor over the ranks (identity on one process)."""
        if self.enabled:
            value = value.clone()
            dist.all_reduce(value)  # sum (gloo has no average)
            value /= self.world
        return value

    def any(self, flag: bool) -> bool:
        """True when `flag` is true on any rank (all ranks must stop together)."""
        if not self.enabled:
            return flag
        value = torch.tensor(float(flag), device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def pick_device(flag: str, local_rank: int | None = None) -> torch.device:
    if flag == "auto":
        flag = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(flag)
    except RuntimeError:
        raise BadInput(f"--device: unknown device '{flag}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"--device {flag}: CUDA is not available on this machine")
        if local_rank is not None and device.index is None:
            device = torch.device("cuda", local_rank)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise BadInput(f"--device {flag}: no CUDA device {device.index}, this machine has {count} "
                           f"(under torchrun, start at most {count} processes per node)")
    elif device.type != "cpu":
        raise BadInput(f"--device: unsupported device '{flag}' (use auto, cpu, cuda or cuda:N)")
    return device


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(flag: str, device: torch.device) -> str:
    """'fp32' or 'bf16' (autocast). auto: bf16 on CUDA with bf16 support and on CPUs with native bf16
    instructions, fp32 elsewhere."""
    if flag == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if flag == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        print("note: this CPU has no native bf16; --precision bf16 will be emulated and slow", file=sys.stderr)
    return flag


def select_head_loss(flag: str, device: torch.device):
    """The output layer + loss implementation for --head-loss. auto: the Triton kernel on CUDA when
    triton imports, else the chunked PyTorch version; plain: the reference formulation."""
    from .kernels.fused_ce import fused_head_loss
    from .model import plain_head_loss

    if flag == "plain":
        return plain_head_loss
    if flag == "chunked" or (flag == "auto" and device.type != "cuda"):
        return fused_head_loss
    if device.type != "cuda":
        raise BadInput("--head-loss triton needs a CUDA device (use auto, chunked or plain)")
    try:
        from .kernels.triton_ce import triton_head_loss
    except ImportError:
        if flag == "triton":
            raise BadInput("--head-loss triton: the triton package is not installed") from None
        return fused_head_loss
    return triton_head_loss


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        # no cast cache: a CUDA graph cannot record it, and each weight is cast once per step anyway
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def make_optimizer(model: GPT, cfg: TrainConfig, capturable: bool = False) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only (GPT-2 practice). Fused (one kernel
    per update, on CPU and CUDA), which also lets train_step skip a bad update on the device.
    capturable (CUDA): the step count and the learning rate live on the device, so a CUDA graph
    can record the update; set the rate with set_learning_rate."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    lr = torch.tensor(cfg.learning_rate, device=params[0].device) if capturable else cfg.learning_rate
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True,
                             capturable=capturable)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's rate: in place where it is a device tensor (capturable), so no step waits."""
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def learning_rate(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """LR for 0-based `step`: linear warmup, then constant or decay to min_lr_ratio * lr at the end."""
    peak = cfg.learning_rate
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "none":
        return peak
    progress = (step - cfg.warmup_steps) / max(1, total_steps - 1 - cfg.warmup_steps)
    progress = min(1.0, progress)
    floor = peak * cfg.min_lr_ratio
    if cfg.lr_decay == "cosine":
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak - (peak - floor) * progress  # linear


# ----------------------------------------------------------------------------- checkpoints

def state_meta(cfg: TrainConfig, config: GPTConfig, run_id: str, step: int, loader: TokenLoader,
               counters: dict, world: int, seq_len: int) -> dict:
    return {
        "format": "tinystories-train-state",
        "run_id": run_id,
        "step": step,
        "data_position": loader.position,
        "train_tokens_file": os.path.basename(cfg.train_tokens),
        "model_config": asdict(config),
        "batch_size": cfg.batch_size,
        "seq_len": seq_len,
        "grad_accum": cfg.grad_accum,
        "world_size": world,
        "counters": counters,
    }


def save_checkpoint(path: str, model: GPT, optimizer: torch.optim.AdamW, meta: dict) -> None:
    tensors = {}
    for name, p in model.named_parameters():
        moments = optimizer.state.get(p, {})
        if "exp_avg" in moments:
            tensors[f"adam_m.{name}"] = moments["exp_avg"].detach().float().cpu().numpy()
            tensors[f"adam_v.{name}"] = moments["exp_avg_sq"].detach().float().cpu().numpy()
    tensors["torch_rng"] = torch.get_rng_state().numpy()
    write_model(path, model.config, model.llmc_params(), TrainingState(meta, tensors))


def restore_optimizer(optimizer: torch.optim.AdamW, model: GPT, state: TrainingState, path: str) -> None:
    """Put the AdamW moments and step count of a checkpoint back into `optimizer`."""
    step = float(state.meta["step"])
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    saved = {}
    for name, p in model.named_parameters():
        m, v = state.tensors.get(f"adam_m.{name}"), state.tensors.get(f"adam_v.{name}")
        if m is None or v is None:
            if step == 0:
                continue
            raise BadInput(f"{path}: training state lacks the AdamW moments of {name}")
        if tuple(m.shape) != tuple(p.shape) or tuple(v.shape) != tuple(p.shape):
            raise BadInput(f"{path}: training state moments of {name} have the wrong shape")
        saved[index[id(p)]] = {"step": torch.tensor(step), "exp_avg": torch.from_numpy(m.copy()),
                               "exp_avg_sq": torch.from_numpy(v.copy())}
    full = optimizer.state_dict()
    full["state"] = saved
    optimizer.load_state_dict(full)


def same_file(a: str | None, b: str | None) -> bool:
    return bool(a and b) and os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def check_resumable(model_file: ModelFile, path: str) -> dict:
    """The checkpoint's metadata, after checking that it belongs to this model file."""
    meta = model_file.state.meta
    if meta.get("format") != "tinystories-train-state":
        raise BadInput(f"{path}: training state has an unknown format {meta.get('format')!r}")
    if meta.get("model_config") != asdict(model_file.config):
        raise BadInput(f"{path}: training state belongs to another model config ({meta.get('model_config')})")
    for key in ("run_id", "step", "data_position"):
        if key not in meta:
            raise BadInput(f"{path}: training state lacks '{key}'")
    if not isinstance(meta["step"], int) or meta["step"] < 0 or not isinstance(meta["data_position"], int):
        raise BadInput(f"{path}: training state has a bad step or data position")
    return meta


# ----------------------------------------------------------------------------- metrics log

class MetricsLog:
    """JSON lines, one record per logged step. Each record is one write() of a whole line, so a
    kill leaves at most a torn last line, which readers skip. On resume, records past the resumed
    step (from the interrupted tail of the earlier run) are dropped, atomically."""

    def __init__(self, path: str | None, resume_step: int | None):
        self.path = path
        if path is None:
            return
        if resume_step is not None and os.path.exists(path):
            self._truncate_after(resume_step)
        elif os.path.exists(path):
            with atomic_write(path):  # a fresh run starts a fresh log
                pass
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise BadInput(f"{path}: cannot write metrics log: {e.strerror}") from None

    def _truncate_after(self, step: int) -> None:
        with open(self.path, "rb") as f:
            lines = f.read().split(b"\n")
        kept = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + b"\n")
            except (ValueError, KeyError, TypeError):
                continue  # torn or foreign line
        with atomic_write(self.path) as f:
            f.write(b"".join(kept))

    def write(self, record: dict) -> None:
        if self.path is not None:
            os.write(self.fd, (json.dumps(record) + "\n").encode())

    def close(self) -> None:
        if self.path is not None:
            os.close(self.fd)


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


# ----------------------------------------------------------------------------- the loop

class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.dist = Distributed(cfg.device)
        self.device = self.dist.device
        model_file = read_model(cfg.model)
        self.config = model_file.config
        self.seq_len = cfg.seq_len or self.config.block_size
        self._check_flags()
        if self.dist.master:  # temp files of saves cut short by a kill
            for path in filter(None, (cfg.checkpoint, self._metrics_path())):
                remove_stale_temp_files(path)
        torch.manual_seed(cfg.seed)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.model = GPT.from_file(model_file).to(self.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.model.head_loss = select_head_loss(cfg.head_loss, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.use_cuda_graphs = self._use_cuda_graphs()
        self.optimizer = make_optimizer(self.model, cfg, capturable=self.use_cuda_graphs)
        local_batch = cfg.batch_size // self.dist.world
        self.train_loader = TokenLoader(cfg.train_tokens, local_batch, self.seq_len, self.dist.rank,
                                        self.dist.world, self.config.vocab_size)
        self.val_loader = (TokenLoader(cfg.val_tokens, local_batch, self.seq_len, self.dist.rank,
                                       self.dist.world, self.config.vocab_size) if cfg.val_every else None)
        self.step, self.run_id = 0, uuid.uuid4().hex
        self.counters = {"skipped_steps": 0, "tokens": 0}
        resumed = model_file.state is not None
        if resumed:
            self._resume(model_file)
        # divergence guard, kept on the device so a step never waits for it
        self.skipped_steps = torch.tensor(self.counters["skipped_steps"], device=self.device)
        self.bad_in_a_row = torch.zeros((), dtype=torch.long, device=self.device)
        self.total_steps = self._total_steps()
        self.forward_model = self._wrap_model()
        self.graph_step = CUDAGraphStep(self._device_step) if self.use_cuda_graphs else None
        self.metrics = MetricsLog(self._metrics_path() if self.dist.master else None,
                                  self.step if resumed else None)
        self._announce(resumed)

    # -- set-up helpers

    def _check_flags(self) -> None:
        cfg, T, block = self.cfg, self.seq_len, self.config.block_size
        if T > block:
            raise BadInput(f"-t/--seq-len {T} exceeds the model's block size {block} ({cfg.model})")
        if cfg.batch_size % self.dist.world:
            raise BadInput(f"-b/--batch-size {cfg.batch_size} is not divisible by the world size {self.dist.world}")
        if cfg.checkpoint:
            folder = os.path.dirname(os.path.abspath(cfg.checkpoint))
            if not os.path.isdir(folder):
                raise BadInput(f"-c {cfg.checkpoint}: folder {folder} does not exist")
            if not os.access(folder, os.W_OK):
                raise BadInput(f"-c {cfg.checkpoint}: folder {folder} is not writable")
            if os.path.isdir(cfg.checkpoint):
                raise BadInput(f"-c {cfg.checkpoint}: is a folder, expected a file name")
        rules = {"-l/--lr": (cfg.learning_rate, 0 < cfg.learning_rate < math.inf, "positive and finite"),
                 "--eps": (cfg.eps, 0 < cfg.eps < math.inf, "positive and finite"),
                 "--beta1": (cfg.beta1, 0 <= cfg.beta1 < 1, "in [0, 1)"),
                 "--beta2": (cfg.beta2, 0 <= cfg.beta2 < 1, "in [0, 1)")}
        for flag, (value, ok, rule) in rules.items():
            if not ok:
                raise BadInput(f"{flag} {value}: must be {rule}")
        paths = {"-e": cfg.model, "-i": cfg.train_tokens, "-j": cfg.val_tokens, "-c": cfg.checkpoint,
                 "--metrics": self._metrics_path()}
        for output, source in (("-c", "-i"), ("-c", "-j"), ("--metrics", "-e"), ("--metrics", "-i"),
                               ("--metrics", "-j"), ("--metrics", "-c")):
            if same_file(paths[output], paths[source]):
                raise BadInput(f"{output} {paths[output]}: is the same file as {source}, which it would overwrite")

    def _resume(self, model_file: ModelFile) -> None:
        meta = check_resumable(model_file, self.cfg.model)
        restore_optimizer(self.optimizer, self.model, model_file.state, self.cfg.model)
        self.step, self.run_id = meta["step"], meta["run_id"]
        self.counters.update(meta.get("counters", {}))
        self.train_loader.position = meta["data_position"]
        rng = model_file.state.tensors.get("torch_rng")
        if rng is not None:
            try:
                torch.set_rng_state(torch.from_numpy(rng.copy()))
            except (TypeError, RuntimeError):  # wrong dtype or size
                raise BadInput(f"{self.cfg.model}: training state holds a malformed torch_rng") from None
        changed = [k for k, now in (("batch_size", self.cfg.batch_size), ("seq_len", self.seq_len),
                                    ("grad_accum", self.cfg.grad_accum)) if meta.get(k) != now]
        if changed and self.dist.master:
            print(f"note: {', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'} from the checkpoint's; resuming at its data position "
                  f"anyway (losses will not match an uninterrupted run)", file=sys.stderr)

    def _use_cuda_graphs(self) -> bool:
        """--cuda-graphs: auto = on for one CUDA process (graphs and DDP's collectives are not combined here)."""
        flag, cuda = self.cfg.cuda_graphs, self.device.type == "cuda"
        if flag == "on" and not cuda:
            raise BadInput(f"--cuda-graphs on needs a CUDA device, this run uses {self.device}")
        if flag == "on" and self.dist.enabled:
            raise BadInput("--cuda-graphs on is not supported under torchrun with several processes (use auto or off)")
        return flag == "on" or (flag == "auto" and cuda and not self.dist.enabled)

    def _total_steps(self) -> int:
        if self.cfg.max_steps > 0:
            return self.cfg.max_steps
        return max(1, self.train_loader.batches_per_epoch() // self.cfg.grad_accum)

    def _wrap_model(self):
        model = self.model
        # auto looks at the whole run, not the steps left, so a resumed run computes as it began
        self.compiled = self.cfg.compile == "on" or (
            self.cfg.compile == "auto" and self.total_steps >= COMPILE_AUTO_MIN_STEPS)
        if self.compiled:
            model = torch.compile(model)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel
            model = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return model

    def _metrics_path(self) -> str | None:
        if self.cfg.metrics:
            return self.cfg.metrics
        return self.cfg.checkpoint + ".metrics.jsonl" if self.cfg.checkpoint else None

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
        return x, y

    def train_step(self, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over grad_accum micro-batches. Returns (mean loss, grad norm) as device
        tensors, without waiting for the device. When either is non-finite, fused AdamW skips the
        update on the device (its found_inf input), so a bad step never reaches the weights."""
        set_learning_rate(self.optimizer, lr)
        batches = [self._batch(self.train_loader) for _ in range(self.cfg.grad_accum)]
        if self.graph_step is None:
            return self._device_step(batches)
        try:
            return self.graph_step(batches)
        except Exception as e:  # a capture failure: run eagerly from here on, unless graphs were asked for
            if self.cfg.cuda_graphs == "on":
                raise BadInput(f"--cuda-graphs on: capturing the training step failed: {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}") from None
            print(f"note: CUDA graph capture failed ({type(e).__name__}); continuing without graphs", file=sys.stderr)
            self.graph_step = None
            self.optimizer.zero_grad(set_to_none=True)
            return self._device_step(batches)

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
                loss.backward()
            total += loss.detach()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        total = self.dist.mean(total)
        finite = torch.isfinite(total) & torch.isfinite(norm)
        self.optimizer.found_inf = (~finite).float()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_in_a_row.copy_(torch.where(finite, 0, self.bad_in_a_row + 1))
        self.skipped_steps += (~finite).long()
        return total, norm

    @torch.no_grad()
    def val_loss(self) -> float:
        self.val_loader.position = 0
        self.model.eval()
        total = torch.zeros((), device=self.device)
        batches = min(self.cfg.val_batches, self.val_loader.batches_per_epoch())
        for _ in range(batches):
            x, y = self._batch(self.val_loader)
            with autocast(self.device, self.precision):
                total += self.model(x, y).float()
        self.model.train()
        return self.dist.mean(total / batches).item()

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
            meta = state_meta(self.cfg, self.config, self.run_id, self.step, self.train_loader, self.counters,
                              self.dist.world, self.seq_len)
            save_checkpoint(self.cfg.checkpoint, self.model, self.optimizer, meta)
            print(f"saved checkpoint {self.cfg.checkpoint} at step {self.step}", flush=True)
        self.dist.barrier()

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
                    print(f"sample at step {self.step}:\n{self.sample()}\n---", flush=True)
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
        return (time.perf_counter() - window_start) / window_steps

    def _check_divergence(self) -> None:
        bad = int(self.bad_in_a_row)
        if bad >= self.cfg.max_bad_steps:
            raise BadInput(f"training diverged: {bad} consecutive steps with a non-finite loss or gradient "
                           f"(at step {self.step}); the last checkpoint on disk is the last good one; try a lower -l")

    def _report_step(self, loss, norm, dt, tokens_per_step, elapsed) -> None:
        if not self.dist.master:
            return
        lr = float(self.optimizer.param_groups[0]["lr"])
        finite = math.isfinite(loss) and math.isfinite(norm)
        note = "" if finite else "  (non-finite: update skipped)"
        print(f"step {self.step:5d}/{self.total_steps} | loss {loss:.6f} | norm {norm:.4f} | lr {lr:.2e} | "
              f"{dt * 1000:.1f} ms | {tokens_per_step / dt:,.0f} tok/s{note}", flush=True)
        self.log({"step": self.step, "train_loss": loss, "lr": lr, "grad_norm": norm, "ms_per_step": dt * 1000,
                  "tokens_per_s": tokens_per_step / dt, "tokens": self.counters["tokens"], "time": elapsed})

    def _report_val(self) -> None:
        loss = self.val_loss()
        if self.dist.master:
            print(f"step {self.step:5d}/{self.total_steps} | val loss {loss:.6f}", flush=True)
            self.log({"step": self.step, "val_loss": loss, "tokens": self.counters["tokens"]})


def train(cfg: TrainConfig) -> None:
    Trainer(cfg).run()
