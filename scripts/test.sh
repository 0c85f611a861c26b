#!/usr/bin/env bash
# The whole test suite, from a fresh machine: sets up .venv, runs the Rust tests, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
cargo test --workspace --release
.venv/bin/python -m pytest tests "$@"
