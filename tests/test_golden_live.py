"""Opt-in live tier: re-run the golden reference computation with torch + transformers and
compare it with the committed fixtures in tests/fixtures/golden (so anyone with torch can check
that the fixtures are true).

    BINLLM_LIVE_REFERENCE=1 TORCHDYNAMO_DISABLE=1 python -m pytest tests/test_golden_live.py

Skipped unless BINLLM_LIVE_REFERENCE=1 and torch, transformers (+ accelerate, tokenizers) import.
It reuses the helpers of scripts/make_golden.py (loaded from its path) and never imports binllm.
Tolerances for the activation-quantized outputs come from the noise floor recorded in
MANIFEST.json (see "noise_floor" / "recommended_tolerances" there for why they are not epsilons).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

if os.environ.get("BINLLM_LIVE_REFERENCE") != "1":
    pytest.skip("opt-in live reference tier: set BINLLM_LIVE_REFERENCE=1 (needs torch + transformers)",
                allow_module_level=True)

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # before torch is imported anywhere
np = pytest.importorskip("numpy")
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("tokenizers")

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
SCRIPT = ROOT / "scripts" / "make_golden.py"


def _load_make_golden():
    spec = importlib.util.spec_from_file_location("binllm_make_golden", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


mg = _load_make_golden()
MANIFEST = json.loads((GOLDEN / "MANIFEST.json").read_text())
LAYOUTS = list(mg.LAYOUTS)
QUANT = [name for name in LAYOUTS if mg.LAYOUTS[name]["weights"] != "float"]


def _npz(layout):
    with np.load(GOLDEN / layout / "reference.npz") as z:
        return {k: z[k] for k in z.files}


_REFS = {}


def _ref(layout):
    if layout not in _REFS:
        _REFS[layout] = mg.load_reference_model(layout, GOLDEN / layout)
    return _REFS[layout]


def _tol(layout):
    return MANIFEST["layouts"][layout]["recommended_tolerances"]


def test_files_match_manifest():
    for rel, info in MANIFEST["files"].items():
        p = GOLDEN / rel
        assert p.is_file(), rel
        assert p.stat().st_size == info["bytes"], rel
        assert hashlib.sha256(p.read_bytes()).hexdigest() == info["sha256"], rel


@pytest.mark.parametrize("layout", LAYOUTS)
def test_checkpoint_regenerates_bitwise(layout, tmp_path):
    """The checkpoint bytes depend only on numpy (seeded RNG, bf16 rounding, packing, writer)."""
    tok_json = (GOLDEN / layout / "tokenizer.json").read_text()
    mg.build_layout(layout, tmp_path, tok_json)
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (GOLDEN / layout / name).read_bytes(), name


def test_tokenizer_retrains_identically():
    import tokenizers

    if tokenizers.__version__ != MANIFEST["versions"]["tokenizers"]:
        pytest.skip(f"tokenizers {tokenizers.__version__} != {MANIFEST['versions']['tokenizers']} used for the fixtures")
    tok_json = mg.train_tokenizer().to_str(pretty=True) + "\n"
    assert tok_json == (GOLDEN / LAYOUTS[0] / "tokenizer.json").read_text()


def test_inputs_regenerate():
    ids, prompt = mg.fixed_inputs(GOLDEN / LAYOUTS[0] / "tokenizer.json")
    for layout in LAYOUTS:
        z = _npz(layout)
        np.testing.assert_array_equal(z["input_ids"], ids)
        np.testing.assert_array_equal(z["greedy_prompt"], prompt)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_logits_noactq_live(layout):
    z = _npz(layout)
    live = mg.reference_logits(_ref(layout), z["input_ids"])
    np.testing.assert_allclose(live["logits_noactq"], z["logits_noactq"], rtol=0,
                               atol=_tol(layout)["logits_noactq_atol"])


@pytest.mark.parametrize("layout", QUANT)
def test_logits_actq_live(layout):
    z = _npz(layout)
    live = mg.reference_logits(_ref(layout), z["input_ids"])["logits_actq"]
    d = np.abs(live - z["logits_actq"])
    t = _tol(layout)
    assert d.max() <= t["logits_actq_max_abs"], d.max()
    assert d.mean() <= t["logits_actq_mean_abs"], d.mean()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_greedy_live(layout):
    z = _npz(layout)
    live = mg.reference_greedy(_ref(layout), z["greedy_prompt"])
    n = int(z["greedy_stable_prefix_noactq"])
    np.testing.assert_array_equal(live["greedy_tokens_noactq"][:n], z["greedy_tokens_noactq"][:n])
    n = int(z["greedy_stable_prefix"])
    np.testing.assert_array_equal(live["greedy_tokens"][:n], z["greedy_tokens"][:n])


@pytest.mark.parametrize("layout", QUANT)
def test_transformers_linears_are_the_recipe(layout):
    """Every ternary linear of the live transformers model equals the numpy BitLinear built from the
    files, on the exact same inputs (act quant on and off)."""
    z = _npz(layout)
    for actq in (True, False):
        assert mg.layerwise_bitlinear_check(_ref(layout), GOLDEN / layout, z["input_ids"], actq) <= 1e-5


@pytest.mark.parametrize("layout", LAYOUTS)
def test_numpy_forward_matches_noactq(layout):
    """The independent numpy forward pass agrees with the stored float-activation logits."""
    z = _npz(layout)
    lg = mg.numpy_forward(layout, GOLDEN / layout, z["input_ids"], actq=False)
    np.testing.assert_allclose(lg, z["logits_noactq"], rtol=0, atol=1e-4)


def test_bitnet_bf16_online_path_agrees():
    """transformers' own online AutoBitLinear path on the latent weights gives the stored logits_actq."""
    z = _npz("bitnet_bf16")
    lg = mg.hf_online_logits(GOLDEN / "bitnet_bf16", z["input_ids"])
    t = _tol("bitnet_bf16")
    d = np.abs(lg - z["logits_actq"])
    assert d.max() <= t["logits_actq_max_abs"] and d.mean() <= t["logits_actq_mean_abs"]
