#!/usr/bin/env bash
# Builds the wheels to publish: one abi3 wheel per architecture (CPython 3.9+), tagged
# manylinux2014 (glibc 2.17 or newer), stripped, for x86_64 and aarch64; then checks each with
# scripts/check_wheel.py (tags, ELF machine, stripped, size budget, newest GLIBC symbol version
# at most 2.17, only glibc's libraries) and prints its sizes.
#
#   scripts/build-wheels.sh [--out DIR] [--arch x86_64|aarch64]
#                           default: both architectures, into target/wheels-release
#
# maturin --zig links with zig (PyPI's ziglang) against glibc 2.17's symbols, whatever glibc this
# machine has (without it, issue 18 found linux_x86_64 wheels, which PyPI refuses, and
# manylinux_2_34 ones). maturin and ziglang go into .venv. x86_64 builds with the rustup toolchain;
# aarch64 with Debian's rustc-web/cargo-web and -Zbuild-std, as scripts/check-neon.sh does
# (rustup cannot fetch an aarch64 std here; scripts/wasm-toolchain.sh installs them). Each
# architecture builds in its own target/wheels-build/ARCH, apart from every other build. Kernels
# are chosen at run time from the CPU's features, so RUSTFLAGS is cleared: nothing like
# target-cpu=native reaches a wheel. tests/test_wheels.py installs and runs what this builds.
set -euo pipefail

out=target/wheels-release
arches=(x86_64 aarch64)
while (($#)); do
    case "$1" in
        --out) out=${2:?--out needs a folder}; shift 2 ;;
        --arch)
            case "${2:-}" in x86_64 | aarch64) arches=("$2") ;; *) echo "build-wheels: --arch is x86_64 or aarch64" >&2; exit 2 ;; esac
            shift 2 ;;
        *) echo "usage: $0 [--out DIR] [--arch x86_64|aarch64]" >&2; exit 2 ;;
    esac
done
out=$(realpath -m "$out")  # before the cd: relative to where it was called from
cd "$(dirname "$0")/.."
root=$PWD

[[ -x .venv/bin/python ]] || python3 -m venv .venv
maturin_requirement=$(sed -n 's/^requires = \["\(maturin[^"]*\)"\]$/\1/p' pyproject.toml)
[[ -n $maturin_requirement ]] || { echo "build-wheels: no maturin requirement in pyproject.toml's [build-system]" >&2; exit 1; }
# ziglang pinned: the zig these wheels were last built and tested with.
.venv/bin/python -m pip install -q "$maturin_requirement" "ziglang==0.17.1"

if [[ " ${arches[*]} " == *" aarch64 "* ]]; then
    for path in /usr/bin/rustc /usr/bin/cargo /usr/lib/rustlib/src/rust/library/std; do
        [[ -e $path ]] || { echo "build-wheels: $path is missing; run scripts/wasm-toolchain.sh (as root) first" >&2; exit 1; }
    done
fi

mkdir -p "$out"
built=()
for arch in "${arches[@]}"; do
    rm -f "$out"/binllm-*_"$arch".whl
    build=(--release --strip --zig --compatibility manylinux2014 --auditwheel check
        --target "$arch-unknown-linux-gnu" --target-dir "$root/target/wheels-build/$arch" --out "$out")
    if [[ $arch == x86_64 ]]; then
        env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS VIRTUAL_ENV="$root/.venv" PATH="$root/.venv/bin:$PATH" \
            .venv/bin/maturin build "${build[@]}"
    else
        # /usr/bin first in PATH: maturin runs `cargo`, and this build needs Debian's.
        env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS VIRTUAL_ENV="$root/.venv" PATH="$root/.venv/bin:/usr/bin:$PATH" \
            RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
            .venv/bin/maturin build "${build[@]}" -Zbuild-std=std,panic_unwind
    fi
    wheels=("$out"/binllm-*_"$arch".whl)
    [[ ${#wheels[@]} == 1 && -f ${wheels[0]} ]] || { echo "build-wheels: expected one $arch wheel in $out, found: ${wheels[*]}" >&2; exit 1; }
    built+=("${wheels[0]}")
done

echo "build-wheels: checking ${#built[@]} wheel(s)"
.venv/bin/python scripts/check_wheel.py "${built[@]}"
