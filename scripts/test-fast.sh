#!/usr/bin/env bash
# The developers' fast loop (README, "Developing"): rebuilds the extension in place, then runs
# the core's Rust unit tests and pytest's fast tier (-m "not integration", tests/conftest.py).
# About a minute and a half on two cores after a small change. Needs the .venv that
# `bash scripts/test.sh` (or `bash scripts/setup.sh --test`) made; arguments go to pytest
# (e.g. -x, -k tokenizer). The whole suite, every tier, is still `bash scripts/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/maturin ] || [ ! -x .venv/bin/pytest ]; then
  echo "scripts/test-fast.sh: no .venv with the test tools here; run bash scripts/setup.sh --test once" >&2
  exit 1
fi
VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH" .venv/bin/maturin develop --release -q
cargo test -q -p binllm-core --release --lib
.venv/bin/python -m pytest tests -q -m "not integration" "$@"
