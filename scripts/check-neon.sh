#!/usr/bin/env bash
# Cross-checks binllm-core for aarch64 (the NEON kernels) from an x86-64 machine.
#
#   scripts/check-neon.sh          type-check binllm-core, tests included, for aarch64
#   scripts/check-neon.sh --test [FILTER]
#                                  build binllm-core's unit tests for aarch64 and run them (those
#                                  matching FILTER, e.g. `kernels`) under qemu-aarch64; the
#                                  kernel tests hold NEON bit-exact against scalar
#
# rustup cannot fetch an aarch64 std here, so this uses Debian's rustc-web/cargo-web with
# -Zbuild-std (scripts/wasm-toolchain.sh installs them, the cross linker and qemu-user).
# Builds go to target/aarch64 so they never mix with the rustup toolchain's.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=check
filter=()
case "${1:-}" in
    "") ;;
    --test) mode=test; filter=("${@:2}") ;;
    *) echo "usage: $0 [--test [FILTER]]" >&2; exit 2 ;;
esac

need=(/usr/bin/rustc /usr/bin/cargo /usr/lib/rustlib/src/rust/library/std)
[[ $mode == test ]] && need+=(/usr/bin/aarch64-linux-gnu-gcc /usr/bin/qemu-aarch64)
for path in "${need[@]}"; do
    if [[ ! -e $path ]]; then
        echo "check-neon: $path is missing; run scripts/wasm-toolchain.sh (as root) first" >&2
        exit 1
    fi
done

target=aarch64-unknown-linux-gnu
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$PWD/target/aarch64"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS

if [[ $mode == check ]]; then
    /usr/bin/cargo check --target $target -Zbuild-std=std,panic_unwind -p binllm-core --all-targets
else
    /usr/bin/cargo test --target $target -Zbuild-std=std,panic_unwind -p binllm-core --lib -- "${filter[@]}"
fi
