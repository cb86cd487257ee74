"""A trained BPE through every command: create_model.py --tokenizer, ./train (agreement checks, samples,
the checkpoint carrying the tokenizer, resume), ./generate, eval (bits per byte by hand), export to
transformers (its pipeline's greedy text is ./generate's) and import back."""
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ONE_THREAD, REPO, TINY, assert_one_line_error, logged, run, run_cli, train

from tinystories import tokenizer
from tinystories.cli import train_parser
from tinystories.config import ARCHS, MODEL_PRESETS, RECOMMENDED_VOCAB
from tinystories.config_file import config_defaults
from tinystories.formats import read_model, read_token_header, write_tokens
from tinystories.generate import sample_story
from tinystories.model import read_gpt

transformers = pytest.importorskip("transformers")

VOCAB, OTHER_VOCAB = 320, 330
STEPS = 16


def prepare(out, vocab_size: int):
    """Synthetic stories (offline, any machine) tokenized with a BPE of vocab_size trained on them."""
    run("prepare_data.py", "--source", "synthetic", "--synthetic-stories", "300", "--vocab-size", str(vocab_size),
        "--out-dir", out)
    return out


def bpe_train_flags(data, model, checkpoint, *more) -> list[str]:
    return ["-e", model, "-c", checkpoint, "-i", data / "TinyStories_train.bin", "-j", data / "TinyStories_val.bin",
            "-b", "2", "-t", "32", "-l", "3e-3", "-v", "8", "-s", "8", "-g", "24", *more]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """data/ and other/ (two different BPEs), model.bin made for data's, ck.bin after STEPS steps on it."""
    d = tmp_path_factory.mktemp("vocab")
    data = prepare(d / "data", VOCAB)
    prepare(d / "other", OTHER_VOCAB)
    run("create_model.py", "--tokenizer", data / "tokenizer.json", *TINY, "-o", d / "model.bin")
    train(*bpe_train_flags(data, d / "model.bin", d / "ck.bin", "-n", str(STEPS)), env=ONE_THREAD)  # resumed below
    return d


def generate(*args, check=True):
    return run_cli("generate", *args, check=check)


def bpe(d) -> tokenizer.BPETokenizer:
    return tokenizer.load_bpe(d / "data" / "tokenizer.json")


def test_model_and_checkpoint_name_the_tokenizer(run_dir):
    expected = bpe(run_dir).record
    assert read_model(run_dir / "model.bin").tokenizer == expected
    checkpoint = read_model(run_dir / "ck.bin")
    assert checkpoint.tokenizer == expected and checkpoint.config.vocab_size == VOCAB
    assert tokenizer.CHECKPOINT_TENSOR in checkpoint.state.tensors


def test_checkpoint_carries_its_tokenizer(run_dir, tmp_path):
    """Alone in a folder, the checkpoint still generates and evaluates: it carries its tokenizer.json."""
    shutil.copy(run_dir / "ck.bin", tmp_path / "ck.bin")
    found = tokenizer.for_model(tmp_path / "ck.bin")
    assert found.fingerprint == bpe(run_dir).fingerprint
    story = generate("-e", tmp_path / "ck.bin", "-n", "20", "-s", "3").stdout
    assert story.strip()
    assert run_cli("eval", "-e", tmp_path / "ck.bin", "-i", run_dir / "data" / "TinyStories_val.bin", "-t", "32",
                   check=True).returncode == 0


def test_training_samples_are_decoded_with_the_bpe(run_dir):
    """The sample logged at the last step is the one sample_story gives with the BPE and those weights."""
    sample = logged(run_dir / "ck.bin", "sample")[STEPS]
    model, _ = read_gpt(run_dir / "ck.bin")
    assert sample == sample_story(model, bpe(run_dir), 1337 + STEPS, 24)  # -s 8 -g 24, default --seed 1337


def test_val_bits_per_byte_is_logged_with_the_bpe_bytes(run_dir):
    val = run_dir / "data" / "TinyStories_val.bin"
    figures = json.loads(run_cli("eval", "-e", run_dir / "ck.bin", "-i", val, "-t", "32", "--json", check=True).stdout)
    assert figures["tokenizer"] == f"byte-level BPE of {VOCAB} tokens"
    assert figures["bits_per_byte"] == pytest.approx(figures["nats"] / math.log(2) / figures["bytes"])
    assert 0 < figures["bits_per_byte"] < 20


def test_resume_with_a_bpe_equals_one_run(run_dir, tmp_path):
    data = run_dir / "data"
    train(*bpe_train_flags(data, run_dir / "model.bin", tmp_path / "half.bin", "-n", str(STEPS // 2)), env=ONE_THREAD)
    train(*bpe_train_flags(data, tmp_path / "half.bin", tmp_path / "half.bin", "-n", str(STEPS)), env=ONE_THREAD)
    one_run, resumed = logged(run_dir / "ck.bin", "train_loss"), logged(tmp_path / "half.bin", "train_loss")
    assert resumed == one_run  # every step's loss, so a failure shows the first step that differs
    a, b = read_model(run_dir / "ck.bin"), read_model(tmp_path / "half.bin")
    differ = {k: float(np.abs(a.params[k] - b.params[k]).max())
              for k in a.params if not np.array_equal(a.params[k], b.params[k])}
    assert not differ  # {tensor: largest difference}


def test_bits_per_byte_of_a_fixed_text_by_hand(run_dir, tmp_path):
    """One window of EOT + the text: the scored targets are the text's tokens, whose bytes are its UTF-8
    bytes; their -ln p from the model's own logits, summed by hand, over ln 2 and those bytes."""
    text = "Tom saw a big red ball. \"Wow!\" he said. Café 🙂"
    tok = bpe(run_dir)
    ids = [tok.eot] + tok.encode(text)
    write_tokens(tmp_path / "text.bin", np.array(ids, dtype=np.uint16), tok.record)
    model, _ = read_gpt(run_dir / "ck.bin")
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]))[0]  # (n - 1, V)
    nats = -F.log_softmax(logits.double(), dim=-1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum().item()
    expected = nats / math.log(2) / len(text.encode("utf-8"))
    out = run_cli("eval", "-e", run_dir / "ck.bin", "-i", tmp_path / "text.bin", "-t", str(len(ids) - 1), "--json",
                  "--precision", "fp32", check=True).stdout
    figures = json.loads(out)
    assert figures["bytes"] == len(text.encode("utf-8"))
    assert figures["bits_per_byte"] == pytest.approx(expected, rel=1e-5)


def test_transformers_pipeline_greedy_text_is_generates(run_dir, tmp_path):
    """The exported folder in transformers' own pipeline, greedy after <|endoftext|> + prompt, gives the
    text ./generate --temperature 0 prints after the prompt (both start the story after the EOT)."""
    run_cli("export", "-e", run_dir / "ck.bin", "-o", tmp_path / "hf", check=True)
    prompt = "Once upon a time"
    ours = generate("-e", run_dir / "ck.bin", "-p", prompt, "-n", "30", "--temperature", "0").stdout
    pipeline = transformers.pipeline("text-generation", model=str(tmp_path / "hf"))
    theirs = pipeline("<|endoftext|>" + prompt, max_new_tokens=30, do_sample=False, return_full_text=False)
    assert ours == prompt + theirs[0]["generated_text"] + "\n"
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tokenizer("<|endoftext|>" + prompt).input_ids == [bpe(run_dir).eot] + bpe(run_dir).encode(prompt)


def test_import_reads_back_the_tokenizer(run_dir, tmp_path):
    run_cli("export", "-e", run_dir / "ck.bin", "-o", tmp_path / "hf", check=True)
    (tmp_path / "back").mkdir()
    run_cli("import", "-i", tmp_path / "hf", "-o", tmp_path / "back" / "m.bin", check=True)
    back = read_model(tmp_path / "back" / "m.bin")
    assert back.tokenizer == bpe(run_dir).record
    assert tokenizer.load_bpe(tmp_path / "back" / "tokenizer.json").fingerprint == bpe(run_dir).fingerprint
    assert all(np.array_equal(back.params[k], v) for k, v in read_model(run_dir / "ck.bin").params.items())
    story = ["-n", "20", "-s", "5"]
    assert (generate("-e", tmp_path / "back" / "m.bin", *story).stdout
            == generate("-e", run_dir / "ck.bin", *story).stdout)


def test_import_next_to_another_tokenizer_writes_nothing(run_dir, tmp_path):
    run_cli("export", "-e", run_dir / "ck.bin", "-o", tmp_path / "hf", check=True)
    shutil.copy(run_dir / "other" / "tokenizer.json", tmp_path / "tokenizer.json")
    before = (tmp_path / "tokenizer.json").read_bytes()
    result = run_cli("import", "-i", tmp_path / "hf", "-o", tmp_path / "m.bin")
    assert_one_line_error(result, "another tokenizer")
    assert not (tmp_path / "m.bin").exists() and (tmp_path / "tokenizer.json").read_bytes() == before


# ----------------------------------------------------------------------------- refusals: one line, exit 2


def test_train_refuses_token_files_of_another_tokenizer(run_dir, tmp_path):
    other = run_dir / "other"
    result = train("-e", run_dir / "model.bin", "-c", tmp_path / "ck.bin", "-i", other / "TinyStories_train.bin",
                   "-j", other / "TinyStories_val.bin", "-n", "2", "-b", "2", "-t", "32", check=False)
    assert_one_line_error(result, f"-e {run_dir / 'model.bin'}: made for a tokenizer of {VOCAB} tokens",
                          f"a tokenizer of {OTHER_VOCAB} tokens", "create_model.py --tokenizer")
    assert not (tmp_path / "ck.bin").exists()


def test_train_refuses_a_val_file_of_another_tokenizer(run_dir, tmp_path):
    result = train("-e", run_dir / "model.bin", "-c", tmp_path / "ck.bin", "-i", run_dir / "data" / "TinyStories_train.bin",
                   "-j", run_dir / "other" / "TinyStories_val.bin", "-n", "2", "-b", "2", "-t", "32", check=False)
    assert_one_line_error(result, "-j ", f"a tokenizer of {OTHER_VOCAB} tokens")


def test_train_refuses_a_gpt2_model_on_bpe_tokens(run_dir, tmp_path):
    run("create_model.py", *TINY, "-o", tmp_path / "gpt2.bin")
    result = train("-e", tmp_path / "gpt2.bin", "-c", tmp_path / "ck.bin", "-i", run_dir / "data" / "TinyStories_train.bin",
                   "-n", "2", "-b", "2", "-t", "32", "-v", "0", check=False)
    assert_one_line_error(result, "a vocabulary of 50257 tokens", f"of {VOCAB} tokens")


def test_train_refuses_a_checkpoint_of_another_tokenizer(run_dir, tmp_path):
    other = run_dir / "other"
    result = train(*bpe_train_flags(other, run_dir / "ck.bin", tmp_path / "ck.bin", "-n", "20"), check=False)
    assert_one_line_error(result, f"-e {run_dir / 'ck.bin'}: made for a tokenizer of {VOCAB} tokens")


def test_generate_and_eval_refuse_another_tokenizer(run_dir):
    other = run_dir / "other"
    result = generate("-e", run_dir / "ck.bin", "--tokenizer", other / "tokenizer.json", check=False)
    assert_one_line_error(result, f"{other / 'tokenizer.json'}: a tokenizer of {OTHER_VOCAB} tokens")
    result = run_cli("eval", "-e", run_dir / "ck.bin", "-i", other / "TinyStories_val.bin")
    assert_one_line_error(result, "TinyStories_val.bin: made by a tokenizer of 330 tokens", "is made for")


def test_a_model_without_its_tokenizer_is_one_line(run_dir, tmp_path):
    shutil.copy(run_dir / "model.bin", tmp_path / "model.bin")
    for command in (("generate", "-e", tmp_path / "model.bin"),
                    ("export", "-e", tmp_path / "model.bin", "-o", tmp_path / "hf")):
        assert_one_line_error(run_cli(*command), "no tokenizer was found", "--tokenizer")
    assert not (tmp_path / "hf").exists()
    story = generate("-e", tmp_path / "model.bin", "--tokenizer", run_dir / "data" / "tokenizer.json",
                "-n", "5", "-s", "1")
    assert story.returncode == 0


def test_create_model_refuses_a_vocab_size_other_than_the_tokenizers(run_dir, tmp_path):
    result = run("create_model.py", "--tokenizer", run_dir / "data" / "tokenizer.json", "--vocab-size", "999",
                 "-o", tmp_path / "m.bin", check=False)
    assert_one_line_error(result, "--vocab-size 999", f"has {VOCAB} tokens")
    assert not (tmp_path / "m.bin").exists()


def test_vocab_size_writes_its_own_folder_by_default(tmp_path):
    """Without --out-dir, a trained BPE's files go to data/tinystories-bpeN: GPT-2's stay where they are."""
    run(REPO / "prepare_data.py", "--source", "synthetic", "--synthetic-stories", "100", "--vocab-size", "300",
        cwd=tmp_path)
    assert read_token_header(tmp_path / "data" / "tinystories-bpe300" / "TinyStories_train.bin").tokenizer.vocab_size == 300
    assert not (tmp_path / "data" / "tinystories").exists()


def test_synthetic_stories_train_the_vocabulary_they_fill(tmp_path):
    """The offline smoke test (make demo without a network) asks for more tokens than synthetic text
    fills: it gets a smaller BPE with a warning, where real stories get an error (test_bpe)."""
    result = run(REPO / "prepare_data.py", "--source", "synthetic", "--synthetic-stories", "100", "--vocab-size", "4096",
                 "--out-dir", tmp_path)
    assert "warning: --vocab-size 4096: the SYNTHETIC stories fill only" in result.stderr
    filled = read_token_header(tmp_path / "TinyStories_train.bin").tokenizer.vocab_size
    assert 257 < filled < 4096 and tokenizer.load_bpe(tmp_path / "tokenizer.json").vocab_size == filled


# ----------------------------------------------------------------------------- the recommended path (make demo)

def test_preset_fastest_takes_its_shape_and_the_tokenizers_vocabulary(run_dir, tmp_path):
    run("create_model.py", "--preset", "fastest", "--tokenizer", run_dir / "data" / "tokenizer.json",
        "-o", tmp_path / "fastest.bin")
    config, preset = read_model(tmp_path / "fastest.bin").config, MODEL_PRESETS["fastest"]
    assert (config.n_layer, config.n_head, config.n_embd, config.block_size, config.vocab_size) == (
        preset["layers"], preset["heads"], preset["channels"], preset["block_size"], VOCAB)
    assert {name: getattr(config, name) for name in ARCHS["llama"]} == ARCHS[preset["arch"]]  # the Llama block
    run("create_model.py", "--preset", "fastest", "--layers", "3", "--tokenizer", run_dir / "data" / "tokenizer.json",
        "-o", tmp_path / "three.bin")
    assert preset["layers"] != 3 and read_model(tmp_path / "three.bin").config.n_layer == 3  # a flag beside it wins


def test_fastest_config_is_the_demos_path():
    """configs/fastest.toml reads as ./train's flags, on the files make demo makes: the token files of
    prepare_data.py --vocab-size RECOMMENDED_VOCAB, fastest_model.bin, checkpoint fastest.bin."""
    settings = config_defaults(train_parser(), str(REPO / "configs" / "fastest.toml"))
    folder = f"data/tinystories-bpe{RECOMMENDED_VOCAB}"
    assert settings["train_tokens"] == f"{folder}/TinyStories_train.bin"
    assert settings["val_tokens"] == f"{folder}/TinyStories_val.bin"
    assert (settings["model"], settings["checkpoint"]) == ("fastest_model.bin", "fastest.bin")
    makefile = (REPO / "Makefile").read_text()
    assert "-o fastest_model.bin" in makefile and "./generate -e fastest.bin" in makefile
