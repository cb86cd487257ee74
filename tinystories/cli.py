"""Every command-line flag, its help text, and the error reporting, in one place.

    python -m tinystories prepare|create|train|generate|eval|export|import|plot [flags]

The root scripts (prepare_data.py, create_model.py, ./train, ./generate) are thin aliases.
Bad input of any kind ends with one line on stderr, `<command>: error: <what and where>`, and
exit status 2; no traceback.
"""
import argparse
import dataclasses
import math
import os
import signal
import sys
import threading

from .config import (ARCHS, BPE_SAMPLE_BYTES, EVAL_COMPILE_MIN_TOKENS, GGUF_TYPES, HF_ARCHIVE_URL, MODEL_PRESETS,
                     PRECISION_POLICY, RECIPES, RECOMMENDED_VOCAB, GenerateConfig, PrepareConfig, TrainConfig)
from .errors import BadInput


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag prints a single line (no usage dump) and exits 2, and a long flag
    must be spelled out: an abbreviation (--co for --config or --cooldown) is an unknown flag, never
    a guess."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, got {text}")
    return value


def seed_int(text: str) -> int:
    """A torch.Generator seed: manual_seed takes 0 .. 2**64 - 1."""
    value = int(text)
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2**64 - 1 = {2**64 - 1}, got {text}")
    return value


def bpe_vocab_size(text: str) -> int:
    from .bpe import MAX_VOCAB, MIN_VOCAB

    value = int(text)
    if not MIN_VOCAB <= value <= MAX_VOCAB:
        raise argparse.ArgumentTypeError(f"must be {MIN_VOCAB}..{MAX_VOCAB} (the 256 bytes and <|endoftext|> "
                                         f"at least; token files hold uint16 ids), got {text}")
    return value


TOKENIZER_HELP = ("the tokenizer.json of a trained-BPE model file that does not carry it (checkpoints carry theirs; "
                  "one beside the model file is found without this flag)")


FORCE_HELP = ("replace -o even when it holds a checkpoint, a token or tokenizer file or a GGUF file (without it, "
              "only a model file is replaced)")


for _f in (positive_int, non_negative_int, positive_float, non_negative_float, seed_int, bpe_vocab_size):
    _f.__name__ = "number"  # argparse names the type in its message: "invalid number value: 'x'"


# ----------------------------------------------------------------------------- prepare

def prepare_parser() -> Parser:
    p = Parser(prog="prepare_data.py", description=(
        "Download TinyStories and tokenize it with GPT-2 BPE (or, with --vocab-size, a BPE trained on it) into "
        "llm.c token files (TinyStories_train.bin, TinyStories_val.bin) and write its llm.c tokenizer file. Each shard is "
        "shuffled with random.Random(1337 + shard index), each story stripped and preceded by the tokenizer's "
        "EOT token, as llm.c does; two runs give byte-identical files."))
    p.add_argument("--source", default="hf", help=(
        "hf (download the Hugging Face archive), a local archive, JSON folder, .txt or parquet path, or "
        "synthetic (smoke tests only); see docs/data.md"))
    p.add_argument("--val-source", default=None, help=(
        "a separate local source for the val split; the whole --source is then train"))
    p.add_argument("--out-dir", default=None, help="folder for the token files (default: data/tinystories; with "
                   "--vocab-size N, data/tinystories-bpeN)")
    p.add_argument("--tokenizer-file", default=None, help=(
        "the llm.c tokenizer file to write (default: gpt2_tokenizer.bin; with --vocab-size, "
        "<out-dir>/tokenizer.bin)"))
    p.add_argument("--vocab-size", type=bpe_vocab_size, default=None, metavar="N", help=(
        "train a byte-level BPE of N tokens (257..65536) on the train split instead of using GPT-2's "
        "(default: GPT-2's)"))
    p.add_argument("--bpe-sample-bytes", type=non_negative_int, default=BPE_SAMPLE_BYTES, metavar="N", help=(
        "with --vocab-size: train the BPE on the first N bytes of train stories (0 = all) (default: %(default)s)"))
    p.add_argument("--cache-dir", default="data", help="folder for the downloaded archive (default: %(default)s)")
    p.add_argument("--url", default=HF_ARCHIVE_URL, help="archive address for --source hf (default: the Hugging Face dataset)")
    p.add_argument("--sha256", default=None, help=(
        "expected sha256 of the archive (default: recorded after the first download, checked after)"))
    p.add_argument("--size", type=positive_int, default=None, help=(
        "expected size of the archive in bytes (default: the Hugging Face archive's, or what the server reports)"))
    p.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                   help="tokenizer processes (default: all cores, %(default)s here)")
    p.add_argument("--synthetic-stories", type=positive_int, default=20000,
                   help="number of stories for --source synthetic (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1337, help="seed for --source synthetic (default: %(default)s)")
    p.add_argument("--fallback-synthetic", action="store_true", help=(
        "when Hugging Face cannot be reached, use synthetic stories (with a warning) instead of stopping"))
    return p


def prepare_main(argv=None) -> None:
    from . import data

    args = prepare_parser().parse_args(argv)
    if args.out_dir is None:
        args.out_dir = f"data/tinystories-bpe{args.vocab_size}" if args.vocab_size else "data/tinystories"
    data.prepare(PrepareConfig(**vars(args)))


# ----------------------------------------------------------------------------- create

def create_parser() -> Parser:
    p = Parser(prog="create_model.py", description="Write a randomly initialised model (fp32): GPT-2's block in llm.c's "
               "model.bin format, another block (--arch llama) in our own model file.")
    p.add_argument("-o", "--output", default="model.bin", help="model file to write (default: %(default)s)")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.add_argument("--layers", type=positive_int, default=4, help="transformer blocks (default: %(default)s)")
    p.add_argument("--heads", type=positive_int, default=4, help="attention heads (default: %(default)s)")
    p.add_argument("--channels", type=positive_int, default=128, help="embedding width, divisible by --heads (default: %(default)s)")
    p.add_argument("--block-size", type=positive_int, default=256, help="maximum sequence length (default: %(default)s)")
    p.add_argument("--arch", choices=sorted(ARCHS), default="gpt2", help="the block: gpt2 (learned positions, "
                   "LayerNorm, GELU MLP, biases) or llama (RoPE, RMSNorm, SwiGLU, no biases) (default: %(default)s)")
    p.add_argument("--kv-heads", type=non_negative_int, default=0, help="key/value heads, dividing --heads "
                   "(grouped-query attention; default: 0 = as many as --heads)")
    p.add_argument("--mlp-hidden", type=non_negative_int, default=0, help="the MLP's hidden width (default: 0 = 4 x "
                   "--channels for gpt2, 8/3 x --channels rounded up to a multiple of 32 for llama)")
    p.add_argument("--vocab-size", type=positive_int, default=None,
                   help="vocabulary size (default: the --tokenizer's, else GPT-2's 50257)")
    p.add_argument("--tokenizer", metavar="FILE", help="make the model for this tokenizer.json (prepare_data.py "
                   "--vocab-size): its vocabulary size, named in the model's header")
    p.add_argument("--seed", type=seed_int, default=1337, help="initialisation seed (default: %(default)s)")
    p.add_argument("--zero-init-proj", action="store_true", help="start the projections into the residual "
                   "stream at zero (every block starts as the identity)")
    p.add_argument("--preset", choices=sorted(MODEL_PRESETS), default=None, help="a named shape: " + "; ".join(
        f"{name} = " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items())
        for name, values in MODEL_PRESETS.items()) + " (the flags given beside it still win); fastest is the "
        "README's fastest way to a story model, with --tokenizer of prepare_data.py --vocab-size "
        f"{RECOMMENDED_VOCAB}")
    return p


def create_main(argv=None) -> None:
    from . import llmc
    from .config import GPTConfig
    from .formats import write_model
    from .model import GPT
    from .outputs import MODEL, check_output
    from .tokenizer import VOCAB_SIZE, load_bpe

    parser = create_parser()
    preset = parser.parse_args(argv).preset
    if preset:
        parser.set_defaults(**MODEL_PRESETS[preset])
    args = parser.parse_args(argv)
    tokenizer = load_bpe(args.tokenizer) if args.tokenizer else None
    vocab_size = args.vocab_size or (tokenizer.vocab_size if tokenizer else VOCAB_SIZE)
    if tokenizer and vocab_size != tokenizer.vocab_size:
        raise BadInput(f"--vocab-size {vocab_size}: --tokenizer {args.tokenizer} has {tokenizer.vocab_size} tokens; "
                       f"leave --vocab-size out to take its size")
    config = GPTConfig(block_size=args.block_size, vocab_size=vocab_size, n_layer=args.layers, n_head=args.heads,
                       n_embd=args.channels, n_kv_head=args.kv_heads, mlp_hidden=args.mlp_hidden, **ARCHS[args.arch])
    config.checked()
    check_output(args.output, "-o", replaces=(MODEL,), force="--force", forced=args.force,
                 inputs={"--tokenizer": args.tokenizer})
    model = GPT(config)
    model.init_weights(args.seed, zero_proj=args.zero_init_proj)
    write_model(args.output, config, llmc.model_params(model), tokenizer=tokenizer.record if tokenizer else None)
    print(f"wrote {args.output}: {args.arch} block, {config.n_layer} layers, {config.n_head} heads, "
          f"{config.n_embd} channels, block {config.block_size}, vocab {config.vocab_size}"
          f"{f' ({tokenizer.name})' if tokenizer else ''}; "
          f"{config.num_parameters(padded=False):,} parameters ({config.num_parameters():,} stored with vocab padding)")


# ----------------------------------------------------------------------------- train

def train_parser() -> Parser:
    """./train's flags, one per TrainConfig field: spelling, default, choices, help, metavar and type all
    come from the field (config.flag); its annotation gives the type (bool: an on/off switch)."""
    p = Parser(prog="train", description="Train a GPT-2 style model on llm.c token files (CPU or CUDA).",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for setting in dataclasses.fields(TrainConfig):
        meta = setting.metadata
        kwargs = {"help": meta["help"]() if callable(meta["help"]) else meta["help"]}
        if setting.type is bool:
            kwargs["action"] = "store_true"
        elif meta["parse"] or setting.type in (int, float):
            kwargs["type"] = meta["parse"] or setting.type
        for option in ("choices", "metavar"):
            if meta[option]:
                kwargs[option] = meta[option]
        p.add_argument(*meta["flag"].split("/"), dest=setting.name, default=setting.default, **kwargs)
    return p


def train_input_files(args: argparse.Namespace) -> tuple[str, ...]:
    """The flags (dests) naming the files ./train reads."""
    return ("model", "train_tokens", *(("val_tokens",) if args.val_every else ()))


def train_main(argv=None) -> None:
    from .config_file import parse_with_config

    cfg = TrainConfig(**vars(parse_with_config(train_parser(), argv, presets=("recipe", RECIPES),
                                               input_files=train_input_files)))
    from . import train

    stopped_by = train.train(cfg)
    if stopped_by is not None:  # interrupted before the last step (the checkpoint is saved): as shells report it
        sys.exit(128 + stopped_by)


# ----------------------------------------------------------------------------- generate

def generate_parser() -> Parser:
    p = Parser(prog="generate", description="Print a story sampled from a trained model.",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("-e", "--model", default="checkpoint.bin", help="model or checkpoint file (either block)")
    a("-n", "--tokens", type=positive_int, default=256, help="tokens to generate (at most the block size minus the prompt)")
    a("-s", "--seed", type=seed_int, default=None, help="random seed; the same seed gives the same story (default: a fresh one, printed)")
    a("-p", "--prompt", default="", help="text the story starts with (default: a new story after <|endoftext|>)")
    a("--temperature", type=non_negative_float, default=1.0, help="softmax temperature (0 = greedy)")
    a("--top-k", type=non_negative_int, default=0, help="sample only from the k most likely tokens (0 = off)")
    a("--top-p", type=positive_float, default=1.0, help="nucleus sampling: smallest set of tokens with this total probability (1 = off)")
    a("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps")
    a("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="weights and KV cache: auto = "
      "bf16 (or fp16) where the hardware has it, else fp32; a seed names one story per precision")
    a("--tokenizer", metavar="FILE", help=TOKENIZER_HELP)
    return p


def generate_main(argv=None) -> None:
    cfg = GenerateConfig(**vars(generate_parser().parse_args(argv)))
    from . import generate

    if cfg.top_p > 1:
        raise BadInput(f"--top-p must be in (0, 1], got {cfg.top_p}")
    generate.main(cfg)


# ----------------------------------------------------------------------------- eval

def eval_parser() -> Parser:
    p = Parser(prog="tinystories eval", formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=(
        "Loss of a model over a whole token file: mean loss, perplexity and bits per byte. The file is cut "
        "into non-overlapping windows of -t + 1 tokens (the first token of each is context only); a tail of "
        "2 or more tokens is one shorter window."))
    a = p.add_argument
    a("-e", "--model", default="checkpoint.bin", help="model or checkpoint file (either block)")
    a("-i", "--tokens", default="data/tinystories/TinyStories_val.bin", help="token file to score")
    a("-t", "--seq-len", type=non_negative_int, default=0, help="tokens per window less one; 0 = the model's block size")
    a("-b", "--batch-size", type=positive_int, default=8, help="windows per forward pass")
    a("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    a("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="fp32 (the reference figure), bf16 "
      "autocast (the matrix products; softmax and sums stay fp32), or " + PRECISION_POLICY)
    a("--compile", default="auto", choices=["auto", "on", "off"], help="torch.compile the scoring: auto = on for "
      f"{EVAL_COMPILE_MIN_TOKENS:,} tokens or more, where its start-up (~10-20 s on CPU) pays")
    a("--max-tokens", type=non_negative_int, default=0, metavar="N", help="score only the first N tokens, in whole "
      "windows of -t + 1 tokens (./train --val-max-tokens N gives the same figures); 0 = the whole file")
    a("--json", action="store_true", help="print one JSON object instead of text (and no progress bar)")
    a("--tokenizer", metavar="FILE", help=TOKENIZER_HELP)
    return p


def eval_main(argv=None) -> None:
    args = eval_parser().parse_args(argv)
    from . import evaluate

    evaluate.main(args)


# ----------------------------------------------------------------------------- export

def export_parser() -> Parser:
    p = Parser(prog="tinystories export", description=(
        "Write a Hugging Face transformers GPT-2 folder (config.json, model.safetensors, tokenizer files) "
        "from an llm.c model file or checkpoint; load it with GPT2LMHeadModel.from_pretrained(folder). "
        "With --gguf, a GGUF file for llama.cpp (besides or instead of the folder)."))
    p.add_argument("-e", "--model", default="checkpoint.bin",
                   help="model or checkpoint file, fp32 or llm.c bf16 (default: %(default)s)")
    p.add_argument("-o", "--output", help="folder to write (built beside it, then renamed into place)")
    p.add_argument("--force", action="store_true", help=(
        "replace --output even if it holds files that export does not write (the whole folder is replaced), "
        "and --gguf even if it holds a model, checkpoint, token or tokenizer file; without it, only an empty "
        "folder or a previous export is replaced"))
    p.add_argument("--gguf", metavar="FILE", help="a GGUF file to write for llama.cpp (its gpt2 or llama "
                   "architecture, with the tokenizer)")
    p.add_argument("--type", choices=GGUF_TYPES, default="f16", help="--gguf's weight type for the 2-D weights "
                   "(biases and norms stay f32; q8_0 and q4_0 need channels divisible by 32) (default: %(default)s)")
    p.add_argument("--tokenizer", metavar="FILE", help=TOKENIZER_HELP)
    return p


def export_main(argv=None) -> None:
    parser = export_parser()
    args = parser.parse_args(argv)
    if not (args.output or args.gguf):
        parser.error("one of -o/--output (a Hugging Face folder) and --gguf (a llama.cpp file) is required")
    from .bpe import MIN_VOCAB
    from .outputs import GGUF, OutputLock, check_output
    from .tokenizer import for_model

    if args.gguf:
        check_output(args.gguf, "--gguf", replaces=(GGUF,), force="--force", forced=args.force,
                     inputs={"-e": args.model, "--tokenizer": args.tokenizer})
    tokenizer = for_model(args.model, args.tokenizer)
    if args.gguf and tokenizer.vocab_size <= MIN_VOCAB:
        raise BadInput(f"--gguf {args.gguf}: the model's tokenizer has no merges ({tokenizer.vocab_size} tokens: the "
                       f"bytes and <|endoftext|>); a GGUF BPE needs merges (llama.cpp and import refuse one without)")
    # each output locked while written (an export removes what a killed one left); the folder first, as
    # its own checks (a folder it may replace, room for its temp folder) come before it writes anything
    if args.output:
        from . import hf

        with OutputLock(os.path.abspath(args.output), "-o"):
            names = hf.export(args.model, args.output, tokenizer, force=args.force)
        print(f"wrote {args.output}: {', '.join(names)}")
    if args.gguf:
        from .formats import remove_stale_temp_files
        from .gguf_file import export_gguf

        with OutputLock(args.gguf, "--gguf"):
            remove_stale_temp_files(args.gguf)
            size = export_gguf(args.model, args.gguf, tokenizer, args.type)
        print(f"wrote {args.gguf}: {args.type}, {size:,} bytes")


# ----------------------------------------------------------------------------- import

def import_parser() -> Parser:
    p = Parser(prog="tinystories import", description=(
        "Convert a Hugging Face GPT-2 or Llama folder (config.json + model.safetensors), or a GGUF file "
        "(gpt2 or llama) as export --gguf writes, into an fp32 model file that ./train and ./generate read "
        "(llm.c's for GPT-2's block). Pickled weights (pytorch_model.bin) are refused."))
    p.add_argument("-i", "--input", required=True, help="Hugging Face model folder, or a .gguf file")
    p.add_argument("-o", "--output", default="model.bin", help="model file to write (default: %(default)s)")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.add_argument("--block-size", type=positive_int, default=None,
                   help="keep only the first N positions (default: all the model's; a folder only)")
    return p


def import_main(argv=None) -> None:
    from .outputs import MODEL, check_output

    args = import_parser().parse_args(argv)
    check_output(args.output, "-o", replaces=(MODEL,), force="--force", forced=args.force, inputs={"-i": args.input})
    if os.path.isfile(args.input):
        from .gguf_file import import_gguf

        if args.block_size is not None:
            raise BadInput("--block-size: only for a Hugging Face folder, not a GGUF file")
        config = import_gguf(args.input, args.output)
    else:
        from . import hf

        config = hf.import_folder(args.input, args.output, block_size=args.block_size)
    block = "GPT-2's block" if config.gpt2_block else "the Llama block"
    print(f"wrote {args.output} ({block}): {config.n_layer} layers, {config.n_head} heads, {config.n_embd} channels, "
          f"block {config.block_size}, vocab {config.vocab_size}; {config.num_parameters(padded=False):,} parameters")


# ----------------------------------------------------------------------------- plot

def plot_parser() -> Parser:
    p = Parser(prog="tinystories plot", description=(
        "Draw the train and val loss of one or more runs from the trainer's JSON-lines metrics files "
        "into one chart (one colour per run, named after the file)."))
    p.add_argument("metrics", nargs="+", help="metrics files (.jsonl) written by ./train")
    p.add_argument("-o", "--output", default="loss.png", help="image to write; .png, .svg or .pdf (default: %(default)s)")
    p.add_argument("--x", default="step", choices=["step", "tokens"], help="horizontal axis (default: %(default)s)")
    p.add_argument("--log", action="store_true", help="log-scale loss axis (and log tokens axis with --x tokens)")
    return p


def plot_main(argv=None) -> None:
    args = plot_parser().parse_args(argv)
    from . import plot
    from .outputs import check_output

    check_output(args.output, "-o", inputs={path: path for path in args.metrics})

    runs = plot.plot(args.metrics, args.output, x=args.x, log=args.log)
    print(f"wrote {args.output}")
    for run in runs:
        print("  " + plot.summary(run))


# ----------------------------------------------------------------------------- dispatch

COMMANDS = {
    "prepare": prepare_main,
    "create": create_main,
    "train": train_main,
    "generate": generate_main,
    "eval": eval_main,
    "export": export_main,
    "import": import_main,
    "plot": plot_main,
}


class Terminated(BaseException):
    """SIGTERM or SIGHUP (a kill, a closed terminal) as an exception, so that a command unwinds as it does
    on Ctrl-C: temp files removed, worker processes stopped, one line instead of tracebacks."""


def _terminated(signum, frame):
    raise Terminated(signum)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # the ones not ignored (nohup) become Terminated


def run(entry, argv=None, prog: str | None = None) -> None:
    """Run one command's main; turn BadInput into one line on stderr and exit status 2, and a stop
    signal into one line and its shell status (130 for Ctrl-C, 128 + N for signal N)."""
    prog = prog or os.path.basename(sys.argv[0])
    previous = {s: signal.signal(s, _terminated) for s in STOP_SIGNALS if signal.getsignal(s) is signal.SIG_DFL
                and threading.current_thread() is threading.main_thread()}  # only the main thread may set handlers
    try:
        entry(argv)
    except BadInput as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Terminated as e:
        signum = signal.Signals(e.args[0])
        print(f"stopped by {signum.name}", file=sys.stderr)
        sys.exit(128 + signum)
    except BrokenPipeError:  # e.g. ./generate | head: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        names = ", ".join(COMMANDS)
        print(f"usage: python -m tinystories {{{names}}} [flags]   (each command has --help)", file=sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    run(COMMANDS[argv[0]], argv[1:], prog=argv[0])
