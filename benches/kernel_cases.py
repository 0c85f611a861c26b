"""What the kernel benchmarks measure, shared by ``bench_kernels.py`` (pytest-benchmark) and
``kernel_table.py`` (one process, a markdown table).

Cases are the linear layers of BitNet b1.58 2B4T and of a 700M model, (N, K) = (output,
input) features, in every packed format, on one thread and on all. Each kernel time is set
against baselines taken in the same process: numpy float32 matmul of the same shape (its
BLAS held to the same thread count) and binllm's streaming-read probe
(``binllm._core.sum_bytes``, an AVX-512 byte sum in ``kernels::bandwidth``) over 1 GiB
(memory bandwidth) and over as many bytes as the packed matrix (the cache-resident limit: a
matrix called again and again stays in L3).

A "cold" GEMV cycles through distinct copies of a matrix, at least 256 MB of them, so its
weights come from DRAM as they do when a model decodes.

Timing: machines running other work (shared CI boxes, a laptop with a browser) preempt long
timings, so every figure is the fastest of many short timings (about 1 ms: single calls, or
batches of small ones), taken in turns between the things compared.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import platform
import time
from dataclasses import dataclass

import numpy as np
from binllm import _core, kernels

FORMATS = ["t2", "t1.6", "b1"]
GEMM_M = 128
COLD_BYTES = 256 << 20
MEMORY_PROBE_BYTES = 1 << 30
# The 1 GiB probe is timed a slice at a time: each slice is far larger than any cache and was
# last read 1 GiB ago, and a short timing is rarely preempted.
MEMORY_PROBE_SLICE = 32 << 20
# Seconds per call (and bytes streamed) of each case benchmarked in this process, keyed
# (kind, shape, format, threads); bench_kernels.py fills it for its summary.
RESULTS: dict = {}


@dataclass(frozen=True)
class Shape:
    model: str
    layer: str
    n: int
    k: int

    def __str__(self) -> str:
        return f"{self.n}x{self.k}"


SHAPES = [
    Shape("2B4T", "q/o proj", 2560, 2560),
    Shape("2B4T", "gate/up proj", 6912, 2560),
    Shape("2B4T", "down proj", 2560, 6912),
    Shape("700M", "q/o proj", 1536, 1536),
    Shape("700M", "gate/up proj", 4096, 1536),
    Shape("700M", "down proj", 1536, 4096),
]

ALL_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
THREAD_COUNTS = sorted({1, ALL_THREADS})


def ternary_codes(shape: Shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1, 2, size=(shape.n, shape.k), dtype=np.int8)


def pack(fmt: str, codes: np.ndarray) -> kernels.PackedMatrix:
    """Packs ternary codes into ``fmt`` (for b1, zeros become +1: the values do not matter here)."""
    if fmt == "b1":
        return kernels.pack_binary(np.where(codes >= 0, 1, -1).astype(np.int8), 1.0)
    return kernels.pack_ternary(codes, 1.0, bits=2.0 if fmt == "t2" else 1.6)


def cold_ring(fmt: str, codes: np.ndarray, total_bytes: int = COLD_BYTES) -> list:
    """Distinct copies of one packed matrix, at least ``total_bytes`` together."""
    first = pack(fmt, codes)
    count = -(-total_bytes // first.nbytes)
    return [first] + [pack(fmt, codes) for _ in range(count - 1)]


def activations(k: int, m: int | None = None, seed: int = 1) -> np.ndarray:
    shape = (k,) if m is None else (m, k)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


class _Blas:
    """Sets the thread count of numpy's OpenBLAS at run time (what threadpoolctl does)."""

    def __init__(self) -> None:
        self.set = self.get = None
        for path in glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*")):
            lib = ctypes.CDLL(path)
            for prefix in ("scipy_openblas_", "openblas_"):
                for suffix in ("64_", ""):
                    if hasattr(lib, f"{prefix}set_num_threads{suffix}"):
                        self.set = getattr(lib, f"{prefix}set_num_threads{suffix}")
                        self.get = getattr(lib, f"{prefix}get_num_threads{suffix}")
                        return

    @contextlib.contextmanager
    def threads(self, n: int):
        if self.set is None:
            yield
            return
        before = self.get()
        self.set(n)
        try:
            yield
        finally:
            self.set(before)


BLAS = _Blas()
# OpenBLAS's workers spin for a while after each call: a kernel measured right after numpy on
# all threads would find a core taken. Measure numpy last and wait this long after it.
BLAS_SETTLE_SECONDS = 0.5


def numpy_min(calls: dict, rounds: int, batch_seconds: float = 1e-3) -> dict:
    """`interleaved_min` for numpy baselines, then a pause for BLAS's workers to go idle."""
    best = interleaved_min(calls, rounds, batch_seconds)
    time.sleep(BLAS_SETTLE_SECONDS)
    return best


@contextlib.contextmanager
def threads(n: int):
    """binllm's kernels and numpy's BLAS both on ``n`` threads."""
    before = kernels.num_threads()
    kernels.set_num_threads(n)
    try:
        with BLAS.threads(n):
            yield
    finally:
        kernels.set_num_threads(before)


def stream_read(buf: np.ndarray) -> None:
    _core.sum_bytes(buf)


def gigabytes_per_second(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def cycle(calls: list):
    """One callable that runs the next of ``calls`` each time."""
    state = {"i": 0}

    def call() -> None:
        i = state["i"]
        calls[i]()
        state["i"] = (i + 1) % len(calls)

    return call


def ring_caller(ring: list, x: np.ndarray):
    """Runs the next matrix of a cold ring on each call."""
    return cycle([lambda w=w: w.matmul(x) for w in ring])


def memory_reader(buf: np.ndarray):
    """Reads the next slice of the 1 GiB probe buffer on each call."""
    slices = [buf[i : i + MEMORY_PROBE_SLICE] for i in range(0, buf.nbytes, MEMORY_PROBE_SLICE)]
    return cycle([lambda s=s: stream_read(s) for s in slices]), len(slices)


def interleaved_min(calls: dict, rounds: int, batch_seconds: float = 1e-3, warmup: dict | None = None) -> dict:
    """Seconds per call of each callable: the fastest of ``rounds`` timings, each of a batch
    of about ``batch_seconds`` (at least one call), taken in turns between the callables so
    load from other processes falls on all alike. ``warmup`` gives calls to run first per
    name (default 2: page in, fill caches, start threads)."""
    batch = {}
    for name, call in calls.items():
        for _ in range((warmup or {}).get(name, 2)):
            call()
        start = time.perf_counter()
        call()
        batch[name] = max(1, int(batch_seconds / max(time.perf_counter() - start, 1e-9)))
    best = {name: float("inf") for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            n = batch[name]
            start = time.perf_counter()
            for _ in range(n):
                call()
            best[name] = min(best[name], (time.perf_counter() - start) / n)
    return best


def memory_bandwidth(rounds: int = 3) -> dict:
    """GB/s of the streaming read over 1 GiB, per thread count."""
    buf = np.ones(MEMORY_PROBE_BYTES, np.uint8)
    out = {}
    for t in THREAD_COUNTS:
        with threads(t):
            read, slices = memory_reader(buf)
            s = interleaved_min({"read": read}, rounds=rounds * slices, batch_seconds=0, warmup={"read": slices})["read"]
        out[t] = gigabytes_per_second(MEMORY_PROBE_SLICE, s)
    return out


def cpu_name() -> str:
    """The CPU's model name as Linux reports it (results differ between machine kinds)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_summary() -> str:
    return f"{cpu_name()}, {ALL_THREADS} threads usable, binllm backend {kernels.backend()}"


def _us(s: float) -> str:
    us = s * 1e6
    return f"{us:.0f}" if us >= 100 else f"{us:.1f}"


def markdown_table(rows: list, mem: dict) -> str:
    """One line per row dict: shape, format, threads, nbytes and the seconds per call of
    gemv, read_same, numpy_gemv, cold, gemm, numpy_gemm (any may be missing: "-"). ``mem`` is
    the memory read GB/s per thread count."""
    head = [
        "layer", "N x K", "format", "threads", "GEMV us", "GB/s", "% mem BW", "% read same bytes",
        "x numpy f32", "cold GEMV us", "cold GB/s", "cold % mem BW", "GEMM M=128 ms", "x numpy f32",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 4 else "--:" for i in range(len(head))) + "|"]
    for r in rows:
        sh, t, nb, get = r["shape"], r["threads"], r["nbytes"], r.get
        cells = [f"{sh.model} {sh.layer}", str(sh), r["format"], str(t)]
        if get("gemv"):
            gbs = gigabytes_per_second(nb, r["gemv"])
            cells += [_us(r["gemv"]), f"{gbs:.1f}", f"{100 * gbs / mem[t]:.0f}%" if t in mem else "-"]
            cells += [f"{100 * r['read_same'] / r['gemv']:.0f}%" if get("read_same") else "-"]
            cells += [f"{r['numpy_gemv'] / r['gemv']:.1f}" if get("numpy_gemv") else "-"]
        else:
            cells += ["-"] * 5
        if get("cold"):
            cgbs = gigabytes_per_second(nb, r["cold"])
            cells += [_us(r["cold"]), f"{cgbs:.1f}", f"{100 * cgbs / mem[t]:.0f}%" if t in mem else "-"]
        else:
            cells += ["-"] * 3
        if get("gemm"):
            cells += [f"{r['gemm'] * 1e3:.2f}", f"{r['numpy_gemm'] / r['gemm']:.1f}" if get("numpy_gemm") else "-"]
        else:
            cells += ["-"] * 2
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rows_from_results(results: dict) -> tuple[list, dict]:
    """``markdown_table``'s rows and memory bandwidth from RESULTS."""
    mem = {t: gigabytes_per_second(nb, s) for (kind, _, _, t), (s, nb) in results.items() if kind == "memory"}
    rows = []
    for shape in SHAPES:
        for fmt in FORMATS:
            for t in THREAD_COUNTS:

                def seconds(kind, f=fmt):
                    return results.get((kind, shape, f, t), (None, 0))[0]

                row = {
                    "shape": shape, "format": fmt, "threads": t,
                    "nbytes": max(results.get((k, shape, fmt, t), (0, 0))[1] for k in ("gemv", "read", "cold")),
                    "gemv": seconds("gemv"), "read_same": seconds("read"), "numpy_gemv": seconds("gemv", "numpy"),
                    "cold": seconds("cold"), "gemm": seconds("gemm"), "numpy_gemm": seconds("gemm", "numpy"),
                }
                if any(row[k] for k in ("gemv", "cold", "gemm")):
                    rows.append(row)
    return rows, mem
