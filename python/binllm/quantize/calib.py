"""Calibration: each decoder linear's Hessian H = X^T X over calibration text, from the
activations binllm's own forward pass feeds it (``Session.forward(observe=...)``).

Layers that read the same input share one Hessian: q/k/v ("attn_in"), gate/up ("ffn_in").
Two ways: `hessians` takes every block's Hessians from the unquantized model in one pass;
`SequentialCalibration` takes block l's from the model whose blocks before l are already
quantized (GPTQ's and BiLLM's protocol: later blocks compensate for the earlier ones' errors),
running each block twice (float to observe it, quantized to feed the next).
"""

from __future__ import annotations

import json
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


def _accumulate(core, tokens: list[int], ctx: int, layer: Optional[int], progress: Optional[Progress], label: str) -> dict[tuple[int, str], np.ndarray]:
    """{(layer, site): sum of x x^T (float64)} over windows of `ctx` tokens run through `core`
    (a binllm._core.Model); only block `layer`'s sites when it is given."""
    acc: dict[tuple[int, str], np.ndarray] = {}

    def observe(at: int, site: str, x: np.ndarray) -> None:
        if layer is not None and at != layer:
            return
        x64 = x.astype(np.float64)
        h = x64.T @ x64
        if (at, site) in acc:
            acc[(at, site)] += h
        else:
            acc[(at, site)] = h

    windows = [w for w in (tokens[i : i + ctx] for i in range(0, len(tokens), ctx)) if len(w) >= 2]
    start = time.perf_counter()
    for n, window in enumerate(windows, 1):
        core.session(len(window)).forward(window, observe=observe)
        if progress:
            progress(f"{label}calibration window {n}/{len(windows)} ({time.perf_counter() - start:.0f} s)")
    return acc


def hessians(model, tokens: list[int], ctx: int = 512, progress: Optional[Progress] = None) -> dict[tuple[int, str], np.ndarray]:
    """{(layer, site): H} with H = sum over tokens of x x^T (float64), from windows of `ctx`
    tokens run through `model` (a binllm.Model)."""
    if ctx < 2:
        raise ValueError("ctx must be at least 2")
    ctx = min(ctx, int(model.config["max_position_embeddings"]))
    return _accumulate(model._core, tokens, ctx, None, progress, "")


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


class SequentialCalibration:
    """Per-block Hessians with the blocks before it already quantized, as GPTQ and BiLLM
    calibrate: block l's inputs are the outputs of blocks 0..l-1 with their quantized weights.

    The hidden states of every calibration window are kept in memory between blocks (windows x
    ctx x hidden floats), so each block runs twice in all: once with its float weights to
    observe its inputs, once with its quantized weights to make the next block's inputs. Each
    run is a one-block model built in memory (`_core.Model.from_hf_bytes`) and started from
    hidden states (`Session.forward_hidden`): nothing is written to disk.
    """

    def __init__(self, source, tokens: list[int], ctx: int):
        if ctx < 2:
            raise ValueError("ctx must be at least 2")
        self.source = source
        self.ctx = min(ctx, int(source.config.get("max_position_embeddings", ctx)))
        windows = [w for w in (tokens[i : i + self.ctx] for i in range(0, len(tokens), self.ctx)) if len(w) >= 2]
        # The embeddings as the model holds them (float16), widened.
        embed = source.tensors["model.embed_tokens.weight"].astype(np.float16).astype(np.float32)
        self.hidden = [np.ascontiguousarray(embed[w]) for w in windows]
        # A one-block model: its embedding and head are never used (one row keeps it small;
        # token ids that would name rows of the real vocabulary are left out).
        config = {k: v for k, v in source.config.items() if k not in ("quantization_config", "bos_token_id", "eos_token_id", "pad_token_id")}
        self.config = json.dumps(dict(config, num_hidden_layers=1, vocab_size=1, tie_word_embeddings=True))
        self.shared = {
            "model.embed_tokens.weight": np.zeros((1, embed.shape[1]), np.float16),
            "model.norm.weight": source.tensors["model.norm.weight"].astype(np.float32),
        }

    def _block(self, layer: int, linears: dict[str, np.ndarray]):
        from safetensors.numpy import save

        from binllm import _core

        prefix = f"model.layers.{layer}."
        tensors = dict(self.shared)
        for name, w in self.source.tensors.items():
            if name.startswith(prefix):
                tensors["model.layers.0." + name[len(prefix) :]] = np.asarray(linears.get(name, w), np.float32)
        return _core.Model.from_hf_bytes(self.config, [save(tensors)], True)

    def _run(self, model, observe=None, progress: Optional[Progress] = None, label: str = "") -> list[np.ndarray]:
        out = []
        start = time.perf_counter()
        for n, h in enumerate(self.hidden, 1):
            out.append(model.session(len(h)).forward_hidden(h, observe=observe))
            if progress:
                progress(f"{label}calibration window {n}/{len(self.hidden)} ({time.perf_counter() - start:.0f} s)")
        return out

    def hessians(self, layer: int, progress: Optional[Progress] = None) -> dict[tuple[int, str], np.ndarray]:
        """{(layer, site): H} for block `layer`, the blocks before it as set by `done`."""
        acc: dict[tuple[int, str], np.ndarray] = {}

        def observe(_: int, site: str, x: np.ndarray) -> None:
            x64 = x.astype(np.float64)
            h = x64.T @ x64
            key = (layer, site)
            acc[key] = acc[key] + h if key in acc else h

        self._run(self._block(layer, {}), observe, progress, f"block {layer + 1}/{self.source.layers}: ")
        return acc

    def done(self, layer: int, linears: dict[str, np.ndarray]) -> None:
        """Block `layer` is quantized: later blocks see it through `linears` (HF name -> the
        dequantized weights)."""
        self.hidden = self._run(self._block(layer, linears))
