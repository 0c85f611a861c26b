"""binllm's WebAssembly build in headless Chromium against native binllm on one thread, and
against wllama (llama.cpp in WebAssembly, npm @wllama/wllama) on the same GGUF file.

    .venv/bin/python benches/bench_wasm.py [--model FILE.gguf] [--shape large|small|2b4t]
                                           [--prompt 128] [--decode 64] [--repeats 3] [--rounds 2]
                                           [--threads 2] [--output-type q6_k]
                                           [--wllama-repeats 1] [--no-wllama]

Without --model it writes a seeded random BitNet b1.58 model (bitnet_b1_58-large's shape by
default: hidden 1536, 24 layers, vocab 32002), converted to TQ2_0 with binllm.convert. Prompt
tokens/s is one batched forward pass over `--prompt` random ids; decode tokens/s is `--decode`
single-token passes with greedy feedback, best of `--repeats`, as `binllm bench` measures; every
binllm engine (native and wasm) runs once a round, in turn, for `--rounds` rounds, so that they
share the machine's background load, and keeps its best.
wllama's numbers are llama.cpp's own timings of a completion (prompt, then decode), one
thread. binllm's wasm runs also report wasm memory after load and after the run; the threaded
module runs on a cross-origin isolated page. Results are ratios against native binllm on one
thread, measured in the same run, and threads against one thread for wasm and native. The
machine's read bandwidth (bench_models.py's probe, 1 and --threads threads) is measured before
and after the engines and printed with the table.

Needs what tests/test_browser.py needs: scripts/build-wasm.sh's toolchain, /usr/bin/chromium
and `npm install` in wasm/ (playwright-core, @wllama/wllama).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WASM = ROOT / "wasm"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benches"))

from bench_models import read_bandwidth  # noqa: E402  (one probe for every bench)

SHAPES = {
    # microsoft/bitnet_b1_58-large (729M): the shape FIELD-NOTES' peer numbers were measured on.
    "large": dict(hidden=1536, heads=16, kv_heads=16, intermediate=4096, layers=24, vocab=32002, max_positions=2048),
    "small": dict(hidden=768, heads=12, kv_heads=12, intermediate=2048, layers=12, vocab=32002, max_positions=2048),
    # microsoft/bitnet-b1.58-2B-4T: GQA 20/5, relu2, the Llama 3 vocabulary, tied f16 output (1.2 GB TQ2_0).
    "2b4t": dict(hidden=2560, heads=20, kv_heads=5, intermediate=6912, layers=30, vocab=128256, max_positions=4096),
}

BINLLM_PAGE = """<!doctype html><meta charset="utf-8"><body data-state="running"><pre id="out"></pre>
<script type="module">
import { BinLLM } from "../js/binllm.js";
const q = new URLSearchParams(location.search);
try {
  // ?wasm=FILE picks one of wasm/pkg's modules; without it BinLLM.load picks (relaxed SIMD where the engine has it).
  const wasm = q.get("wasm");
  const threads = +(q.get("threads") ?? 1);
  // ?outputType=q6_k|q8_0|f16|f32 re-stores the output layer at load, as native's output_type.
  const outputType = q.get("outputType") || undefined;
  const model = await BinLLM.load("model.gguf", { cache: false, threads, outputType, ...(wasm ? { wasmUrl: new URL(`../pkg/${wasm}`, location.href).href } : {}) });
  const r = await model.bench({ promptTokens: +q.get("prompt"), decodeTokens: +q.get("decode"), repeats: +q.get("repeats") });
  window.benchResult = { ...r, info: model.info() };
} catch (e) { window.benchResult = { error: `${e.name}: ${e.message}` }; }
document.getElementById("out").textContent = JSON.stringify(window.benchResult, null, 1);
</script>"""

# llama.cpp reports its own prompt and decode timings for a completion; best of `repeats`.
WLLAMA_PAGE = """<!doctype html><meta charset="utf-8"><body data-state="running"><pre id="out"></pre>
<script type="module">
import { Wllama } from "../node_modules/@wllama/wllama/esm/index.js";
const q = new URLSearchParams(location.search);
try {
  const wllama = new Wllama({ default: new URL("../node_modules/@wllama/wllama/esm/wasm/wllama.wasm", location.href).href });
  const blob = await (await fetch("model.gguf")).blob();
  await wllama.loadModel([blob], { n_threads: 1, n_ctx: 1024, n_batch: 512 });
  const words = "the quick brown fox jumps over the lazy dog and then some more words follow ".repeat(64).split(" ");
  const prompt = words.slice(0, +q.get("prompt")).join(" ");
  let best = null;
  for (let r = 0; r < +q.get("repeats"); r++) {
    const out = await wllama.createCompletion({ prompt, max_tokens: +q.get("decode"), temperature: 0, ignore_eos: true, cache_prompt: false });
    const t = out.timings;
    if (!best || t.predicted_per_second > best.decode_tok_s) {
      best = { prompt_tokens: t.prompt_n, decode_tokens: t.predicted_n, prompt_tok_s: t.prompt_per_second, decode_tok_s: t.predicted_per_second };
    }
  }
  window.benchResult = best;
} catch (e) { window.benchResult = { error: `${e.name}: ${e.message}` }; }
document.getElementById("out").textContent = JSON.stringify(window.benchResult, null, 1);
</script>"""


@contextlib.contextmanager
def serve(model: Path, folder: Path):
    from test_browser import serve_folder

    (folder / "www").mkdir(parents=True)
    for name in ("js", "pkg", "node_modules"):
        (folder / name).symlink_to(WASM / name)
    (folder / "www" / "bench.html").write_text(BINLLM_PAGE)
    (folder / "www" / "wllama.html").write_text(WLLAMA_PAGE)
    (folder / "www" / "model.gguf").symlink_to(model.resolve())
    # Cross-origin isolated (COOP/COEP), so the threaded module can run.
    with serve_folder(folder, isolated=True) as base:
        yield f"{base}/www"


def in_chromium(url: str, timeout: int = 1800) -> dict:
    proc = subprocess.run(["node", "tools/run-in-chromium.mjs", url, "--timeout", str(timeout)], cwd=WASM, capture_output=True, text=True, timeout=timeout + 120)
    report = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {"error": proc.stderr[-2000:]}
    if "error" in report:
        return {"error": report["error"], "console": report.get("console", [])[-10:]}
    return report["first"]["bench"]


NATIVE = """
import json, sys
import binllm
from binllm.bench import bench_model
model = binllm.Model.from_pretrained(sys.argv[1], threads=int(sys.argv[5]), output_type=sys.argv[6] or None)
print(json.dumps(bench_model(model, prompt_tokens=int(sys.argv[2]), decode_tokens=int(sys.argv[3]), repeats=int(sys.argv[4]))))
"""


def native(model_path: Path, prompt: int, decode: int, repeats: int, backend: str = "", threads: int = 1, output_type: str = "") -> dict:
    """Native binllm on `threads` threads, in a fresh process (the kernel backend is chosen once
    per process; `backend` forces one through BINLLM_BACKEND, "" takes the best), the output
    layer re-stored as `output_type` ("" keeps the file's)."""
    import os

    env = {**os.environ, "BINLLM_BACKEND": backend}
    proc = subprocess.run([sys.executable, "-c", NATIVE, str(model_path), str(prompt), str(decode), str(repeats), str(threads), output_type], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def best_of(kept: dict | None, new: dict) -> dict:
    """The better of two runs of one engine: the best prompt and the best decode speed (with the
    rest of the faster decode's run); an error only when both failed."""
    if not new or "error" in new:
        return kept or new
    if not kept or "error" in kept:
        return new
    better = dict(new if new["decode_tok_s"] > kept["decode_tok_s"] else kept)
    better["prompt_tok_s"] = max(kept["prompt_tok_s"], new["prompt_tok_s"])
    return better


def random_bitnet_gguf(shape: str, folder: Path) -> Path:
    from binllm.convert import convert
    from helpers import make_random_hf_model

    src = make_random_hf_model(folder / "hf", layout="bitnet_packed", seed=0, **SHAPES[shape])
    dst = folder / f"bitnet-{shape}.tq2_0.gguf"
    convert(src, dst, type="tq2_0")
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="large")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="runs of prompt and decode inside each load")
    ap.add_argument("--rounds", type=int, default=2, help="loads of every binllm engine, in turn (the best counts)")
    ap.add_argument("--wllama-repeats", type=int, default=1, help="wllama is slow; its runs are fewer")
    ap.add_argument("--no-wllama", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="threads of the multi-threaded runs (native and wasm)")
    ap.add_argument("--output-type", default="", choices=["", "f32", "f16", "q8_0", "q6_k"], help="re-store binllm's output layer at load (native and wasm; wllama reads the file as it is)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if not all((WASM / "pkg" / name).exists() for name in ("binllm_wasm.wasm", "binllm_wasm_relaxed.wasm")):
        subprocess.run(["bash", "scripts/build-wasm.sh"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or random_bitnet_gguf(args.shape, tmp)
        size = model.stat().st_size
        print(f"model: {model.name} ({size / 2**20:.1f} MiB)", file=sys.stderr)
        query = f"?prompt={args.prompt}&decode={args.decode}&repeats={args.repeats}&outputType={args.output_type}"
        thread_counts = sorted({1, args.threads})
        bandwidth = {t: [read_bandwidth(t)] for t in thread_counts}
        out = args.output_type
        prompt, decode, repeats = args.prompt, args.decode, args.repeats
        runs = {"native binllm (1 thread)": lambda: native(model, prompt, decode, repeats, output_type=out)}
        first = runs["native binllm (1 thread)"]()
        backend = first.get("backend", "?")
        if backend not in ("avx2", "?"):
            # The common x86 baseline, for reference: most machines lack AVX-512.
            runs["native binllm avx2 (1 thread)"] = lambda: native(model, prompt, decode, repeats, backend="avx2", output_type=out)
        runs[f"native binllm ({args.threads} threads)"] = lambda: native(model, prompt, decode, repeats, threads=args.threads, output_type=out)
        with serve(model, tmp / "site") as base:
            page = f"{base}/bench.html{query}"
            runs["binllm wasm SIMD128 (Chromium)"] = lambda: in_chromium(f"{page}&wasm=binllm_wasm.wasm")
            runs["binllm wasm relaxed SIMD (Chromium)"] = lambda: in_chromium(f"{page}&wasm=binllm_wasm_relaxed.wasm")
            runs[f"binllm wasm relaxed SIMD, {args.threads} threads (Chromium)"] = lambda: in_chromium(
                f"{page}&wasm=binllm_wasm_relaxed_threads.wasm&threads={args.threads}"
            )
            # Every binllm engine once a round, in turn, so that they share the machine's
            # background load; each keeps its best prompt and best decode over the rounds.
            results: dict[str, dict] = {"native binllm (1 thread)": first}
            for round_ in range(args.rounds):
                for name, run in runs.items():
                    if round_ or name not in results:
                        results[name] = best_of(results.get(name), run())
            if not args.no_wllama:
                wllama_query = f"?prompt={args.prompt}&decode={args.decode}&repeats={args.wllama_repeats}"
                results["wllama (Chromium, 1 thread)"] = in_chromium(f"{base}/wllama.html{wllama_query}")
        for t in thread_counts:
            bandwidth[t].append(read_bandwidth(t))
        best = backend
    base = results["native binllm (1 thread)"]
    if "error" in base:
        sys.exit(f"native binllm failed: {base['error']}")
    relaxed = results.get("binllm wasm relaxed SIMD (Chromium)") or {}
    dot = relaxed.get("info", {}).get("dot_product", "?")
    print(
        f"\n{model.name}: prompt {args.prompt} tokens, decode {args.decode} tokens, best of {args.repeats} in each of "
        f"{args.rounds} rounds (binllm engines in turn); "
        f"native backend {best}; the relaxed modules' dot product form {dot} (their choice for this engine); "
        f"binllm's output layer {relaxed.get('info', {}).get('output_storage', '?')}"
        + (f" (--output-type {args.output_type}; wllama reads the file's)" if args.output_type else "")
    )
    print(
        "read bandwidth before / after the engines (binllm's probe, 1 GiB): "
        + ", ".join(f"{t} thread(s) {b[0] / 1e9:.1f} / {b[1] / 1e9:.1f} GB/s" for t, b in bandwidth.items())
        + "\n"
    )
    print("| engine | prompt tok/s | decode tok/s | prompt vs native | decode vs native | wasm memory after load / after the run |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        if not r or "error" in r:
            print(f"| {name} | failed: {(r or {}).get('error', 'no result')} | | | | |")
            continue
        memory = ""
        if "memory_bytes" in r and "info" in r:
            memory = f"{r['info']['memory_bytes'] / 2**30:.2f} / {r['memory_bytes'] / 2**30:.2f} GiB"
        print(
            f"| {name} | {r['prompt_tok_s']:.1f} | {r['decode_tok_s']:.1f} | "
            f"{r['prompt_tok_s'] / base['prompt_tok_s']:.2f}x | {r['decode_tok_s'] / base['decode_tok_s']:.2f}x | {memory} |"
        )
    one = results.get("binllm wasm relaxed SIMD (Chromium)")
    many = results.get(f"binllm wasm relaxed SIMD, {args.threads} threads (Chromium)")
    if one and many and "error" not in one and "error" not in many:
        print(f"\nwasm {args.threads} threads vs 1: prompt {many['prompt_tok_s'] / one['prompt_tok_s']:.2f}x, decode {many['decode_tok_s'] / one['decode_tok_s']:.2f}x")
    n1, nn = base, results.get(f"native binllm ({args.threads} threads)")
    if nn and "error" not in nn:
        print(f"native {args.threads} threads vs 1: prompt {nn['prompt_tok_s'] / n1['prompt_tok_s']:.2f}x, decode {nn['decode_tok_s'] / n1['decode_tok_s']:.2f}x")
    wl = results.get("wllama (Chromium, 1 thread)")
    for name in ("binllm wasm SIMD128 (Chromium)", "binllm wasm relaxed SIMD (Chromium)"):
        wasm = results.get(name)
        if wasm and wl and "error" not in wasm and "error" not in wl:
            print(f"\n{name} vs wllama: prompt {wasm['prompt_tok_s'] / wl['prompt_tok_s']:.1f}x, decode {wasm['decode_tok_s'] / wl['decode_tok_s']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
