"""pytest-benchmark runs of binllm's GEMV and GEMM kernels on BitNet b1.58 2B4T and 700M layer
shapes, with their baselines measured in the same process:

    .venv/bin/python -m pytest benches/bench_kernels.py --benchmark-only

Each pytest-benchmark group holds one shape, operation and thread count, so its relative
columns compare the three packed formats with numpy float32 and with a streaming read of as
many bytes as each matrix. The numpy baselines run last: OpenBLAS's threads keep spinning
after each call and would slow the next kernel on all threads. A summary after the run adds GB/s, shares of the memory read
bandwidth (streaming read over 1 GiB, benchmarked first) and speed-ups over numpy.
`benches/kernel_table.py` measures the same cases into the README's markdown table.
"""

from __future__ import annotations

import functools
import time

import kernel_cases as kc
import numpy as np
import pytest

CASES = [(shape, fmt, t) for shape in kc.SHAPES for fmt in kc.FORMATS for t in kc.THREAD_COUNTS]
BASELINES = [(shape, t) for shape in kc.SHAPES for t in kc.THREAD_COUNTS]


def case_id(case) -> str:
    return "-".join(str(part) if not isinstance(part, int) else f"{part}t" for part in case)


@functools.lru_cache(maxsize=None)
def codes(shape: kc.Shape) -> np.ndarray:
    return kc.ternary_codes(shape)


@functools.lru_cache(maxsize=None)
def packed(shape: kc.Shape, fmt: str):
    return kc.pack(fmt, codes(shape))


@functools.lru_cache(maxsize=2)
def float_weights(shape: kc.Shape) -> np.ndarray:
    return codes(shape).astype(np.float32)


@functools.lru_cache(maxsize=1)
def cold_ring(shape: kc.Shape, fmt: str) -> list:
    return kc.cold_ring(fmt, codes(shape))


def record(benchmark, kind: str, shape, fmt: str, threads: int, nbytes: int = 0) -> None:
    seconds = benchmark.stats.stats.min
    kc.RESULTS[(kind, shape, fmt, threads)] = (seconds, nbytes)
    if nbytes:
        benchmark.extra_info["GB/s"] = round(kc.gigabytes_per_second(nbytes, seconds), 2)


@pytest.mark.parametrize("threads", kc.THREAD_COUNTS, ids=lambda t: f"{t}t")
def test_memory_read_bandwidth(benchmark, threads):
    """Streaming read over 1 GiB, timed a 32 MiB slice at a time (kernel_cases)."""
    benchmark.group = "memory read, 1 GiB"
    read, slices = kc.memory_reader(np.ones(kc.MEMORY_PROBE_BYTES, np.uint8))
    with kc.threads(threads):
        benchmark.pedantic(read, rounds=3 * slices, warmup_rounds=slices)
    record(benchmark, "memory", None, "", threads, kc.MEMORY_PROBE_SLICE)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gemv(benchmark, case):
    shape, fmt, threads = case
    benchmark.group = f"GEMV {shape} {threads}t"
    w, x = packed(shape, fmt), kc.activations(shape.k)
    with kc.threads(threads):
        benchmark(w.matmul, x)
    record(benchmark, "gemv", shape, fmt, threads, w.nbytes)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_read_same_bytes(benchmark, case):
    shape, fmt, threads = case
    benchmark.group = f"GEMV {shape} {threads}t"
    buf = np.ones(packed(shape, fmt).nbytes, np.uint8)
    with kc.threads(threads):
        benchmark(kc.stream_read, buf)
    record(benchmark, "read", shape, fmt, threads, buf.nbytes)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gemv_cold(benchmark, case):
    """Each call runs the next of >= 256 MB of distinct matrices: weights come from DRAM."""
    shape, fmt, threads = case
    benchmark.group = f"GEMV cold {shape} {threads}t"
    ring = cold_ring(shape, fmt)
    call = kc.ring_caller(ring, kc.activations(shape.k))
    with kc.threads(threads):
        benchmark.pedantic(call, rounds=3 * len(ring), warmup_rounds=len(ring))
    record(benchmark, "cold", shape, fmt, threads, ring[0].nbytes)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gemm(benchmark, case):
    shape, fmt, threads = case
    benchmark.group = f"GEMM M={kc.GEMM_M} {shape} {threads}t"
    w, x = packed(shape, fmt), kc.activations(shape.k, kc.GEMM_M)
    with kc.threads(threads):
        benchmark(w.matmul, x)
    record(benchmark, "gemm", shape, fmt, threads)


@pytest.mark.parametrize("case", BASELINES, ids=case_id)
def test_gemv_numpy_f32(benchmark, case):
    shape, threads = case
    benchmark.group = f"GEMV {shape} {threads}t"
    w, x = float_weights(shape), kc.activations(shape.k)
    with kc.threads(threads):
        benchmark(np.matmul, w, x)
    time.sleep(kc.BLAS_SETTLE_SECONDS)
    record(benchmark, "gemv", shape, "numpy", threads, w.nbytes)


@pytest.mark.parametrize("case", BASELINES, ids=case_id)
def test_gemm_numpy_f32(benchmark, case):
    shape, threads = case
    benchmark.group = f"GEMM M={kc.GEMM_M} {shape} {threads}t"
    w, x = float_weights(shape), kc.activations(shape.k, kc.GEMM_M)
    with kc.threads(threads):
        benchmark(lambda: x @ w.T)
    time.sleep(kc.BLAS_SETTLE_SECONDS)
    record(benchmark, "gemm", shape, "numpy", threads)
