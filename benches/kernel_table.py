"""Prints a markdown table of binllm's GEMV and GEMM kernels on BitNet b1.58 2B4T and 700M
layer shapes, every number a ratio to a baseline measured in this same process.

    .venv/bin/python benches/kernel_table.py            # everything (about 5 minutes)
    .venv/bin/python benches/kernel_table.py --quick    # the 6912x2560 shape only

Columns, per layer shape (N x K), format and thread count:
  GEMV us            one ``matmul`` of a (K,) vector, activation quantization and the Python
                     call included, the same matrix again and again (it stays in L3)
  GB/s               packed weight bytes / GEMV time
  % mem BW           of the streaming read over 1 GiB (memory bandwidth), same thread count
  % read same bytes  of the streaming read over as many bytes as the matrix (cache limit)
  x numpy f32        numpy float32 time / binllm time, numpy's BLAS on the same threads
  cold               GEMV cycling through >= 256 MB of distinct matrices: weights from DRAM
  GEMM ms            ``matmul`` of M = 128 rows
Each time is the fastest of many ~1 ms timings taken in turns (kernel_cases.interleaved_min);
numpy's after binllm's, as its BLAS threads keep spinning after each call.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kernel_cases as kc  # noqa: E402


def measure_shape(shape: kc.Shape, rounds: int, cold: bool) -> list:
    codes = kc.ternary_codes(shape)
    mats = {f: kc.pack(f, codes) for f in kc.FORMATS}
    w32 = codes.astype(np.float32)
    x, xm = kc.activations(shape.k), kc.activations(shape.k, kc.GEMM_M)
    reads = {f: np.ones(mats[f].nbytes, np.uint8) for f in kc.FORMATS}
    rows = {(f, t): {"shape": shape, "format": f, "threads": t, "nbytes": mats[f].nbytes} for f in kc.FORMATS for t in kc.THREAD_COUNTS}
    for t in kc.THREAD_COUNTS:
        with kc.threads(t):
            calls = {f: (lambda w=mats[f]: w.matmul(x)) for f in kc.FORMATS}
            calls.update({f"read {f}": (lambda b=reads[f]: kc.stream_read(b)) for f in kc.FORMATS})
            gemv = kc.interleaved_min(calls, rounds=20 * rounds)
            gemm = kc.interleaved_min({f: (lambda w=mats[f]: w.matmul(xm)) for f in kc.FORMATS}, rounds=2 * rounds, batch_seconds=0)
            numpy = kc.numpy_min({"gemv": lambda: w32 @ x}, rounds=20 * rounds)
            numpy.update(kc.numpy_min({"gemm": lambda: xm @ w32.T}, rounds=2 * rounds, batch_seconds=0))
        for f in kc.FORMATS:
            rows[f, t].update(gemv=gemv[f], read_same=gemv[f"read {f}"], numpy_gemv=numpy["gemv"], gemm=gemm[f], numpy_gemm=numpy["gemm"])
    if cold:
        del mats
        for f in kc.FORMATS:
            ring = kc.cold_ring(f, codes)
            for t in kc.THREAD_COUNTS:
                with kc.threads(t):
                    # One pass first (warm-up), so every timed call finds a matrix read 256 MB ago.
                    call = kc.ring_caller(ring, x)
                    s = kc.interleaved_min({"cold": call}, rounds=len(ring) * max(2, rounds // 2), batch_seconds=0, warmup={"cold": len(ring)})
                rows[f, t]["cold"] = s["cold"]
            del ring
    return list(rows.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="only the 6912x2560 shape")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold (DRAM) GEMVs")
    ap.add_argument("--rounds", type=int, default=10, help="timing rounds scale (default 10)")
    args = ap.parse_args()
    shapes = [s for s in kc.SHAPES if (s.n, s.k) == (6912, 2560)] if args.quick else kc.SHAPES

    mem = kc.memory_bandwidth()
    rows = []
    for shape in shapes:
        rows += measure_shape(shape, args.rounds, cold=not args.no_cold)
        print(f"measured {shape}", file=sys.stderr, flush=True)
    # Memory bandwidth again at the end; the better of the two is the (conservative) reference.
    mem = {t: max(a, b) for (t, a), b in zip(mem.items(), kc.memory_bandwidth().values())}

    print(f"Machine: {kc.machine_summary()}. numpy {np.__version__}" + ("" if kc.BLAS.set else " (its BLAS thread count could not be set)") + ".")
    print("Memory read bandwidth (streaming read over 1 GiB): " + ", ".join(f"{mem[t]:.1f} GB/s on {t} thread{'s' if t > 1 else ''}" for t in kc.THREAD_COUNTS) + ".")
    print()
    print(kc.markdown_table(rows, mem))
    print()
    for r in rows:
        if r["format"] == "t2" and r["threads"] == 1 and (r["shape"].n, r["shape"].k) == (6912, 2560):
            gbs = kc.gigabytes_per_second(r["nbytes"], r["gemv"])
            line = f"t2 GEMV, 1 thread, 6912x2560: {gbs:.1f} GB/s = {100 * gbs / mem[1]:.0f}% of memory bandwidth (matrix in L3)"
            if "cold" in r:
                cgbs = kc.gigabytes_per_second(r["nbytes"], r["cold"])
                line += f"; from DRAM {cgbs:.1f} GB/s = {100 * cgbs / mem[1]:.0f}%"
            print(line + ".")


if __name__ == "__main__":
    main()
