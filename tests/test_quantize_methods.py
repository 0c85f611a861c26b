"""binllm.quantize.methods against straightforward loop-based numpy references of each paper's
formula (written separately from the vectorized code), on odd shapes; the stored-form identity
w_hat == reconstruct(q); true bits per weight; Hessian compensation lowering the layer error on
realistic calibration activations; and clear errors for bad arguments."""

import math

import numpy as np
import pytest
from binllm.quantize import methods as M


def fp16(x):
    """The stored float16 value of a float, as a Python float."""
    return float(np.float16(x))


def sgn(x):
    return 1.0 if x >= 0 else -1.0


def groups_of(k, group_size):
    """(start, end) column ranges of the scales: whole row for None / -1."""
    if group_size in (None, -1):
        return [(0, k)]
    return [(s, min(s + group_size, k)) for s in range(0, k, group_size)]


def weights(shape, seed):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal(shape) * 0.02
    W[:, rng.integers(0, shape[1], 3)] *= 8  # a few outlier input channels, as in real LLMs
    return W.astype(np.float32)


def calibration_hessian(k, seed, samples=None):
    """H = X^T X for activations with correlated channels and a few large-outlier channels."""
    rng = np.random.default_rng(seed)
    samples = samples or 4 * k
    latent = rng.standard_normal((samples, k // 4 + 1))
    X = latent @ rng.standard_normal((k // 4 + 1, k)) * 0.5 + rng.standard_normal((samples, k))
    X[:, rng.choice(k, 4, replace=False)] *= 20
    return X.T @ X


SHAPES = [(7, 300), (5, 513)]


# ---------------------------------------------------------------------------------------------
# loop-based references


def ref_absmean(W, group_size):
    n, k = W.shape
    per_tensor = group_size is None
    if per_tensor:
        total = sum(abs(float(W[i, j])) for i in range(n) for j in range(k))
        tensor_scale = fp16(total / (n * k))
    codes = np.zeros((n, k), np.int8)
    w_hat = np.zeros((n, k), np.float32)
    scales = []
    for i in range(n):
        row = []
        for s, e in groups_of(k, group_size):
            scale = tensor_scale if per_tensor else fp16(sum(abs(float(W[i, j])) for j in range(s, e)) / (e - s))
            row.append(scale)
            for j in range(s, e):
                code = 0 if scale == 0 else int(max(-1, min(1, round(float(W[i, j]) / scale))))  # round: half to even
                codes[i, j] = code
                w_hat[i, j] = np.float32(code) * np.float32(scale)
        scales.append(row)
    return codes, (tensor_scale if per_tensor else np.array(scales)), w_hat


def ref_sign(W, group_size):
    n, k = W.shape
    codes = np.zeros((n, k), np.int8)
    w_hat = np.zeros((n, k), np.float32)
    for i in range(n):
        for s, e in groups_of(k, group_size):
            values = [float(W[i, j]) for j in range(s, e)]
            mu = sum(values) / len(values)
            alpha = fp16(sum(abs(v) for v in values) / len(values))
            for j, v in zip(range(s, e), values):
                codes[i, j] = sgn(v - mu)
                w_hat[i, j] = np.float32(codes[i, j]) * np.float32(alpha)
    return codes, w_hat


def ref_onebit(W):
    A = np.abs(W.astype(np.float64))
    u, s, vt = np.linalg.svd(A)
    u0, v0 = u[:, 0] * np.sign(u[:, 0].sum()), vt[0] * np.sign(vt[0].sum())
    a = [fp16(math.sqrt(s[0]) * x) for x in u0]
    b = [fp16(math.sqrt(s[0]) * x) for x in v0]
    n, k = W.shape
    w_hat = np.zeros((n, k), np.float32)
    for i in range(n):
        for j in range(k):
            w_hat[i, j] = np.float32(sgn(W[i, j])) * np.float32(a[i]) * np.float32(b[j])
    return np.array(a), np.array(b), w_hat


def ref_arb_fit(W, iterations):
    """ARB's alternating least squares, one scalar at a time."""
    W = W.astype(np.float64)
    n, k = W.shape
    mu = [sum(W[i]) / k for i in range(n)]
    alpha = [sum(abs(W[i, j] - mu[i]) for j in range(k)) / k for i in range(n)]
    beta = [1.0] * k
    B = [[sgn(W[i, j] - mu[i]) for j in range(k)] for i in range(n)]
    for _ in range(iterations):
        mu = [sum(W[i, j] - alpha[i] * beta[j] * B[i][j] for j in range(k)) / k for i in range(n)]
        beta2 = sum(b * b for b in beta)
        alpha = [sum((W[i, j] - mu[i]) * B[i][j] * beta[j] for j in range(k)) / beta2 for i in range(n)]
        alpha2 = sum(a * a for a in alpha)
        beta = [sum((W[i, j] - mu[i]) * B[i][j] * alpha[i] for i in range(n)) / alpha2 for j in range(k)]
        B = [[sgn((W[i, j] - mu[i]) * alpha[i] * beta[j]) for j in range(k)] for i in range(n)]
    return mu, alpha, beta


def ref_arb(W, iterations):
    mu, alpha, beta = (np.array([fp16(x) for x in v]) for v in ref_arb_fit(W, iterations))
    n, k = W.shape
    codes = np.array([[sgn((float(W[i, j]) - mu[i]) * alpha[i] * beta[j]) for j in range(k)] for i in range(n)])
    return codes, mu, alpha, beta


def ref_inverse_hessian_factor(H, W, damp=0.01):
    H = np.array(H, np.float64)
    for j in range(H.shape[0]):
        if H[j, j] == 0:
            H[j, j] = 1.0
            W[:, j] = 0.0
    H = H + damp * np.mean(np.diag(H)) * np.eye(H.shape[0])
    return np.linalg.cholesky(np.linalg.inv(H)).T


def ref_gptq(W, H, quantize_column, damp=0.01):
    """Plain GPTQ / OBQ order: quantize column j, spread its error over all later columns now."""
    W = W.astype(np.float64).copy()
    U = ref_inverse_hessian_factor(H, W, damp)
    Q = np.zeros_like(W)
    for j in range(W.shape[1]):
        Q[:, j] = quantize_column(j, W)
        err = (W[:, j] - Q[:, j]) / U[j, j]
        W[:, j + 1 :] -= np.outer(err, U[j, j + 1 :])
    return Q


def ref_gptq_ternary(W, H, group_size):
    n, k = W.shape
    if group_size is None:
        fixed = np.full(n, fp16(np.mean(np.abs(W.astype(np.float64)))))
    elif group_size == -1:
        fixed = np.array([fp16(np.mean(np.abs(W[i].astype(np.float64)))) for i in range(n)])
    scale = {}

    def quantize_column(j, current):
        if group_size not in (None, -1) and j % group_size == 0:
            scale["now"] = np.array([fp16(np.mean(np.abs(current[i, j : j + group_size]))) for i in range(n)])
        s = fixed if group_size in (None, -1) else scale["now"]
        return np.array([0.0 if s[i] == 0 else max(-1.0, min(1.0, np.rint(current[i, j] / s[i]))) * s[i] for i in range(n)])

    return ref_gptq(W, H, quantize_column)


def ref_arb_gptq(W, H, iterations):
    mu, alpha, beta = (np.array([fp16(x) for x in v]) for v in ref_arb_fit(W, iterations))
    n = W.shape[0]

    def quantize_column(j, current):
        return np.array([mu[i] + alpha[i] * beta[j] * sgn((current[i, j] - mu[i]) * alpha[i] * beta[j]) for i in range(n)])

    return ref_gptq(W, H, quantize_column)


def ref_binarize(values, order):
    """BiLLM's residual binarization of one row's values: per order a float16 mean and scale."""
    approx = [0.0] * len(values)
    for _ in range(order):
        residual = [v - a for v, a in zip(values, approx)]
        if not residual:
            break
        m = fp16(sum(residual) / len(residual))
        a = fp16(sum(abs(r - m) for r in residual) / len(residual))
        approx = [x + m + a * sgn(r - m) for x, r in zip(approx, residual)]
    return approx


def ref_binarize_error(values, order):
    """The search's error: the same binarization with unrounded means and scales."""
    residual = list(values)
    if not residual:
        return 0.0
    for o in range(order):
        m = sum(residual) / len(residual)
        a = sum(abs(r - m) for r in residual) / len(residual)
        residual = [r - m - a * sgn(r - m) for r in residual]
    return sum(r * r for r in residual)


def ref_billm_block(Wb, d, max_salient=30):
    n, m = Wb.shape
    saliency = [sum(Wb[i, j] ** 2 for i in range(n)) / d[j] ** 2 for j in range(m)]
    order = sorted(range(m), key=lambda j: -saliency[j])
    best = None
    for c in range(1, min(max_salient, m) + 1):
        sal, rest = order[:c], order[c:]
        error = sum(ref_binarize_error([Wb[i, j] for j in sal], 2) + ref_binarize_error([Wb[i, j] for j in rest], 2) for i in range(n))
        if best is None or error < best[0]:
            best = (error, c)
    c = best[1]
    sal, rest = order[:c], order[c:]
    Q = np.zeros_like(Wb)
    for i in range(n):
        for j, v in zip(sal, ref_binarize([Wb[i, j] for j in sal], 2)):
            Q[i, j] = v
    if not rest:
        return Q, c
    magnitudes = np.abs(Wb[:, rest]).ravel()
    best = None
    for p in np.quantile(magnitudes, np.linspace(0.1, 0.9, 81)):
        error = 0.0
        for i in range(n):
            error += ref_binarize_error([Wb[i, j] for j in rest if abs(Wb[i, j]) < p], 1)
            error += ref_binarize_error([Wb[i, j] for j in rest if abs(Wb[i, j]) >= p], 1)
        if best is None or error < best[0]:
            best = (error, p)
    p = best[1]
    for i in range(n):
        for group in ([j for j in rest if abs(Wb[i, j]) < p], [j for j in rest if abs(Wb[i, j]) >= p]):
            for j, v in zip(group, ref_binarize([Wb[i, j] for j in group], 1)):
                Q[i, j] = v
    return Q, c


def ref_billm(W, H, compensate=True):
    W = W.astype(np.float64).copy()
    U = ref_inverse_hessian_factor(H, W)
    Q = np.zeros_like(W)
    for s in range(0, W.shape[1], 128):
        e = min(s + 128, W.shape[1])
        d = np.diag(U)[s:e]
        Q[:, s:e], _ = ref_billm_block(W[:, s:e], d)
        if compensate:
            W[:, e:] -= ((W[:, s:e] - Q[:, s:e]) / d) @ U[s:e, e:]
    return Q


# ---------------------------------------------------------------------------------------------
# the methods against their references


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("group_size", [None, -1, 256])
def test_absmean_matches_reference(shape, group_size):
    W = weights(shape, 1)
    q = M.quantize(W, "absmean", group_size=group_size)
    codes, scale, w_hat = ref_absmean(W, group_size)
    assert q.format == "t2" and q.codes.dtype == np.int8
    np.testing.assert_array_equal(q.codes, codes)
    np.testing.assert_array_equal(q.scale, np.asarray(scale, np.float32).reshape(q.scale.shape))
    np.testing.assert_array_equal(q.w_hat, w_hat)
    expected_scale_shape = {None: (), -1: (shape[0],), 256: (shape[0], -(-shape[1] // 256))}[group_size]
    assert q.scale.shape == expected_scale_shape
    assert q.group_size == (256 if group_size == 256 else None)


def test_absmean_rounds_half_to_even_and_zero_groups_give_zero_codes():
    half = M.quantize(np.array([[1.0, 1.0, 0.5, 1.5, -0.5, -1.0]], np.float32), "absmean")
    assert half.scale == 0.9166666 or abs(float(half.scale) - 11 / 12) < 1e-3
    exact = M.quantize(np.array([[1.0, 1.0, 0.5, 1.5]], np.float32), "absmean")  # s = 1: W / s on halves
    assert exact.scale == 1.0 and list(exact.codes[0]) == [1, 1, 0, 1]  # round(0.5) = 0, round(1.5) = 2 -> 1
    W = np.zeros((3, 512), np.float32)
    W[1, 256:] = 0.3  # the first group of row 1 and all of row 2 are zeros
    q = M.quantize(W, "absmean", group_size=256)
    assert np.all(np.isfinite(q.w_hat)) and not np.any(q.codes[:, :256]) and not np.any(q.codes[2])
    assert q.scale[1, 0] == 0 and np.all(q.codes[1, 256:] == 1)
    assert M.quantize(np.zeros((2, 5), np.float32), "absmean").scale == 0


@pytest.mark.parametrize("shape,group_size", [((7, 300), None), ((5, 513), -1), ((5, 1100), 512)])
def test_sign_matches_reference(shape, group_size):
    W = weights(shape, 2)
    q = M.quantize(W, "sign", group_size=group_size)
    codes, w_hat = ref_sign(W, group_size)
    assert q.format == "b1" and set(np.unique(q.codes)) <= {-1, 1}
    np.testing.assert_array_equal(q.codes, codes)
    np.testing.assert_array_equal(q.w_hat, w_hat)
    assert q.row_offset is None  # the mean only centres the signs


@pytest.mark.parametrize("shape", SHAPES)
def test_onebit_matches_svd_reference(shape):
    W = weights(shape, 3)
    W[0, 0] = 0.0  # sign(0) = +1
    q = M.quantize(W, "onebit")
    a, b, w_hat = ref_onebit(W)
    assert q.codes[0, 0] == 1 and set(np.unique(q.codes)) <= {-1, 1}
    np.testing.assert_allclose(q.scale, a, rtol=1e-3)  # at most one float16 step apart
    np.testing.assert_allclose(q.col_scale, b, rtol=1e-3)
    np.testing.assert_allclose(q.w_hat, w_hat, rtol=2e-3, atol=1e-9)
    assert np.all(q.scale >= 0) and np.all(q.col_scale >= 0)


@pytest.mark.parametrize("shape", SHAPES)
def test_arb_matches_reference(shape):
    W = weights(shape, 4)
    q = M.quantize(W, "arb", iterations=4)
    codes, mu, alpha, beta = ref_arb(W, 4)
    np.testing.assert_array_equal(q.row_offset, mu.astype(np.float32))
    np.testing.assert_array_equal(q.scale, alpha.astype(np.float32))
    np.testing.assert_array_equal(q.col_scale, beta.astype(np.float32))
    np.testing.assert_array_equal(q.codes, codes)


def test_arb_iterations_never_increase_the_error():
    W = weights((9, 301), 5).astype(np.float64)
    *_, errors = M._arb_fit(W, 20)
    assert all(b <= a * (1 + 1e-12) for a, b in zip(errors, errors[1:]))
    assert errors[-1] < errors[0]
    # and the refined fit beats plain mean-centred sign binarization (iterations=0)
    plain = M.quantize(W.astype(np.float32), "arb", iterations=0)
    refined = M.quantize(W.astype(np.float32), "arb")
    assert np.linalg.norm(W - refined.w_hat) < np.linalg.norm(W - plain.w_hat)


@pytest.mark.parametrize("shape", SHAPES)
def test_arb_with_hessian_matches_reference_sweep(shape):
    W = weights(shape, 6)
    H = calibration_hessian(shape[1], 7)
    q = M.quantize(W, "arb", H=H, iterations=3, refit_rounds=0)
    expected = ref_arb_gptq(W, H, 3)
    np.testing.assert_allclose(q.w_hat, expected, rtol=1e-6, atol=1e-9)


def test_arb_refit_is_the_hessian_weighted_least_squares_optimum():
    W = weights((6, 200), 27).astype(np.float64)
    Hd = M._damped(calibration_hessian(200, 28), 0.01)
    mu, alpha, beta, B, _ = M._arb_fit(W, 3)
    herr = lambda mu, alpha, beta: M.layer_error(W, mu[:, None] + alpha[:, None] * beta[None, :] * B, Hd)  # noqa: E731
    errors = [herr(mu, alpha, beta)]
    for _ in range(3):
        mu, alpha, beta = M._arb_refit(W, Hd, B, mu, alpha, beta, 1)
        errors.append(herr(mu, alpha, beta))
    assert all(b <= a * (1 + 1e-12) for a, b in zip(errors, errors[1:])) and errors[-1] < errors[0]
    # beta was set last: the gradient of the weighted error with respect to beta vanishes
    E = W - mu[:, None] - alpha[:, None] * beta[None, :] * B
    gradient = np.array([sum(alpha[i] * B[i, j] * (E[i] @ Hd[:, j]) for i in range(6)) for j in range(200)])
    scale = np.array([sum(abs(alpha[i]) * np.abs(E[i]) @ np.abs(Hd[:, j]) for i in range(6)) for j in range(200)])
    assert np.all(np.abs(gradient) <= 1e-9 * scale)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("group_size", [None, -1, 256])
def test_gptq_ternary_matches_reference(shape, group_size):
    W = weights(shape, 8)
    H = calibration_hessian(shape[1], 9)
    q = M.quantize(W, "gptq-ternary", H=H, group_size=group_size)
    expected = ref_gptq_ternary(W, H, group_size)
    np.testing.assert_allclose(q.w_hat, expected, rtol=0, atol=0)
    assert set(np.unique(q.codes)) <= {-1, 0, 1}


def test_billm_block_matches_reference():
    rng = np.random.default_rng(10)
    Wb = weights((6, 128), 10).astype(np.float64)
    d = rng.uniform(0.5, 2.0, 128)
    Q, c, _ = M._billm_block(Wb, d, 30)
    Q_ref, c_ref = ref_billm_block(Wb, d)
    assert c == c_ref
    np.testing.assert_allclose(Q, Q_ref, rtol=1e-12, atol=1e-15)


def test_break_point_errors_match_direct_masks():
    rng = np.random.default_rng(11)
    Y = rng.standard_normal((5, 97))
    Y[0, :3] = 0.0  # ties at the mean and at zero
    candidates = np.quantile(np.abs(Y), np.linspace(0.1, 0.9, 81))
    fast = M._break_point_errors(Y, candidates)
    direct = [
        sum(ref_binarize_error([v for v in row if abs(v) < p], 1) + ref_binarize_error([v for v in row if abs(v) >= p], 1) for row in Y)
        for p in candidates
    ]
    np.testing.assert_allclose(fast, direct, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("compensate", [True, False])
def test_billm_matches_reference(compensate):
    W = weights((5, 300), 12)
    H = calibration_hessian(300, 13)
    q = M.quantize(W, "billm", H=H, compensate=compensate)
    np.testing.assert_allclose(q.w_hat, ref_billm(W, H, compensate).astype(np.float32), rtol=1e-6, atol=1e-9)
    assert q.format == "dense" and q.codes is None


# ---------------------------------------------------------------------------------------------
# stored form, bits, compensation, errors


@pytest.mark.parametrize("method,group_size", [
    ("absmean", None), ("absmean", -1), ("absmean", 256), ("sign", None), ("sign", 512),
    ("onebit", None), ("arb", None), ("gptq-ternary", None), ("gptq-ternary", 256),
])
@pytest.mark.parametrize("shape", [(5, 513), (3, 1100)])
def test_reconstruct_is_exactly_w_hat(method, group_size, shape):
    W = weights(shape, 14)
    H = calibration_hessian(shape[1], 15, samples=2 * shape[1])
    for h in (None, H) if method != "gptq-ternary" else (H,):
        q = M.quantize(W, method, H=h, group_size=group_size)
        assert q.w_hat.dtype == np.float32 and q.w_hat.shape == shape
        np.testing.assert_array_equal(M.reconstruct(q), q.w_hat)
        # every stored float is a float16 value
        for v in (q.scale, q.col_scale, q.row_offset):
            if v is not None:
                np.testing.assert_array_equal(v, v.astype(np.float16).astype(np.float32))


def test_bits_per_weight():
    n, k = 8, 1024
    W = weights((n, k), 16)
    H = calibration_hessian(k, 17, samples=k + 64)
    nk = n * k
    expected = {
        ("absmean", None): 2 + 16 / nk,
        ("absmean", -1): 2 + 16 / k,
        ("absmean", 256): 2 + 16 / 256,
        ("gptq-ternary", 512): 2 + 16 / 512,
        ("sign", None): 1 + 16 / k,
        ("sign", 512): 1 + 16 / 512,
        ("onebit", None): 1 + 16 * (n + k) / nk,
        ("arb", None): 1 + 16 * (2 * n + k) / nk,
        ("billm", None): (2 * nk + k + n * 8 * 8 * 16) / nk,  # 2 bits, bitmap, 8 fp16 per row per block
    }
    for (method, group_size), bits in expected.items():
        q = M.quantize(W, method, H=H, group_size=group_size)
        assert q.bits_per_weight == pytest.approx(bits, rel=1e-12), (method, group_size)
    assert M.quantize(W, "billm", H=H).bits_per_weight == pytest.approx(3.125)


@pytest.mark.parametrize("seed", [30, 33])
def test_hessian_compensation_lowers_layer_error(seed):
    W = weights((64, 768), seed)
    H = calibration_hessian(768, seed + 100)
    error = lambda method, h=None, **kw: M.layer_error(W, M.quantize(W, method, H=h, **kw).w_hat, H)  # noqa: E731
    for group_size in (None, -1, 256):
        assert error("gptq-ternary", H, group_size=group_size) < 0.8 * error("absmean", group_size=group_size)
    assert error("arb", H) < 0.8 * error("arb")
    assert error("arb", H) < error("arb", H, refit_rounds=0)  # the refit helps
    # BiLLM's block-level compensation (paper's diagonal update) usually helps, not always:
    # on some random (32, 512) draws it loses; these (64, 768) draws are typical.
    assert error("billm", H) < 0.8 * error("billm", H, compensate=False)


def test_layer_error_is_output_error():
    rng = np.random.default_rng(20)
    X = rng.standard_normal((50, 33))
    W, V = rng.standard_normal((4, 33)), rng.standard_normal((4, 33))
    assert M.layer_error(W, V, X.T @ X) == pytest.approx(np.sum((X @ W.T - X @ V.T) ** 2), rel=1e-10)


def test_dead_inputs_are_handled():
    W = weights((4, 300), 21)
    H = calibration_hessian(300, 22)
    H[5, :] = H[:, 5] = 0  # input 5 never fires
    for method in ("gptq-ternary", "billm", "arb"):
        q = M.quantize(W, method, H=H)
        assert np.all(np.isfinite(q.w_hat))
    assert np.all(M.quantize(W, "gptq-ternary", H=H).codes[:, 5] == 0)


def test_plain_methods_ignore_hessian():
    W = weights((5, 513), 23)
    H = calibration_hessian(513, 24, samples=600)
    for method in ("absmean", "sign", "onebit"):
        np.testing.assert_array_equal(M.quantize(W, method, H=H).w_hat, M.quantize(W, method).w_hat)


@pytest.mark.parametrize("call,message", [
    (lambda W, H: M.quantize(W, "xnor"), "unknown method 'xnor'"),
    (lambda W, H: M.quantize(W, "absmean", group_size=128), "multiple of 256"),
    (lambda W, H: M.quantize(W, "absmean", group_size=300), "multiple of 256"),
    (lambda W, H: M.quantize(W, "absmean", group_size=0), "multiple of 256"),
    (lambda W, H: M.quantize(W, "gptq-ternary", H=H, group_size=100), "multiple of 256"),
    (lambda W, H: M.quantize(W, "sign", group_size=256), "multiple of 512"),
    (lambda W, H: M.quantize(W, "onebit", group_size=256), "no group_size"),
    (lambda W, H: M.quantize(W, "gptq-ternary", H=H[:-1, :-1]), "H must be"),
    (lambda W, H: M.quantize(W, "arb", H=np.ones(W.shape[1])), "H must be"),
    (lambda W, H: M.quantize(W, "billm"), "pass H"),
    (lambda W, H: M.quantize(W, "gptq-ternary"), "pass H"),
    (lambda W, H: M.quantize(W, "billm", H=H, blocksize=64), "no option"),
    (lambda W, H: M.quantize(W, "arb", iterations=-1), "iterations"),
    (lambda W, H: M.quantize(W[0], "absmean"), "2-D"),
    (lambda W, H: M.quantize(np.full((2, 3), np.nan), "absmean"), "NaN"),
    (lambda W, H: M.quantize(W, "gptq-ternary", H=-H), "positive definite"),
])
def test_bad_arguments_raise_value_error(call, message):
    W = weights((4, 300), 25)
    H = calibration_hessian(300, 26, samples=400)
    with pytest.raises(ValueError, match=message):
        call(W, H)


# ---------------------------------------------------------------------------------------------
# the "mse" ternary scale rule


def ref_mse_scale(values):
    """The float16 scale c * mean|v| (c = 0.50, 0.55, ..., 2.50) with the least squared error
    of the ternary approximation; the first (smallest c) wins ties."""
    base = sum(abs(float(v)) for v in values) / len(values)
    best, best_err = fp16(base * 0.5), math.inf
    for i in range(41):
        s = fp16((0.5 + 0.05 * i) * base)
        err = sum((float(v) - (0.0 if s == 0 else max(-1.0, min(1.0, round(float(v) / s)))) * s) ** 2 for v in values)
        if err < best_err:
            best, best_err = s, err
    return best


@pytest.mark.parametrize("group_size", [None, -1, 256])
def test_absmean_mse_scale_matches_reference(group_size):
    W = weights((5, 513), 31)
    q = M.quantize(W, "absmean", group_size=group_size, scale="mse")
    n, k = W.shape
    if group_size is None:
        want = np.full((n, k), ref_mse_scale(W.ravel()))
    else:
        want = np.zeros((n, k))
        for i in range(n):
            for s, e in groups_of(k, group_size):
                want[i, s:e] = ref_mse_scale(W[i, s:e])
    ratio = np.divide(W, want, out=np.zeros_like(want), where=want > 0)
    np.testing.assert_array_equal(q.w_hat, (np.clip(np.rint(ratio), -1, 1) * want).astype(np.float32))
    plain = M.quantize(W, "absmean", group_size=group_size)
    assert np.sum((W - q.w_hat) ** 2) < np.sum((W - plain.w_hat) ** 2)


def test_gptq_ternary_mse_scale_matches_reference_and_lowers_error():
    W = weights((6, 600), 32)
    H = calibration_hessian(600, 33)
    q = M.quantize(W, "gptq-ternary", H=H, group_size=256, scale="mse")
    scale = {}

    def quantize_column(j, current):
        if j % 256 == 0:
            scale["now"] = np.array([ref_mse_scale(current[i, j : j + 256]) for i in range(W.shape[0])])
        s = scale["now"]
        return np.array([0.0 if s[i] == 0 else max(-1.0, min(1.0, np.rint(current[i, j] / s[i]))) * s[i] for i in range(W.shape[0])])

    np.testing.assert_allclose(q.w_hat, ref_gptq(W, H, quantize_column), rtol=0, atol=1e-6 * np.abs(W).max())
    plain = M.quantize(W, "gptq-ternary", H=H, group_size=256)
    assert M.layer_error(W, q.w_hat, H) < M.layer_error(W, plain.w_hat, H)


def test_bad_scale_rule():
    with pytest.raises(ValueError, match="scale must be one of"):
        M.quantize(weights((2, 8), 1), "absmean", scale="best")
    with pytest.raises(ValueError, match="no option"):
        M.quantize(weights((2, 8), 1), "sign", scale="mse")
