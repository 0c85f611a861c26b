"""What a model costs and what it gives: perplexity, true bits per weight, file size, resident
memory, and prompt/decode speed (``binllm eval``), and a side-by-side report for several
models (``binllm compare``: markdown, CSV and a PNG plot).

Perplexity uses the usual protocol: the text is tokenized once and cut into non-overlapping
windows of ``ctx`` tokens; inside each window every token after the first is predicted from the
ones before it; perplexity = exp(mean negative log-likelihood over all predicted tokens).

Bits per weight come under two names that never mix:
- ``method_bits_per_weight``: the quantization method's own count of the decoder linears, as
  ``binllm quantize`` states it in ``quantization_config.bits_per_weight`` (every code, mask and
  bitmap bit, 16 bits per float16 scale, 32 per 8-bit block's float32 scale; no row padding);
- ``linear_bits_in_memory`` / ``model_bits_in_memory``: what the loaded model holds, 8 x bytes
  / parameters of the decoder linears / of every tensor (rows padded to whole kernel blocks,
  float32 scales), from ``Model.info()``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from binllm._core import FileError
from binllm.extras import install_hint

Progress = Callable[[str], None]


def _log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum of -log p(target) over rows, computed in float64."""
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
    return float((lse - x[np.arange(len(targets)), targets]).sum())


def perplexity(model, text: str, ctx: int = 512, max_tokens: Optional[int] = None, progress: Optional[Progress] = None) -> dict[str, Any]:
    """Perplexity of `model` (a binllm.Model) on `text`, non-overlapping windows of `ctx`."""
    if ctx < 2:
        raise ValueError("ctx must be at least 2")
    limit = int(model.config["max_position_embeddings"])
    if ctx > limit:
        raise ValueError(f"ctx {ctx} exceeds the model's context of {limit}")
    ids = model.encode(text)
    if max_tokens is not None:
        if max_tokens < 2:
            raise ValueError("max_tokens must be at least 2")
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError("the text has fewer than 2 tokens")
    from binllm.ab import windows as cut

    windows = cut(ids, ctx)
    nll, count = 0.0, 0
    start = time.perf_counter()
    for n, w in enumerate(windows, 1):
        logits = model.logits(w)
        nll += _log_softmax_nll(logits[:-1], np.asarray(w[1:]))
        count += len(w) - 1
        if progress:
            progress(f"perplexity {n}/{len(windows)} windows, running ppl {math.exp(nll / count):.2f} ({time.perf_counter() - start:.0f} s)")
    return {"perplexity": math.exp(nll / count), "tokens": count, "windows": len(windows), "ctx": ctx}


def _rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _files_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.iterdir() if f.is_file() and (f.suffix in (".safetensors", ".json")))
    return path.stat().st_size


def linear_bits(info: dict[str, Any]) -> dict[str, Any]:
    """Bits per weight in memory (module docs) of the decoder linears and of the whole model,
    from a loaded model's `info()`."""
    lin_bits = lin_params = all_bits = all_params = 0.0
    for t in info["tensors"]:
        bits = t["bytes"] * 8
        all_bits += bits
        all_params += t["parameters"]
        if t["kind"] not in ("embedding", "output", "norm"):
            lin_bits += bits
            lin_params += t["parameters"]
    return {
        "linear_bits_in_memory": lin_bits / lin_params if lin_params else None,
        "model_bits_in_memory": all_bits / all_params if all_params else None,
        "storage": sorted({t["storage"] for t in info["tensors"] if t["kind"] not in ("embedding", "output", "norm")}),
    }


Slices = Union[str, Sequence[tuple[str, str]]]


def _slices(text: Slices) -> list[tuple[str, str]]:
    return [("text", text)] if isinstance(text, str) else [(str(n), t) for n, t in text]


def evaluate(
    path: str | os.PathLike,
    text: Optional[Slices] = None,
    ctx: Optional[int] = None,
    max_tokens: Optional[int] = None,
    bench: bool = True,
    threads: Optional[int] = None,
    prompt_tokens: int = 128,
    decode_tokens: int = 64,
    progress: Optional[Progress] = None,
    base: Optional[str | os.PathLike] = None,
    base_logits: Optional[str | os.PathLike] = None,
    save_base_logits: Optional[str | os.PathLike] = None,
    top_k: int = 128,
    prompts: Optional[Sequence[str]] = None,
    gen_tokens: int = 48,
    force: bool = False,
) -> dict[str, Any]:
    """Perplexity on `text`, bits per weight, file size, resident memory and tokens/s of the
    model at `path`.

    `text` is one string or (name, text) slices: perplexity per slice (``slices``) and pooled
    (``perplexity``), `max_tokens` counted per slice. With `base` (a model path) or
    `base_logits` (a file from `save_base_logits`), the A/B numbers against the base model
    (``ab``: see binllm.ab) replace the plain perplexity; `prompts` adds both models' greedy
    continuations (``generations``, needs `base`)."""
    from binllm import ab
    from binllm.bench import bench_model
    from binllm.model import Model

    say = progress or (lambda _m: None)
    if base is not None and base_logits is not None:
        raise ValueError("give --base or --base-logits, not both")
    if base_logits is not None and text is not None:
        raise ValueError("--base-logits holds the tokens it was made from; drop --text")
    if base_logits is None and text is None:
        raise ValueError("give --text (or --base-logits)")
    if save_base_logits is not None and base is None:
        raise ValueError("--save-base-logits needs --base")
    if prompts is not None and base is None:
        raise ValueError("--prompts needs --base (the base model generates too)")
    if save_base_logits is not None and Path(save_base_logits).exists() and not force:
        raise FileError(f"{save_base_logits} exists (pass --force to replace it)")
    record = ab.load_base(base_logits) if base_logits is not None else None
    before = _rss_bytes()
    start = time.perf_counter()
    model = Model.from_pretrained(path, threads=threads)
    load_s = time.perf_counter() - start
    after = _rss_bytes()
    if ctx is None:
        # llama-perplexity's 512, or the model's whole context when it is shorter.
        ctx = min(512, model.config["max_position_embeddings"])
    p = Path(model.source)
    info = model.info()
    quant = {}
    cfg_file = p / "config.json" if p.is_dir() else None
    if cfg_file is not None and cfg_file.is_file():
        qc = json.loads(cfg_file.read_text(encoding="utf-8")).get("quantization_config") or {}
        quant = {"method": qc.get("method") or qc.get("quant_method"), "method_bits_per_weight": qc.get("bits_per_weight")}
    result: dict[str, Any] = {
        "model": str(path),
        **quant,
        **linear_bits(info),
        "parameters": info["parameters"],
        "weight_bytes": info["bytes"],
        "file_bytes": _files_bytes(p),
        "resident_bytes": (after - before) if before is not None and after is not None else None,
        "load_s": load_s,
    }
    if base is None and record is None:
        rows = []
        for name, body in _slices(text):
            r = perplexity(model, body, ctx=ctx, max_tokens=max_tokens, progress=lambda m, n=name: say(f"{n}: {m}"))
            rows.append({"name": name, **r})
        count = sum(r["tokens"] for r in rows)
        pooled = math.exp(sum(r["tokens"] * math.log(r["perplexity"]) for r in rows) / count)
        result.update({"perplexity": pooled, "tokens": count, "windows": sum(r["windows"] for r in rows), "ctx": ctx})
        if len(rows) > 1:
            result["slices"] = rows
    else:
        base_model = Model.from_pretrained(base, threads=threads) if base is not None else None
        scores, record = ab.run_ab(model, base_model=base_model, record=record, slices=_slices(text) if text is not None else (), ctx=ctx, max_tokens=max_tokens, top_k=top_k, progress=say)
        if save_base_logits is not None:
            ab.save_base(record, save_base_logits, force=force)
        metrics = ab.ab_metrics(scores, record, exact=base_model is not None)
        pooled = metrics["pooled"]
        result.update({"perplexity": pooled["perplexity"], "tokens": pooled["tokens"], "windows": sum(len(s.windows) for s in record.slices), "ctx": record.ctx, "ab": metrics})
        if prompts:
            say("greedy continuations")
            result["generations"] = ab.side_by_side(model, base_model, prompts, max_new_tokens=gen_tokens)
        del base_model
    if bench:
        say("speed")
        speed = bench_model(model, prompt_tokens=prompt_tokens, decode_tokens=decode_tokens, repeats=3)
        result.update({k: speed[k] for k in ("prompt_tok_s", "decode_tok_s", "threads", "backend")})
    return result


# ---------------------------------------------------------------------------------------
# compare

COLUMNS = (
    ("label", "model"),
    ("method", "method"),
    ("method_bits_per_weight", "bits/weight (method)"),
    ("linear_bits_in_memory", "bits/weight (in memory)"),
    ("storage", "runs as"),
    ("perplexity", "perplexity"),
    ("ppl_ratio", "x float"),
    ("kld_mean", "KLD"),
    ("top1_agreement", "top-1"),
    ("worst_slice", "worst slice"),
    ("file_bytes", "file MiB"),
    ("resident_bytes", "resident MiB"),
    ("decode_tok_s", "decode tok/s"),
    ("prompt_tok_s", "prompt tok/s"),
)
# Per slice, in the second table and the CSV.
SLICE_KEYS = (("perplexity", "ppl"), ("kld_mean", "KLD"), ("top1_agreement", "top-1"))


def _fmt(key: str, v: Any) -> str:
    from binllm.ab import fmt

    if v is None:
        return "-"
    if key in ("file_bytes", "resident_bytes"):
        return f"{v / 2**20:.1f}"
    if key == "storage":
        return "+".join(v) if isinstance(v, list) else str(v)
    if key == "perplexity":
        return f"{v:.2f}" if v < 1e4 else f"{v:.3g}"
    if key == "ppl_ratio":
        return f"{v:.2f}" if v < 1e3 else f"{v:.3g}"
    if key in ("kld_mean", "top1_agreement", "top5_miss", "kld_median", "kld_p99"):
        return fmt(key, v)
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def slices_from_files(files: Sequence[str | os.PathLike]) -> list[tuple[str, str]]:
    """(name, text) per text file, named by the file's stem (by its path where stems repeat)."""
    from binllm.quantize.calib import read_text

    stems = [Path(f).stem for f in files]
    names = stems if len(set(stems)) == len(stems) else [str(f) for f in files]
    if len(set(names)) != len(names):
        raise ValueError("the same text file is given twice")
    return [(n, read_text(f)) for n, f in zip(names, files)]


def compare(
    models: Sequence[str],
    text_file: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    ctx: int = 512,
    max_tokens: Optional[int] = None,
    labels: Optional[Sequence[str]] = None,
    baseline: int = 0,
    threads: Optional[int] = None,
    plot: bool = True,
    progress: Optional[Progress] = None,
    top_k: Optional[int] = None,
    bench: bool = True,
    force: bool = False,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Evaluates each model in its own process (so resident memory is its own) and writes
    report.md, report.csv, report.json and report.png into `out`. `baseline` indexes the base
    model (the float model): the perplexity ratios are taken against it, and every model is
    scored A/B against it (KL divergence, top-1 agreement, per text file and pooled). By
    default the base runs beside each model (exact KL divergence); with `top_k` its top-k
    log-probabilities are saved once as ``out/base-logits.npz`` and each model is scored
    against them (faster; the KL divergence is then a lower bound). `text_file` is one file or
    several (the slices). `out` must be empty or new unless `force`. Each model's result is
    kept in ``out/rows/``; with `resume` (a long sweep run again), a model whose row was made
    by the same command is not evaluated again, and an existing base-logits file is reused."""
    from binllm import ab
    from binllm.model import Model

    if not models:
        raise ValueError("no models to compare")
    if labels is not None and len(labels) != len(models):
        raise ValueError("give one label per model")
    if not 0 <= baseline < len(models):
        raise ValueError(f"baseline must index one of the {len(models)} models")
    files = [text_file] if isinstance(text_file, (str, os.PathLike)) else list(text_file)
    slices = slices_from_files(files)
    out = ab.prepare_out(out, force or resume)
    say = progress or (lambda _m: None)
    if top_k is not None:
        base_file = out / "base-logits.npz"
    if top_k is not None and not (resume and base_file.is_file()):
        say(f"base logits: {models[baseline]}")
        base_model = Model.from_pretrained(models[baseline], threads=threads)
        _, record = ab.run_ab(None, base_model=base_model, slices=slices, ctx=ctx, max_tokens=max_tokens, top_k=top_k, progress=say)
        del base_model
        ab.save_base(record, base_file, force=True)
        against = ["--base-logits", str(base_file)]
    else:
        against = ["--base", str(models[baseline]), "--text", *map(str, files), "--ctx", str(ctx)]
        if max_tokens is not None:
            against += ["--max-tokens", str(max_tokens)]
    rows = []
    (out / "rows").mkdir(exist_ok=True)
    for i, m in enumerate(models):
        cmd = ["eval", str(m), *against, "--json"]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        if not bench:
            cmd += ["--no-bench"]
        kept = out / "rows" / (hashlib.sha256(json.dumps(cmd).encode()).hexdigest()[:16] + ".json")
        old = json.loads(kept.read_text(encoding="utf-8")) if resume and kept.is_file() else None
        if old is not None and old.get("command") == cmd:
            say(f"kept {i + 1}/{len(models)}: {m}")
            row = old
        else:
            say(f"evaluating {i + 1}/{len(models)}: {m}")
            proc = subprocess.run([sys.executable, "-m", "binllm.cli", *cmd], capture_output=True, text=True)
            if proc.returncode != 0:
                msg = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
                raise RuntimeError(f"evaluating {m} failed: {msg}")
            row = {**json.loads(proc.stdout), "command": cmd}
            ab.write_text_atomic(kept, json.dumps(row, indent=2) + "\n")
        row["label"] = labels[i] if labels else Path(m).name
        pooled = row["ab"]["pooled"]
        row.update({k: pooled[k] for k in ("kld_mean", "kld_median", "kld_p99", "top1_agreement", "top5_miss")})
        # A model that matches the base everywhere has no worst slice.
        row["worst_slice"] = row["ab"]["worst_slice"] if pooled["kld_mean"] > 1e-6 else None
        rows.append(row)
    base = rows[baseline]["perplexity"]
    for r in rows:
        r["ppl_ratio"] = r["perplexity"] / base
    names = [n for n, _ in slices]
    ab.write_text_atomic(out / "report.md", markdown(rows, names, files, ctx=ctx, top_k=top_k))
    ab.write_text_atomic(out / "report.csv", _csv(rows, names))
    ab.write_text_atomic(out / "report.json", json.dumps(rows, indent=2) + "\n")
    if plot:
        write_plot(rows, out / "report.png")
    return rows


def _csv(rows: list[dict[str, Any]], names: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    extra = ["kld_median", "kld_p99", "top5_miss", "model_bits_in_memory", "tokens", "threads", "backend"]
    per_slice = [f"{n}:{k}" for n in names for k in ("perplexity", "kld_mean", "kld_median", "kld_p99", "top1_agreement", "top5_miss")]
    w.writerow([k for k, _ in COLUMNS] + extra + per_slice)
    for r in rows:
        by_name = {s["name"]: s for s in r["ab"]["slices"]}
        cells = [("+".join(r[k]) if isinstance(r.get(k), list) else r.get(k)) for k, _ in COLUMNS]
        cells += [r.get(k) for k in extra]
        cells += [by_name[n][k.split(":", 1)[1]] for n in names for k in [f"{n}:{key}" for key in ("perplexity", "kld_mean", "kld_median", "kld_p99", "top1_agreement", "top5_miss")]]
        w.writerow(cells)
    return buf.getvalue()


def markdown(rows: list[dict[str, Any]], names: Sequence[str], files: Sequence, ctx: int, top_k: Optional[int]) -> str:
    r0 = rows[0]
    speed = f"; decode/prompt tokens/s on {r0.get('threads')} thread(s), backend {r0.get('backend')}" if "decode_tok_s" in r0 else ""
    tokens = ", ".join(f"{s['name']} {s['tokens']}" for s in r0["ab"]["slices"])
    lines = [
        f"Perplexity and A/B against {rows[0]['ab']['base']} on {len(names)} slice(s) ({', '.join(Path(f).name for f in files)}), "
        f"non-overlapping windows of {ctx} tokens (predicted tokens: {tokens}){speed}. "
        "KLD = mean KL(base || model) per token in nats ("
        + ("exact, full vocabulary" if top_k is None else f"from the base's top {top_k} log-probabilities, tail merged: a lower bound")
        + "); "
        "top-1 = share of positions where both pick the same token; pooled over all slices.",
        "",
        "| " + " | ".join(h for _, h in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(k, r.get(k)) for k, _ in COLUMNS) + " |")
    lines += ["", "Per slice (perplexity / KLD / top-1 agreement):", ""]
    head = ["model"] + [f"{n} {h}" for n in names for _, h in SLICE_KEYS]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        by_name = {s["name"]: s for s in r["ab"]["slices"]}
        cells = [r["label"]]
        for n in names:
            for k, _ in SLICE_KEYS:
                v = _fmt(k, by_name[n][k])
                cells.append(f"**{v}**" if k == "kld_mean" and n == r.get("worst_slice") and len(names) > 1 else v)
        lines.append("| " + " | ".join(cells) + " |")
    if len(names) > 1:
        lines += ["", "Bold: each model's worst slice (highest mean KLD)."]
    return "\n".join(lines) + "\n"


def write_plot(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(install_hint("report", "the plot needs matplotlib (or pass --no-plot)")) from e
    speed = any(r.get("decode_tok_s") for r in rows)
    fig, axes = plt.subplots(1, 3 if speed else 2, figsize=(18 if speed else 12, 4.8))
    a, k = axes[0], axes[1]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(rows):
        color = colors[i % len(colors)]  # one color per model in every panel
        # The method's own count where the model says it (a quantized folder), else in memory.
        bits = r.get("method_bits_per_weight") or r["linear_bits_in_memory"]
        a.scatter(bits, r["perplexity"], s=40, color=color)
        a.annotate(r["label"], (bits, r["perplexity"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if r.get("kld_mean") is not None and r["kld_mean"] > 1e-6:
            k.scatter(bits, r["kld_mean"], s=40, color=color)
            k.annotate(r["label"], (bits, r["kld_mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    xlabel = "bits per weight of the decoder linears (the method's count; others in memory)"
    a.set_xlabel(xlabel)
    a.set_ylabel("perplexity (log scale)")
    a.set_yscale("log")
    a.grid(True, alpha=0.3)
    a.set_title("quality against size")
    k.set_xlabel(xlabel)
    k.set_ylabel("mean KL(base || model), nats (log scale)")
    k.set_yscale("log")
    k.grid(True, alpha=0.3)
    k.set_title(f"divergence from {rows[0]['label']} against size")
    if speed:
        b = axes[2]
        labels = [r["label"] for r in rows]
        speeds = [r.get("decode_tok_s") or 0.0 for r in rows]
        b.barh(labels, speeds, color=[colors[i % len(colors)] for i in range(len(rows))])
        b.invert_yaxis()
        b.set_xlabel("decode tokens/s")
        b.set_title(f"speed ({rows[0].get('threads')} thread(s))")
        b.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    from binllm.files import file_written_whole

    try:
        # Through a temporary name, as the other reports: a failed write leaves the old plot whole.
        with file_written_whole(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
