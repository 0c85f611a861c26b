"""binllm quantize / eval / compare end to end on small seeded models: the written model runs in
binllm and computes what its dequantized weights say; calibration Hessians equal numpy's
X^T X; GGUF sources read back in Hugging Face form; perplexity equals a token-by-token
computation; the report is written; bad input gives clear errors and overwrites nothing."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import binllm
import numpy as np
import pytest
from binllm.model import Model
from binllm.quantize import parse_keep, q8_blocks, q8_dequant, quantize_model
from binllm.quantize.calib import hessians
from binllm.quantize.source import LINEARS, read_source
from helpers import TEXT, make_random_hf_model
from safetensors.numpy import load_file, save_file

SHAPE = dict(hidden=320, heads=5, kv_heads=1, intermediate=768, layers=2, vocab=1000)


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    return make_random_hf_model(tmp_path_factory.mktemp("float") / "m", layout="llama_float", seed=3, **SHAPE)


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    p.write_text(TEXT * 3)
    return p


def float_twin(src: Path, weights: dict[str, np.ndarray], dst: Path) -> Path:
    """A plain float32 copy of `src` with `weights` replacing its linears."""
    shutil.copytree(src, dst)
    tensors = load_file(str(src / "model.safetensors"))
    for name, w in weights.items():
        assert tensors[name].shape == w.shape
        tensors[name] = w.astype(np.float32)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


IDS = [5, 17, 400, 3, 999, 250, 42, 7, 77, 600, 123, 2]


@pytest.mark.parametrize(
    "method,group,calib",
    [
        ("absmean", None, False),
        ("absmean", 256, False),
        ("gptq-ternary", 256, True),
        ("sign", None, False),
        ("sign", 512, False),
        ("onebit", None, False),
        ("arb", None, False),
        ("arb", None, True),
        ("billm", None, True),
    ],
)
def test_quantized_model_computes_its_dequantized_weights(tmp_path, float_model, calib_file, method, group, calib):
    weights: dict[str, np.ndarray] = {}
    report = quantize_model(float_model, tmp_path / "q", method=method, group_size=group, calib=calib_file if calib else None, calib_tokens=600, ctx=128, weights_out=weights)
    assert report["linear_parameters"] == sum(w.size for w in weights.values())
    assert 0.9 < report["method_bits_per_weight"] < 17
    q = Model.from_pretrained(tmp_path / "q", act_quant=False)
    ref = Model.from_pretrained(float_twin(float_model, weights, tmp_path / "twin"), act_quant=False)
    got, want = q.logits(IDS), ref.logits(IDS)
    np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max())
    # With int8 activations (how binllm runs packed layers) it stays close to the same model.
    live = Model.from_pretrained(tmp_path / "q").logits(IDS)
    assert np.isfinite(live).all()
    assert np.corrcoef(live.ravel(), want.ravel())[0, 1] > 0.95
    if method != "billm":  # BiLLM has no fast kernel: its weights are stored dequantized
        assert set(json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["layers"])
        storage = {t["storage"] for t in q.info()["tensors"] if t["kind"] in ("attention", "mlp")}
        assert storage == ({"t2"} if method in ("absmean", "gptq-ternary") else {"b1"})


def test_kept_layers_are_8_bit(tmp_path, float_model):
    weights: dict[str, np.ndarray] = {}
    quantize_model(float_model, tmp_path / "q", method="absmean", keep=["first,embed"], weights_out=weights)
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert cfg["layers"]["model.layers.0.self_attn.q_proj"] == {"format": "q8"}
    assert cfg["layers"]["model.layers.1.self_attn.q_proj"]["format"] == "t2"
    assert cfg["layers"]["model.embed_tokens"] == {"format": "q8"}
    q = Model.from_pretrained(tmp_path / "q", act_quant=False)
    kinds = {(t["kind"], t["storage"]) for t in q.info()["tensors"]}
    assert ("embedding", "q8") in kinds and ("attention", "q8") in kinds and ("attention", "t2") in kinds
    src = load_file(str(float_model / "model.safetensors"))
    emb_q, emb_d = q8_blocks(src["model.embed_tokens.weight"])
    tensors = dict(weights, **{"model.embed_tokens.weight": q8_dequant(emb_q, emb_d)})
    ref = Model.from_pretrained(float_twin(float_model, tensors, tmp_path / "twin"), act_quant=False)
    np.testing.assert_allclose(q.logits(IDS), ref.logits(IDS), atol=2e-3 * np.abs(ref.logits(IDS)).max())


def test_q8_blocks_round_trip_within_half_a_step():
    w = np.random.default_rng(0).standard_normal((7, 70)).astype(np.float32)
    q, d = q8_blocks(w)
    assert q.dtype == np.int8 and d.shape == (7, 3)
    back = q8_dequant(q, d)
    step = np.repeat(d, 32, axis=1)[:, :70]
    assert (np.abs(back - w) <= step / 2 + 1e-7).all()


def test_q8_blocks_round_ties_away_from_zero_as_the_loader_does():
    # max|w| = 127 gives a scale of 1: every value is its own code, halves included (numpy's
    # rint would give 0, 2, 2, -0, -2).
    w = np.array([[0.5, 1.5, 2.5, -0.5, -2.5, 127.0] + [0.0] * 30], np.float32)
    q, d = q8_blocks(w)
    assert q[0, :6].tolist() == [1, 2, 3, -1, -3, 127] and d.tolist() == [[1.0, 0.0]]
    q16, _ = q8_blocks(w.astype(np.float16)[:, :35])
    assert q16.shape == (1, 35) and q16[0, :6].tolist() == [1, 2, 3, -1, -3, 127]


def test_hessians_match_numpy_on_the_first_layer(float_model):
    model = Model.from_pretrained(float_model)
    ids = IDS * 3
    hs = hessians(model, ids, ctx=16)
    assert {site for _, site in hs} == {"attn_in", "o_in", "ffn_in", "down_in"}
    assert {layer for layer, _ in hs} == {0, 1}
    t = load_file(str(float_model / "model.safetensors"))
    x = t["model.embed_tokens.weight"][ids].astype(np.float64)
    x = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-5) * t["model.layers.0.input_layernorm.weight"]
    want = x.T @ x
    np.testing.assert_allclose(hs[(0, "attn_in")], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert hs[(0, "down_in")].shape == (SHAPE["intermediate"],) * 2


def test_gguf_source_reads_back_hf_tensors(tmp_path, float_model):
    from binllm.convert import convert

    gguf = tmp_path / "m.f16.gguf"
    convert(float_model, gguf, type="f16")
    src = read_source(gguf)
    folder = read_source(float_model)
    assert src.config["num_key_value_heads"] == SHAPE["kv_heads"]
    for name, w in folder.tensors.items():
        # Q/K come back un-permuted from llama.cpp's layout; everything within f16 rounding.
        np.testing.assert_allclose(src.tensors[name], w, rtol=1e-3, atol=1e-3 * np.abs(w).max(), err_msg=name)


def test_perplexity_matches_token_by_token_decoding(float_model):
    from binllm.evaluate import perplexity

    model = Model.from_pretrained(float_model)
    text = TEXT[:400]
    got = perplexity(model, text, ctx=32)
    ids = model.encode(text)
    nll, count = 0.0, 0
    for start in range(0, len(ids), 32):
        window = ids[start : start + 32]
        session = model._core.session(len(window))
        for i in range(len(window) - 1):
            logits = session.forward([window[i]]).astype(np.float64)
            nll += math.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[window[i + 1]]
            count += 1
    assert got["tokens"] == count
    assert got["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-3)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "binllm.cli", *map(str, args)], capture_output=True, text=True)


def test_cli_quantize_eval_compare(tmp_path, float_model, calib_file):
    r = run_cli("quantize", float_model, tmp_path / "t2", "--method", "absmean", "--quiet")
    assert r.returncode == 0, r.stderr
    stated = json.loads(r.stdout)
    assert stated["formats"] == ["t2"]
    r = run_cli("eval", tmp_path / "t2", "--text", calib_file, "--ctx", "64", "--max-tokens", "300", "--json")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["method"] == "absmean" and ev["storage"] == ["t2"] and ev["perplexity"] > 1 and ev["decode_tok_s"] > 0
    assert 2.0 <= ev["linear_bits_in_memory"] < 3.0  # 2-bit codes, padded rows, one scale
    # The method counts no row padding (320 of a 512-weight row here): two numbers, two names.
    assert ev["method_bits_per_weight"] == stated["method_bits_per_weight"] < ev["linear_bits_in_memory"]
    out = tmp_path / "report"
    pytest.importorskip("matplotlib")
    r = run_cli("compare", float_model, tmp_path / "t2", "--text", calib_file, "--ctx", "64", "--max-tokens", "300", "--out", out, "--labels", "float,absmean", "--quiet")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert [row["label"] for row in rows] == ["float", "absmean"]
    assert float(rows[0]["ppl_ratio"]) == 1.0 and float(rows[1]["perplexity"]) > 0
    assert "| absmean |" in (out / "report.md").read_text()
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_cli_errors_are_clear_and_overwrite_nothing(tmp_path, float_model, calib_file):
    r = run_cli("quantize", float_model, tmp_path / "x", "--method", "gptq-ternary")
    assert r.returncode == 1 and "--calib" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("quantize", float_model, tmp_path / "x", "--method", "absmean", "--group-size", "100")
    assert r.returncode == 1 and "256" in r.stderr and not (tmp_path / "x").exists()
    r = run_cli("quantize", float_model, tmp_path / "x", "--method", "absmean", "--keep", "nonsense")
    assert r.returncode == 1 and "nonsense" in r.stderr
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep me")
    r = run_cli("quantize", float_model, tmp_path / "busy", "--method", "absmean")
    assert r.returncode == 1 and "never overwrites" in r.stderr
    with pytest.raises(binllm.FileError, match="never overwrites"):  # a binllm error, an OSError
        quantize_model(float_model, tmp_path / "busy", "absmean")
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep me"
    r = run_cli("quantize", tmp_path / "missing", tmp_path / "y", "--method", "absmean")
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = run_cli("eval", float_model, "--text", tmp_path / "nope.txt")
    assert r.returncode == 1 and "nope.txt" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_already_quantized_sources_are_refused(tmp_path):
    bitnet = make_random_hf_model(tmp_path / "b", layout="bitnet_packed", seed=1)
    with pytest.raises(binllm.UnsupportedError, match="already quantized"):
        quantize_model(bitnet, tmp_path / "q", method="absmean")


def test_sharded_index_naming_a_file_outside_the_folder_is_refused(tmp_path, float_model):
    folder = tmp_path / "m"
    shutil.copytree(float_model, folder)
    (folder / "model.safetensors").rename(tmp_path / "outside.safetensors")
    names = load_file(str(tmp_path / "outside.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: "../outside.safetensors" for n in names}}))
    with pytest.raises(binllm.ModelFormatError, match=r"outside the folder: '\.\./outside\.safetensors'"):
        read_source(folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: "shard.safetensors" for n in names}}))
    (tmp_path / "outside.safetensors").rename(folder / "shard.safetensors")
    assert set(read_source(folder).tensors) == set(names)


def test_parse_keep():
    assert parse_keep(["first,last", "3", "embed"], 10) == ({0, 9, 3}, True, False)
    with pytest.raises(ValueError):
        parse_keep(["12"], 10)


def test_ternary_gguf_runs_in_binllm_and_llama_cpp(tmp_path, calib_file):
    """All rows whole 256-blocks: every linear becomes TQ2_0 with per-group (block) scales."""
    src = make_random_hf_model(tmp_path / "f", layout="llama_float", seed=4, hidden=256, heads=4, kv_heads=2, intermediate=512, layers=2, vocab=1000)
    report = quantize_model(src, tmp_path / "q", method="gptq-ternary", group_size=256, calib=calib_file, calib_tokens=600, ctx=128, gguf=tmp_path / "q.gguf")
    assert report["gguf"]["warnings"] == []
    folder, gguf = Model.from_pretrained(tmp_path / "q", act_quant=False), Model.from_pretrained(tmp_path / "q.gguf", act_quant=False)
    assert {t["storage"] for t in gguf.info()["tensors"] if t["kind"] in ("attention", "mlp")} == {"t2"}
    want = folder.logits(IDS)
    np.testing.assert_allclose(gguf.logits(IDS), want, atol=1e-4 * np.abs(want).max())
    try:
        import llama_cpp
    except ImportError:
        pytest.skip("llama-cpp-python is not installed")
    llm = llama_cpp.Llama(str(tmp_path / "q.gguf"), n_ctx=64, n_batch=len(IDS), n_ubatch=len(IDS), n_threads=2, logits_all=True, verbose=False)
    try:
        llm.eval(IDS)
        theirs = np.array(llm.scores[: len(IDS)], dtype=np.float32)
    finally:
        llm.close()
    ours = Model.from_pretrained(tmp_path / "q.gguf").logits(IDS)
    assert np.abs(theirs - ours).max() < 2e-2 * np.abs(ours).max()
    assert (theirs.argmax(-1) == ours.argmax(-1)).mean() >= 0.9


def test_sequential_calibration_sees_the_quantized_blocks_before(tmp_path, float_model):
    """Block 1's Hessian, block by block, equals the one-pass Hessian of a float model whose
    block 0 holds block 0's quantized weights; block 0's equals the float model's."""
    from binllm.quantize.calib import SequentialCalibration

    src = read_source(float_model)
    tokens = (IDS * 8)[:90]
    seq = SequentialCalibration(src, tokens, ctx=32)
    h0 = seq.hessians(0)
    want0 = hessians(Model.from_pretrained(float_model), tokens, ctx=32)
    # The embeddings are stored as float16 for calibration.
    np.testing.assert_allclose(h0[(0, "attn_in")], want0[(0, "attn_in")], rtol=2e-3, atol=2e-3 * np.abs(want0[(0, "attn_in")]).max())
    block0 = {f"model.layers.0.{n}.weight": np.sign(src.tensors[f"model.layers.0.{n}.weight"]) * 0.02 for n, _ in LINEARS}
    seq.done(0, block0)
    h1 = seq.hessians(1)
    assert set(h1) == {(1, "attn_in"), (1, "o_in"), (1, "ffn_in"), (1, "down_in")}
    twin = Model.from_pretrained(float_twin(float_model, block0, tmp_path / "twin"))
    want1 = hessians(twin, tokens, ctx=32)
    for site in ("attn_in", "o_in", "ffn_in", "down_in"):
        np.testing.assert_allclose(h1[(1, site)], want1[(1, site)], rtol=5e-3, atol=5e-3 * np.abs(want1[(1, site)]).max(), err_msg=site)
    assert not np.allclose(h1[(1, "attn_in")], want0[(1, "attn_in")], rtol=0.05)


def test_calibration_bad_inputs_raise_clear_errors(tmp_path, float_model, calib_file):
    from binllm import _core

    model = Model.from_pretrained(float_model)

    def boom(layer, site, x):
        raise KeyError("observer failed")

    with pytest.raises(KeyError, match="observer failed"):
        model._core.session(16).forward(IDS, observe=boom)
    with pytest.raises(binllm.ModelFormatError, match="no tensor named 'nope'"):
        _core.read_tensors(str(float_model / "model.safetensors"), ["nope"])
    with pytest.raises(ValueError, match="ctx must be at least 2"):
        quantize_model(float_model, tmp_path / "q", method="gptq-ternary", calib=calib_file, ctx=1)
    assert not (tmp_path / "q").exists()
