"""The output layer's storage chosen at load (`output_type`) and at conversion (`--output-type`):
q8_0 keeps 8-bit blocks of 32 (half the bytes a decoded token reads there against f16) and
computes what the dequantized weights say; q6_k keeps GGML's 6-bit blocks (41% of f16's bytes),
times int8 activations as llama.cpp runs them (their agreement is in test_llamacpp.py)."""

from __future__ import annotations

import subprocess
import sys

import families as F
import numpy as np
import pytest
from binllm import Model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("output-type")
    return {"tied": F.build("bitnet_2b4t", root / "tied"), "untied": F.build("hf1bitllm", root / "untied")}


def q8_rows(w: np.ndarray) -> np.ndarray:
    """numpy's Q8 of rows: blocks of 32, d = max|v| / 127, codes v * (1 / d) rounded half away
    from zero (binllm's Q8 blocks, as llama.cpp's Q8_0 rounds)."""
    n, k = w.shape
    out = np.empty_like(w)
    for start in range(0, k, 32):
        block = w[:, start : start + 32]
        d = np.abs(block).max(axis=1, keepdims=True) / np.float32(127)
        inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
        v = block * inv
        out[:, start : start + 32] = np.clip(np.trunc(v + np.copysign(np.float32(0.5), v)), -127, 127) * d
    return out


@pytest.mark.parametrize("kind", ["tied", "untied"])
def test_q8_output_computes_its_dequantized_weights(folders, kind):
    folder = folders[kind]
    f16 = Model.from_pretrained(folder, act_quant=False)
    q8 = Model.from_pretrained(folder, act_quant=False, output_type="q8_0")
    rows = {t["kind"]: t for t in q8.info()["tensors"]}
    head = "embedding" if kind == "tied" else "output"
    assert rows[head]["storage"] == "q8" and rows[head]["bits_per_weight"] == 9.0
    assert q8._core.nbytes < f16._core.nbytes
    ids = f16.encode(F.TEXT)[:24]
    t = F.read_safetensors(folder / "model.safetensors")
    w = t["model.embed_tokens.weight"] if kind == "tied" else t["lm_head.weight"]
    # Tied: the one matrix is both the embeddings and the output layer, so both read q8.
    replaced = {"embed": q8_rows(w)} if kind == "tied" else {"head": q8_rows(w)}
    want = F.reference_logits(folder, ids, act_quant=False, **replaced)
    got = q8.logits(ids)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 2e-5 * scale
    # 8 bits cost a little: the logits move by well under a percent of their range.
    assert 0 < np.abs(got - f16.logits(ids)).max() < 0.01 * scale


def test_bad_output_type_is_one_clear_error(folders):
    with pytest.raises(ValueError, match="output type 'q4'"):
        Model.from_pretrained(folders["tied"], output_type="q4")
    with pytest.raises(ValueError, match="output type 'q6_K'"):
        Model.from_pretrained(folders["tied"], output_type="q6_K")


def test_convert_writes_a_q8_0_output_that_loads_as_q8(folders, tmp_path):
    dst = tmp_path / "m.gguf"
    out = subprocess.run([sys.executable, "-m", "binllm", "convert", str(folders["untied"]), str(dst), "--output-type", "q8_0", "--quiet"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    from binllm import _core

    _, tensors = _core.gguf_read_metadata(str(dst))
    types = {name: dtype for name, dtype, _ in tensors}
    assert types["output.weight"] == "Q8_0" and types["token_embd.weight"] == "Q8_0"
    rows = {t["kind"]: t["storage"] for t in Model.from_pretrained(dst).info()["tensors"]}
    assert rows["output"] == "q8" and rows["embedding"] == "q8"


@pytest.mark.parametrize("kind", ["tied", "untied"])
def test_q6_k_output_at_load_equals_the_q6_k_file_binllm_writes(folders, tmp_path, kind):
    folder = folders[kind]
    f16 = Model.from_pretrained(folder, act_quant=False)
    q6 = Model.from_pretrained(folder, act_quant=False, output_type="q6_k")
    head = "embedding" if kind == "tied" else "output"
    rows = {t["kind"]: t for t in q6.info()["tensors"]}
    assert rows[head]["storage"] == "q6_k" and rows[head]["bits_per_weight"] == 6.5625
    ids = f16.encode(F.TEXT)[:24]
    got, base = q6.logits(ids), f16.logits(ids)
    scale = np.abs(base).max()
    # 6-bit weights (1.7% rms error on Gaussian rows) and 8-bit activations: logits move by
    # about as much (measured: mean 1.5-2.3% of their std, at most 1.3-2.0% of their range).
    diff = np.abs(got - base)
    assert 0 < diff.mean() < 0.04 * base.std() and diff.max() < 0.04 * scale
    assert (got.argmax(-1) == base.argmax(-1)).mean() >= 0.9
    # The same blocks written to GGUF (Q6_K, which the loader keeps as it is) compute the same.
    # convert's --output-type sets the embeddings too; output_type only the output layer.
    dst = tmp_path / "m.gguf"
    out = subprocess.run([sys.executable, "-m", "binllm", "convert", str(folder), str(dst), "--output-type", "q6_k", "--quiet"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    from binllm import _core

    _, tensors = _core.gguf_read_metadata(str(dst))
    types = {name: dtype for name, dtype, _ in tensors}
    assert types["token_embd.weight"] == "Q6_K" and types.get("output.weight", "Q6_K") == "Q6_K"
    written = Model.from_pretrained(dst, act_quant=False)
    assert {t["kind"]: t["storage"] for t in written.info()["tensors"]}[head] == "q6_k"
    if kind == "tied":
        np.testing.assert_array_equal(written.logits(ids), got)
    else:  # the file's embeddings are Q6_K too, which output_type leaves as they are
        assert np.abs(written.logits(ids) - base).mean() < 0.04 * base.std()


def test_ternary_linears_repacked_as_t1_6_compute_the_same(folders):
    t2 = Model.from_pretrained(folders["untied"])
    t16 = Model.from_pretrained(folders["untied"], ternary_format="t1.6")
    storages = {t["kind"]: t["storage"] for t in t16.info()["tensors"]}
    assert storages["attention"] == "t1.6" and storages["mlp"] == "t1.6"
    assert t16._core.nbytes <= t2._core.nbytes  # k = 256 and 384 pad to the same bytes in both
    ids = t2.encode(F.TEXT)[:24]
    np.testing.assert_array_equal(t16.logits(ids), t2.logits(ids))
    with pytest.raises(ValueError, match="t2 or t1.6"):
        Model.from_pretrained(folders["untied"], ternary_format="b1")
