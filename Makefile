# Quick start: `make train` (the main job) and `make test` (the test suite). Each one creates
# .venv and installs the project into it on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pins that this project is tested with (override: make TORCH="torch torchvision")
TORCH ?= torch==2.14.1 torchvision==0.29.1
# Real data: $AIGC_DATA_DIR if set, else ../shared/data where it exists, else ./data (downloaded).
AIGC_DATA_DIR ?= $(if $(wildcard ../shared/data/mnist),../shared/data,./data)
export AIGC_DATA_DIR

.PHONY: install train test lint bench-gan bench-mlm bench-overhead bench-overhead-paired bench-startup bench-gpu clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

train: $(VENV)/.installed  ## the main job: class-conditional DCGAN on MNIST (about 10-11 min on 2 CPU cores, whatever the x86 kind)
	$(PY) -m aigc_lab experiment=gan_mnist $(ARGS)

# Two test processes (pytest-xdist): most tests wait on a one-thread subprocess, so two keep both cores busy.
TEST_JOBS ?= 2
test: $(VENV)/.installed  ## the test suite (CPU, tiny fixtures)
	$(PY) -m pytest -q -n $(TEST_JOBS) $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench

bench-gan: $(VENV)/.installed  ## FID of the newest gan_mnist run, beside the real-vs-real floor
	$(PY) bench/gan_fid.py $$(ls -d outputs/gan_mnist/runs/* | tail -n 1)

bench-mlm: $(VENV)/.installed  ## training tokens/s of our masked LM vs transformers' BertForMaskedLM (a few min)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) bench/mlm_speed.py $(ARGS)

bench-overhead: $(VENV)/.installed  ## launcher vs a plain PyTorch loop, per step, three presets (~15 min; alone on the machine)
	$(PY) bench/overhead.py $(ARGS)

bench-overhead-paired: $(VENV)/.installed  ## the same, both paths taking turns in one process (~25 min; alone)
	$(PY) bench/overhead_paired.py $(ARGS)

bench-startup: $(VENV)/.installed  ## time from the command to the first training step, per phase and per imported package
	$(PY) bench/startup.py $(ARGS)

bench-gpu: $(VENV)/.installed  ## the three presets on one CUDA GPU: step time, tokens/s, MFU, peak memory (< 8 min)
	PYTHON=$(PY) bench/gpu.sh $(ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
