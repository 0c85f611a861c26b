"""Batched decode: aggregate tokens/s of N sequences decoding together in binllm's engine, against
one sequence alone and against llama.cpp's batched decoding, on the same seeded weights.

    .venv/bin/python benches/bench_batch.py [--shapes 729m,2b4t] [--threads 1,2]
        [--batches 1,2,4,8,16] [--prompt 32] [--steps 16] [--repeats 2] [--output f16|q6_k]
        [--out FILE.md]

Each of the N sequences gets its own --prompt random ids; all prompts run in one engine step,
then --steps decode steps are timed (one token of every sequence a step, greedy; the engine's
end-of-sequence list is empty so no sequence stops). Aggregate tok/s = N * steps / time; a
step's time is the per-token latency every sequence sees. binllm runs `binllm_core::engine::
Engine` (what `binllm.Engine`, `Model.generate` and `binllm serve` drive) on the TQ2_0 file;
llama.cpp (llama-cpp-python's low-level API) decodes the same N sequences in one `llama_batch`
a step (`n_seq_max` N, a unified KV cache) on the same file. Engines alternate within every
repeat; the best repeat counts. The models are bench_models.py's (--workdir, written once).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_models import SHAPES, make_files, read_bandwidth, say  # noqa: E402
from kernel_cases import cpu_name  # noqa: E402


def prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, length).tolist() for _ in range(n)]


class Binllm:
    def __init__(self, path: Path):
        import binllm

        self.model = binllm.Model.from_pretrained(path)
        self.vocab = self.model.config["vocab_size"]

    def bench(self, threads: int, n: int, prompt: int, steps: int) -> float:
        """Seconds per decode step of n sequences."""
        from binllm import kernels

        kernels.set_num_threads(threads)
        engine = self.model._engine(eos=[])  # no sequence stops early
        for ids in prompts(n, prompt, self.vocab):
            engine.add(ids, steps + 2)
        engine.step()  # the prompts
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        return (time.perf_counter() - start) / steps

    def close(self):
        pass


class LlamaCpp:
    """llama.cpp batched decoding through llama-cpp-python's C API: one llama_batch holds every
    sequence's next token, each with its own seq_id and position, logits for all."""

    def __init__(self, path: Path):
        import llama_cpp

        self.lc = llama_cpp
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))

    def bench(self, threads: int, n: int, prompt: int, steps: int) -> float:
        lc = self.lc
        cp = lc.llama_context_default_params()
        cp.n_ctx = n * (prompt + steps + 2) + 256
        cp.n_batch = max(n * prompt, n)
        cp.n_ubatch = cp.n_batch
        cp.n_seq_max = n
        cp.kv_unified = True
        cp.n_threads = cp.n_threads_batch = threads
        ctx = lc.llama_init_from_model(self.model, cp)
        if not ctx:
            raise RuntimeError("llama.cpp could not make a context")
        batch = lc.llama_batch_init(max(n * prompt, n), 0, n)
        try:

            def fill(tokens: list[tuple[int, int, int, bool]]) -> None:
                batch.n_tokens = len(tokens)
                for j, (token, pos, seq, want) in enumerate(tokens):
                    batch.token[j] = token
                    batch.pos[j] = pos
                    batch.n_seq_id[j] = 1
                    batch.seq_id[j][0] = seq
                    batch.logits[j] = want

            def argmax(j: int) -> int:
                row = lc.llama_get_logits_ith(ctx, j)
                return int(np.argmax(np.ctypeslib.as_array(ctypes.cast(row, ctypes.POINTER(ctypes.c_float)), shape=(self.vocab,))))

            ps = prompts(n, prompt, self.vocab)
            fill([(t, p, s, p == prompt - 1) for s, ids in enumerate(ps) for p, t in enumerate(ids)])
            if lc.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed on the prompts")
            nxt = [argmax(s * prompt + prompt - 1) for s in range(n)]
            start = time.perf_counter()
            for step in range(steps):
                fill([(nxt[s], prompt + step, s, True) for s in range(n)])
                if lc.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed")
                nxt = [argmax(s) for s in range(n)]
            return (time.perf_counter() - start) / steps
        finally:
            lc.llama_batch_free(batch)
            lc.llama_free(ctx)

    def close(self):
        self.lc.llama_model_free(self.model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="729m,2b4t")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--output", choices=("f16", "q6_k"), default="f16", help="the output layer's type in the file both engines run")
    ap.add_argument("--workdir", type=Path, default=ROOT / "target" / "bench-models")
    ap.add_argument("--no-llamacpp", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if batches[0] != 1:
        batches = [1] + batches
    have_llama = not args.no_llamacpp
    if have_llama:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            have_llama = False
            say("llama-cpp-python is not installed (bash scripts/install-llamacpp.sh): no llama.cpp rows")

    from binllm import kernels

    date = datetime.date.today().isoformat()
    lines = [
        f"Batched decode, {date}, {cpu_name()}, backend {kernels.backend()}; TQ2_0 with {args.output} output layer; {args.prompt}-token prompts, {args.steps} decode steps, best of {args.repeats}.",
        "",
        "| shape | threads | N | binllm step ms | binllm tok/s | x binllm N=1 | latency x N=1 | llama.cpp step ms | llama.cpp tok/s | x llama.cpp N=1 | binllm / llama.cpp |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    bandwidths: list[str] = []
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            raise SystemExit(f"unknown shape {shape!r}")
        files = make_files(args.workdir / shape, shape)
        model = files["t2" if args.output == "f16" else "t2-q6_k"]
        engines = [("binllm", Binllm(model))]
        if have_llama:
            engines.append(("llama.cpp", LlamaCpp(model)))
        for threads in [int(t) for t in args.threads.split(",")]:
            bandwidth = read_bandwidth(threads, nbytes=1 << 29, repeats=2)
            say(f"{shape}, {threads} thread(s), read bandwidth {bandwidth / 1e9:.1f} GB/s: batches {batches} ...")
            bandwidths.append(f"{shape} {threads} thread(s) {bandwidth / 1e9:.1f} GB/s")
            step: dict[tuple[str, int], float] = {}
            for _ in range(args.repeats):
                for n in batches:
                    for name, engine in engines:
                        t = engine.bench(threads, n, args.prompt, args.steps)
                        step[(name, n)] = min(step.get((name, n), float("inf")), t)
            for n in batches:
                b, b1 = step[("binllm", n)], step[("binllm", 1)]
                row = f"| {shape} | {threads} | {n} | {b * 1e3:.1f} | {n / b:.1f} | {n / b / (1 / b1):.2f} | {b / b1:.2f} |"
                if have_llama:
                    lc, lc1 = step[("llama.cpp", n)], step[("llama.cpp", 1)]
                    row += f" {lc * 1e3:.1f} | {n / lc:.1f} | {n / lc / (1 / lc1):.2f} | {lc / b:.2f} |"
                else:
                    row += " - | - | - | - |"
                lines.append(row)
                print(row, flush=True)
        for _, engine in engines:
            engine.close()
    lines += ["", f"Read bandwidth measured before each block of rows: {'; '.join(bandwidths)}."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
