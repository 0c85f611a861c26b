"""Decode and prompt speed of binllm against llama.cpp and ik_llama.cpp on the same seeded
weights, at the shapes people run, against the machine's read bandwidth, all in one run.

    .venv/bin/python benches/bench_models.py [--shapes 729m,2b4t] [--threads 1,2]
        [--prompt 128] [--decode 128] [--repeats 3] [--workdir DIR] [--out FILE.md]

Shapes (seeded random BitNet b1.58 weights, written once per --workdir and reused):
- 729m: microsoft/bitnet_b1_58-large's shape (hidden 1536, 24 layers, 16 heads, ff 4096,
  vocab 32002), SiLU, sub-norms, output tied to the embeddings;
- 2b4t: BitNet b1.58 2B4T's shape (hidden 2560, 30 layers, 20/5 heads, ff 6912, vocab 128256,
  tied f16 output), relu2. llama.cpp and ik_llama.cpp run these files as their "bitnet"
  graph, whose gate is SiLU: the same work and bytes, a different activation (speed only).

Engines, alternating within every repeat so that all see the same background load (best of
--repeats for each):
- binllm on the TQ2_0 file (t2), with the output layer as stored (f16) and re-stored as
  q8_0 (`--output-type q8_0`), on the TQ1_0 file (t1.6), and on the TQ2_0 file whose
  embeddings/output binllm's convert wrote as Q6_K (`convert --output-type q6_k`; loading the
  f16 file with `--output-type q6_k` gives the same blocks);
- llama.cpp (llama-cpp-python) on the TQ2_0 file and on the Q6_K-output one;
- ik_llama.cpp (../shared/peers/ik_llama.cpp, prebuilt, or the build BINLLM_IK_LLAMA_CPP names:
  a folder with bin/, lib/ and run; skipped with a reason when absent or built for another CPU):
  IQ2_BN with its strongest flags (-rtr 1 -fa 1) and IQ1_BN (-fa 1), made by its own
  llama-quantize from an F16 export of the same weights (embeddings/output kept f16).

Prompt tok/s: one batched pass over --prompt random ids. Decode tok/s: --decode greedy steps
after that prompt (ik: llama-bench's tg at depth --prompt). Read bandwidth: binllm's
streaming-read probe over 1 GiB with the same thread count, the best of 1, 2, 4 and 8
interleaved prefetched streams, before and after the engines. Limit: bandwidth / bytes one
decode step reads (weights as held, the whole tied output layer, the KV cache at the mean
decode position, f16 in every engine: binllm's default cache type, as the peers'); "decode /
limit" is the share reached.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benches"))
from kernel_cases import cpu_name  # noqa: E402

IK = Path(os.environ.get("BINLLM_IK_LLAMA_CPP", ROOT.parent / "shared" / "peers" / "ik_llama.cpp"))

SHAPES = {
    "729m": dict(hidden=1536, heads=16, kv_heads=16, intermediate=4096, layers=24, vocab=32002, max_positions=2048, activation="silu"),
    "2b4t": dict(hidden=2560, heads=20, kv_heads=5, intermediate=6912, layers=30, vocab=128256, max_positions=4096, activation="relu2"),
}


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def ik_tool(name: str) -> list[str] | None:
    run = IK / "run"
    return [str(run), name] if run.is_file() and (IK / "bin" / name).is_file() else None


def ik_failure(returncode: int) -> str:
    """Why an ik_llama.cpp tool failed, in words: a build for another CPU dies of SIGILL."""
    if returncode == -4:
        return "died of SIGILL: built for another CPU (rebuild it here and set BINLLM_IK_LLAMA_CPP to it)"
    return f"failed (exit status {returncode})"


def ik_runs(path: Path, shape: str) -> bool:
    """Whether ik_llama.cpp's llama-bench runs `path` here (a short prompt); says why not."""
    done = subprocess.run(ik_tool("llama-bench") + ["-m", str(path), "-p", "8", "-n", "0", "-r", "1", "-t", "1", "-o", "json"], capture_output=True)
    if done.returncode != 0:
        say(f"{shape}: no ik rows: ik_llama.cpp's llama-bench at {IK} {ik_failure(done.returncode)}")
    return done.returncode == 0


def make_files(folder: Path, shape: str) -> dict[str, Path]:
    """The shape's seeded weights as TQ2_0 and TQ1_0 GGUF (binllm, llama.cpp) and, where
    ik_llama.cpp is present, as its IQ2_BN and IQ1_BN (from an F16 export, then deleted)."""
    import warnings

    from binllm.convert import convert
    from helpers import make_random_hf_model

    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "t2": folder / "model.tq2_0.gguf",
        "t1.6": folder / "model.tq1_0.gguf",
        "t2-q6_k": folder / "model.tq2_0-q6_k.gguf",
        "iq2_bn": folder / "ik-model.iq2_bn.gguf",
        "iq1_bn": folder / "ik-model.iq1_bn.gguf",
    }
    hf = folder / "hf"
    needs = [k for k in ("t2", "t1.6", "t2-q6_k") if not files[k].is_file()]
    quantize = ik_tool("llama-quantize")
    needs_ik = quantize and not (files["iq2_bn"].is_file() and files["iq1_bn"].is_file())
    if needs or needs_ik:
        if not (hf / "model.safetensors").is_file():
            say(f"{shape}: writing seeded random weights ...")
            make_random_hf_model(hf, layout="bitnet_packed", seed=0, **SHAPES[shape])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the peers' SiLU graph on a relu2 shape: speed only
            for key, kind, output in (("t2", "tq2_0", "f16"), ("t1.6", "tq1_0", "f16"), ("t2-q6_k", "tq2_0", "q6_k")):
                if not files[key].is_file():
                    say(f"{shape}: converting to {kind}, {output} embeddings ...")
                    convert(hf, files[key], type=kind, embedding_type=output)
            if needs_ik:
                f16 = folder / "model.f16.gguf"
                convert(hf, f16, type="f16")
                try:
                    for key, kind in (("iq2_bn", "IQ2_BN"), ("iq1_bn", "IQ1_BN")):
                        say(f"{shape}: ik_llama.cpp llama-quantize {kind} ...")
                        # The output path must not start with a digit (llama-quantize reads it as a type).
                        cmd = quantize + ["--token-embedding-type", "f16", "--output-tensor-type", "f16", str(f16), str(files[key]), kind, "2"]
                        done = subprocess.run(cmd, capture_output=True)
                        if done.returncode != 0:
                            files[key].unlink(missing_ok=True)
                            say(f"{shape}: no ik rows: ik_llama.cpp's llama-quantize at {IK} {ik_failure(done.returncode)}")
                            break
                finally:
                    f16.unlink()
    return {k: v for k, v in files.items() if v.is_file()}


def read_bandwidth(threads: int, nbytes: int = 1 << 30, repeats: int = 3) -> float:
    """Bytes/s `threads` threads read from memory: binllm's streaming-read probe, the best of
    several access patterns (one plain stream; 2, 4 or 8 interleaved prefetched streams)."""
    from binllm import _core, kernels

    kernels.set_num_threads(threads)
    data = np.ones(nbytes, dtype=np.uint8)
    best = float("inf")
    for streams in (1, 2, 4, 8):
        for _ in range(repeats):
            start = time.perf_counter()
            _core.sum_bytes(data, streams)
            best = min(best, time.perf_counter() - start)
    return nbytes / best


class Binllm:
    def __init__(self, path: Path, output_type: str | None, ternary_format: str | None = None):
        import binllm

        self.model = binllm.Model.from_pretrained(path, output_type=output_type, ternary_format=ternary_format)

    def bytes_per_token(self, kv_values: float) -> float:
        return self.model._core.nbytes + {"f16": 2, "f32": 4}[self.model.config["kv_type"]] * kv_values

    def bench(self, threads: int, prompt: int, decode: int) -> dict:
        from binllm import kernels
        from binllm.bench import bench_model

        kernels.set_num_threads(threads)
        return bench_model(self.model, prompt, decode, repeats=1)


class LlamaCpp:
    """llama.cpp through llama-cpp-python, measured as binllm.bench.bench_model measures binllm:
    one batched prompt pass over random ids, then greedy single-token decode steps."""

    def __init__(self, path: Path):
        self.path = path
        self.llm, self.threads = None, None

    def bytes_per_token(self, kv_values: float) -> float:
        return self.path.stat().st_size + 2 * kv_values

    def bench(self, threads: int, prompt: int, decode: int, seed: int = 0) -> dict:
        import llama_cpp

        if self.threads != threads:
            self.close()
            self.llm = llama_cpp.Llama(str(self.path), n_ctx=prompt + decode, n_batch=prompt, n_ubatch=prompt, n_threads=threads, n_threads_batch=threads, verbose=False)
            self.threads = threads
        vocab = self.llm.n_vocab()
        ids = np.random.default_rng(seed).integers(0, vocab, prompt).tolist()
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(ids)
        prompt_s = time.perf_counter() - start

        def next_token() -> int:
            return int(np.argmax(np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(vocab,))))

        token = next_token()
        start = time.perf_counter()
        for _ in range(decode):
            self.llm.eval([token])
            token = next_token()
        return {"prompt_tok_s": prompt / prompt_s, "decode_tok_s": decode / (time.perf_counter() - start)}

    def close(self):
        if self.llm is not None:
            self.llm.close()
            self.llm = None


class IkLlamaCpp:
    """ik_llama.cpp's llama-bench (prebuilt peer): pp at --prompt and tg at depth --prompt."""

    def __init__(self, path: Path, flags: list[str]):
        self.path, self.flags = path, flags

    def bytes_per_token(self, kv_values: float) -> float:
        return self.path.stat().st_size + 2 * kv_values

    def bench(self, threads: int, prompt: int, decode: int) -> dict:
        cmd = ik_tool("llama-bench") + ["-m", str(self.path), *self.flags, "-p", str(prompt), "-n", "0", "-gp", f"{prompt},{decode}", "-r", "1", "-t", str(threads), "-o", "json"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        tests = json.loads(out[out.index("[") :])
        prompt_ts = next(t["avg_ts"] for t in tests if t["n_gen"] == 0)
        decode_ts = next(t["avg_ts"] for t in tests if t["n_gen"] > 0)
        return {"prompt_tok_s": prompt_ts, "decode_tok_s": decode_ts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="729m,2b4t", help="comma-separated: 729m, 2b4t")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=ROOT / "target" / "bench-models", help="where the models are written once and reused")
    ap.add_argument("--engines", default=None, help="comma-separated subset of the engine labels' first words (binllm, llama.cpp, ik)")
    ap.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = ap.parse_args()

    from binllm import kernels

    shapes = args.shapes.split(",")
    for s in shapes:
        if s not in SHAPES:
            raise SystemExit(f"unknown shape {s!r} (known: {', '.join(SHAPES)})")
    thread_counts = [int(t) for t in args.threads.split(",")]
    wanted = set(args.engines.split(",")) if args.engines else None
    try:
        import llama_cpp  # noqa: F401

        have_llama = True
    except ImportError:
        have_llama = False
        say("llama-cpp-python is not installed (bash scripts/install-llamacpp.sh): no llama.cpp rows")
    if ik_tool("llama-bench") is None:
        say(f"ik_llama.cpp not found at {IK}: no ik rows")

    date = datetime.date.today().isoformat()
    lines = []
    for shape in shapes:
        files = make_files(args.workdir / shape, shape)
        engines: list[tuple[str, object]] = [
            ("binllm t2 (TQ2_0), f16 output", Binllm(files["t2"], None)),
            ("binllm t2 (TQ2_0), q8_0 output", Binllm(files["t2"], "q8_0")),
            ("binllm t1.6 (TQ1_0)", Binllm(files["t1.6"], None, "t1.6")),
            ("binllm t2 (TQ2_0 + Q6_K file)", Binllm(files["t2-q6_k"], None)),
        ]
        if have_llama:
            engines.append(("llama.cpp TQ2_0", LlamaCpp(files["t2"])))
            engines.append(("llama.cpp TQ2_0 + Q6_K file", LlamaCpp(files["t2-q6_k"])))
        if "iq2_bn" in files and ik_tool("llama-bench") and ik_runs(files["iq2_bn"], shape):
            engines.append(("ik_llama.cpp IQ2_BN -rtr 1 -fa 1", IkLlamaCpp(files["iq2_bn"], ["-rtr", "1", "-fa", "1"])))
            engines.append(("ik_llama.cpp IQ1_BN -fa 1", IkLlamaCpp(files["iq1_bn"], ["-fa", "1"])))
        if wanted:
            engines = [(label, e) for label, e in engines if label.split()[0].split("_")[0] in wanted or label.split()[0] in wanted]
        cfg = engines[0][1].model.config if isinstance(engines[0][1], Binllm) else None
        mean_position = args.prompt + args.decode / 2
        kv_values = mean_position * cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * cfg["head_dim"] if cfg else 0
        for threads in thread_counts:
            say(f"{shape}, {threads} thread(s): bandwidth, then {len(engines)} engines alternately x {args.repeats} ...")
            bandwidth = read_bandwidth(threads)
            runs: dict[str, list[dict]] = {label: [] for label, _ in engines}
            for _ in range(args.repeats):
                for label, engine in engines:
                    runs[label].append(engine.bench(threads, args.prompt, args.decode))
            bandwidth = max(bandwidth, read_bandwidth(threads))
            for label, engine in engines:
                if isinstance(engine, LlamaCpp):
                    engine.close()
            best = {label: {k: max(r[k] for r in rs) for k in ("prompt_tok_s", "decode_tok_s")} for label, rs in runs.items()}
            ref_ik = best.get("ik_llama.cpp IQ2_BN -rtr 1 -fa 1")
            ref_llama = best.get("llama.cpp TQ2_0")
            for label, engine in engines:
                b = best[label]
                limit = bandwidth / engine.bytes_per_token(kv_values)
                vs = lambda ref: f"{b['decode_tok_s'] / ref['decode_tok_s']:.2f}x" if ref else "-"  # noqa: E731
                vsp = lambda ref: f"{b['prompt_tok_s'] / ref['prompt_tok_s']:.2f}x" if ref else "-"  # noqa: E731
                lines.append(
                    f"| {shape} | {threads} | {label} | {b['prompt_tok_s']:.1f} | {b['decode_tok_s']:.2f} | {vs(ref_ik)} | {vs(ref_llama)} | "
                    f"{vsp(ref_ik)} | {vsp(ref_llama)} | {bandwidth / 1e9:.1f} | {limit:.2f} | {b['decode_tok_s'] / limit:.0%} |"
                )
    header = [
        f"bench_models, {date}, {cpu_name()} ({os.cpu_count()} cores): backend {kernels.backend()}, prompt {args.prompt}, decode {args.decode} tokens, best of {args.repeats}, engines alternating.",
        "",
        "| shape | threads | engine | prompt tok/s | decode tok/s | decode vs ik IQ2_BN | decode vs llama.cpp | prompt vs ik | prompt vs llama.cpp | read GB/s | limit tok/s | decode / limit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    text = "\n".join(header + lines) + "\n"
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
