#!/usr/bin/env bash
# Installs llama-cpp-python (llama.cpp's Python binding, built from source for this CPU) into
# .venv: the OPTIONAL peer that tests/test_llamacpp.py and benches/bench_models.py compare
# binllm against. Does nothing when it is already importable.
#
#   bash scripts/install-llamacpp.sh            # version below
#   LLAMACPP_VERSION=0.3.36 bash scripts/install-llamacpp.sh
#
# The build compiles llama.cpp (about 25 minutes on 2 cores); the log goes to
# target/llamacpp-build/build.log. It is built for this CPU's SIMD features (what a fair speed
# comparison wants; binllm picks its SIMD kernels at run time), AMX excepted (below).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
VERSION="${LLAMACPP_VERSION:-0.3.36}"
if [ ! -x "$PY" ]; then
    echo "install-llamacpp: no .venv here; run scripts/setup.sh first" >&2
    exit 1
fi
if "$PY" -c "import llama_cpp" 2>/dev/null; then
    echo "install-llamacpp: llama_cpp $("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)') is already installed"
    exit 0
fi
for tool in cmake gcc g++; do
    command -v "$tool" >/dev/null || { echo "install-llamacpp: needs $tool (apt-get install cmake build-essential)" >&2; exit 1; }
done

LOG=target/llamacpp-build/build.log
mkdir -p "$(dirname "$LOG")"
echo "install-llamacpp: building llama-cpp-python==$VERSION from source (log: $LOG)"
# The CPU's features are named one by one instead of GGML_NATIVE: some of these machines list
# AMX in /proc/cpuinfo while the kernel does not grant the tile state, and -march=native then
# compiles ggml's AMX matmul (taken for Q4_1 among others), which dies of SIGILL. AMX stays off.
cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
on() { case "$cpu_flags" in *" $1 "*) echo ON ;; *) echo OFF ;; esac; }
ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=$(on avx) -DGGML_AVX2=$(on avx2) -DGGML_FMA=$(on fma) -DGGML_F16C=$(on f16c)"
ARGS="$ARGS -DGGML_AVX512=$(on avx512f) -DGGML_AVX512_VBMI=$(on avx512vbmi) -DGGML_AVX512_VNNI=$(on avx512_vnni)"
ARGS="$ARGS -DGGML_AVX512_BF16=$(on avx512_bf16) -DGGML_AVX_VNNI=$(on avx_vnni) -DGGML_BMI2=$(on bmi2)"
ARGS="$ARGS -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
# pip caches the wheel it built from the sdist whatever the flags were: a cache of its own per
# version and flags, so a wheel built with other flags is never reused.
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/binllm/llamacpp-$(echo "$VERSION $ARGS" | sha256sum | cut -c1-12)"
CMAKE_ARGS="$ARGS" \
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$PY" -m pip install -v --cache-dir "$CACHE" "llama-cpp-python==$VERSION" >"$LOG" 2>&1 || {
    echo "install-llamacpp: build failed; last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
}
"$PY" -c "import llama_cpp; print('install-llamacpp: llama_cpp', llama_cpp.__version__, 'installed')"
