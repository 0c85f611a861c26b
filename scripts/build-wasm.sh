#!/usr/bin/env bash
# Builds wasm/ (binllm-wasm) for wasm32-unknown-unknown with SIMD128 into wasm/pkg/binllm_wasm.wasm,
# with SIMD128 + relaxed SIMD into wasm/pkg/binllm_wasm_relaxed.wasm, and the latter with threads
# (atomics, shared memory) into wasm/pkg/binllm_wasm_relaxed_threads.wasm.
#
# rustup has no wasm32 std here, so this uses Debian's rustc-web/cargo-web with RUSTC_BOOTSTRAP=1
# and -Zbuild-std over rust-web-src (scripts/wasm-toolchain.sh installs them). The build goes to
# target/wasm so it never mixes with the rustup toolchain's builds.
#
# Usage: scripts/build-wasm.sh [--debug]
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
case "${1:-}" in
    "") ;;
    --debug) profile=debug ;;
    *) echo "usage: $0 [--debug]" >&2; exit 2 ;;
esac

for path in /usr/bin/rustc /usr/bin/cargo /usr/lib/rustlib/src/rust/library/std; do
    if [[ ! -e $path ]]; then
        echo "build-wasm: $path is missing; run scripts/wasm-toolchain.sh (as root) first" >&2
        exit 1
    fi
done

# rustc's default wasm linker is rust-lld; Debian ships it only with rust-web-llvm (all of
# llvm-22), so link with lld's wasm-ld directly when rust-lld is absent.
linker_flags=""
if [[ ! -x /usr/bin/rust-lld ]]; then
    wasm_ld=""
    for candidate in wasm-ld-22 wasm-ld-19 wasm-ld; do
        if command -v "$candidate" >/dev/null; then wasm_ld=$candidate; break; fi
    done
    if [[ -z $wasm_ld ]]; then
        echo "build-wasm: no wasm linker (rust-lld or wasm-ld); run scripts/wasm-toolchain.sh first" >&2
        exit 1
    fi
    linker_flags="-C linker=$wasm_ld -C linker-flavor=wasm-ld"
fi

export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
# The workspace's release profile unwinds; wasm32-unknown-unknown aborts.
export CARGO_PROFILE_RELEASE_PANIC=abort CARGO_PROFILE_DEV_PANIC=abort
unset CARGO_ENCODED_RUSTFLAGS

release_flag=()
[[ $profile == release ]] && release_flag=(--release)
mkdir -p wasm/pkg

# Two modules: SIMD128 (every engine with SIMD) and SIMD128 + relaxed SIMD (its i8 dot product;
# js/engine.js loads it where the browser validates it). Separate target folders, since the
# flags differ for std too.
build() {  # build TARGET_SUBDIR FEATURES OUTPUT [EXTRA_RUSTFLAGS [CARGO_ARGS...]]
    local dir=$1 features=$2 output=$3 extra=${4:-}
    shift 4 2>/dev/null || shift $#
    CARGO_TARGET_DIR="$PWD/target/$dir" RUSTFLAGS="-C target-feature=$features $linker_flags $extra" \
        /usr/bin/cargo build --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort "${release_flag[@]}" \
        --manifest-path wasm/Cargo.toml -p binllm-wasm --lib "$@"
    cp "target/$dir/wasm32-unknown-unknown/$profile/binllm_wasm.wasm" "wasm/pkg/$output"
    echo "build-wasm: wasm/pkg/$output ($(stat -c %s "wasm/pkg/$output") bytes, $profile)"
}
build wasm +simd128 binllm_wasm.wasm
build wasm-relaxed +simd128,+relaxed-simd binllm_wasm_relaxed.wasm
# Threads: shared memory imported from the host (js/engine.js creates it), std rebuilt with
# atomics; the host starts Web Workers that run binllm_thread_main on their own stack and
# thread-local block, which it sets through the exported __stack_pointer and __wasm_init_tls.
threads_link="-C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--max-memory=4294967296"
for symbol in __wasm_init_tls __tls_size __tls_align __tls_base __stack_pointer; do
    threads_link+=" -C link-arg=--export=$symbol"
done
build wasm-relaxed-threads +simd128,+relaxed-simd,+atomics,+bulk-memory,+mutable-globals \
    binllm_wasm_relaxed_threads.wasm "$threads_link" --features threads
