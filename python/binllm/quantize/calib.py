"""Calibration: each decoder linear's Hessian H = X^T X over calibration text, from the
activations binllm's own forward pass feeds it (``Session.forward(observe=...)``).

Layers that read the same input share one Hessian: q/k/v ("attn_in"), gate/up ("ffn_in").
Two ways: `hessians` takes every block's Hessians from the unquantized model in one pass;
`SequentialCalibration` takes block l's from the model whose blocks before l are already
quantized (GPTQ's and BiLLM's protocol: later blocks compensate for the earlier ones' errors),
at the cost of running blocks 0..l for each l.
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
    calibrate: block l's inputs come from running blocks 0..l-1 with their quantized weights.

    The model for block l is written as a sharded Hugging Face folder in `workdir` that holds
    only blocks 0..l (one shard per block, written once: the quantized block when it is done;
    the embeddings once), so each step writes one block and runs l + 1 blocks.
    """

    def __init__(self, source, tokens: list[int], ctx: int, workdir: Path):
        if ctx < 2:
            raise ValueError("ctx must be at least 2")
        self.source, self.tokens, self.dir = source, tokens, Path(workdir)
        self.ctx = min(ctx, int(source.config.get("max_position_embeddings", ctx)))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.weight_map: dict[str, str] = {}
        shared = {"model.embed_tokens.weight": source.tensors["model.embed_tokens.weight"].astype(np.float16), "model.norm.weight": source.tensors["model.norm.weight"].astype(np.float32)}
        self._save(shared, "shared.safetensors")

    def _save(self, tensors: dict[str, np.ndarray], fname: str) -> None:
        from safetensors.numpy import save_file

        save_file(tensors, str(self.dir / fname))
        self.weight_map.update({name: fname for name in tensors})

    def _block(self, layer: int, linears: dict[str, np.ndarray], fname: str) -> None:
        prefix = f"model.layers.{layer}."
        tensors = {n: w.astype(np.float32) for n, w in self.source.tensors.items() if n.startswith(prefix) and n not in linears}
        tensors.update({n: np.asarray(w, np.float32) for n, w in linears.items()})
        for n in [n for n, f in self.weight_map.items() if n.startswith(prefix)]:
            del self.weight_map[n]
        self._save(tensors, fname)

    def hessians(self, layer: int, progress: Optional[Progress] = None) -> dict[tuple[int, str], np.ndarray]:
        """{(layer, site): H} for block `layer`, blocks before it as set by `done`."""
        from binllm import _core

        prefix = f"model.layers.{layer}."
        self._block(layer, {n: w for n, w in self.source.tensors.items() if n.startswith(prefix)}, f"float-{layer}.safetensors")
        config = dict(self.source.config, num_hidden_layers=layer + 1, tie_word_embeddings=True)
        config.pop("quantization_config", None)
        (self.dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
        (self.dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": self.weight_map}), encoding="utf-8")
        model = _core.Model.load(str(self.dir), True)
        acc = _accumulate(model, self.tokens, self.ctx, layer, progress, f"block {layer + 1}/{self.source.layers}: ")
        (self.dir / f"float-{layer}.safetensors").unlink()
        return acc

    def done(self, layer: int, linears: dict[str, np.ndarray]) -> None:
        """Block `layer` is quantized: later blocks see it through `linears` (HF name -> the
        dequantized weights)."""
        self._block(layer, linears, f"quantized-{layer}.safetensors")
