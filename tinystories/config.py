"""Configuration: the model's shape (GPTConfig), a training run's settings (TrainConfig), the
settings of prepare_data.py and ./generate, and the defaults several modules share."""
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace

from . import llmc
from .errors import BadInput
from .registry import HEAD_LOSSES, OPTIMIZERS


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


# The block's architecture: GPTConfig's fields after the five sizes. A field with a fixed set of values lists
# them here, GPT-2's (the default) first. Every field's default is GPT-2's block, the only one llm.c's model file
# holds; a model of any other block lives in our own model file (formats.py), which stores each field as an int:
# a listed field as its index here, a bool as 0/1, an int as itself (so a new field's default must store as 0).
ARCH_CHOICES = {"position": ("learned", "rope"), "norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "swiglu")}
NORM_EPS = 1e-5  # LayerNorm's and RMSNorm's epsilon, in every block


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 256  # max sequence length (llm.c: max_seq_len)
    vocab_size: int = 50257  # real tokens; the GPT-2 BPE vocabulary
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128  # channels, C
    # the block (ARCH_CHOICES); the defaults are GPT-2's
    position: str = "learned"  # learned: a position embedding (wpe); rope: rotary positions on q and k
    norm: str = "layernorm"  # layernorm (with a bias when `bias`) or rmsnorm (weight only)
    mlp: str = "gelu"  # gelu: c_proj(gelu_tanh(c_fc x)); swiglu: c_proj(silu(c_gate x) * c_fc x)
    mlp_hidden: int = 0  # the MLP's hidden width F; 0: the usual one (hidden_size)
    bias: bool = True  # biases in the linear layers (and the LayerNorms)
    n_kv_head: int = 0  # key/value heads (grouped-query attention, dividing n_head); 0: n_head
    tied_head: bool = True  # the output head is the token embedding; else its own lm_head (V, C)
    rope_theta: int = 10000  # rotary base (position rope)

    @property
    def padded_vocab_size(self) -> int:
        return padded_vocab(self.vocab_size)

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden_size(self) -> int:
        """The MLP's hidden width: mlp_hidden, else GPT-2's 4 C (gelu) or LLaMA's 2/3 of it rounded up to a
        multiple of 32 (swiglu: about the same parameters, in three matrices instead of two)."""
        if self.mlp_hidden:
            return self.mlp_hidden
        return 4 * self.n_embd if self.mlp == "gelu" else (8 * self.n_embd // 3 + 31) // 32 * 32

    @property
    def gpt2_block(self) -> bool:
        """Whether the block is GPT-2's (every architecture field at its default): llm.c's file holds it."""
        return not block_differences(self, {})

    def record(self) -> dict:
        """The config as checkpoints record it: the five sizes, and the architecture unless it is GPT-2's
        (so GPT-2 checkpoints stay as they were)."""
        values = asdict(self)
        return {name: values[name] for name in SIZE_FIELDS} if self.gpt2_block else values

    def validate(self) -> None:
        """Raise ValueError naming the first impossible field: every size positive and, padded vocab
        included, within an llm.c header's int32; the architecture's values possible together."""
        limits = {"vocab_size": INT32_MAX // 128 * 128}  # so that the padded vocab fits too
        for name in SIZE_FIELDS:
            value, limit = getattr(self, name), limits.get(name, INT32_MAX)
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
            if value > limit:
                raise ValueError(f"{name} {value:,} is more than an llm.c header holds (at most {limit:,})")
        if self.n_embd % self.n_head:
            raise ValueError(f"channels ({self.n_embd}) must be divisible by heads ({self.n_head})")
        for name, choices in ARCH_CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        for name in ("mlp_hidden", "n_kv_head", "rope_theta"):
            if not 0 <= getattr(self, name) <= INT32_MAX:
                raise ValueError(f"{name} must be 0 or more and at most {INT32_MAX:,}, got {getattr(self, name)}")
        if self.n_head % self.kv_heads:
            raise ValueError(f"heads ({self.n_head}) must be divisible by kv heads ({self.kv_heads})")
        if self.position == "rope" and (self.head_size % 2 or self.rope_theta <= 0):
            raise ValueError(f"rope needs an even head size (channels / heads = {self.head_size}) and a positive rope_theta")

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

    def checked(self, where: str | None = None) -> "GPTConfig":
        """This config, or BadInput (its message after "`where`: ") when validate or check_fits_in_memory
        refuses it."""
        try:
            self.validate()
            self.check_fits_in_memory()
        except ValueError as e:
            raise BadInput(f"{where}: {e}" if where else str(e)) from None
        return self

    def num_parameters(self, padded: bool = True) -> int:
        """Values stored in a model file (padded=True) or used by the model (padded=False)."""
        stored = sum(math.prod(shape) for _, shape, _ in llmc.tensors(self))
        return stored if padded else stored - (self.padded_vocab_size - self.vocab_size) * self.n_embd

    def flops_per_token(self, seq_len: int) -> float:
        """6 N + 12 L T C, N the weights that multiply (no position embedding, and no token embedding when
        the head is not tied to it): see the module docstring."""
        L, C = self.n_layer, self.n_embd
        lookups = (self.block_size * C if self.position == "learned" else 0) + (0 if self.tied_head else self.vocab_size * C)
        return 6 * (self.num_parameters(padded=False) - lookups) + 12 * L * seq_len * C


# create_model.py --arch: the architecture fields of each named block (the others keep their defaults)
ARCHS = {
    "gpt2": {},  # GPT-2's block: llm.c's model file
    "llama": {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False},  # RoPE, RMSNorm, SwiGLU, no biases
}
SIZE_FIELDS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd")
ARCH_FIELDS = tuple(f.name for f in fields(GPTConfig) if f.name not in SIZE_FIELDS)
ANY = object()  # block_differences: any value of a field


def llama_block(hidden: int, kv_heads: int, tied: bool, rope_theta: int, **sizes) -> GPTConfig:
    """The GPTConfig of a Llama block of `sizes` (SIZE_FIELDS) as an import reads one: its MLP width and kv
    heads recorded only where they differ from the usual ones, so that an exported model reads back as
    it was made."""
    usual = GPTConfig(**sizes, **ARCHS["llama"])
    return replace(usual, mlp_hidden=0 if hidden == usual.hidden_size else hidden,
                   n_kv_head=0 if kv_heads == usual.n_head else kv_heads, tied_head=tied, rope_theta=rope_theta)


def export_block(config: GPTConfig, blocks: dict, export: str) -> str:
    """The name of the entry of `blocks` (an export's architectures: name -> block_differences' dict)
    that holds config's block; BadInput in one line, `export` ("FILE: the X export") and what it cannot
    hold, when none does."""
    for name, block in blocks.items():
        if not block_differences(config, block):
            return name
    closest = min(blocks, key=lambda name: len(block_differences(config, blocks[name])))
    raise BadInput(f"{export} holds the {' and '.join(blocks)} blocks only, and this model's is neither (it differs "
                   f"from {closest} in {', '.join(block_differences(config, blocks[closest]))})")


def block_differences(config: GPTConfig, block: dict) -> list[str]:
    """The architecture fields of `config` that `block` (field -> the value it needs, or ANY) does not
    allow, as "name value"; a field that `block` leaves out must have GPT-2's default. An export says
    with one such dict per architecture it writes which blocks it holds, so a new field is refused
    until the export lists it."""
    defaults = GPTConfig()
    return [f"{name} {getattr(config, name)!r}" for name in ARCH_FIELDS
            if block.get(name, getattr(defaults, name)) not in (ANY, getattr(config, name))]


# --source hf: the TinyStories archive on the Hugging Face Hub, and its published size
HF_ARCHIVE_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories_all_data.tar.gz"
HF_ARCHIVE_SIZE = 1_608_001_638

# export --gguf --type: the weight types of a GGUF file that llama.cpp runs at this model size (gguf_file.py)
GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")

# --precision auto, written once (device.resolve_precision implements it; help texts and README point here)
PRECISION_POLICY = ("auto = bf16 on CUDA compute capability 8.0+ and on CPUs with native bf16 (AVX512-BF16 or AMX), "
                    "fp16 on CUDA 7.x (V100, T4), else fp32 (MPS included)")

COMPILE_AUTO_MIN_STEPS = 200  # --compile auto: below this, the compile start-up costs more than it saves
# scoring (eval, ./train's --val-batches all) compiles when --compile allows it and it scores this many tokens
# or more in all: ~10-20 s of compiling on a 2-core CPU against ~3x the tokens/s (BENCHMARKS.md "Eval speed")
EVAL_COMPILE_MIN_TOKENS = 2_000_000


def flag(spelling: str, default, help, *, choices: tuple[str, ...] | None = None, rule: tuple | None = None,
         metavar: str | None = None, parse=None):
    """A TrainConfig field that ./train sets with the flag `spelling` ("-l/--lr": its short and long
    forms, as messages name it). Everything about the flag is here: `help` (its --help text; a
    function for a text computed from other settings), `choices` (its only values), `rule` ((test,
    what the value must be): validate's check), `metavar`, and `parse`, the argparse type, when the
    field's annotation (int, float, str; bool is an on/off switch) does not say it."""
    return field(default=default, metadata={"flag": spelling, "help": help, "choices": choices, "rule": rule,
                                            "metavar": metavar, "parse": parse})


def int_or_all(text: str) -> int | str:
    return "all" if text == "all" else int(text)


int_or_all.__name__ = "number"  # argparse names the type in its message: "invalid number value: 'x'"

ON_OFF = ("auto", "on", "off")
# each a rule: (test of the value, what the value must be)
POSITIVE = (lambda v: v > 0, "positive")
AT_LEAST_0 = (lambda v: v >= 0, "0 or more")
FINITE_AT_LEAST_0 = (lambda v: 0 <= v < math.inf, "0 or more and finite")
FINITE_POSITIVE = (lambda v: 0 < v < math.inf, "positive and finite")
FRACTION = (lambda v: 0 <= v < 1, "in [0, 1)")
INT64 = (lambda v: -2**63 <= v < 2**63, "within the int64 range")

# --recipe NAME: flag values (TrainConfig field: value) that stand in for the defaults; a config file
# and the command line still override each. Chosen by bench/bench_recipe.py (BENCHMARKS.md "Recipe").
RECIPES = {
    "fast": {"learning_rate": 0.001, "optimizer": "muon", "matrix_lr": 0.008, "muon_momentum": 0.9,
             "embed_lr": 0.004, "beta2": 0.99, "lr_decay": "wsd", "cooldown": 0.4},
}


# prepare_data.py --vocab-size trains the BPE on this many bytes of the train split's first stories (--bpe-sample-bytes)
BPE_SAMPLE_BYTES = 200_000_000

# The fastest way to a story model (README; BENCHMARKS.md "Time to quality", chosen by
# bench/bench_time_to_quality.py): prepare_data.py --vocab-size RECOMMENDED_VOCAB, a model of
# create_model.py --preset fastest (its flags' values here), and ./train --config configs/fastest.toml.
RECOMMENDED_VOCAB = 4096
MODEL_PRESETS = {
    # the fastest way to a story model (README): the Llama block at the shape bench_shapes.py chose
    # (BENCHMARKS.md "Model shape", and "Llama-style block against GPT-2's" for the block)
    "fastest": {"arch": "llama", "layers": 1, "heads": 4, "channels": 128, "block_size": 256},
    # llama2.c's 260K TinyStories model (dim 64, 5 layers, 8 heads, 4 kv heads, hidden 172), our block size
    "llama260k": {"arch": "llama", "layers": 5, "heads": 8, "kv_heads": 4, "channels": 64, "mlp_hidden": 172,
                  "block_size": 256},
}


def recipes_help() -> str:
    """--recipe's help: each recipe as the flags it stands for ('fast = --lr 0.001 --optimizer muon ...')."""
    spelling = {f.name: f.metadata["flag"].split("/")[-1] for f in fields(TrainConfig)}
    recipes = "; ".join(f"{name} = " + " ".join(f"{spelling[k]} {v}" for k, v in values.items())
                        for name, values in RECIPES.items())
    return f"named flag values (BENCHMARKS.md \"Recipe\"): {recipes}; config files and flags override them"


@dataclass
class TrainConfig:
    """Every setting of a training run, each one a ./train flag with its help and its rule (see flag):
    cli.py builds the parser from these fields; validate() checks the values."""

    model: str = flag("-e/--model", "model.bin", "model to start from: a model.bin starts a fresh run, "
                      "a checkpoint written by -c resumes it exactly")
    checkpoint: str | None = flag("-c/--checkpoint", None, "checkpoint to write (weights + training state); "
                                  "none if unset")
    checkpoint_every: int = flag("-k/--checkpoint-every", 0, "save every N steps (0 = only at the end)", rule=AT_LEAST_0)
    train_tokens: str = flag("-i/--train-tokens", "data/tinystories/TinyStories_train.bin", "train token file")
    val_tokens: str = flag("-j/--val-tokens", "data/tinystories/TinyStories_val.bin", "val token file")
    max_steps: int = flag("-n/--max-steps", -1, "steps to train (-1 = one epoch of the train file)",
                          rule=(lambda v: v > 0 or v == -1, "positive or -1 (one epoch)"))
    batch_size: int = flag("-b/--batch-size", 4, "sequences per step, over all processes (torchrun: N must divide "
                           "-b)", rule=POSITIVE)
    seq_len: int = flag("-t/--seq-len", 0, "tokens per sequence; 0 = the model's block size (more is an error)",
                        rule=AT_LEAST_0)
    learning_rate: float = flag("-l/--lr", 3e-4, "peak learning rate", rule=FINITE_POSITIVE, metavar="LR")
    val_every: int = flag("-v/--val-every", 20, "val loss every N steps (0 = never)", rule=AT_LEAST_0)
    sample_every: int = flag("-s/--sample-every", 20, "print a generated sample every N steps (0 = never)", rule=AT_LEAST_0)
    sample_length: int = flag("-g/--sample-length", 64, "tokens per sample", rule=POSITIVE)
    val_batches: int | str = flag("--val-batches", 20, "batches averaged for the val loss, or 'all' (the whole val "
                                  "file, as eval scores it)",
                                  rule=(lambda v: v == "all" or v > 0, "positive or all"), parse=int_or_all)
    val_max_tokens: int = flag("--val-max-tokens", 0, "with --val-batches all: score only the first N val tokens; "
                               "0 = the whole file", rule=AT_LEAST_0, metavar="N")
    device: str = flag("--device", "auto", "auto (CUDA, else MPS on Apple Silicon, else CPU), cpu, cuda, cuda:N, mps")
    precision: str = flag("--precision", "auto", "auto = bf16 (or fp16) autocast where the hardware has it, else fp32 "
                          "(docs/hardware.md)", choices=("auto", "fp32", "bf16", "fp16"))
    head_loss: str = flag("--head-loss", "auto", "output layer + loss: chunked, triton (CUDA) or plain (the "
                          "reference); auto = triton on CUDA, else chunked", choices=("auto", *HEAD_LOSSES))
    compile: str = flag("--compile", "auto", "torch.compile the model; auto = on for runs of "
                        f"{COMPILE_AUTO_MIN_STEPS}+ steps where it can work", choices=ON_OFF)
    cuda_graphs: str = flag("--cuda-graphs", "auto", "replay each step as one CUDA graph; auto = on for a single CUDA "
                            "process", choices=ON_OFF)
    deterministic: bool = flag("--deterministic", False, "only deterministic kernels, so compiled runs repeat and "
                               "resume bit for bit (slower)")
    seed: int = flag("--seed", 1337, "seed for sampling and any randomness in training", rule=INT64)
    weight_decay: float = flag("--weight-decay", 0.0, "decoupled weight decay of the embeddings and matrices (AdamW "
                                "and Muon)", rule=FINITE_AT_LEAST_0)
    beta1: float = flag("--beta1", 0.9, "AdamW beta1", rule=FRACTION)
    beta2: float = flag("--beta2", 0.95, "AdamW beta2", rule=FRACTION)
    eps: float = flag("--eps", 1e-8, "AdamW epsilon", rule=FINITE_POSITIVE)
    warmup_steps: int = flag("--warmup", 0, "linear LR warmup steps", rule=AT_LEAST_0, metavar="WARMUP")
    lr_decay: str = flag("--lr-decay", "none", "LR decay after warmup, to --min-lr-ratio x lr at the last step (wsd: "
                         "over the last --cooldown)", choices=("none", "cosine", "linear", "wsd"))
    min_lr_ratio: float = flag("--min-lr-ratio", 0.1, "final LR as a fraction of -l when decaying", rule=FINITE_AT_LEAST_0)
    grad_clip: float = flag("--grad-clip", 1.0, "clip the global gradient norm (0 = off)", rule=FINITE_AT_LEAST_0)
    grad_accum: int = flag("--grad-accum", 1, "micro-batches accumulated per step", rule=POSITIVE)
    max_bad_steps: int = flag("--max-bad-steps", 10, "stop after this many consecutive steps with a non-finite "
                              "loss or gradient", rule=POSITIVE)
    log_every: int = flag("--log-every", 1, "print and log every N steps (10-100 on a GPU for full speed)",
                          rule=POSITIVE)
    metrics: str | None = flag("--metrics", None, "JSON-lines metrics file (default: <checkpoint>.metrics.jsonl "
                               "when -c is set)")
    cooldown: float = flag("--cooldown", 0.2, "--lr-decay wsd: the fraction of the steps, at the end, over which the "
                           "LR decays", rule=(lambda v: 0 < v <= 1, "in (0, 1]"))
    keep: int = flag("--keep", 0, "with -c, also keep the N latest saves as <name>.step<k>.bin", rule=AT_LEAST_0)
    tensorboard: str | None = flag("--tensorboard", None, "also log to TensorBoard event files in DIR (needs the tb "
                                   "extra)", metavar="DIR")
    wandb: str | None = flag("--wandb", None, "also log to Weights & Biases project PROJECT (needs the wandb extra)",
                             metavar="PROJECT[/RUN]")
    config: str | None = flag("--config", None, "TOML file of flag values (max_steps = 300); flags on the command "
                              "line win", metavar="FILE.toml")
    optimizer: str = flag("--optimizer", "adamw", "adamw: AdamW for everything (the original's); muon: Muon for the "
                          "blocks' matrices, AdamW for the rest", choices=tuple(OPTIMIZERS))
    embed_lr: float = flag("--embed-lr", 0.0, "peak learning rate of the embeddings (also the output layer); 0 = -l",
                           rule=(FINITE_AT_LEAST_0[0], "0 (= -l) or positive and finite"), metavar="LR")
    matrix_lr: float = flag("--matrix-lr", 0.0, "peak learning rate of the blocks' weight matrices; 0 = -l",
                            rule=(FINITE_AT_LEAST_0[0], "0 (= -l) or positive and finite"), metavar="LR")
    muon_momentum: float = flag("--muon-momentum", 0.95, "--optimizer muon: momentum", rule=FRACTION)
    recipe: str = flag("--recipe", "none", recipes_help, choices=("none", *RECIPES))
    overwrite: bool = flag("--overwrite", False, "let a fresh run replace another run's checkpoint at -c (and its "
                           "step, best and metrics files)")

    def validate(self) -> None:
        """Raise BadInput naming the flag of the first value out of its range (its rule, or its choices)."""
        for setting in fields(self):
            meta, value = setting.metadata, getattr(self, setting.name)
            if meta["choices"] and value not in meta["choices"]:
                raise BadInput(f"{meta['flag']} {value}: must be one of " + ", ".join(meta["choices"]))
            if meta["rule"] and not meta["rule"][0](value):
                raise BadInput(f"{meta['flag']} {value}: must be {meta['rule'][1]}")


@dataclass
class PrepareConfig:
    """The settings of prepare_data.py; its flags, defaults and help are in cli.py."""

    source: str  # hf, synthetic or a local path
    val_source: str | None
    out_dir: str
    tokenizer_file: str | None  # None: gpt2_tokenizer.bin, or <out_dir>/tokenizer.bin with vocab_size
    vocab_size: int | None  # None: GPT-2's tokenizer; else train a byte-level BPE of this many tokens
    bpe_sample_bytes: int  # with vocab_size: train it on the train split's first stories up to this many bytes (0: all)
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
    tokenizer: str | None  # --tokenizer: for a model file that does not carry its own
