"""Packed 1-bit and ternary weight matrices and their integer kernels.

Formats (one table in ``rust/binllm-core/src/formats.rs``):

========  ===============  ==============================================
format    bits per weight  codes
========  ===============  ==============================================
``t2``    2.0 + scales     ternary {-1, 0, 1}, 4 per byte
``t1.6``  1.6 + scales     ternary {-1, 0, 1}, 5 per byte
``b1``    1.0 + scales     binary {-1, 1}, 8 per byte
========  ===============  ==============================================

Any K is accepted: rows are padded with zero codes to whole blocks (256, 320 and 512 weights),
and ``bits_per_weight`` counts that padding and every scale.

``PackedMatrix.matmul(x)`` quantizes each row of ``x`` as BitNet b1.58 does
(``s = 127 / max|x|``, ``q = clamp(round_half_even(x * s), -128, 127)``), forms exact integer
sums with the codes, and returns ``sums * w_scale[n] / s[m]``. For OneBit matrices
(``pack_binary(w, g, h)``), ``x`` is first multiplied by ``h`` column-wise, and ``g`` is the
row scale.
"""

from __future__ import annotations

from typing import Union

import numpy as np

from binllm import _core
from binllm._core import PackedMatrix

__all__ = [
    "PackedMatrix",
    "pack_ternary",
    "pack_binary",
    "quantize_activations",
    "backends",
    "backend",
    "set_num_threads",
    "num_threads",
]

Scale = Union[float, np.ndarray]


def _int8_matrix(w: np.ndarray, allowed: str) -> np.ndarray:
    if not isinstance(w, np.ndarray):
        raise TypeError(f"w must be a numpy int8 array, got {type(w).__name__}")
    if w.dtype != np.int8:
        raise TypeError(f"w must have dtype int8 with values {allowed}, got {w.dtype}")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D (N, K), got shape {w.shape}")
    if not w.flags.c_contiguous:
        raise ValueError("w must be C-contiguous (use np.ascontiguousarray)")
    return w


def _scale(scale: Scale, n: int, what: str):
    if isinstance(scale, np.ndarray):
        if scale.dtype != np.float32:
            raise TypeError(f"{what} must be a float or a float32 array, got dtype {scale.dtype}")
        if scale.shape != (n,):
            raise ValueError(f"{what} must have shape ({n},) (one value per row), got {scale.shape}")
        return np.ascontiguousarray(scale)
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.floating, np.integer)):
        raise TypeError(f"{what} must be a float or a float32 array of {n} values, got {type(scale).__name__}")
    return float(scale)


def _float_input(x: np.ndarray) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy float32 array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"x must have dtype float32, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous (use np.ascontiguousarray)")
    return x


def pack_ternary(w: np.ndarray, scale: Scale, bits: float = 2.0) -> PackedMatrix:
    """Packs ternary codes ``w`` (int8 {-1, 0, 1}, shape (N, K)).

    ``scale`` is one float for the tensor or a float32 array of N (per row); the weight is
    ``w * scale``. ``bits`` chooses the layout: 2.0 (4 codes per byte) or 1.6 (5 per byte).
    """
    w = _int8_matrix(w, "-1, 0, 1")
    if bits not in (2.0, 1.6):
        raise ValueError(f"bits must be 2.0 or 1.6, got {bits}")
    return _core.pack_ternary(w, _scale(scale, w.shape[0], "scale"), float(bits))


def pack_binary(w: np.ndarray, row_scale: Scale, col_scale: np.ndarray | None = None) -> PackedMatrix:
    """Packs binary codes ``w`` (int8 {-1, 1}, shape (N, K)).

    The weight is ``diag(row_scale) @ w`` or, with ``col_scale`` (float32, K values), OneBit's
    ``diag(row_scale) @ w @ diag(col_scale)``.
    """
    w = _int8_matrix(w, "-1, 1")
    rs = _scale(row_scale, w.shape[0], "row_scale")
    if col_scale is not None:
        if not isinstance(col_scale, np.ndarray) or col_scale.dtype != np.float32:
            raise TypeError("col_scale must be a float32 numpy array")
        if col_scale.shape != (w.shape[1],):
            raise ValueError(f"col_scale must have shape ({w.shape[1]},), got {col_scale.shape}")
        col_scale = np.ascontiguousarray(col_scale)
    return _core.pack_binary(w, rs, col_scale)


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BitNet b1.58's per-token int8 quantization of ``x`` (float32, (K,) or (M, K)).

    Returns ``(q, s)`` with ``s = 127 / max(|x|)`` per row (max clamped to 1e-5) and
    ``q = clamp(round_half_even(x * s), -128, 127)`` as int8.
    """
    return _core.quantize_activations(_float_input(x))


def backends() -> list[str]:
    """Kernel backends usable on this CPU, best last."""
    return _core.backends()


def backend() -> str:
    """The backend in use (``BINLLM_BACKEND`` forces one; an unusable choice raises BackendError)."""
    return _core.backend()


def set_num_threads(n: int) -> None:
    """Sets the worker threads of every kernel (default: all cores, or ``BINLLM_THREADS``)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    _core.set_num_threads(n)


def num_threads() -> int:
    """Worker threads the kernels use."""
    return _core.num_threads()
