"""Calibration: each decoder linear's Hessian H = X^T X over calibration text, from the
activations binllm's own forward pass feeds it (``Session.forward(observe=...)``).

Layers that read the same input share one Hessian: q/k/v ("attn_in"), gate/up ("ffn_in").
All Hessians come from the unquantized model in one pass (GPTQ proper re-runs each block on
the already-quantized ones before it; that costs a forward pass per block and is left out).
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

Progress = Callable[[str], None]


def calibration_tokens(model, text: str, count: int) -> list[int]:
    ids = model.encode(text)
    if len(ids) < 2:
        raise ValueError("the calibration text is too short (fewer than 2 tokens)")
    return ids[:count]


def hessians(model, tokens: list[int], ctx: int = 512, progress: Optional[Progress] = None) -> dict[tuple[int, str], np.ndarray]:
    """{(layer, site): H} with H = sum over tokens of x x^T (float64), from windows of `ctx`
    tokens run through `model` (a binllm.Model)."""
    if ctx < 2:
        raise ValueError("ctx must be at least 2")
    ctx = min(ctx, int(model.config["max_position_embeddings"]))
    acc: dict[tuple[int, str], np.ndarray] = {}

    def observe(layer: int, site: str, x: np.ndarray) -> None:
        x64 = x.astype(np.float64)
        h = x64.T @ x64
        key = (layer, site)
        if key in acc:
            acc[key] += h
        else:
            acc[key] = h

    windows = [tokens[i : i + ctx] for i in range(0, len(tokens), ctx)]
    windows = [w for w in windows if len(w) >= 2]
    start = time.perf_counter()
    for n, window in enumerate(windows, 1):
        session = model._core.session(len(window))
        session.forward(window, observe=observe)
        if progress:
            progress(f"calibration {n}/{len(windows)} windows ({n * ctx} tokens, {time.perf_counter() - start:.0f} s)")
    return acc


def read_text(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such text file")
    text = p.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ValueError(f"{p} is empty")
    return text


_FRACTION = re.compile(r"(\d+)/(\d+)")


def stderr_progress(message: str) -> None:
    """One self-overwriting stderr line; a bar when the message carries "n/N"."""
    m = _FRACTION.search(message)
    bar = ""
    if m and int(m.group(2)) > 0:
        done = min(1.0, int(m.group(1)) / int(m.group(2)))
        bar = "[" + "#" * round(24 * done) + "." * (24 - round(24 * done)) + "] "
    print(f"\r[binllm] {bar}{message}\033[K", end="", file=sys.stderr, flush=True)
