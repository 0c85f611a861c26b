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

Per-group scales (``pack_ternary(w, scales, group_size=G)``, ``scales`` of shape
(N, ceil(K / G)), G a multiple of the block: 256 for ``t2``) give
``y[m, n] = sum_g scales[n, g] * sums[m, n, g] / s[m]`` with one exact integer sum per group
(``integer_sums`` then returns (M, N, groups)). A row offset ``mu`` (``row_offset=``, N values,
ARB-LLM's row mean) makes the weight ``mu[n] + scale * code`` and adds ``mu[n] * sum(x[m])``
over the float ``x``.

``PackedMatrix.data`` is the packed codes as uint8 (N, ``row_bytes``), the bytes a binllm
quantized Hugging Face folder stores as ``<module>.weight`` (see ``rust/binllm-core/src/model/load.rs``).
"""

from __future__ import annotations

from typing import Union

import numpy as np

from binllm import _core
from binllm._core import InvalidArgumentError, PackedMatrix

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
        raise InvalidArgumentError(f"w must be 2-D (N, K), got shape {w.shape}")
    if not w.flags.c_contiguous:
        raise InvalidArgumentError("w must be C-contiguous (use np.ascontiguousarray)")
    return w


def _scale(scale: Scale, n: int, what: str, groups: int | None = None):
    if isinstance(scale, np.ndarray):
        if scale.dtype != np.float32:
            raise TypeError(f"{what} must be a float or a float32 array, got dtype {scale.dtype}")
        if groups is not None:
            if scale.shape != (n, groups):
                raise InvalidArgumentError(f"{what} must have shape ({n}, {groups}) (rows x groups), got {scale.shape}")
        elif scale.shape != (n,):
            raise InvalidArgumentError(f"{what} must have shape ({n},) (one value per row), got {scale.shape}")
        return np.ascontiguousarray(scale)
    if groups is not None:
        raise TypeError(f"with group_size, {what} must be a float32 array of shape ({n}, {groups})")
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.floating, np.integer)):
        raise TypeError(f"{what} must be a float or a float32 array of {n} values, got {type(scale).__name__}")
    return float(scale)


def _float_input(x: np.ndarray) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy float32 array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"x must have dtype float32, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise InvalidArgumentError("x must be C-contiguous (use np.ascontiguousarray)")
    return x


def _row_offset(row_offset: np.ndarray | None, n: int) -> np.ndarray | None:
    if row_offset is None:
        return None
    if not isinstance(row_offset, np.ndarray) or row_offset.dtype != np.float32:
        raise TypeError("row_offset must be a float32 numpy array")
    if row_offset.shape != (n,):
        raise InvalidArgumentError(f"row_offset must have shape ({n},) (one value per row), got {row_offset.shape}")
    return np.ascontiguousarray(row_offset)


def pack_ternary(
    w: np.ndarray,
    scale: Scale,
    bits: float = 2.0,
    *,
    group_size: int | None = None,
    row_offset: np.ndarray | None = None,
) -> PackedMatrix:
    """Packs ternary codes ``w`` (int8 {-1, 0, 1}, shape (N, K)).

    ``scale`` is one float for the tensor, a float32 array of N (per row), or with
    ``group_size`` G a float32 array (N, ceil(K / G)): the weight is ``w * scale`` with the
    scale of the weight's row (and group). G must be a multiple of the format's block (256 for
    ``t2``, 320 for ``t1.6``); the padded tail of a row belongs to its last group.
    ``row_offset`` (float32, N) adds ``row_offset[n]`` to every weight of row n.
    ``bits`` chooses the layout: 2.0 (4 codes per byte) or 1.6 (5 per byte).
    """
    w = _int8_matrix(w, "-1, 0, 1")
    if bits not in (2.0, 1.6):
        raise InvalidArgumentError(f"bits must be 2.0 or 1.6, got {bits}")
    n, k = w.shape
    groups = None
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size <= 0:
            raise InvalidArgumentError(f"group_size must be a positive int, got {group_size!r}")
        groups = -(-k // int(group_size))
        group_size = int(group_size)
    return _core.pack_ternary(w, _scale(scale, n, "scale", groups), float(bits), group_size, _row_offset(row_offset, n))


def pack_binary(
    w: np.ndarray,
    row_scale: Scale,
    col_scale: np.ndarray | None = None,
    row_offset: np.ndarray | None = None,
    *,
    group_size: int | None = None,
) -> PackedMatrix:
    """Packs binary codes ``w`` (int8 {-1, 1}, shape (N, K)).

    The weight is ``diag(row_scale) @ w`` or, with ``col_scale`` (float32, K values), OneBit's
    ``diag(row_scale) @ w @ diag(col_scale)``; ``row_offset`` (float32, N) adds
    ``row_offset[n]`` to every weight of row n (ARB-LLM's ``mu + alpha * beta * B``).
    With ``group_size`` G (a multiple of 512, the ``b1`` block), ``row_scale`` is a float32
    array (N, ceil(K / G)): one scale per row and group (no ``col_scale`` then).
    """
    w = _int8_matrix(w, "-1, 1")
    groups = None
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size <= 0:
            raise InvalidArgumentError(f"group_size must be a positive int, got {group_size!r}")
        if col_scale is not None:
            raise InvalidArgumentError("col_scale and group_size cannot be combined")
        group_size = int(group_size)
        groups = -(-w.shape[1] // group_size)
    rs = _scale(row_scale, w.shape[0], "row_scale", groups)
    if col_scale is not None:
        if not isinstance(col_scale, np.ndarray) or col_scale.dtype != np.float32:
            raise TypeError("col_scale must be a float32 numpy array")
        if col_scale.shape != (w.shape[1],):
            raise InvalidArgumentError(f"col_scale must have shape ({w.shape[1]},), got {col_scale.shape}")
        col_scale = np.ascontiguousarray(col_scale)
    return _core.pack_binary(w, rs, col_scale, _row_offset(row_offset, w.shape[0]), group_size)


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
