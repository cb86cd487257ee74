"""Configuration: the model's shape (GPTConfig), a training run's settings (TrainConfig), the
settings of prepare_data.py and ./generate, and the defaults several modules share."""
import math
import os
from dataclasses import dataclass, field, fields

from . import llmc
from .errors import BadInput


INT32_MAX = 2**31 - 1  # an llm.c header holds each size in an int32
# create and import hold a model's weights about 4 times at their peak: as built, as the llm.c arrays,
# and twice as the file's bytes (formats.model_bytes, its tensors' bytes and their join)
WRITE_COPIES = 4


def physical_memory() -> int | None:
    """Bytes of memory on this machine, or None where the system does not tell."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no such sysconf name, or no os.sysconf (Windows)
        return None


def padded_vocab(vocab_size: int) -> int:
    """llm.c pads the embedding table to a multiple of 128 rows (50257 -> 50304) for fast matmuls."""
    return (vocab_size + 127) // 128 * 128


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 256  # max sequence length (llm.c: max_seq_len)
    vocab_size: int = 50257  # real tokens; the GPT-2 BPE vocabulary
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128  # channels, C

    @property
    def padded_vocab_size(self) -> int:
        return padded_vocab(self.vocab_size)

    def validate(self) -> None:
        """Raise ValueError naming the first impossible field: every size positive and, padded vocab
        included, within an llm.c header's int32."""
        limits = {"vocab_size": INT32_MAX // 128 * 128}  # so that the padded vocab fits too
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value, limit = getattr(self, name), limits.get(name, INT32_MAX)
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
            if value > limit:
                raise ValueError(f"{name} {value:,} is more than an llm.c header holds (at most {limit:,})")
        if self.n_embd % self.n_head:
            raise ValueError(f"channels ({self.n_embd}) must be divisible by heads ({self.n_head})")

    def check_fits_in_memory(self) -> None:
        """Raise ValueError when writing a model file of this shape needs more than this machine's
        memory: the fp32 weights held WRITE_COPIES times over. Asked before anything is allocated, so an
        absurd size is one line, not a crash or an out-of-memory kill."""
        size, have = 4 * self.num_parameters(), physical_memory()
        if have is not None and WRITE_COPIES * size > have:
            raise ValueError(f"{self.n_layer:,} layers of {self.n_embd:,} channels (vocab {self.vocab_size:,}, "
                             f"block {self.block_size:,}) are {self.num_parameters():,} parameters, {size / 2**30:,.1f} "
                             f"GiB in fp32, held {WRITE_COPIES} times over while the file is written: more than this "
                             f"machine's {have / 2**30:,.1f} GiB of memory")

    def num_parameters(self, padded: bool = True) -> int:
        """Values stored in an llm.c model file (padded=True) or used by the model (padded=False)."""
        stored = sum(math.prod(shape) for _, shape, _ in llmc.tensors(self))
        return stored if padded else stored - (self.padded_vocab_size - self.vocab_size) * self.n_embd


# --source hf: the TinyStories archive on the Hugging Face Hub, and its published size
HF_ARCHIVE_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories_all_data.tar.gz"
HF_ARCHIVE_SIZE = 1_608_001_638

COMPILE_AUTO_MIN_STEPS = 200  # --compile auto: below this, the compile start-up costs more than it saves


def flag(spelling: str, default, choices: tuple[str, ...] | None = None):
    """A TrainConfig field that ./train sets with the flag `spelling` ("-l/--lr": its short and long
    forms, as messages name it); `choices`, when given, are its only values."""
    return field(default=default, metadata={"flag": spelling, "choices": choices})


ON_OFF = ("auto", "on", "off")

# --recipe NAME: flag values (TrainConfig field: value) that stand in for the defaults; a config file
# and the command line still override each. Chosen by bench/bench_recipe.py (BENCHMARKS.md "Recipe").
RECIPES = {
    "fast": {"learning_rate": 0.001, "optimizer": "muon", "matrix_lr": 0.008, "muon_momentum": 0.9,
             "embed_lr": 0.004, "beta2": 0.99, "lr_decay": "wsd", "cooldown": 0.4},
}


@dataclass
class TrainConfig:
    """Every setting of a training run, each one a ./train flag: cli.py builds the parser from these
    fields (their flags, defaults and choices) and adds the help texts. validate() checks the values."""

    model: str = flag("-e/--model", "model.bin")  # model or checkpoint to start from
    checkpoint: str | None = flag("-c/--checkpoint", None)  # checkpoint output
    checkpoint_every: int = flag("-k/--checkpoint-every", 0)  # 0 = only at the end
    train_tokens: str = flag("-i/--train-tokens", "data/tinystories/TinyStories_train.bin")
    val_tokens: str = flag("-j/--val-tokens", "data/tinystories/TinyStories_val.bin")
    max_steps: int = flag("-n/--max-steps", -1)  # -1 = one epoch
    batch_size: int = flag("-b/--batch-size", 4)
    seq_len: int = flag("-t/--seq-len", 0)  # 0 = the model's block size
    learning_rate: float = flag("-l/--lr", 3e-4)
    val_every: int = flag("-v/--val-every", 20)
    sample_every: int = flag("-s/--sample-every", 20)
    sample_length: int = flag("-g/--sample-length", 64)
    val_batches: int | str = flag("--val-batches", 20)  # or "all": the whole val file (evaluate.py)
    device: str = flag("--device", "auto")
    precision: str = flag("--precision", "auto", ("auto", "fp32", "bf16", "fp16"))
    head_loss: str = flag("--head-loss", "auto", ("auto", "chunked", "triton", "plain"))
    compile: str = flag("--compile", "auto", ON_OFF)
    cuda_graphs: str = flag("--cuda-graphs", "auto", ON_OFF)
    deterministic: bool = flag("--deterministic", False)
    seed: int = flag("--seed", 1337)
    weight_decay: float = flag("--weight-decay", 0.0)
    beta1: float = flag("--beta1", 0.9)
    beta2: float = flag("--beta2", 0.95)
    eps: float = flag("--eps", 1e-8)
    warmup_steps: int = flag("--warmup", 0)
    lr_decay: str = flag("--lr-decay", "none", ("none", "cosine", "linear", "wsd"))
    min_lr_ratio: float = flag("--min-lr-ratio", 0.1)
    grad_clip: float = flag("--grad-clip", 1.0)
    grad_accum: int = flag("--grad-accum", 1)
    max_bad_steps: int = flag("--max-bad-steps", 10)
    log_every: int = flag("--log-every", 1)
    metrics: str | None = flag("--metrics", None)  # default: <checkpoint>.metrics.jsonl
    cooldown: float = flag("--cooldown", 0.2)  # --lr-decay wsd: the fraction of the steps that decays
    keep: int = flag("--keep", 0)  # also keep the N most recent <name>.step<k>.bin
    tensorboard: str | None = flag("--tensorboard", None)  # event file folder
    wandb: str | None = flag("--wandb", None)  # PROJECT or PROJECT/RUN
    config: str | None = flag("--config", None)  # the TOML file that supplied flag values
    optimizer: str = flag("--optimizer", "adamw", ("adamw", "muon"))  # muon: for the blocks' matrices
    embed_lr: float = flag("--embed-lr", 0.0)  # peak LR of the embeddings (= the head); 0 = -l
    matrix_lr: float = flag("--matrix-lr", 0.0)  # peak LR of the blocks' matrices; 0 = -l
    muon_momentum: float = flag("--muon-momentum", 0.95)
    recipe: str = flag("--recipe", "none", tuple(["none", *RECIPES]))  # a named set of the flags above

    def validate(self) -> None:
        """Raise BadInput naming the flag of the first value out of its range."""
        rules = [  # (field, whether its value is fine, what it must be)
            ("checkpoint_every", self.checkpoint_every >= 0, "0 or more"),
            ("max_steps", self.max_steps > 0 or self.max_steps == -1, "positive or -1 (one epoch)"),
            ("batch_size", self.batch_size > 0, "positive"),
            ("seq_len", self.seq_len >= 0, "0 or more"),
            ("learning_rate", 0 < self.learning_rate < math.inf, "positive and finite"),
            ("val_every", self.val_every >= 0, "0 or more"),
            ("sample_every", self.sample_every >= 0, "0 or more"),
            ("sample_length", self.sample_length > 0, "positive"),
            ("val_batches", self.val_batches == "all" or self.val_batches > 0, "positive or all"),
            ("weight_decay", self.weight_decay >= 0, "0 or more"),
            ("beta1", 0 <= self.beta1 < 1, "in [0, 1)"),
            ("beta2", 0 <= self.beta2 < 1, "in [0, 1)"),
            ("eps", 0 < self.eps < math.inf, "positive and finite"),
            ("warmup_steps", self.warmup_steps >= 0, "0 or more"),
            ("min_lr_ratio", self.min_lr_ratio >= 0, "0 or more"),
            ("grad_clip", self.grad_clip >= 0, "0 or more"),
            ("grad_accum", self.grad_accum > 0, "positive"),
            ("max_bad_steps", self.max_bad_steps > 0, "positive"),
            ("log_every", self.log_every > 0, "positive"),
            ("cooldown", 0 < self.cooldown <= 1, "in (0, 1]"),
            ("keep", self.keep >= 0, "0 or more"),
            ("embed_lr", 0 <= self.embed_lr < math.inf, "0 (= -l) or positive and finite"),
            ("matrix_lr", 0 <= self.matrix_lr < math.inf, "0 (= -l) or positive and finite"),
            ("muon_momentum", 0 <= self.muon_momentum < 1, "in [0, 1)"),
        ]
        settings = {f.name: f.metadata for f in fields(self)}
        rules += [(name, getattr(self, name) in meta["choices"], "one of " + ", ".join(meta["choices"]))
                  for name, meta in settings.items() if meta["choices"]]
        for name, ok, rule in rules:
            if not ok:
                raise BadInput(f"{settings[name]['flag']} {getattr(self, name)}: must be {rule}")


@dataclass
class PrepareConfig:
    """The settings of prepare_data.py; its flags, defaults and help are in cli.py."""

    source: str  # hf, synthetic or a local path
    val_source: str | None
    out_dir: str
    tokenizer_file: str
    cache_dir: str
    url: str
    sha256: str | None
    size: int | None
    workers: int
    synthetic_stories: int
    seed: int
    fallback_synthetic: bool


@dataclass
class GenerateConfig:
    """The settings of ./generate; its flags, defaults and help are in cli.py."""

    model: str
    tokens: int
    seed: int | None  # None: a fresh one, printed
    prompt: str
    temperature: float
    top_k: int
    top_p: float
    device: str
    precision: str
