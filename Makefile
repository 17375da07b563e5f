# The whole command surface: `make demo`, `make test`, `make lint`, `make bench`.
# Everything installs into .venv; Rust crates come from crates.io through cargo.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Set ORACLES=0 to skip installing PyTorch, ONNX Runtime, onnx and Keras 3 (the test oracles, the
# benchmark references and the interop tests' live sources; Keras runs on the torch backend).
ORACLES ?= 1

.PHONY: setup build demo test test-rust test-python lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "maturin>=1.8,<2" "numpy>=1.24" "pytest>=8" "ruff==0.17.6" scikit-learn \
		rich safetensors pluggy matplotlib setuptools "optuna>=4.9" "psycopg[binary]" hypothesis mypy
	@if [ "$(ORACLES)" = "1" ]; then \
		$(PIP) install --quiet torch onnxruntime onnx keras \
		|| echo "warning: torch/onnxruntime/onnx/keras not installed; live parity tests will be skipped"; \
	fi
	touch $@

setup: $(VENV)/.installed

build: setup
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(VENV)/bin/maturin develop --release --quiet

demo: build
	$(PY) -m lstmrs.cli train

# The core's tests with the GPU backend compiled in: tests/gpu_parity.rs compares it with the CPU
# on whatever Vulkan adapter exists (Mesa's lavapipe in CI), skipping without one unless
# LSTMRS_REQUIRE_GPU=1 (set by .ci/run).
test-rust:
	cargo test -p lstmrs-core --features gpu

PLUGINS := $(wildcard plugins/lstmrs-*)

test-python: build
	$(PIP) install --quiet --no-deps $(addprefix ./,$(PLUGINS))
	$(PY) -m pytest -q tests $(addsuffix /tests,$(PLUGINS))

test: test-rust test-python

# stubtest compares the hand-written python/lstmrs/_lstmrs.pyi with the built extension (hence
# `build`); tests/stubtest_allowlist.txt lists, with a reason each, what it cannot see.
lint: build
	$(PY) -m mypy.stubtest lstmrs._lstmrs --allowlist tests/stubtest_allowlist.txt
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --workspace --all-targets --features lstmrs-py/gpu -- -D warnings
	$(VENV)/bin/ruff check python tests bench plugins
	$(VENV)/bin/ruff format --check python tests bench plugins

bench: build
	$(PY) bench/bench_rnn.py --threads 2

clean:
	rm -rf $(VENV) target
