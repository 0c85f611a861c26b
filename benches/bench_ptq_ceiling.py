"""How far post-training quantization can go on SmolLM2-135M: the reference points behind the
PTQ table's ternary result.

    .venv/bin/python benches/bench_ptq_ceiling.py [--out target/ptq-ceiling] [--runs LABEL,...]
                                                  [--calib-tokens 8192] [--eval-tokens 4096]

The PTQ issue's goal for ternary PTQ with groups is under 3x the float perplexity. This bench
measures what bounds any such method on this model, each with GPTQ's error compensation and
block-by-block (sequential) calibration, on bench_ptq.py's texts (calibration: eight Shakespeare
comedies; held out: Hamlet):

- gptq-w4g128: GPTQ's standard uniform grid, 4 bits (16 levels, asymmetric min-max per group of
  128): a check of the pipeline itself, which should cost little perplexity;
- gptq-w2g64: the same grid at 2 bits (4 levels) in groups of 64, more levels and smaller
  groups than any ternary format: a floor for ternary PTQ;
- gptq-ternary-g64-mse / -g32-mse: binllm's gptq-ternary with groups of 64 and 32, smaller than
  the packed t2 kernels allow (multiples of 256).

None of these has a packed kernel in binllm: they are written as float16 weights (the "dense"
form billm uses) and measure quality only. Bits per weight count codes, float16 scales and the
zero points (of `bits` bits) of the uniform grid. Each run takes about 13 minutes on one core.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benches"))

# label: (reference quantizer, options)
RUNS = {
    "gptq-w4g128": ("uniform", {"bits": 4, "group": 128}),
    "gptq-w2g64": ("uniform", {"bits": 2, "group": 64}),
    "gptq-ternary-g64-mse": ("ternary", {"group": 64}),
    "gptq-ternary-g32-mse": ("ternary", {"group": 32}),
}


def gptq_uniform(W: np.ndarray, H: np.ndarray, bits: int, group: int):
    """GPTQ (Frantar et al. 2022) with its standard asymmetric min-max grid per group of `group`
    columns: the range always includes 0, scale = (max - min) / (2^bits - 1) rounded to float16,
    zero point = round(-min / scale); range from the current (compensated) weights when the
    sweep reaches the group's first column; no act-order. Returns a dense Quantized."""
    from binllm.quantize import methods

    n, k = W.shape
    W64 = W.astype(np.float64)
    U = methods._inverse_hessian_factor(H, W64, methods.DAMP)
    top = 2**bits - 1
    state: dict[str, np.ndarray] = {}

    def quantize_column(j, w, lookahead):
        if j % group == 0:
            current = lookahead(group)
            lo = np.minimum(current.min(axis=1), 0.0)
            hi = np.maximum(current.max(axis=1), 0.0)
            flat = (lo == 0) & (hi == 0)
            lo[flat], hi[flat] = -1.0, 1.0
            scale = methods._fp16((hi - lo) / top).astype(np.float64)
            state["scale"], state["zero"] = scale, np.rint(-lo / scale)
        scale, zero = state["scale"], state["zero"]
        return scale * (np.clip(np.rint(w / scale) + zero, 0, top) - zero)

    Q = methods._gptq_sweep(W64, U, quantize_column, methods.GPTQ_BLOCK)
    groups = -(-k // group)
    bits_per_weight = (n * k * bits + n * groups * (16 + bits)) / (n * k)
    return methods.Quantized(f"gptq-w{bits}g{group}", Q.astype(np.float32), bits_per_weight, "dense", None, None, None, None, None)


@contextlib.contextmanager
def reference_quantizer(kind: str, opts: dict):
    """binllm.quantize_model with `methods.quantize` replaced by a reference quantizer whose
    results are dense (float16 in the folder)."""
    from binllm.quantize import methods

    original, block = methods.quantize, dict(methods.FORMAT_BLOCK)

    def quantize(W, method, H=None, group_size=None, **kw):
        if kind == "uniform":
            return gptq_uniform(np.asarray(W, np.float32), H, opts["bits"], opts["group"])
        q = original(W, "gptq-ternary", H=H, group_size=opts["group"], scale="mse")
        q.format, q.codes = "dense", None
        return q

    methods.quantize = quantize
    methods.FORMAT_BLOCK["t2"] = 32  # the ternary runs' groups: smaller than the packed kernels'
    try:
        yield
    finally:
        methods.quantize = original
        methods.FORMAT_BLOCK.clear()
        methods.FORMAT_BLOCK.update(block)


def main() -> None:
    from bench_ptq import inputs
    from binllm.evaluate import perplexity
    from binllm.model import Model
    from binllm.quantize import quantize_model
    from binllm.quantize.calib import stderr_progress

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "target" / "ptq-ceiling")
    p.add_argument("--runs", default=None, help=f"comma-separated labels (default all: {', '.join(RUNS)})")
    p.add_argument("--calib-tokens", type=int, default=8192)
    p.add_argument("--eval-tokens", type=int, default=4096)
    args = p.parse_args()
    smollm2, calib, held_out = inputs(args.out / "texts")
    text = held_out.read_text(encoding="utf-8")
    labels = args.runs.split(",") if args.runs else list(RUNS)
    for label in labels:
        if label not in RUNS:
            raise SystemExit(f"unknown run '{label}'; choose from {', '.join(RUNS)}")

    def ppl(folder) -> float:
        return perplexity(Model.from_pretrained(folder, threads=1), text, ctx=512, max_tokens=args.eval_tokens)["perplexity"]

    results = args.out / "results.json"
    done = json.loads(results.read_text()) if results.exists() else {}
    if "float" not in done:
        done["float"] = {"bits_per_weight": None, "perplexity": ppl(smollm2)}
        results.write_text(json.dumps(done, indent=1))
    for label in labels:
        if label in done:
            continue
        dst = args.out / "models" / label
        kind, opts = RUNS[label]
        start = time.perf_counter()
        with reference_quantizer(kind, opts):
            report = quantize_model(smollm2, dst, method="gptq-ternary", calib=calib, calib_tokens=args.calib_tokens, progress=stderr_progress)
        done[label] = {
            "bits_per_weight": report["method_bits_per_weight"],
            "perplexity": ppl(dst),
            "mean_relative_layer_error": report["mean_relative_layer_error"],
            "seconds": time.perf_counter() - start,
        }
        print(f"\n[ceiling] {label}: {done[label]['perplexity']:.1f}", file=sys.stderr)
        results.write_text(json.dumps(done, indent=1))
    base = done["float"]["perplexity"]
    lines = [
        f"Perplexity on Hamlet ({args.eval_tokens} tokens, windows of 512), calibration {args.calib_tokens} tokens, block by block.",
        "",
        "| run | bits/weight | perplexity | x float | mean relative layer error |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, r in done.items():
        bits = f"{r['bits_per_weight']:.2f}" if r["bits_per_weight"] else "-"
        err = f"{r['mean_relative_layer_error']:.3g}" if r.get("mean_relative_layer_error") else "-"
        lines.append(f"| {label} | {bits} | {r['perplexity']:.4g} | {r['perplexity'] / base:.3g} | {err} |")
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
