"""A/B against a base model: how much of the base (float) model's predictions a binarized model
keeps, per slice of input and pooled (``binllm eval MODEL --base BASE --text FILE...``).

Both models score the same windows of the same tokens (the perplexity protocol of
``binllm.evaluate``: each text file is a slice, tokenized once and cut into non-overlapping
windows of ``ctx`` tokens; every token after a window's first is a predicted position). At
each predicted position, with ``p`` the base model's next-token distribution and ``q`` the
model's:

- KL divergence, llama.cpp's definition (``llama-perplexity --kl-divergence``):
  ``KL(p || q) = sum_v p(v) (log p(v) - log q(v))``, in nats, per position; reported as mean,
  median and 99th percentile;
- top-1 agreement: ``argmax p == argmax q``;
- top-5 miss: the base's top token has 5 or more tokens with a higher logit in the model;
- the negative log-likelihood of the actual next token under each (perplexity of each, ratio).

The base's side can be saved once and reused (``save_base`` / ``load_base``): full logits are
vocab x tokens floats (49152 x 16384 x 4 bytes = 3.2 GB for SmolLM2 on four 4096-token
slices), so the file keeps, per position, the base's ``top_k`` largest log-probabilities and
their token ids, the log of the mass outside them, its top token, and the log-probability of the
actual next token (all float32). From such a file the KL divergence is computed with the base's tail (the tokens outside
its top k) merged into one outcome: ``sum_{v in top k} p(v) log(p(v)/q(v)) + P log(P/Q)`` with
``P``, ``Q`` the tail mass under each model. Merging outcomes never increases KL divergence, so
this is a lower bound of the exact value, equal to it when the tail holds at most one token;
every other number is exact. (llama.cpp's ``--kl-divergence-base`` file is not top-k: it
stores every vocabulary entry's log-probability rounded to 16 bits, clamped 16 nats below the
top, 2 x vocab bytes per position; binllm's top 128 take 1 KB per position.)

File format (``numpy.savez_compressed``, a zip of .npy arrays, ``format_version`` 1):

====================  ==============  ==============================================================
array                 dtype, shape    meaning
====================  ==============  ==============================================================
``meta``              uint8 (bytes,)  UTF-8 JSON: format_version, top_k, ctx, vocab, base (its path),
                                      probe (the base's token ids of ``PROBE``: a model that splits
                                      it differently is refused), slices: [{name, windows: [token
                                      counts]}]
``tokens``            int32 (T,)      every window's tokens, slices and windows back to back
``target_logp``       float32 (N,)    log p(actual next token), one per predicted position
``top1``              int32 (N,)      argmax p (first index on ties, as numpy's argmax)
``topk_ids``          int32 (N, k)    the k most likely tokens under p, most likely first
``topk_logp``         float32 (N, k)  their log p
``tail_logp``         float32 (N,)    log of p's mass outside its top k (-inf when there is none)
====================  ==============  ==============================================================

N = T minus one per window. ``load_base`` checks the version, shapes and that the counts add up.
"""

from __future__ import annotations

import html
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from binllm._core import FileError
from binllm.files import file_written_whole

Progress = Callable[[str], None]

FORMAT_VERSION = 1
DEFAULT_TOP_K = 128
TOP_N_MISS = 5
# Rows of a window whose log-softmax is held at once (float64: rows x vocab x 8 bytes).
_ROWS = 64


# ---------------------------------------------------------------------------------------
# windows and the base's record


def windows(ids: Sequence[int], ctx: int) -> list[list[int]]:
    """Non-overlapping windows of `ctx` tokens; a last window of one token predicts nothing
    and is dropped."""
    out = [list(ids[i : i + ctx]) for i in range(0, len(ids), ctx)]
    return [w for w in out if len(w) >= 2]


@dataclass
class BaseSlice:
    """The base model's side of one slice: its windows and, per predicted position, what the
    A/B metrics need."""

    name: str
    windows: list[list[int]]
    target_logp: np.ndarray  # (n,) float32
    top1: np.ndarray  # (n,) int32
    topk_ids: np.ndarray  # (n, k) int32
    topk_logp: np.ndarray  # (n, k) float32
    tail_logp: np.ndarray  # (n,) float32

    @property
    def positions(self) -> int:
        return sum(len(w) - 1 for w in self.windows)


@dataclass
class BaseRecord:
    base: str
    ctx: int
    vocab: int
    top_k: int
    slices: list[BaseSlice]
    # Token ids of PROBE under the base's tokenizer (no special tokens): a model whose
    # tokenizer splits it differently cannot be compared token by token.
    probe: list[int] = field(default_factory=list)


PROBE = "Hello, world! The quick brown fox: 1234 + 5678 = 6912.\n\tdef f(x): return x ** 2  # café"


def probe_ids(model) -> list[int]:
    return list(model.tokenizer.encode(PROBE, add_special_tokens=False).ids)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))


def _top_k(logp: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest entries of each row, largest first (ties: lower id first)."""
    k = min(k, logp.shape[1])
    part = np.argpartition(-logp, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(logp, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1).astype(np.int32), np.take_along_axis(vals, order, axis=1)


def _check_ctx(model, ctx: int) -> None:
    if ctx < 2:
        raise ValueError("ctx must be at least 2")
    limit = int(model.config["max_position_embeddings"])
    if ctx > limit:
        raise ValueError(f"ctx {ctx} exceeds the model's context of {limit}")


def _slice_windows(base_model, slices: Sequence[tuple[str, str]], ctx: int, max_tokens: Optional[int]) -> list[tuple[str, list[list[int]]]]:
    if not slices:
        raise ValueError("no text slices given")
    names = [n for n, _ in slices]
    if len(set(names)) != len(names):
        raise ValueError(f"slice names must differ (text files with the same name?): {names}")
    if max_tokens is not None and max_tokens < 2:
        raise ValueError("max_tokens must be at least 2")
    out = []
    for name, text in slices:
        ids = base_model.encode(text)
        if max_tokens is not None:
            ids = ids[:max_tokens]
        wins = windows(ids, ctx)
        if not wins:
            raise ValueError(f"slice {name!r} has fewer than 2 tokens")
        out.append((name, wins))
    return out


class _Scores:
    """Per predicted position of one slice: kl, nll (model), nll_base, same_top1, top5_miss."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in ("kl", "nll", "nll_base", "same_top1", "top5_miss")}

    def add(self, lq: np.ndarray, logits: np.ndarray, targets: np.ndarray, kl: np.ndarray, target_logp: np.ndarray, top1: np.ndarray) -> None:
        self.parts["kl"].append(kl)
        self.parts["nll"].append(-lq[np.arange(len(targets)), targets])
        self.parts["nll_base"].append(-target_logp.astype(np.float64))
        top1 = top1.astype(np.int64)
        self.parts["same_top1"].append(np.argmax(logits, axis=1) == top1)
        base_top_logit = np.take_along_axis(logits, top1[:, None], axis=1)
        self.parts["top5_miss"].append((logits > base_top_logit).sum(axis=1) >= TOP_N_MISS)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.parts.items()}


def run_ab(
    model,
    base_model=None,
    record: Optional[BaseRecord] = None,
    slices: Sequence[tuple[str, str]] = (),
    ctx: int = 512,
    max_tokens: Optional[int] = None,
    top_k: int = DEFAULT_TOP_K,
    progress: Optional[Progress] = None,
) -> tuple[Optional[dict[str, dict[str, np.ndarray]]], BaseRecord]:
    """Scores `model` (None: only record the base) against a live `base_model` on the (name,
    text) `slices` (exact KL divergence), or against a saved `record` (top-k KL divergence).
    Returns the per-position scores per slice and the base's record (for saving)."""
    say = progress or (lambda _m: None)
    if (base_model is None) == (record is None):
        raise ValueError("give a base model or a base-logits record, not both")
    if top_k < 1:
        raise ValueError("top_k must be at least 1")
    if base_model is not None:
        _check_ctx(base_model, ctx)
        plan = [(name, wins, None) for name, wins in _slice_windows(base_model, slices, ctx, max_tokens)]
        vocab = int(base_model.config["vocab_size"])
        record = BaseRecord(str(base_model.source), ctx, vocab, min(top_k, vocab), [], probe_ids(base_model))
        if model is not None and probe_ids(model) != record.probe:
            raise ValueError("the model and the base split text into different tokens: A/B needs the same tokenizer")
    else:
        plan = [(s.name, s.windows, s) for s in record.slices]
    if model is not None:
        _check_ctx(model, record.ctx)
        vocab = int(model.config["vocab_size"])
        if vocab != record.vocab:
            raise ValueError(f"the model's vocabulary has {vocab} tokens, the base's {record.vocab}: A/B needs the same tokenizer")
        if record.probe and probe_ids(model) != record.probe:
            raise ValueError("the model and the base split text into different tokens: A/B needs the same tokenizer")
    scores: dict[str, dict[str, np.ndarray]] = {}
    new_slices = []
    for name, wins, saved in plan:
        acc = _Scores()
        rec: dict[str, list[np.ndarray]] = {"target_logp": [], "top1": [], "topk_ids": [], "topk_logp": [], "tail_logp": []}
        p = 0
        for n, w in enumerate(wins, 1):
            say(f"{name}: window {n}/{len(wins)}")
            m = len(w) - 1
            targets = np.asarray(w[1:])
            base_logits = base_model.logits(w)[:-1] if base_model is not None else None
            logits = model.logits(w)[:-1] if model is not None else None
            for r in range(0, m, _ROWS):
                rows = slice(r, min(m, r + _ROWS))
                at = slice(p + r, p + rows.stop)
                t = targets[rows]
                if base_logits is not None:
                    lp = _log_softmax(base_logits[rows])
                    target_logp = lp[np.arange(len(t)), t]
                    top1 = np.argmax(base_logits[rows], axis=1)
                    ids_k, vals_k = _top_k(lp, record.top_k)
                    for key, v in (("target_logp", target_logp), ("top1", top1), ("topk_ids", ids_k), ("topk_logp", vals_k), ("tail_logp", tail_log_mass(lp, ids_k))):
                        rec[key].append(v)
                else:
                    target_logp, top1 = saved.target_logp[at], saved.top1[at]
                if logits is not None:
                    lq = _log_softmax(logits[rows])
                    kl = kl_exact(lp, lq) if base_logits is not None else kl_top_k(saved.topk_ids[at], saved.topk_logp[at], saved.tail_logp[at], lq)
                    acc.add(lq, logits[rows], t, kl, target_logp, top1)
            p += m
        if model is not None:
            scores[name] = acc.arrays()
        if base_model is not None:
            new_slices.append(
                BaseSlice(
                    name,
                    wins,
                    np.concatenate(rec["target_logp"]).astype(np.float32),
                    np.concatenate(rec["top1"]).astype(np.int32),
                    np.concatenate(rec["topk_ids"]).astype(np.int32),
                    np.concatenate(rec["topk_logp"]).astype(np.float32),
                    np.concatenate(rec["tail_logp"]).astype(np.float32),
                )
            )
    if base_model is not None:
        record.slices = new_slices
    return (scores if model is not None else None), record


def _refuse_existing(path: Path, force: bool) -> None:
    """An existing file is replaced only with `force`."""
    if path.exists() and not force:
        raise FileError(f"{path} exists (pass --force to replace it)")


def save_base(record: BaseRecord, path: str | os.PathLike, force: bool = False) -> None:
    """Saves `record` (see the module doc for the format)."""
    meta = {
        "format_version": FORMAT_VERSION,
        "top_k": record.top_k,
        "ctx": record.ctx,
        "vocab": record.vocab,
        "base": record.base,
        "probe": record.probe,
        "slices": [{"name": s.name, "windows": [len(w) for w in s.windows]} for s in record.slices],
    }
    arrays = {
        "meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
        "tokens": np.asarray([t for s in record.slices for w in s.windows for t in w], dtype=np.int32),
        "target_logp": np.concatenate([s.target_logp for s in record.slices]).astype(np.float32),
        "top1": np.concatenate([s.top1 for s in record.slices]).astype(np.int32),
        "topk_ids": np.concatenate([s.topk_ids for s in record.slices]).astype(np.int32),
        "topk_logp": np.concatenate([s.topk_logp for s in record.slices]).astype(np.float32),
        "tail_logp": np.concatenate([s.tail_logp for s in record.slices]).astype(np.float32),
    }

    path = Path(path)
    _refuse_existing(path, force)
    with file_written_whole(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def load_base(path: str | os.PathLike) -> BaseRecord:
    """Reads a file written by `save_base`; a file that is not one is a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no base-logits file at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("meta", "tokens", "target_logp", "top1", "topk_ids", "topk_logp", "tail_logp")}
        meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError, AttributeError) as e:
        raise ValueError(f"{path} is not a binllm base-logits file ({e})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: base-logits format version {meta.get('format_version') if isinstance(meta, dict) else None!r}; this binllm reads {FORMAT_VERSION}")
    try:
        k, n = int(meta["top_k"]), len(arrays["target_logp"])
        counts = [[int(c) for c in s["windows"]] for s in meta["slices"]]
        names = [str(s["name"]) for s in meta["slices"]]
        ctx, vocab = int(meta["ctx"]), int(meta["vocab"])
        probe = [int(t) for t in meta.get("probe", [])]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: malformed base-logits metadata ({e})") from None
    total = sum(sum(c) for c in counts)
    predicted = sum(sum(c) - len(c) for c in counts)
    if len(arrays["tokens"]) != total or n != predicted or arrays["top1"].shape != (n,) or arrays["topk_ids"].shape != (n, k) or arrays["topk_logp"].shape != (n, k) or arrays["tail_logp"].shape != (n,):
        raise ValueError(f"{path}: array sizes do not match its metadata (truncated or edited?)")
    if not counts or any(c < 2 for cs in counts for c in cs):
        raise ValueError(f"{path}: no slices, or a window with fewer than 2 tokens")
    tokens = arrays["tokens"].tolist()
    ids = arrays["topk_ids"]
    if min(tokens) < 0 or max(tokens) >= vocab or (ids.size and (ids.min() < 0 or ids.max() >= vocab)) or arrays["top1"].min() < 0 or arrays["top1"].max() >= vocab:
        raise ValueError(f"{path}: token ids outside the vocabulary of {vocab}")
    slices, t, p = [], 0, 0
    for name, cs in zip(names, counts):
        wins = []
        for c in cs:
            wins.append(tokens[t : t + c])
            t += c
        m = sum(cs) - len(cs)
        slices.append(BaseSlice(name, wins, arrays["target_logp"][p : p + m], arrays["top1"][p : p + m], arrays["topk_ids"][p : p + m], arrays["topk_logp"][p : p + m], arrays["tail_logp"][p : p + m]))
        p += m
    return BaseRecord(str(meta.get("base", "?")), ctx, vocab, k, slices, probe)


# ---------------------------------------------------------------------------------------
# the model against the record


def kl_exact(base_logp: np.ndarray, model_logp: np.ndarray) -> np.ndarray:
    """KL(p || q) per row from full log-probabilities (float64)."""
    bp = base_logp.astype(np.float64)
    return (np.exp(bp) * (bp - model_logp.astype(np.float64))).sum(axis=1)


def tail_log_mass(logp: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per row, log of the probability mass outside `ids`, summed directly (not 1 minus the
    head, which loses everything when the head holds almost all of it)."""
    rest = logp.astype(np.float64, copy=True)
    np.put_along_axis(rest, ids.astype(np.int64), -np.inf, axis=1)
    m = rest.max(axis=1)
    finite = np.isfinite(m)
    out = np.full(len(rest), -np.inf)
    mf = m[finite][:, None]
    out[finite] = m[finite] + np.log(np.exp(rest[finite] - mf).sum(axis=1))
    return out


def kl_top_k(topk_ids: np.ndarray, topk_logp: np.ndarray, tail_logp: np.ndarray, model_logp: np.ndarray) -> np.ndarray:
    """KL(p || q) per row with p known only on its top k and its tail mass (log `tail_logp`);
    the tail is merged into one outcome, so this is a lower bound of the exact value."""
    lp = topk_logp.astype(np.float64)
    lq = np.take_along_axis(model_logp.astype(np.float64), topk_ids.astype(np.int64), axis=1)
    head = (np.exp(lp) * (lp - lq)).sum(axis=1)
    log_tail_p = tail_logp.astype(np.float64)
    log_tail_q = tail_log_mass(model_logp, topk_ids)
    with np.errstate(invalid="ignore"):
        tail = np.where(np.isfinite(log_tail_p), np.exp(log_tail_p) * (log_tail_p - log_tail_q), 0.0)
    return head + tail


def summarize(per: dict[str, np.ndarray]) -> dict[str, Any]:
    kl = per["kl"]
    return {
        "tokens": int(len(kl)),
        "perplexity": math.exp(float(per["nll"].mean())),
        "base_perplexity": math.exp(float(per["nll_base"].mean())),
        "ppl_ratio": math.exp(float(per["nll"].mean() - per["nll_base"].mean())),
        "kld_mean": float(kl.mean()),
        "kld_median": float(np.median(kl)),
        "kld_p99": float(np.percentile(kl, 99)),
        "top1_agreement": float(per["same_top1"].mean()),
        "top5_miss": float(per["top5_miss"].mean()),
    }


def ab_metrics(scores: dict[str, dict[str, np.ndarray]], record: BaseRecord, exact: bool) -> dict[str, Any]:
    """The A/B numbers per slice and pooled, and the worst slice (highest mean KL divergence)."""
    slices = [{"name": name, **summarize(v)} for name, v in scores.items()]
    pooled = summarize({k: np.concatenate([v[k] for v in scores.values()]) for k in next(iter(scores.values()))})
    worst = max(slices, key=lambda s: s["kld_mean"])["name"]
    return {
        "base": record.base,
        "kld_exact": exact,
        "top_k": record.top_k,
        "ctx": record.ctx,
        "slices": slices,
        "pooled": pooled,
        "worst_slice": worst,
    }


# ---------------------------------------------------------------------------------------
# generations side by side


def greedy_tokens(model, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy continuation token ids (argmax at every step; stops at end-of-sequence)."""
    ids = model.encode(prompt)
    if not ids:
        raise ValueError(f"prompt {prompt!r} is empty after tokenization")
    context = int(model.config["max_position_embeddings"])
    if len(ids) >= context:
        raise ValueError(f"prompt {prompt[:40]!r}... is {len(ids)} tokens; the model's context is {context}")
    session = model._core.session(min(context, len(ids) + max_new_tokens))
    logits = session.forward(ids)
    eos = set(model.eos_token_ids)
    out: list[int] = []
    while len(out) < max_new_tokens and session.length < session.capacity:
        token = int(np.argmax(logits))
        if token in eos:
            break
        out.append(token)
        logits = session.forward([token])
    return out


def read_prompts(path: str | os.PathLike) -> list[str]:
    from binllm.quantize.calib import read_text

    prompts = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path}: no prompts (one per line)")
    return prompts


def side_by_side(model, base_model, prompts: Sequence[str], max_new_tokens: int = 48) -> list[dict[str, Any]]:
    """Both models' greedy continuations of each prompt and where they first differ: the index
    of the first differing token (None if the shorter is a prefix of the longer and both equal
    in length) and the common text before it."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    rows = []
    for prompt in prompts:
        b = greedy_tokens(base_model, prompt, max_new_tokens)
        m = greedy_tokens(model, prompt, max_new_tokens)
        k = next((i for i, (x, y) in enumerate(zip(b, m)) if x != y), min(len(b), len(m)))
        diverge = None if (k == len(b) == len(m)) else k
        rows.append(
            {
                "prompt": prompt,
                "base": base_model.decode(b),
                "model": model.decode(m),
                "first_divergence": diverge,
                "common": base_model.decode(b[:k]),
                "tokens": [len(b), len(m)],
            }
        )
    return rows


# ---------------------------------------------------------------------------------------
# report

_SLICE_COLUMNS = (
    ("name", "slice"),
    ("tokens", "tokens"),
    ("base_perplexity", "ppl base"),
    ("perplexity", "ppl model"),
    ("ppl_ratio", "ratio"),
    ("kld_mean", "KLD mean"),
    ("kld_median", "KLD median"),
    ("kld_p99", "KLD p99"),
    ("top1_agreement", "top-1 agree"),
    ("top5_miss", "base top-1 not in top-5"),
)


def fmt(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if key in ("top1_agreement", "top5_miss"):
        return f"{100 * v:.1f}%"
    if key.startswith("kld"):
        v = 0.0 if abs(v) < 5e-5 else v  # float rounding of a model against itself
        return f"{v:.4f}" if v < 10 else f"{v:.2f}"
    if key in ("perplexity", "base_perplexity", "ppl_ratio"):
        return f"{v:.2f}" if v < 1e4 else f"{v:.3g}"
    return str(v)


def _slice_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    return result["slices"] + [{**result["pooled"], "name": "pooled"}]


def report_markdown(result: dict[str, Any]) -> str:
    ab = result["ab"]
    lines = [
        f"# A/B: {result['model']} against {ab['base']}",
        "",
        f"Non-overlapping windows of {ab['ctx']} tokens per slice; every predicted position of both models. "
        f"KLD = KL(base || model) per position in nats (llama.cpp's `--kl-divergence`), "
        + ("exact (full vocabulary)." if ab["kld_exact"] else f"from the base's top {ab['top_k']} with its tail merged (a lower bound)."),
        "",
        "| " + " | ".join(h for _, h in _SLICE_COLUMNS) + " |",
        "|" + "|".join("---" for _ in _SLICE_COLUMNS) + "|",
    ]
    for r in _slice_rows(ab):
        cells = [fmt(k, r.get(k)) for k, _ in _SLICE_COLUMNS]
        if r["name"] == ab["worst_slice"]:
            cells[0] = f"**{cells[0]}** (worst)"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Worst slice (highest mean KLD): **{ab['worst_slice']}**."]
    gens = result.get("generations")
    if gens:
        lines += ["", "## Greedy continuations", "", "| prompt | base | model | first divergence (token) |", "|---|---|---|---|"]
        for g in gens:
            div = "none" if g["first_divergence"] is None else str(g["first_divergence"])
            lines.append(f"| {_md_cell(g['prompt'])} | {_md_cell(g['base'])} | {_md_cell(g['model'])} | {div} |")
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "⏎")


def report_html(result: dict[str, Any]) -> str:
    ab = result["ab"]
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for _, h in _SLICE_COLUMNS)
    body = []
    for r in _slice_rows(ab):
        worst = r["name"] == ab["worst_slice"]
        cells = "".join(f"<td>{e(fmt(k, r.get(k)))}</td>" for k, _ in _SLICE_COLUMNS)
        body.append(f"<tr{' class=worst' if worst else ''}>{cells}</tr>")
    parts = [
        "<!doctype html><meta charset=utf-8>",
        f"<title>A/B: {e(str(result['model']))}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
        "tr.worst{background:#fdd}mark{background:#fc8}pre{white-space:pre-wrap;margin:0;max-width:40em}</style>",
        f"<h1>A/B: {e(str(result['model']))} against {e(ab['base'])}</h1>",
        f"<p>Windows of {ab['ctx']} tokens; KLD = KL(base || model) per position in nats "
        + ("(exact)." if ab["kld_exact"] else f"(base's top {ab['top_k']}, tail merged: a lower bound).")
        + f" Worst slice: <b>{e(ab['worst_slice'])}</b>.</p>",
        f"<table><tr>{head}</tr>{''.join(body)}</table>",
    ]
    gens = result.get("generations")
    if gens:
        parts.append("<h2>Greedy continuations</h2><table><tr><th>prompt</th><th>base</th><th>model</th><th>first divergence (token)</th></tr>")
        for g in gens:
            n = len(g["common"])

            def marked(text: str) -> str:
                if g["first_divergence"] is None or not text.startswith(g["common"]):
                    return e(text)
                return e(text[:n]) + "<mark>" + e(text[n:]) + "</mark>"

            div = "none" if g["first_divergence"] is None else str(g["first_divergence"])
            parts.append(f"<tr><td><pre>{e(g['prompt'])}</pre></td><td><pre>{marked(g['base'])}</pre></td><td><pre>{marked(g['model'])}</pre></td><td>{div}</td></tr>")
        parts.append("</table>")
    return "\n".join(parts) + "\n"


def prepare_out(out: str | os.PathLike, force: bool) -> Path:
    """Refuses an existing non-empty folder unless `force`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileError(f"--out {out} exists and is not empty (pass --force to write into it)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_text_atomic(path: Path, text: str, force: bool = True) -> None:
    """Writes `text` whole (`file_written_whole`); an existing file is replaced only with `force`."""
    path = Path(path)
    _refuse_existing(path, force)
    with file_written_whole(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_report(result: dict[str, Any], out: str | os.PathLike, force: bool = False) -> Path:
    """report.md, report.html and report.json into `out`."""
    folder = prepare_out(out, force)
    write_text_atomic(folder / "report.md", report_markdown(result))
    write_text_atomic(folder / "report.html", report_html(result))
    write_text_atomic(folder / "report.json", json.dumps(result, indent=2) + "\n")
    return folder


__all__ = [
    "BaseRecord",
    "BaseSlice",
    "DEFAULT_TOP_K",
    "ab_metrics",
    "kl_exact",
    "kl_top_k",
    "load_base",
    "read_prompts",
    "run_ab",
    "save_base",
    "side_by_side",
    "windows",
    "write_report",
]
