#!/usr/bin/env bash
# The whole test suite, from a fresh machine: sets up .venv, runs the Rust tests, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# In CI every tier must run: a missing toolchain is a failure, not a skip.
if [ "${CI:-}" = true ]; then
  export BINLLM_REQUIRE_WASM=1 BINLLM_REQUIRE_LLAMACPP=1
fi
bash scripts/setup.sh --test
# Style first (rustfmt.toml, clippy.toml, pyproject.toml's [tool.ruff]): warnings are errors.
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
.venv/bin/ruff check python tests benches scripts
cargo test --workspace --release
# NEON kernels: type-checked for aarch64 and run bit-exact against scalar under qemu.
bash scripts/check-neon.sh --test kernels
.venv/bin/python -m pytest tests "$@"
