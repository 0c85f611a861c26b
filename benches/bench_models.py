"""binllm against llama.cpp (llama-cpp-python) on one TQ2_0 GGUF file, and against the memory
bandwidth limit, all measured in the same run.

    .venv/bin/python benches/bench_models.py [--model FILE.gguf] [--threads 1,2]
                                             [--prompt 128] [--decode 128] [--repeats 3]

Without --model it writes a seeded random BitNet b1.58 model of microsoft/bitnet_b1_58-large's
shape (hidden 1536, 24 layers, 16 heads, intermediate 4096, vocab 32002) with SiLU and
sub-norms, which llama.cpp runs as its "bitnet" architecture (output tied to the embeddings),
converted to TQ2_0 by binllm.convert.

- prompt tok/s: one batched forward pass over `--prompt` random ids;
- decode tok/s: `--decode` single-token passes with greedy feedback; best of `--repeats` runs,
  binllm and llama.cpp alternating so that both see the same background load; binllm is
  measured by binllm.bench.bench_model (as `binllm bench` does), llama.cpp the same way
  through llama-cpp-python (its per-call Python overhead, like binllm's, is microseconds
  against tens of milliseconds a token);
- bandwidth limit: memory read bandwidth (binllm's streaming-read probe over 1 GiB with the
  same number of threads, best of before and after the runs) divided by the bytes a decode step must read:
  the weights (the tied output layer reads the whole embedding matrix) plus the KV cache at
  the mean decode position. binllm's limit uses the bytes binllm holds (f32 KV cache);
  "file limit" uses the GGUF file's bytes and an f16 KV cache, as llama.cpp keeps it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# microsoft/bitnet_b1_58-large (729M): the shape FIELD-NOTES' peer numbers were measured on.
LARGE = dict(hidden=1536, heads=16, kv_heads=16, intermediate=4096, layers=24, vocab=32002, max_positions=2048)


def random_bitnet_gguf(folder: Path) -> Path:
    """Writes folder/hf (the HF checkpoint) and folder/bitnet_b1_58-large-random.tq2_0.gguf."""
    from helpers import make_random_hf_model

    from binllm.convert import convert

    src = make_random_hf_model(folder / "hf", layout="bitnet_packed", seed=0, activation="silu", **LARGE)
    dst = folder / "bitnet_b1_58-large-random.tq2_0.gguf"
    summary = convert(src, dst, type="tq2_0")
    if summary["warnings"]:
        raise SystemExit(f"llama.cpp cannot run this file as binllm does: {summary['warnings']}")
    return dst


def read_bandwidth(threads: int, nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes/s that `threads` threads read from memory: binllm's streaming-read probe
    (`_core.sum_bytes`, SIMD, on the kernels' thread pool) where this build has it, else numpy
    (max over uint64, one part per Python thread; numpy releases the GIL)."""
    from binllm import _core, kernels

    data = np.ones(nbytes, dtype=np.uint8)
    if hasattr(_core, "sum_bytes"):
        kernels.set_num_threads(threads)

        def read():
            _core.sum_bytes(data)
    else:
        parts = np.array_split(data.view(np.uint64), threads)

        def read():
            workers = [threading.Thread(target=p.max) for p in parts]
            for w in workers:
                w.start()
            for w in workers:
                w.join()

    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        read()
        best = min(best, time.perf_counter() - start)
    return nbytes / best


class LlamaCpp:
    """llama.cpp on one file and thread count, measured as binllm.bench.bench_model measures
    binllm: one batched prompt pass over random ids, then greedy single-token decode steps."""

    def __init__(self, path: Path, threads: int, context: int, batch: int):
        import llama_cpp

        self.llm = llama_cpp.Llama(str(path), n_ctx=context, n_batch=batch, n_ubatch=batch, n_threads=threads, n_threads_batch=threads, verbose=False)
        self.vocab = self.llm.n_vocab()

    def _next_token(self) -> int:
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(self.vocab,))
        return int(np.argmax(logits))

    def bench(self, prompt: int, decode: int, seed: int = 0) -> dict:
        ids = np.random.default_rng(seed).integers(0, self.vocab, prompt).tolist()
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(ids)
        prompt_s = time.perf_counter() - start
        token = self._next_token()
        start = time.perf_counter()
        for _ in range(decode):
            self.llm.eval([token])
            token = self._next_token()
        return {"prompt_tok_s": prompt / prompt_s, "decode_tok_s": decode / (time.perf_counter() - start)}

    def close(self):
        self.llm.close()


def best(runs: list) -> dict:
    return {key: max(r[key] for r in runs) for key in ("prompt_tok_s", "decode_tok_s")}


def file_bytes_per_token(path: Path) -> int:
    """Tensor bytes of a GGUF file (every weight is read once per decoded token; the embedding
    rows a token looks up are a rounding error next to the tied output layer)."""
    from binllm import _core

    _, tensors = _core.gguf_read_metadata(str(path))
    sizes = {"F32": (1, 4), "F16": (1, 2), "TQ2_0": (256, 66), "TQ1_0": (256, 54), "Q8_0": (32, 34)}
    total = 0
    for name, dtype, shape in tensors:
        block, size = sizes[dtype]
        total += int(np.prod(shape)) // block * size
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="a TQ2_0 GGUF file (default: a random bitnet_b1_58-large)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-llama-cpp", action="store_true", help="measure binllm alone")
    ap.add_argument("--workdir", type=Path, help="keep the random model here and reuse it next time (default: a temporary folder)")
    args = ap.parse_args()

    import binllm
    from binllm import kernels
    from binllm.bench import bench_model

    thread_counts = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory(prefix="binllm-bench-") as tmp:
        path = args.model
        if path is None:
            folder = args.workdir or Path(tmp)
            path = folder / "bitnet_b1_58-large-random.tq2_0.gguf"
            if not path.is_file():
                print("[bench] writing a random bitnet_b1_58-large (TQ2_0) ...", file=sys.stderr, flush=True)
                random_bitnet_gguf(folder)
        use_llama = not args.no_llama_cpp
        if use_llama:
            try:
                import llama_cpp  # noqa: F401
            except ImportError:
                print("[bench] llama-cpp-python is not installed (bash scripts/install-llamacpp.sh); binllm alone", file=sys.stderr)
                use_llama = False

        model = binllm.Model.from_pretrained(path)
        cfg = model.config
        # KV cache at the mean decode position: binllm keeps f32, llama.cpp f16 (K and V, every layer).
        mean_position = args.prompt + args.decode / 2
        kv_values = mean_position * cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * cfg["head_dim"]
        binllm_bytes = model._core.nbytes + kv_values * 4
        file_tensor_bytes = file_bytes_per_token(path)
        file_bytes = file_tensor_bytes + kv_values * 2

        rows = []
        for threads in thread_counts:
            print(f"[bench] {threads} thread(s): bandwidth, then binllm and llama.cpp alternately ...", file=sys.stderr, flush=True)
            bandwidth = read_bandwidth(threads)
            kernels.set_num_threads(threads)
            peer = LlamaCpp(path, threads, args.prompt + args.decode, args.prompt) if use_llama else None
            ours, theirs = [], []
            try:
                # Alternating runs, best of each: both engines see the same background load.
                for _ in range(args.repeats):
                    ours.append(bench_model(model, args.prompt, args.decode, repeats=1))
                    if peer:
                        theirs.append(peer.bench(args.prompt, args.decode))
            finally:
                if peer:
                    peer.close()
            bandwidth = max(bandwidth, read_bandwidth(threads))
            rows.append((threads, bandwidth, best(ours), best(theirs) if theirs else None))

    print(f"\nModel: {path.name}: {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, vocab {cfg['vocab_size']}; "
          f"binllm holds {model._core.nbytes / 2**20:.0f} MiB, the file's tensors are {file_tensor_bytes / 2**20:.0f} MiB; "
          f"backend {kernels.backend()}; prompt {args.prompt}, decode {args.decode} tokens, best of {args.repeats}.\n")
    print("| threads | engine | prompt tok/s | decode tok/s | decode vs llama.cpp | read GB/s | binllm limit tok/s | decode / limit | file limit tok/s | decode / file limit |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for threads, bandwidth, ours, theirs in rows:
        ratio = f"{ours['decode_tok_s'] / theirs['decode_tok_s']:.2f}x" if theirs else "-"
        limit, file_limit = bandwidth / binllm_bytes, bandwidth / file_bytes
        print(f"| {threads} | binllm | {ours['prompt_tok_s']:.1f} | {ours['decode_tok_s']:.1f} | {ratio} | {bandwidth / 1e9:.1f} | "
              f"{limit:.1f} | {ours['decode_tok_s'] / limit:.0%} | {file_limit:.1f} | {ours['decode_tok_s'] / file_limit:.0%} |")
        if theirs:
            print(f"| {threads} | llama.cpp TQ2_0 | {theirs['prompt_tok_s']:.1f} | {theirs['decode_tok_s']:.1f} | 1.00x | {bandwidth / 1e9:.1f} | "
                  f"- | - | {file_limit:.1f} | {theirs['decode_tok_s'] / file_limit:.0%} |")


if __name__ == "__main__":
    main()
