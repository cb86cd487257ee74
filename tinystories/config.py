"""Configuration: the model's shape (GPTConfig), a training run's settings (TrainConfig), and the
defaults several modules share."""
from dataclasses import dataclass


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
        """Raise ValueError naming the first impossible field."""
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"channels ({self.n_embd}) must be divisible by heads ({self.n_head})")

    def num_parameters(self, padded: bool = True) -> int:
        """Values stored in an llm.c model file (padded=True) or used by the model (padded=False)."""
        L, C, T = self.n_layer, self.n_embd, self.block_size
        V = self.padded_vocab_size if padded else self.vocab_size
        per_layer = 2 * C + 3 * C * C + 3 * C + C * C + C + 2 * C + 4 * C * C + 4 * C + 4 * C * C + C
        return V * C + T * C + L * per_layer + 2 * C


# --source hf: the TinyStories archive on the Hugging Face Hub, and its published size
HF_ARCHIVE_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories_all_data.tar.gz"
HF_ARCHIVE_SIZE = 1_608_001_638

COMPILE_AUTO_MIN_STEPS = 200  # --compile auto: below this, the compile start-up costs more than it saves


@dataclass
class TrainConfig:
    """Every setting of a training run; `tinystories.cli` fills it from the flags."""

    model: str = "model.bin"  # -e: model or checkpoint to start from
    checkpoint: str | None = None  # -c: checkpoint output
    checkpoint_every: int = 0  # -k: 0 = only at the end
    train_tokens: str = "data/tinystories/TinyStories_train.bin"  # -i
    val_tokens: str = "data/tinystories/TinyStories_val.bin"  # -j
    max_steps: int = -1  # -n: -1 = one epoch
    batch_size: int = 4  # -b
    seq_len: int = 0  # -t: 0 = the model's block size
    learning_rate: float = 3e-4  # -l
    val_every: int = 20  # -v
    sample_every: int = 20  # -s
    sample_length: int = 64  # -g
    val_batches: int | str = 20  # or "all": the whole val file (evaluate.py)
    device: str = "auto"
    precision: str = "auto"
    head_loss: str = "auto"
    compile: str = "auto"  # auto | on | off
    cuda_graphs: str = "auto"  # auto | on | off
    deterministic: bool = False
    seed: int = 1337
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    warmup_steps: int = 0
    lr_decay: str = "none"  # none | cosine | linear | wsd
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1
    max_bad_steps: int = 10
    log_every: int = 1
    metrics: str | None = None
    cooldown: float = 0.2  # --lr-decay wsd: the fraction of the steps that decays
    keep: int = 0  # --keep: also keep the N most recent <name>.step<k>.bin
    tensorboard: str | None = None  # --tensorboard: event file folder
    wandb: str | None = None  # --wandb: PROJECT or PROJECT/RUN
    config: str | None = None  # --config: TOML file that supplied flag values
