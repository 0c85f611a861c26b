#!/usr/bin/env bash
# Installs the Debian toolchain that builds binllm for wasm32 and cross-checks the NEON kernels
# for aarch64. rustup cannot fetch a wasm32 or aarch64 std here, so both builds use Debian's
# rustc-web/cargo-web (1.96) with RUSTC_BOOTSTRAP=1 and cargo's -Zbuild-std over rust-web-src.
#
#   wasm32:  rustc-web cargo-web rust-web-src, lld-22 (linked with wasm-ld-22 and
#            -C linker-flavor=wasm-ld; /usr/bin/rust-lld would need rust-web-llvm + all of llvm-22)
#   aarch64: gcc-aarch64-linux-gnu + libc6-dev-arm64-cross (linker, libc), qemu-user (runner)
#   browser: chromium (tests/test_browser.py drives it headless with playwright-core, which
#            `npm install` in wasm/ fetches; `npx playwright install` cannot download here)
#
# Idempotent: installs only what is missing, and runs `apt-get update` only then.
# Usage (as root, Debian 12): scripts/wasm-toolchain.sh [--wasm-only]
set -euo pipefail

packages=(rustc-web cargo-web rust-web-src lld-22 chromium)
if [[ "${1:-}" != "--wasm-only" ]]; then
    packages+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "wasm-toolchain: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "wasm-toolchain: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Verify what the build scripts rely on.
fail=0
check() { if ! "$@" >/dev/null 2>&1; then echo "wasm-toolchain: check failed: $*" >&2; fail=1; fi; }
check /usr/bin/rustc --version
check /usr/bin/cargo --version
check wasm-ld-22 --version
check test -d /usr/lib/rustlib/src/rust/library/std
check test -x /usr/bin/chromium
if [[ "${1:-}" != "--wasm-only" ]]; then
    check aarch64-linux-gnu-gcc --version
    check qemu-aarch64 --version
fi
((fail == 0)) || exit 1
# The browser tests' driver (playwright-core) and the benchmark's peer (@wllama/wllama).
if command -v npm >/dev/null && [[ ! -d "$(dirname "$0")/../wasm/node_modules/playwright-core" ]]; then
    (cd "$(dirname "$0")/../wasm" && npm install --no-audit --no-fund >/dev/null) || echo "wasm-toolchain: npm install in wasm/ failed" >&2
fi
echo "wasm-toolchain: ready ($(/usr/bin/rustc --version))"
