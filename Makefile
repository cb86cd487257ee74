# make setup   create .venv and install the project (TORCH=torch==X.Y.Z pins a torch build); runs
#              again only when pyproject.toml changes (rm .venv/.installed to force it)
# make demo    the fastest way to a story model (README): a TinyStories vocabulary, the model shaped for it,
#              ./train --config configs/fastest.toml, a story (data: Hugging Face, else DATA=path, else synthetic)
# make train   the original's quick start: 10k steps of the default model at B=32, T=256
# make test    the test suite
# make llama   llama.cpp for the GGUF tests and for running exported models: llama-cpp-python built from
#              its source into .venv (once), llama.cpp's source in .venv/llama.cpp
# make test-other-cpu   the tests that train or generate, on this CPU acting as the other kind
#              (TINYSTORIES_CPU_BF16: 1 where it has no native bf16, 0 where it has)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
TORCH ?= torch
DATA ?=
TOKENS := data/tinystories/TinyStories_train.bin
VOCAB := $(shell sed -n 's/^RECOMMENDED_VOCAB = //p' tinystories/config.py)
BPE_DIR := data/tinystories-bpe$(VOCAB)

LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
LLAMA := $(VENV)/.llama-installed

.PHONY: setup demo train data test test-other-cpu test-gpu llama clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(INSTALLED)

# the source distribution holds llama.cpp itself (vendor/llama.cpp, with convert_hf_to_gguf.py); the
# multimodal library (LLAVA_BUILD) is not needed here
# GGML_NATIVE=OFF: llama.cpp's -march=native build crashed on q8_0 files on a VM whose CPU reports AVX-512
# (FP16, VNNI, BF16: SIGILL / general protection faults in libggml-cpu); the portable build runs everywhere
$(LLAMA): | $(INSTALLED)
	rm -rf $(VENV)/llama-src $(VENV)/llama.cpp
	$(PY) -m pip download -q --no-deps --no-binary :all: "$(LLAMA_CPP_PYTHON)" -d $(VENV)/llama-src
	tar -xzf $(VENV)/llama-src/*.tar.gz -C $(VENV)/llama-src
	CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" $(PY) -m pip install -q $(VENV)/llama-src/llama_cpp_python-*/
	mv $(VENV)/llama-src/llama_cpp_python-*/vendor/llama.cpp $(VENV)/llama.cpp
	rm -rf $(VENV)/llama-src
	touch $@

llama: $(LLAMA)

data: $(TOKENS)

$(TOKENS): | $(INSTALLED)
	$(PY) prepare_data.py $(if $(DATA),--source $(DATA),--fallback-synthetic)

model.bin: | $(INSTALLED)
	$(PY) create_model.py

$(BPE_DIR)/TinyStories_train.bin: | $(INSTALLED)
	$(PY) prepare_data.py --vocab-size $(VOCAB) $(if $(DATA),--source $(DATA),--fallback-synthetic)

fastest_model.bin: | $(BPE_DIR)/TinyStories_train.bin
	$(PY) create_model.py --preset fastest --tokenizer $(BPE_DIR)/tokenizer.json -o fastest_model.bin

demo: $(INSTALLED) $(BPE_DIR)/TinyStories_train.bin fastest_model.bin
	./train --config configs/fastest.toml --overwrite
	./generate -e fastest.bin -n 200 -s 42

train: $(INSTALLED) data model.bin
	./train -e model.bin -c checkpoint.bin -n 10000 -b 32 -t 256 -l 1e-3 -v 500 -s 500

test:
	$(PY) -m pytest -q

OTHER_CPU_BF16 = $(shell $(PY) -c "from tinystories.device import cpu_has_native_bf16 as n; print(int(not n()))")
OTHER_CPU_TESTS = tests/test_train.py tests/test_generate.py tests/test_divergence.py tests/test_hardware.py

test-other-cpu:
	TINYSTORIES_CPU_BF16=$(OTHER_CPU_BF16) $(PY) -m pytest -q $(OTHER_CPU_TESTS)

test-gpu:
	$(PY) -m pytest -q -m gpu

clean:
	rm -rf .pytest_cache .hypothesis
