"""The README.md that `export` writes: a Hugging Face model card.

YAML front matter (license, datasets, language, library_name, pipeline_tag, tags), then the
architecture, parameter count, tokenizer, training (steps, tokens, batch) and results (last train
loss, last and best val loss, val bits per byte) as far as the checkpoint's training state records
them (checkpoint.RESULT_KEYS; a plain model file has none), the data set and its license, and how
to load the folder with transformers.
"""
from .config import GPTConfig
from .formats import ModelFile
from .tokenizer import Tokenizer

DATASET = "roneneldan/TinyStories"
DATASET_LICENSE = "CDLA-Sharing-1.0"


def model_card(model: ModelFile, source: str, folder_name: str, tokenizer: Tokenizer | None) -> str:
    """The model card for `model` (read from the file named `source`, made for `tokenizer`), exported
    as `folder_name`."""
    meta = model.state.meta if model.state is not None else {}
    return "\n".join([
        front_matter(),
        f"# {folder_name}\n",
        f"A small {'GPT-2' if model.config.gpt2_block else 'Llama'} style language model trained from scratch on TinyStories with the `tinystories` "
        "project (a Python re-creation of llm.c's TinyStories experiment). It writes short, simple "
        "children's stories in English.\n",
        architecture(model.config, tokenizer),
        training(meta),
        results(meta),
        "## Data\n",
        f"[TinyStories]({dataset_url()}) (Eldan & Li, 2023, arXiv:2305.07759): synthetic short stories "
        f"written by GPT-3.5 and GPT-4, licensed {DATASET_LICENSE}. Each story is preceded by the "
        "end-of-text token `<|endoftext|>`, as in llm.c, so a prompt starts with it.\n",
        usage(folder_name, tokenizer.eot if tokenizer else None),
        f"Exported from `{source}` (weights sha256 `{model.weights_sha256}`).\n",
    ])


def dataset_url() -> str:
    return f"https://huggingface.co/datasets/{DATASET}"


def front_matter() -> str:
    return "\n".join(["---", f"license: {DATASET_LICENSE.lower()}", "datasets:", f"- {DATASET}",
                      "language:", "- en", "library_name: transformers", "pipeline_tag: text-generation",
                      "tags:", "- gpt2", "- tinystories", "- llm.c", "---", ""])


def architecture(config: GPTConfig, tokenizer: Tokenizer | None) -> str:
    vocabulary = f"{config.vocab_size:,} tokens" + (f", `<\\|endoftext\\|>` = {tokenizer.eot}" if tokenizer else "")
    return table("Model", [
        ("architecture", "GPT-2 (pre-LayerNorm, GELU tanh, learned positions, output head tied to the embedding)"
         if config.gpt2_block else f"Llama (RoPE, RMSNorm, SwiGLU of width {config.hidden_size}, no biases, "
         f"{config.kv_heads} kv heads, output head {'tied to the embedding' if config.tied_head else 'untied'})"),
        ("layers / heads / channels", f"{config.n_layer} / {config.n_head} / {config.n_embd}"),
        ("context (block size)", f"{config.block_size} tokens"),
        ("parameters", f"{config.num_parameters(padded=False):,}"),
        ("tokenizer", tokenizer.name if tokenizer else "none exported"),
        ("vocabulary", vocabulary),
    ])


def training(meta: dict) -> str:
    if "step" not in meta:
        return "## Training\n\nThe exported file holds no training state, so its training is not recorded here.\n"
    rows = [("steps", f"{meta['step']:,}")]
    tokens = meta.get("counters", {}).get("tokens")
    if tokens is not None:
        rows.append(("tokens seen", f"{tokens:,}"))
    if "batch_size" in meta and "seq_len" in meta:
        rows.append(("batch", f"{meta['batch_size']} sequences x {meta['seq_len']} tokens"
                              f" x {meta.get('grad_accum', 1)} accumulation"))
    if "train_tokens_file" in meta:
        rows.append(("train token file", f"`{meta['train_tokens_file']}`"))
    return table("Training", rows)


def results(meta: dict) -> str:
    """Losses in nats per token; bits per byte over the UTF-8 bytes of the scored val tokens."""
    rows = []
    for label, key, step_key in (("train loss (last logged)", "last_train_loss", "last_train_step"),
                                 ("val loss (last)", "last_val_loss", "last_val_step"),
                                 ("val bits per byte (last)", "last_val_bits_per_byte", "last_val_step"),
                                 ("val loss (best)", "best_val_loss", "best_val_step")):
        if meta.get(key) is not None:
            rows.append((label, f"{meta[key]:.4f} (step {meta.get(step_key, '?')})"))
    if not rows:
        return "## Results\n\nThe exported file records no losses.\n"
    return table("Results", rows, note="Losses are mean cross-entropy in nats per token.")


def table(title: str, rows: list[tuple[str, str]], note: str = "") -> str:
    lines = [f"## {title}\n", "| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows), ""]
    if note:
        lines.append(note + "\n")
    return "\n".join(lines)


def usage(folder_name: str, eot: int | None) -> str:
    return "\n".join([
        "## Use\n", "```python",
        "from transformers import AutoTokenizer, GPT2LMHeadModel",
        "", f'tokenizer = AutoTokenizer.from_pretrained("{folder_name}")',
        f'model = GPT2LMHeadModel.from_pretrained("{folder_name}")',
        'ids = tokenizer("<|endoftext|>Once upon a time", return_tensors="pt").input_ids',
        f"out = model.generate(ids, max_new_tokens=100, do_sample=True, top_k=40, pad_token_id={eot})",
        "print(tokenizer.decode(out[0][1:], skip_special_tokens=True))", "```", "",
    ])
