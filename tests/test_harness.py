"""binllm as an lm-evaluation-harness backend (binllm.harness, the `eval` extra), offline on the
small tasks in tests/lm_eval_tasks (built from PEP 8, shipped in benches/data): its
log-likelihoods equal sums of `Model.logits`' log-softmax, rolling log-likelihoods and greedy
generations equal direct computations, and the harness's accuracies equal a direct scoring of
the same documents. Skipped where lm_eval is not installed (`pip install 'binllm[eval]'`;
scripts/setup.sh --test installs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import make_random_hf_model

if os.environ.get("CI") == "true":
    import lm_eval  # noqa: F401  (CI installs it: a missing harness is a failure there, not a skip)
else:
    pytest.importorskip("lm_eval")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from binllm.harness import BinllmLM  # noqa: E402
from binllm.model import Model  # noqa: E402

TASKS = Path(__file__).parent / "lm_eval_tasks"
SHAPE = dict(hidden=320, heads=5, kv_heads=1, intermediate=768, layers=2, vocab=1000)


class Req:
    """What the harness hands a backend: an object with .args."""

    def __init__(self, *args):
        self.args = args


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_random_hf_model(tmp_path_factory.mktemp("harness") / "m", layout="llama_float", seed=7, max_positions=1024, **SHAPE)


@pytest.fixture(scope="module")
def lm(model_dir):
    return BinllmLM(pretrained=str(model_dir), threads=1)


def direct_logprob(model: Model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    logits = model.logits(context + continuation)[len(context) - 1 : -1].astype(np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    t = np.array(continuation)
    return float(logp[np.arange(len(t)), t].sum()), bool((logits.argmax(1) == t).all())


def test_loglikelihood_matches_model_logits(lm):
    model = lm.model
    requests = [
        Req("the quick brown", " fox"),
        Req("the quick brown", " dog jumps over"),  # shares its context with the first
        Req("to be, or not to be,", " that is the question"),
        Req("", "once upon a time"),  # empty context: the prefix token conditions it
        Req("in the beginning ", "god created"),  # trailing space moves to the continuation
    ]
    got = lm.loglikelihood(requests)
    for req, (logprob, greedy) in zip(requests, got):
        context, continuation = req.args
        if context:
            n = len(context) - len(context.rstrip())
            context, continuation = context[: len(context) - n], context[len(context) - n :] + continuation
            whole, ctx_ids = model.encode(context + continuation), model.encode(context)
            ctx_ids, cont_ids = whole[: len(ctx_ids)], whole[len(ctx_ids) :]
        else:
            cont_ids = model.tokenizer.encode(continuation, add_special_tokens=False).ids
            ctx_ids = [lm.prefix_token_id]
        want, want_greedy = direct_logprob(model, ctx_ids, cont_ids)
        # The shared-context path runs the continuation incrementally through the KV cache:
        # float rounding apart, the same numbers as one forward pass.
        assert logprob == pytest.approx(want, abs=1e-4 * max(1.0, abs(want))), req.args
        assert greedy == want_greedy


def test_a_greedy_continuation_is_flagged_greedy(lm):
    model = lm.model
    context = "the quick brown fox"
    ids = model.encode(context)
    nxt = int(model.logits(ids)[-1].argmax())
    _, greedy = lm._loglikelihood_tokens([(None, ids, [nxt])])[0]
    assert greedy
    _, greedy = lm._loglikelihood_tokens([(None, ids, [(nxt + 1) % model.config["vocab_size"]])])[0]
    assert not greedy


def test_loglikelihood_rolling_scores_every_token_once(model_dir):
    small = BinllmLM(pretrained=str(model_dir), threads=1, max_length=16)
    model = small.model
    text = "the quick brown fox jumps over the lazy dog. to be, or not to be, that is the question. " * 2
    tokens = model.tokenizer.encode(text, add_special_tokens=False).ids
    assert len(tokens) > 40  # several windows of 16
    (got,) = small.loglikelihood_rolling([Req(text)])
    # Directly: window j predicts tokens[16j : 16j + 16] from the 16 tokens before each
    # (the prefix token before the first), as lm-eval's disjoint rolling windows do.
    want, seq = 0.0, [small.prefix_token_id] + tokens
    for start in range(0, len(tokens), 16):
        end = min(start + 16, len(tokens))
        lo = max(0, end - 16)  # the last window keeps a full context
        logits = model.logits(seq[lo:end]).astype(np.float64)
        logp = logits - logits.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        for pos in range(start, end):  # token `pos` is predicted at row pos - lo
            want += logp[pos - lo, tokens[pos]]
    assert got == pytest.approx(want, abs=1e-3)
    # Short text, one window: log p(text | prefix) from one forward pass.
    short = "once upon a time"
    ids = model.tokenizer.encode(short, add_special_tokens=False).ids
    (one,) = small.loglikelihood_rolling([Req(short)])
    assert one == pytest.approx(direct_logprob(model, [small.prefix_token_id], ids)[0], abs=1e-4)


def test_generate_until_is_greedy_and_stops(lm):
    model = lm.model
    out = lm.generate_until([Req("the quick brown", {"until": ["\n"], "max_gen_toks": 12}), Req("once upon a", {"max_gen_toks": 5, "until": "zzz"})])
    assert out[0] == model.generate("the quick brown", max_new_tokens=12, temperature=0, stop=["\n"])
    assert out[1] == model.generate("once upon a", max_new_tokens=5, temperature=0)
    full = model.generate("to be", max_new_tokens=16, temperature=0)
    stop = full.strip()[:3]
    if stop:
        (cut,) = lm.generate_until([Req("to be", {"until": [stop], "max_gen_toks": 16})])
        assert cut == full[: full.find(stop)]


def test_bad_model_args_are_clear(model_dir):
    with pytest.raises(ValueError, match="unknown model_args"):
        BinllmLM(pretrained=str(model_dir), nonsense=1)
    with pytest.raises(FileNotFoundError):
        BinllmLM(pretrained=str(model_dir / "nope"))


def _docs(task: str) -> list[dict]:
    sys.path.insert(0, str(TASKS))
    try:
        import utils
    finally:
        sys.path.remove(str(TASKS))
    return list({"binllm_cloze": utils.cloze, "binllm_lastword": utils.lastword}[task]()["test"])


def test_harness_accuracy_equals_direct_scoring(lm, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    limit = 12
    res = simple_evaluate(model=lm, tasks=["binllm_cloze", "binllm_lastword", "binllm_lastword_gen", "binllm_rolling"], task_manager=TaskManager(include_path=str(TASKS)), limit=limit, bootstrap_iters=0, random_seed=0)
    r = res["results"]
    model = lm.model

    # Multiple choice: the highest log-likelihood choice after " " is right (acc), or the
    # highest per character of the choice (acc_norm).
    hits = hits_norm = 0
    docs = _docs("binllm_cloze")[:limit]
    for d in docs:
        scores = []
        for choice in d["choices"]:
            whole, ctx = model.encode(d["context"] + " " + choice), model.encode(d["context"])
            scores.append(direct_logprob(model, whole[: len(ctx)], whole[len(ctx) :])[0])
        hits += int(np.argmax(scores) == d["gold"])
        hits_norm += int(np.argmax([s / len(" " + c) for s, c in zip(scores, d["choices"])]) == d["gold"])
    assert r["binllm_cloze"]["acc,none"] == pytest.approx(hits / len(docs))
    assert r["binllm_cloze"]["acc_norm,none"] == pytest.approx(hits_norm / len(docs))

    # Last word: acc = the word is the greedy continuation; perplexity = exp(-mean log p(word)).
    docs = _docs("binllm_lastword")[:limit]
    greedy, logps = [], []
    for d in docs:
        whole, ctx = model.encode(d["context"] + " " + d["word"]), model.encode(d["context"])
        lp, g = direct_logprob(model, whole[: len(ctx)], whole[len(ctx) :])
        greedy.append(g)
        logps.append(lp)
    assert r["binllm_lastword"]["acc,none"] == pytest.approx(np.mean(greedy))
    assert r["binllm_lastword"]["perplexity,none"] == pytest.approx(np.exp(-np.mean(logps)), rel=1e-4)

    # Generated last word: exact match of the first generated word.
    gens = [model.generate(d["context"], max_new_tokens=8, temperature=0, stop=[".", ",", "\n"]) for d in docs]
    words = [g.split()[0] if g.split() else g for g in gens]
    assert r["binllm_lastword_gen"]["exact_match,strip"] == pytest.approx(np.mean([w == d["word"] for w, d in zip(words, docs)]))
    assert r["binllm_rolling"]["word_perplexity,none"] > 1


def test_lm_eval_command_line(model_dir, tmp_path):
    """`binllm lm-eval` is lm-eval's command line with the binllm backend."""
    out = tmp_path / "results"
    r = subprocess.run(
        [sys.executable, "-m", "binllm", "lm-eval", "--model", "binllm", "--model_args", f"pretrained={model_dir},threads=1", "--tasks", "binllm_lastword", "--include_path", str(TASKS), "--limit", "4", "--output_path", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "binllm_lastword" in r.stdout and "acc" in r.stdout
    results = list(out.rglob("results_*.json"))
    assert results and json.loads(results[0].read_text())["results"]["binllm_lastword"]["acc,none"] >= 0
