"""Kernels against numpy references of BitNet b1.58's formula, and every backend bit-exact
against the scalar reference, on seeded random shapes (odd ones included)."""

import os
import subprocess
import sys
import threading

import binllm
import numpy as np
import pytest
from binllm import kernels
from helpers import on_one_and_two_threads

BACKENDS = kernels.backends()
SHAPES = [(1, 1, 1), (1, 256, 1), (5, 17, 3), (17, 255, 17), (9, 320, 1), (33, 1023, 3), (8, 1537, 17), (64, 2560, 1), (3, 700, 5)]


def np_quantize(x):
    """BitNet b1.58 per-token quantization, in float32 like the kernels."""
    x = np.atleast_2d(x).astype(np.float32)
    amax = np.maximum(np.abs(x).max(axis=1), np.float32(1e-5)).astype(np.float32)
    s = (np.float32(127) / amax).astype(np.float32)
    q = np.clip(np.rint(x * s[:, None]), -128, 127).astype(np.int8)
    return q, s


def np_matmul(codes, x, row_scale, col_scale=None):
    """Y[m, n] = (sum_k W[n, k] q[m, k]) * w_s[n] / s[m], in float64 from exact integer sums."""
    x = np.atleast_2d(x)
    if col_scale is not None:
        x = (x * col_scale[None, :]).astype(np.float32)
    q, s = np_quantize(x)
    sums = q.astype(np.int64) @ codes.astype(np.int64).T
    return sums.astype(np.float64) * np.asarray(row_scale, np.float64) / s.astype(np.float64)[:, None], sums


def ternary(rng, n, k):
    return rng.integers(-1, 2, size=(n, k)).astype(np.int8)


def binary(rng, n, k):
    return np.where(rng.random((n, k)) < 0.5, -1, 1).astype(np.int8)


def activations(rng, m, k):
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[0, 0] = 9.0  # an outlier, as LLM activations have
    return x


def assert_rel(got, want):
    rel = np.abs(got - want) / np.maximum(np.abs(want), 1e-30)
    assert rel.max() <= 1e-6, f"max relative error {rel.max():.3g}"


def test_quantize_activations_matches_numpy_exactly(rng):
    for m, k in [(1, 1), (3, 17), (17, 2560)]:
        x = activations(rng, m, k)
        x[-1, :] = 0.0  # an all-zero row: max clamps to 1e-5
        q, s = kernels.quantize_activations(x)
        q_ref, s_ref = np_quantize(x)
        np.testing.assert_array_equal(q, q_ref)
        np.testing.assert_array_equal(s, s_ref)
    # Round half to even, and clamping.
    q, s = kernels.quantize_activations(np.array([127.0, 0.5, -0.5, 1.5, 2.5], np.float32))
    np.testing.assert_array_equal(q, [127, 0, 0, 2, 2])
    assert q.shape == (5,)


@pytest.mark.parametrize("bits", [2.0, 1.6])
@pytest.mark.parametrize("per_row", [False, True])
def test_ternary_matmul_matches_numpy(rng, bits, per_row):
    for n, k, m in SHAPES:
        codes = ternary(rng, n, k)
        scale = rng.uniform(0.1, 2.0, n).astype(np.float32) if per_row else 0.37
        w = kernels.pack_ternary(codes, scale, bits=bits)
        assert w.shape == (n, k) and w.format == ("t2" if bits == 2.0 else "t1.6")
        np.testing.assert_array_equal(w.unpack(), codes)
        x = activations(rng, m, k)
        want, _ = np_matmul(codes, x, scale if per_row else np.full(n, scale, np.float32))
        assert_rel(w.matmul(x), want)
        assert_rel(w.matmul(x[0]), want[0])
        assert w.matmul(x[0]).shape == (n,)


def test_binary_and_onebit_matmul_match_numpy(rng):
    for n, k, m in SHAPES:
        codes = binary(rng, n, k)
        g = rng.uniform(0.1, 2.0, n).astype(np.float32)
        h = rng.uniform(0.1, 2.0, k).astype(np.float32)
        x = activations(rng, m, k)
        w = kernels.pack_binary(codes, g)
        assert w.format == "b1"
        np.testing.assert_array_equal(w.unpack(), codes)
        assert_rel(w.matmul(x), np_matmul(codes, x, g)[0])
        onebit = kernels.pack_binary(codes, g, h)
        assert_rel(onebit.matmul(x), np_matmul(codes, x, g, h)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_is_bit_exact_with_scalar_and_numpy(rng, backend):
    for n, k, m in SHAPES + [(37, 4096, 4), (128, 1536, 128)]:
        for codes, w in [
            (c := ternary(rng, n, k), kernels.pack_ternary(c, 1.0)),
            (c := ternary(rng, n, k), kernels.pack_ternary(c, 1.0, bits=1.6)),
            (c := binary(rng, n, k), kernels.pack_binary(c, 1.0)),
        ]:
            x = activations(rng, m, k)
            got = w.integer_sums(x, backend=backend)
            np.testing.assert_array_equal(got, w.integer_sums(x, backend="scalar"))
            np.testing.assert_array_equal(got, np_matmul(codes, x, np.ones(n, np.float32))[1])


def test_bits_per_weight_and_nbytes_count_every_scale(rng):
    w = kernels.pack_ternary(ternary(rng, 2560, 2560), 1.0)
    assert w.nbytes == 2560 * 2560 // 4 + 4
    assert 2.0 < w.bits_per_weight < 2.0001
    w = kernels.pack_ternary(ternary(rng, 2560, 2560), 1.0, bits=1.6)
    assert w.nbytes == 2560 * 8 * 64 + 4  # 2560 = 8 blocks of 320
    assert abs(w.bits_per_weight - 1.6) < 1e-3
    w = kernels.pack_binary(binary(rng, 100, 512), np.ones(100, np.float32), np.ones(512, np.float32))
    assert w.nbytes == 100 * 64 + 4 * (100 + 512)
    # Padding counts: K = 300 holds 512 weights of t2 per row.
    w = kernels.pack_ternary(ternary(rng, 4, 300), 1.0)
    assert w.nbytes == 4 * 128 + 4


@pytest.mark.parametrize("m", [1, 7, 96])
@pytest.mark.parametrize("grouped", [False, True])
def test_threads_give_the_same_result(rng, m, grouped):
    # 96 rows also split the activation quantization and the epilogue over the pool.
    codes = ternary(rng, 1000, 1536)
    scale = rng.uniform(0.5, 1.5, (1000, 6)).astype(np.float32) if grouped else 0.5
    w = kernels.pack_ternary(codes, scale, group_size=256 if grouped else None)
    x = activations(rng, m, 1536)
    one, two = on_one_and_two_threads(lambda: w.matmul(x))
    np.testing.assert_array_equal(one, two)


def test_compute_releases_the_gil(rng):
    # Two Python threads calling matmul at once must both finish with correct results.
    codes = ternary(rng, 512, 2560)
    w = kernels.pack_ternary(codes, 1.0)
    x = activations(rng, 4, 2560)
    want = w.matmul(x)
    results = []
    threads = [threading.Thread(target=lambda: results.append(w.matmul(x))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(np.array_equal(r, want) for r in results)


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda: kernels.pack_ternary(np.zeros((2, 3), np.float32), 1.0), TypeError, "int8"),
        (lambda: kernels.pack_ternary(np.zeros(3, np.int8), 1.0), ValueError, "2-D"),
        (lambda: kernels.pack_ternary(np.array([[0, 2]], np.int8), 1.0), ValueError, "column 1"),
        (lambda: kernels.pack_ternary(np.zeros((4, 4), np.int8)[:, ::2], 1.0), ValueError, "contiguous"),
        (lambda: kernels.pack_ternary(np.zeros((2, 4), np.int8), np.ones(3, np.float32)), ValueError, "shape (2,)"),
        (lambda: kernels.pack_ternary(np.zeros((2, 4), np.int8), np.ones(2, np.float64)), TypeError, "float32"),
        (lambda: kernels.pack_ternary(np.zeros((2, 4), np.int8), float("nan")), ValueError, "finite"),
        (lambda: kernels.pack_ternary(np.zeros((2, 4), np.int8), 1.0, bits=3), ValueError, "bits"),
        (lambda: kernels.pack_ternary(np.zeros((0, 4), np.int8), 1.0), ValueError, "shape"),
        (lambda: kernels.pack_binary(np.zeros((2, 4), np.int8), 1.0), ValueError, "-1 or 1"),
        (lambda: kernels.pack_binary(np.ones((2, 4), np.int8), 1.0, np.ones(3, np.float32)), ValueError, "(4,)"),
        (lambda: kernels.quantize_activations(np.zeros(4, np.float64)), TypeError, "float32"),
        (lambda: kernels.quantize_activations([1.0, 2.0]), TypeError, "numpy"),
        (lambda: kernels.set_num_threads(0), ValueError, "threads"),
    ],
)
def test_bad_input_raises_clear_errors(call, exc, words):
    with pytest.raises(exc, match=None) as info:
        call()
    assert words in str(info.value)


def test_matmul_bad_input(rng):
    w = kernels.pack_ternary(ternary(rng, 3, 10), 1.0)
    with pytest.raises(ValueError, match=r"\(10,\) or \(M, 10\)"):
        w.matmul(np.zeros(11, np.float32))
    with pytest.raises(TypeError, match="float32"):
        w.matmul(np.zeros(10, np.float64))
    with pytest.raises(ValueError, match="contiguous"):
        w.matmul(np.zeros((2, 20), np.float32)[:, ::2])
    with pytest.raises(binllm.BackendError, match="unknown backend"):
        w.matmul(np.zeros(10, np.float32), backend="avx9000")


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True)


def test_binllm_backend_env_forces_a_backend_or_errors():
    out = run_python("from binllm import kernels; print(kernels.backend())", BINLLM_BACKEND="scalar")
    assert out.returncode == 0 and out.stdout.strip() == "scalar", out.stderr
    lacking = "neon" if "neon" not in BACKENDS else "simd128"
    code = (
        "import numpy as np, binllm\n"
        "from binllm import kernels\n"
        "w = kernels.pack_ternary(np.zeros((2, 4), np.int8), 1.0)\n"
        "try:\n    w.matmul(np.ones(4, np.float32))\nexcept binllm.BackendError as e:\n    print('ERR', e)\n"
    )
    out = run_python(code, BINLLM_BACKEND=lacking)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ERR") and "cannot run" in out.stdout and "avx" not in lacking
