"""Post-training binarization and ternarization of one weight matrix in numpy (the packed
formats' block sizes come from the core's table).

A linear layer computes ``y = x @ W.T`` with ``W`` of shape (n_out, k_in). Every method here
turns ``W`` into a :class:`Quantized`: the stored form (integer codes plus float16 scales) and
``w_hat``, the float32 matrix that stored form represents. Invariants:

- Scales, column scales and row offsets are stored as float16, so they are rounded to float16
  *before* the dequantized matrix is computed; ``w_hat`` is never a better matrix than the file.
- For the fast formats ("t2", "b1") ``w_hat == reconstruct(q)`` bit for bit.
- ``bits_per_weight`` counts everything a decoder needs: every code bit, mask bit and column
  bitmap, and 16 bits per stored scale/mean. It does not count the zero padding the packed
  kernels add to round a row up to whole blocks (256 weights for t2, 512 for b1).
- Methods that compensate errors with a Hessian ``H = X^T X`` of the layer's calibration inputs
  (GPTQ, Frantar et al. 2022) minimize ``layer_error(W, w_hat, H)``; the others accept and
  ignore ``H``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from binllm import _core

METHODS = ("absmean", "sign", "onebit", "billm", "arb", "gptq-ternary")

# Weights per block of the packed kernels (the core's format table): a per-group scale must
# cover whole blocks.
FORMAT_BLOCK = dict(_core.FORMAT_BLOCK_WEIGHTS)
FORMAT_OF = {"absmean": "t2", "sign": "b1", "onebit": "b1", "billm": "dense", "arb": "b1", "gptq-ternary": "t2"}
CODE_BITS = {"t2": 2, "b1": 1}
SCALE_BITS = 16  # float16
GPTQ_BLOCK = 128  # columns per lazy-update block (GPTQ) and per BiLLM block
DAMP = 0.01  # GPTQ's dampening: H += DAMP * mean(diag H) * I
FP16_MAX = float(np.finfo(np.float16).max)

# Options each method accepts beyond (W, H, group_size), with defaults.
OPTIONS: dict[str, dict[str, object]] = {
    "absmean": {"scale": "absmean"},
    "sign": {},
    "onebit": {},
    "billm": {"compensate": True, "max_salient": 30, "damp": DAMP},
    "arb": {"iterations": 15, "compensate": True, "refit_rounds": 2, "damp": DAMP},
    "gptq-ternary": {"damp": DAMP, "block_size": GPTQ_BLOCK, "scale": "absmean"},
}
NEEDS_HESSIAN = ("billm", "gptq-ternary")
GROUPED = ("absmean", "sign", "gptq-ternary")
# Ternary scale rules: BitNet b1.58's mean|W|, or the multiple of it (MSE_FACTORS) that
# minimizes the squared error of s * clip(round(W / s), -1, 1) over the scale's weights
# (GPTQ's grid search of the quantization range, applied to the ternary grid).
SCALE_RULES = ("absmean", "mse")
MSE_FACTORS = np.linspace(0.5, 2.5, 41)


@dataclass
class Quantized:
    method: str
    w_hat: np.ndarray  # float32 (n, k): exactly the matrix the stored form represents
    bits_per_weight: float  # true bits per weight, everything counted
    format: str  # "t2" (ternary codes), "b1" (binary codes), or "dense" (stored and run as w_hat)
    codes: Optional[np.ndarray]  # int8 (n, k): {-1,0,1} for t2, {-1,+1} for b1; None for dense
    scale: Optional[np.ndarray]  # float32: () per tensor, (n,) per row, (n, ceil(k/group_size)) per group
    group_size: Optional[int]  # columns per group along k, for a per-group scale
    col_scale: Optional[np.ndarray]  # float32 (k,) (OneBit / ARB column scales) or None
    row_offset: Optional[np.ndarray]  # float32 (n,) (ARB row mean) or None


def quantize(W: np.ndarray, method: str, H: Optional[np.ndarray] = None, group_size: Optional[int] = None, **opts) -> Quantized:
    """Quantizes one weight matrix ``W`` (n_out, k_in) with `method` (one of :data:`METHODS`).

    `H` (k_in, k_in) is the layer's input Hessian ``X^T X``; billm and gptq-ternary need it, arb
    uses it when given, the others ignore it. `group_size` (absmean, sign, gptq-ternary) is None
    for the method's default scale granularity, -1 for one scale per row, or a positive multiple
    of the format's kernel block (256 for t2, 512 for b1) columns per scale. `opts` are the
    method's options listed in :data:`OPTIONS`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    W = np.asarray(W)
    if W.ndim != 2 or W.size == 0:
        raise ValueError(f"W must be a non-empty 2-D matrix (n_out, k_in), got shape {W.shape}")
    if not np.issubdtype(W.dtype, np.floating) and not np.issubdtype(W.dtype, np.integer):
        raise ValueError(f"W must be numeric, got dtype {W.dtype}")
    W = W.astype(np.float32)
    if not np.all(np.isfinite(W)):
        raise ValueError("W contains NaN or infinity")
    n, k = W.shape
    unknown = sorted(set(opts) - set(OPTIONS[method]))
    if unknown:
        allowed = ", ".join(OPTIONS[method]) or "none"
        raise ValueError(f"method '{method}' has no option(s) {', '.join(unknown)}; its options: {allowed}")
    options = {**OPTIONS[method], **opts}
    if group_size is not None:
        if method not in GROUPED:
            raise ValueError(f"method '{method}' has no group_size (its scales are fixed by the method); pass group_size=None")
        block = FORMAT_BLOCK[FORMAT_OF[method]]
        if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
            raise ValueError(f"group_size must be None, -1 or an int, got {group_size!r}")
        group_size = int(group_size)
        if group_size != -1 and (group_size <= 0 or group_size % block):
            raise ValueError(
                f"group_size must be None, -1 (per row) or a positive multiple of {block} "
                f"(the {FORMAT_OF[method]} kernel's block), got {group_size}"
            )
    if H is not None:
        H = np.asarray(H, dtype=np.float64)
        if H.shape != (k, k):
            raise ValueError(f"H must be (k_in, k_in) = ({k}, {k}) for W of shape {W.shape}, got {H.shape}")
        if not np.all(np.isfinite(H)):
            raise ValueError("H contains NaN or infinity")
        if not np.allclose(H, H.T, rtol=1e-4, atol=1e-6 * max(float(np.abs(H).max()), 1e-30)):
            raise ValueError("H must be symmetric (H = X^T X)")
    elif method in NEEDS_HESSIAN:
        raise ValueError(f"method '{method}' compensates errors with the layer's Hessian: pass H = X^T X (k_in x k_in)")
    damp = options.get("damp", 0.0)
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not damp >= 0:
        raise ValueError(f"damp must be a number >= 0, got {damp!r}")
    for name in ("iterations", "refit_rounds", "max_salient", "block_size"):
        if name in options:
            value = options[name]
            minimum = 1 if name in ("max_salient", "block_size") else 0
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")

    if "scale" in options and options["scale"] not in SCALE_RULES:
        raise ValueError(f"scale must be one of {', '.join(SCALE_RULES)}, got {options['scale']!r}")

    if method == "absmean":
        return _absmean(W, group_size, options["scale"])
    if method == "sign":
        return _sign_binarize(W, group_size)
    if method == "onebit":
        return _onebit(W)
    if method == "billm":
        return _billm(W, H, int(options["max_salient"]), bool(options["compensate"]), float(options["damp"]))
    if method == "arb":
        return _arb(W, H if options["compensate"] else None, int(options["iterations"]), int(options["refit_rounds"]), float(options["damp"]))
    return _gptq_ternary(W, H, group_size, float(options["damp"]), int(options["block_size"]), options["scale"])


def reconstruct(q: Quantized) -> np.ndarray:
    """The float32 matrix the stored form of `q` represents:
    ``codes[i, j] * s(i, j) * col_scale[j] + row_offset[i]`` (dense: ``q.w_hat``)."""
    if q.format == "dense":
        return q.w_hat
    codes = q.codes.astype(np.float32)
    n, k = codes.shape
    out = codes * _expand(q.scale, n, k, q.group_size)
    if q.col_scale is not None:
        out = out * q.col_scale[None, :]
    if q.row_offset is not None:
        out = out + q.row_offset[:, None]
    return out.astype(np.float32)


def layer_error(W: np.ndarray, w_hat: np.ndarray, H: np.ndarray) -> float:
    """``trace((W - w_hat) H (W - w_hat)^T)``: ``||X W^T - X w_hat^T||_F^2`` when ``H = X^T X``."""
    E = np.asarray(W, np.float64) - np.asarray(w_hat, np.float64)
    return float(np.sum((E @ np.asarray(H, np.float64)) * E))


# ---------------------------------------------------------------------------------------------
# Shared pieces


def _fp16(x) -> np.ndarray:
    """Rounds to the stored float16 value (saturating instead of overflowing), as float32."""
    return np.clip(np.asarray(x, np.float64), -FP16_MAX, FP16_MAX).astype(np.float16).astype(np.float32)


def _sign(x: np.ndarray) -> np.ndarray:
    """sign with sign(0) = +1: a binary code has no zero."""
    return np.where(x >= 0, 1.0, -1.0)


def _expand(scale: np.ndarray, n: int, k: int, group_size: Optional[int]) -> np.ndarray:
    """A scale of shape (), (n,) or (n, groups) broadcast to (n, k) (float32)."""
    scale = np.asarray(scale, np.float32)
    if scale.ndim == 0:
        return np.full((n, k), scale, np.float32)
    if scale.ndim == 1:
        return np.broadcast_to(scale[:, None], (n, k))
    return np.repeat(scale, group_size, axis=1)[:, :k]


def _bits(n: int, k: int, code_bits: float, scales: int) -> float:
    return (n * k * code_bits + SCALE_BITS * scales) / (n * k)


def _mean_per(X: np.ndarray, group_size: Optional[int], per_tensor: bool) -> np.ndarray:
    """Mean of X per tensor (group_size None and per_tensor: shape ()), per row (None / -1:
    (n,)) or per group of `group_size` columns ((n, ceil(k / group_size)), the last group may
    be short)."""
    if group_size is None and per_tensor:
        return np.asarray(X.mean())
    if group_size in (None, -1):
        return X.mean(axis=1)
    return np.stack([X[:, s : s + group_size].mean(axis=1) for s in range(0, X.shape[1], group_size)], axis=1)


def _mse_scale(X: np.ndarray) -> np.ndarray:
    """Per row of X: the scale c * mean|row| (c in MSE_FACTORS) with the least squared error of
    the row's ternary approximation s * clip(round(x / s), -1, 1); float16-rounded."""
    base = np.abs(X).mean(axis=1)
    best_err = np.full(X.shape[0], np.inf)
    best = _fp16(base).astype(np.float64)
    for c in MSE_FACTORS:
        s = _fp16(c * base).astype(np.float64)
        ratio = np.divide(X, s[:, None], out=np.zeros_like(X), where=s[:, None] > 0)
        err = ((X - np.clip(np.rint(ratio), -1, 1) * s[:, None]) ** 2).sum(axis=1)
        better = err < best_err
        best_err[better], best[better] = err[better], s[better]
    return best


def _scales(W64: np.ndarray, group_size: Optional[int], rule: str) -> np.ndarray:
    """Ternary scales per tensor (group_size None: shape ()), per row (-1: (n,)) or per group
    ((n, groups)) by `rule` (SCALE_RULES), float16-rounded."""
    if rule == "absmean":
        return _fp16(_mean_per(np.abs(W64), group_size, True))
    n, k = W64.shape
    if group_size is None:
        return _fp16(_mse_scale(W64.reshape(1, -1))[0])
    if group_size == -1:
        return _fp16(_mse_scale(W64))
    return _fp16(np.stack([_mse_scale(W64[:, s : s + group_size]) for s in range(0, k, group_size)], axis=1))


def _ternary_codes(W64: np.ndarray, s: np.ndarray) -> np.ndarray:
    """BitNet b1.58's clip(round(W / s), -1, 1), round half to even; s = 0 gives code 0."""
    ratio = np.divide(W64, s, out=np.zeros_like(W64), where=s > 0)
    return np.clip(np.rint(ratio), -1, 1).astype(np.int8)


# ---------------------------------------------------------------------------------------------
# absmean (BitNet b1.58)


def _absmean(W: np.ndarray, group_size: Optional[int], rule: str = "absmean") -> Quantized:
    """BitNet b1.58 (Ma et al. 2024, "The Era of 1-bit LLMs"), absmean quantization:
    ``s = mean|W|``, ``codes = clip(round(W / s), -1, 1)``, ``w_hat = s * codes``.

    One scale per tensor (group_size None, the paper's choice), per row (-1) or per group of
    `group_size` columns. Bits per weight: 2 (t2 code) + 16 * scales / (n * k), e.g.
    2 + 16 / k per row, 2 + 16 / group_size per group when k is a multiple of it.
    ``rule="mse"`` picks each scale as the multiple of mean|W| with the least squared error
    (see SCALE_RULES) instead of mean|W| itself; the codes follow the same formula.
    """
    n, k = W.shape
    W64 = W.astype(np.float64)
    scale = _scales(W64, group_size, rule)
    codes = _ternary_codes(W64, _expand(scale, n, k, group_size).astype(np.float64))
    return _finish("absmean", "t2", codes, scale, group_size)


def _finish(method, fmt, codes, scale, group_size, col_scale=None, row_offset=None) -> Quantized:
    n, k = codes.shape
    scales = np.asarray(scale).size + (0 if col_scale is None else k) + (0 if row_offset is None else n)
    q = Quantized(
        method=method,
        w_hat=np.empty(0, np.float32),
        bits_per_weight=_bits(n, k, CODE_BITS[fmt], scales),
        format=fmt,
        codes=codes.astype(np.int8),
        scale=np.asarray(scale, np.float32),
        group_size=group_size if group_size not in (None, -1) and np.asarray(scale).ndim == 2 else None,
        col_scale=None if col_scale is None else np.asarray(col_scale, np.float32),
        row_offset=None if row_offset is None else np.asarray(row_offset, np.float32),
    )
    q.w_hat = reconstruct(q)
    return q


# ---------------------------------------------------------------------------------------------
# sign (BitNet / XNOR-Net)


def _sign_binarize(W: np.ndarray, group_size: Optional[int]) -> Quantized:
    """BitNet (Wang et al. 2023) / XNOR-Net (Rastegari et al. 2016) binarization, per row:
    ``mu_i = mean(W_i)``, ``alpha_i = mean|W_i|``, ``codes = sign(W - mu)`` (sign(0) = +1),
    ``w_hat = alpha_i * codes``; the mean only centres the signs and is not added back (not
    stored). group_size -1 or None: per row; a multiple of 512: mu and alpha per group.
    Bits per weight: 1 + 16 * scales / (n * k), i.e. 1 + 16 / k per row.
    """
    n, k = W.shape
    W64 = W.astype(np.float64)
    mu = _mean_per(W64, group_size, False)
    alpha = _fp16(_mean_per(np.abs(W64), group_size, False))
    codes = _sign(W64 - _expand(mu, n, k, group_size))
    return _finish("sign", "b1", codes, alpha, group_size)


# ---------------------------------------------------------------------------------------------
# OneBit (Xu et al. 2024)


def _leading_singular(A: np.ndarray, tol: float = 1e-12, max_iterations: int = 2000) -> tuple[float, np.ndarray, np.ndarray]:
    """Leading singular triple of a nonnegative matrix by power iteration. Started from a positive
    vector, the iterates stay nonnegative (Perron-Frobenius), so u and v come out nonnegative."""
    v = A.sum(axis=0)
    norm = np.linalg.norm(v)
    if norm == 0:
        return 0.0, np.zeros(A.shape[0]), np.zeros(A.shape[1])
    v = v / norm
    sigma = 0.0
    for _ in range(max_iterations):
        u = A @ v
        u /= np.linalg.norm(u)
        v_next = A.T @ u
        sigma = float(np.linalg.norm(v_next))
        v_next /= sigma
        done = np.max(np.abs(v_next - v)) < tol
        v = v_next
        if done:
            break
    u = A @ v
    u /= np.linalg.norm(u)
    return sigma, u, v


def _onebit(W: np.ndarray) -> Quantized:
    """OneBit (Xu et al. 2024), sign-value-independent decomposition (SVID) initialization:
    ``W ~ sign(W) * (a b^T)`` with ``a b^T`` the rank-1 approximation of ``|W|`` from its leading
    singular triple (``a = sqrt(s1) u1``, ``b = sqrt(s1) v1``, both nonnegative); sign(0) = +1.
    The paper then trains a and b by distillation; this is the post-training starting point.
    Stored: codes, row scale a (n,), column scale b (k,). Bits per weight: 1 + 16 (n + k) / (n k).
    """
    A = np.abs(W.astype(np.float64))
    sigma, u, v = _leading_singular(A)
    root = math.sqrt(sigma)
    codes = _sign(W.astype(np.float64))
    return _finish("onebit", "b1", codes, _fp16(root * u), None, col_scale=_fp16(root * v))


# ---------------------------------------------------------------------------------------------
# GPTQ machinery (Frantar et al. 2022)


def _inverse_hessian_factor(H: np.ndarray, W64: np.ndarray, damp: float) -> np.ndarray:
    """GPTQ's preparation of the Hessian: dead inputs (H_jj = 0) get H_jj = 1 and their weights
    zeroed (in place in W64: they never see a nonzero input), H += damp * mean(diag H) * I, and
    the upper Cholesky factor U of H^-1 (H^-1 = U^T U) is returned."""
    H = np.array(H, dtype=np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W64[:, dead] = 0.0
    H[np.diag_indices_from(H)] += damp * np.mean(np.diag(H))
    try:
        L = np.linalg.cholesky(H)
        L_inv = np.linalg.inv(L)
        return np.linalg.cholesky(L_inv.T @ L_inv).T
    except np.linalg.LinAlgError:
        raise ValueError("H is not positive definite even after dampening; is it X^T X of the layer's inputs?") from None


def _damped(H: np.ndarray, damp: float) -> np.ndarray:
    H = np.array(H, dtype=np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    H[np.diag_indices_from(H)] += damp * np.mean(np.diag(H))
    return H


def _gptq_sweep(W64: np.ndarray, U: np.ndarray, quantize_column: Callable, block_size: int = GPTQ_BLOCK) -> np.ndarray:
    """GPTQ's column sweep with lazy batch updates. Column j is quantized by
    ``quantize_column(j, w, lookahead)`` (``lookahead(width)`` gives the current, already
    compensated values of columns j..j+width), its error ``(w - q) / U_jj`` is spread over the
    rest of its block at once and over later blocks once per block. W64 is updated in place;
    returns the quantized matrix."""
    n, k = W64.shape
    Q = np.zeros_like(W64)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        W1 = W64[:, i1:i2].copy()
        Err1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            lookahead = lambda width, i=i: np.concatenate([W1[:, i : i + width], W64[:, i2 : i1 + i + width]], axis=1)  # noqa: E731
            q = quantize_column(i1 + i, w, lookahead)
            Q[:, i1 + i] = q
            err = (w - q) / U1[i, i]
            W1[:, i:] -= np.outer(err, U1[i, i:])
            Err1[:, i] = err
        W64[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return Q


# ---------------------------------------------------------------------------------------------
# gptq-ternary


def _gptq_ternary(W: np.ndarray, H: np.ndarray, group_size: Optional[int], damp: float, block_size: int, rule: str = "absmean") -> Quantized:
    """GPTQ (Frantar et al. 2022) with BitNet b1.58's absmean ternary grid: columns are quantized
    in order to ``s * clip(round(w / s), -1, 1)`` and each column's error is compensated on the
    later columns through the Cholesky factor of the damped inverse Hessian (block size 128, lazy
    batch updates, dead inputs zeroed). Scales as absmean: per tensor / per row from the
    original W; per group, ``mean|W|`` of the group's current (compensated) weights when the sweep
    reaches its first column, as GPTQ does. Bits per weight: as absmean (2 + 16 * scales / (n k)).
    ``rule="mse"``: each scale the error-minimizing multiple of mean|W| (see SCALE_RULES).
    """
    n, k = W.shape
    W64 = W.astype(np.float64)
    grouped = group_size not in (None, -1)
    if not grouped:
        scale = _scales(W64, group_size, rule)
        column_scale = np.broadcast_to(np.asarray(scale, np.float64), (n,)) if scale.ndim == 0 else scale.astype(np.float64)
    else:
        scale = np.zeros((n, -(-k // group_size)), np.float32)
    U = _inverse_hessian_factor(H, W64, damp)
    state = {"s": None if grouped else column_scale}

    def quantize_column(j, w, lookahead):
        if grouped and j % group_size == 0:
            current = lookahead(group_size)
            s = _fp16(np.abs(current).mean(axis=1)) if rule == "absmean" else _fp16(_mse_scale(current))
            scale[:, j // group_size] = s
            state["s"] = s.astype(np.float64)
        s = state["s"]
        return _ternary_codes(w, s) * s

    Q = _gptq_sweep(W64, U, quantize_column, block_size)
    codes = _ternary_codes(Q, _expand(scale, n, k, group_size if grouped else None).astype(np.float64))
    return _finish("gptq-ternary", "t2", codes, scale, group_size)


# ---------------------------------------------------------------------------------------------
# BiLLM (Huang et al. 2024)


def _residual_error(X: np.ndarray, order: int) -> np.ndarray:
    """Squared error per row of BiLLM's order-`order` residual binarization of the rows of X
    (each order: its own row mean m and scale a = mean|r - m|), unrounded scales."""
    n, m = X.shape
    if m == 0:
        return np.zeros(n)
    R = X
    for o in range(order):
        D = R - R.mean(axis=1, keepdims=True)
        A = np.abs(D)
        a = A.mean(axis=1, keepdims=True)
        if o == order - 1:
            return np.einsum("ij,ij->i", D, D) - m * a[:, 0] ** 2
        R = D - a * np.where(D >= 0, 1.0, -1.0)
    raise AssertionError


def _residual_binarize(X: np.ndarray, order: int) -> np.ndarray:
    """BiLLM's residual approximation with stored (float16) row means and scales: order o
    binarizes what orders < o left, ``X ~ sum_o (m_o + a_o * sign(r_o - m_o))``."""
    total = np.zeros_like(X)
    if X.shape[1] == 0:
        return total
    for _ in range(order):
        R = X - total
        m = _fp16(R.mean(axis=1)).astype(np.float64)[:, None]
        D = R - m
        a = _fp16(np.abs(D).mean(axis=1)).astype(np.float64)[:, None]
        total = total + m + a * _sign(D)
    return total


def _masked_binarize(X: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Order-1 binarization of the masked entries of each row (own float16 mean and scale);
    0 outside the mask."""
    count = mask.sum(axis=1)
    safe = np.maximum(count, 1)
    m = _fp16(np.where(mask, X, 0.0).sum(axis=1) / safe).astype(np.float64)[:, None]
    D = X - m
    a = _fp16(np.where(mask, np.abs(D), 0.0).sum(axis=1) / safe).astype(np.float64)[:, None]
    return np.where(mask, m + a * _sign(D), 0.0)


def _batched_searchsorted(V: np.ndarray, queries: np.ndarray, side: str) -> np.ndarray:
    """np.searchsorted per row: V (n, L) sorted rows, queries (n, K) -> (n, K) insertion points."""
    n, L = V.shape
    lo = np.zeros(queries.shape, np.int64)
    hi = np.full(queries.shape, L, np.int64)
    for _ in range(max(1, L).bit_length()):
        mid = (lo + hi) // 2
        value = np.take_along_axis(V, np.minimum(mid, L - 1), axis=1)
        go_right = (value < queries) if side == "left" else (value <= queries)
        active = lo < hi
        lo = np.where(active & go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)
    return lo


def _break_point_errors(Y: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Binarization error of Y (all rows) split at each candidate break point p into the
    concentrated (|y| < p) and sparse (|y| >= p) groups, each binarized per row with its own mean
    and scale (unrounded). From each row sorted once, with prefix sums: a group is a contiguous
    run (concentrated) or the two tails (sparse) of the sorted row, and sum |y - mean| splits at
    the mean's position."""
    n, L = Y.shape
    V = np.sort(Y, axis=1)
    P = np.concatenate([np.zeros((n, 1)), np.cumsum(V, axis=1)], axis=1)
    P2 = np.concatenate([np.zeros((n, 1)), np.cumsum(V * V, axis=1)], axis=1)
    p = np.broadcast_to(candidates[None, :], (n, candidates.size))
    lo = _batched_searchsorted(V, -p, "right")  # entries <= -p
    hi = _batched_searchsorted(V, p, "left")  # entries < p
    take = lambda A, idx: np.take_along_axis(A, idx, axis=1)  # noqa: E731
    zero = np.zeros_like(lo)
    end = np.full_like(lo, L)

    def abs_dev(mean, ranges):
        total = 0.0
        t_all = _batched_searchsorted(V, mean, "left")
        for a, b in ranges:
            t = np.clip(t_all, a, b)
            total = total + mean * (t - a) - (take(P, t) - take(P, a)) + (take(P, b) - take(P, t)) - mean * (b - t)
        return total

    def group_error(count, s, s2, ranges):
        safe = np.maximum(count, 1)
        mean = s / safe
        dev = abs_dev(mean, ranges)
        return np.where(count > 0, s2 - s * s / safe - dev * dev / safe, 0.0)

    s_c = take(P, hi) - take(P, lo)
    s2_c = take(P2, hi) - take(P2, lo)
    err = group_error(hi - lo, s_c, s2_c, [(lo, hi)])
    err = err + group_error(L - (hi - lo), P[:, -1:] - s_c, P2[:, -1:] - s2_c, [(zero, lo), (hi, end)])
    return err.sum(axis=0)


BREAK_POINT_QUANTILES = np.linspace(0.10, 0.90, 81)


def _billm_block(Wb: np.ndarray, d: np.ndarray, max_salient: int) -> tuple[np.ndarray, int, float]:
    """Binarizes one block of columns as BiLLM does; returns (block w_hat, salient count, p*)."""
    n, m = Wb.shape
    saliency = np.sum(Wb * Wb, axis=0) / (d * d)
    order = np.argsort(-saliency, kind="stable")
    Ws = Wb[:, order]
    counts = range(1, min(max_salient, m) + 1)
    errors = [(_residual_error(Ws[:, :c], 2) + _residual_error(Ws[:, c:], 2)).sum() for c in counts]
    c = counts[int(np.argmin(errors))]
    Y = Ws[:, c:]
    Q = np.empty_like(Wb)
    Q[:, order[:c]] = _residual_binarize(Ws[:, :c], 2)
    p = 0.0
    if Y.size:
        candidates = np.quantile(np.abs(Y), BREAK_POINT_QUANTILES)
        p = float(candidates[int(np.argmin(_break_point_errors(Y, candidates)))])
        concentrated = np.abs(Y) < p
        Q[:, order[c:]] = _masked_binarize(Y, concentrated) + _masked_binarize(Y, ~concentrated)
    return Q, c, p


def billm_bits(n: int, k: int, block: int = GPTQ_BLOCK) -> float:
    """True bits per weight of BiLLM's stored form: 2 per weight (salient: two sign bits;
    non-salient: sign + concentrated/sparse mask bit), a salient-column bitmap (k bits), and per
    row per block 8 float16 numbers (salient: mean and scale of 2 orders; non-salient: mean and
    scale of each of the 2 groups)."""
    blocks = -(-k // block)
    return (2 * n * k + k + n * blocks * 8 * SCALE_BITS) / (n * k)


def _billm(W: np.ndarray, H: np.ndarray, max_salient: int, compensate: bool, damp: float) -> Quantized:
    """BiLLM (Huang et al. 2024, "BiLLM: Pushing the Limit of Post-Training Quantization for
    LLMs"), Algorithm 1. Columns in blocks of 128 (GPTQ's); within a block:

    - saliency of column j: ``sum_i W_ij^2 / [U]_jj^2`` (U the Cholesky factor of the damped
      H^-1, GPTQ's); the c most salient columns, c in 1..max_salient (default 30; the authors'
      code searches 1..49) searched to minimize the block's error when both parts get order-2
      residual binarization (as the authors' code does);
    - salient columns: order-2 residual approximation, each order per row with mean and scale;
    - the rest: split at the break point p* (searched over the 10%..90% quantiles of |w| in 81
      steps) into concentrated (|w| < p*) and sparse (|w| >= p*) groups, each binarized per row
      with its own mean and scale;
    - then (compensate=True) the block's error ``(W_b - Q_b) / diag(U_bb)`` is carried to the
      later columns through ``U_b,rest``, as the paper and its code do.

    Errors in the searches are measured on the weights themselves (the authors' code measures
    them on the saliency matrix when the Hessian metric is used). Format "dense": per-weight
    masks have no fast kernel. Bits per weight (:func:`billm_bits`): 2 + 1/n + 128 ceil(k/128)/k,
    about 3.1 - the paper's "1.08 bits" leaves out the mask bits and the scales.
    """
    n, k = W.shape
    W64 = W.astype(np.float64)
    U = _inverse_hessian_factor(H, W64, damp)
    Q = np.zeros_like(W64)
    for i1 in range(0, k, GPTQ_BLOCK):
        i2 = min(i1 + GPTQ_BLOCK, k)
        d = np.diag(U)[i1:i2]
        Q[:, i1:i2], _, _ = _billm_block(W64[:, i1:i2], d, max_salient)
        if compensate and i2 < k:
            err = (W64[:, i1:i2] - Q[:, i1:i2]) / d
            W64[:, i2:] -= err @ U[i1:i2, i2:]
    w_hat = Q.astype(np.float32)
    return Quantized("billm", w_hat, billm_bits(n, k), "dense", None, None, None, None, None)


# ---------------------------------------------------------------------------------------------
# ARB-LLM (Li et al. 2024)


def _arb_fit(W64: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """Alternating refined binarization with row and column scales:
    ``W ~ mu_i + alpha_i * beta_j * B_ij``. Starts at mu = row mean, alpha = mean|W - mu|,
    beta = 1, B = sign(W - mu); each iteration sets mu, alpha, beta and B in turn to their
    closed-form least-squares optimum given the others, so ||W - W_hat||_F never increases.
    Returns (mu, alpha, beta, B, error after the start and after each iteration)."""
    n, k = W64.shape
    mu = W64.mean(axis=1)
    R = W64 - mu[:, None]
    alpha = np.abs(R).mean(axis=1)
    beta = np.ones(k)
    B = _sign(R)
    error = lambda: float(np.sum((W64 - mu[:, None] - alpha[:, None] * beta[None, :] * B) ** 2))  # noqa: E731
    errors = [error()]
    for _ in range(iterations):
        mu = (W64 - alpha[:, None] * beta[None, :] * B).mean(axis=1)
        R = W64 - mu[:, None]
        beta2 = float(beta @ beta)
        alpha = (R * B) @ beta / beta2 if beta2 > 0 else np.zeros(n)
        alpha2 = float(alpha @ alpha)
        beta = alpha @ (R * B) / alpha2 if alpha2 > 0 else np.zeros(k)
        B = _sign(R * alpha[:, None] * beta[None, :])
        errors.append(error())
    return mu, alpha, beta, B, errors


def _arb_refit(W64: np.ndarray, Hd: np.ndarray, B: np.ndarray, mu: np.ndarray, alpha: np.ndarray, beta: np.ndarray, rounds: int):
    """For fixed codes B, alternately sets (mu_i, alpha_i) per row and beta to their exact
    minimizers of the Hessian-weighted error trace(E Hd E^T), E = W - mu 1^T - diag(alpha) B
    diag(beta) (Hd damped, hence positive definite): the error never increases."""
    n, k = W64.shape
    h1 = Hd.sum(axis=1)
    a11 = float(h1.sum())
    WH1 = W64 @ h1
    WH = W64 @ Hd
    for _ in range(rounds):
        C = B * beta[None, :]
        CH = C @ Hd
        a12 = C @ h1
        a22 = np.einsum("ij,ij->i", CH, C)
        r1 = WH1
        r2 = np.einsum("ij,ij->i", CH, W64)
        det = a11 * a22 - a12 * a12
        ok = det > 1e-12 * np.maximum(a11 * a22, 1e-300)
        safe = np.where(ok, det, 1.0)
        mu = np.where(ok, (a22 * r1 - a12 * r2) / safe, mu)
        alpha = np.where(ok, (a11 * r2 - a12 * r1) / safe, alpha)
        M = alpha[:, None] * B
        rhs = np.einsum("ij,ij->j", M, WH - np.outer(mu, h1))
        G = (M.T @ M) * Hd
        try:
            beta = np.linalg.solve(G, rhs)
        except np.linalg.LinAlgError:
            break
    return mu, alpha, beta


def _arb(W: np.ndarray, H: Optional[np.ndarray], iterations: int, refit_rounds: int, damp: float) -> Quantized:
    """ARB-LLM (Li et al. 2024, "ARB-LLM: Alternating Refined Binarizations for Large Language
    Models"), the row-and-column-scale variant with a row mean:
    ``w_hat_ij = mu_i + alpha_i * beta_j * B_ij`` fitted by :func:`_arb_fit` (default 15
    iterations); the stored scales are rounded to float16 and B re-chosen for them.

    With H (ARB-LLM runs inside BiLLM's GPTQ framework): mu, alpha, beta come from the fit on
    the original W (rounded to float16); then columns are binarized in order,
    ``B_ij = sign((w_ij - mu_i) * alpha_i * beta_j)`` on the compensated weights, with GPTQ's
    error compensation (blocks of 128, lazy updates); finally mu, alpha, beta are refitted for
    the fixed B to minimize the damped Hessian-weighted error (`refit_rounds` alternations) and
    rounded to float16. One set of scales per row/column throughout, so the stored form is
    exactly ``codes * alpha * beta + mu``.

    Stored: codes (b1), alpha (n,), beta (k,), mu (n,). Bits per weight: 1 + 16 (2n + k) / (n k).
    """
    n, k = W.shape
    W64 = W.astype(np.float64)
    mu, alpha, beta, B, _ = _arb_fit(W64, iterations)
    mu16, alpha16, beta16 = (_fp16(v).astype(np.float64) for v in (mu, alpha, beta))
    if H is None:
        B = _sign((W64 - mu16[:, None]) * alpha16[:, None] * beta16[None, :])
        return _finish("arb", "b1", B, alpha16, None, col_scale=beta16, row_offset=mu16)
    Wc = W64.copy()
    U = _inverse_hessian_factor(H, Wc, damp)
    codes = np.zeros((n, k))

    def quantize_column(j, w, lookahead):
        b = _sign((w - mu16) * alpha16 * beta16[j])
        codes[:, j] = b
        return mu16 + alpha16 * beta16[j] * b

    _gptq_sweep(Wc, U, quantize_column)
    if refit_rounds:
        mu, alpha, beta = _arb_refit(W64, _damped(H, damp), codes, mu16, alpha16, beta16, refit_rounds)
        mu16, alpha16, beta16 = (_fp16(v) for v in (mu, alpha, beta))
    return _finish("arb", "b1", codes, alpha16, None, col_scale=beta16, row_offset=mu16)
