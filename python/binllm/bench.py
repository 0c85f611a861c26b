"""Speed measurements shared by the CLI (``binllm bench``, ``binllm demo``) and benches/."""

from __future__ import annotations

import sys
import time

import numpy as np

from binllm import kernels


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_model(model, prompt_tokens: int = 128, decode_tokens: int = 128, repeats: int = 3, seed: int = 0, progress: bool = False) -> dict:
    """Prompt (batched prefill) and decode (one token at a time) tokens/s, best of `repeats`."""
    if prompt_tokens < 1 or decode_tokens < 1 or repeats < 1:
        raise ValueError("prompt_tokens, decode_tokens and repeats must be positive")
    core = model._core
    vocab = model.config["vocab_size"]
    need = prompt_tokens + decode_tokens
    if need > model.config["max_position_embeddings"]:
        raise ValueError(f"{need} tokens exceed the model's context of {model.config['max_position_embeddings']}")
    ids = np.random.default_rng(seed).integers(0, vocab, prompt_tokens).tolist()
    prompt_s, decode_s = float("inf"), float("inf")
    for r in range(repeats):
        if progress:
            print(f"\r[binllm] bench run {r + 1}/{repeats}", end="", file=sys.stderr, flush=True)
        session = core.session(need)
        start = time.perf_counter()
        logits = session.forward(ids)
        prompt_s = min(prompt_s, time.perf_counter() - start)
        token = int(np.argmax(logits))
        start = time.perf_counter()
        for _ in range(decode_tokens):
            token = int(np.argmax(session.forward([token])))
        decode_s = min(decode_s, time.perf_counter() - start)
    if progress:
        print(file=sys.stderr)
    return {
        "prompt_tokens": prompt_tokens,
        "decode_tokens": decode_tokens,
        "prompt_tok_s": prompt_tokens / prompt_s,
        "decode_tok_s": decode_tokens / decode_s,
        "threads": kernels.num_threads(),
        "backend": kernels.backend(),
        "weight_bytes": core.nbytes,
    }


def kernel_demo(threads: int | None = None, n: int = 6912, k: int = 2560) -> None:
    """Ternary GEMV against numpy float32 on a BitNet b1.58 2B4T MLP layer (6912 x 2560)."""
    if threads is not None:
        kernels.set_num_threads(threads)
    rng = np.random.default_rng(0)
    codes = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
    packed = kernels.pack_ternary(codes, 0.02)
    dense = codes.astype(np.float32) * np.float32(0.02)
    x = rng.standard_normal(k).astype(np.float32)
    t_packed = _best_of(lambda: packed.matmul(x), 50)
    t_dense = _best_of(lambda: dense @ x, 50)
    print(f"GEMV {n} x {k} (BitNet b1.58 2B4T MLP layer), backend {kernels.backend()}, {kernels.num_threads()} threads")
    print(f"  binllm ternary t2 : {t_packed * 1e6:8.1f} us  {packed.nbytes / t_packed / 1e9:6.1f} GB/s of weights  ({packed.nbytes / 2**20:.1f} MiB)")
    print(f"  numpy float32     : {t_dense * 1e6:8.1f} us  {dense.nbytes / t_dense / 1e9:6.1f} GB/s of weights  ({dense.nbytes / 2**20:.1f} MiB)")
    print(f"  speed-up          : {t_dense / t_packed:.1f}x")
