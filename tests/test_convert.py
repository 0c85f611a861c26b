"""binllm.convert: a model binllm loads, written as GGUF, reads back to the same numbers.

llama.cpp is not needed here (tests/test_llamacpp.py checks that llama.cpp runs the files).
Ternary types keep the exact codes; the scale and the embeddings pass through fp16, so the
exact-equality tests use checkpoints whose scales and embeddings are fp16-representable.
"""

from pathlib import Path

import numpy as np
import pytest
from binllm import BinllmError, FileError, Model, _core
from binllm.convert import convert
from binllm.tokenizer import from_gguf_metadata
from helpers import TEXT, make_random_hf_model

SHAPE = dict(hidden=256, heads=4, kv_heads=2, intermediate=512, layers=2)  # rows of whole 256-blocks
IDS = list(range(2, 50))
PROMPT = "the quick brown fox"


def make_fp16_exact(folder: Path) -> Path:
    """Rounds a checkpoint's embeddings / output layer to fp16 and its packed weight scales to
    powers of two, so that a GGUF copy (fp16 embeddings, fp16 block scales) is exact."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    for name, t in tensors.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            tensors[name] = t.astype(np.float16).astype(np.float32)
        elif name.endswith(".weight_scale"):
            tensors[name] = np.exp2(np.round(np.log2(t))).astype(np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def assert_close(got, want, rel):
    scale = float(np.abs(want).max())
    diff = float(np.abs(got - want).max())
    assert diff <= rel * scale, f"max |diff| {diff:.3g} > {rel} * max |logit| {scale:.3g}"


def greedy(model, n=12):
    return model.generate(PROMPT, max_new_tokens=n, temperature=0.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    return {
        "bitnet_exact": make_fp16_exact(make_random_hf_model(root / "bitnet_exact", layout="bitnet_packed", seed=11, **SHAPE)),
        "llama_bitnet": make_random_hf_model(root / "llama_bitnet", layout="llama_bitnet", seed=12, **SHAPE),
        "llama_float": make_random_hf_model(root / "llama_float", layout="llama_float", seed=13, **SHAPE),
        "bitnet_silu": make_random_hf_model(root / "bitnet_silu", layout="bitnet_bf16", seed=14, activation="silu", **SHAPE),
    }


@pytest.mark.parametrize("gguf_type", ["tq2_0", "tq1_0"])
def test_ternary_types_reproduce_a_bitnet_model_exactly(models, tmp_path, gguf_type):
    src = Model.from_pretrained(models["bitnet_exact"])
    with pytest.warns(UserWarning, match="relu2"):
        summary = convert(models["bitnet_exact"], tmp_path / "m.gguf", type=gguf_type)
    assert summary["architecture"] == "bitnet" and summary["rope_style"] == "neox" and not summary["permuted_qk"]
    assert summary["tensor_types"] == {gguf_type.upper(): 14, "F32": 9, "F16": 1}  # 7 linears x 2, norms, embeddings
    assert summary["fallbacks"] == [] and summary["max_scale_rounding"] == 0.0
    out = Model.from_pretrained(tmp_path / "m.gguf")
    assert out.config["hidden_act"] == "relu2" and out.config["sub_norms"] and out.config["bitnet"]
    np.testing.assert_array_equal(out.logits(IDS), src.logits(IDS))
    assert greedy(out) == greedy(src)


def test_llama_arch_permutes_q_and_k_for_interleaved_rope(models, tmp_path):
    src = Model.from_pretrained(models["llama_bitnet"])
    summary = convert(models["llama_bitnet"], tmp_path / "a.gguf", type="tq2_0")
    assert summary["architecture"] == "llama" and summary["rope_style"] == "interleaved" and summary["permuted_qk"]
    assert summary["warnings"] == []
    # Latent weights: the absmean scale is rounded to fp16 (relative 2^-11 at most).
    assert 0 < summary["max_scale_rounding"] <= 2.0**-11
    a = Model.from_pretrained(tmp_path / "a.gguf")
    assert a.config["rope_style"] == "interleaved" and a.config["bitnet"]
    assert_close(a.logits(IDS), src.logits(IDS), 2e-3)
    assert greedy(a) == greedy(src)
    # A GGUF source is already interleaved: converting again changes nothing.
    again = convert(tmp_path / "a.gguf", tmp_path / "b.gguf", type="tq2_0")
    assert not again["permuted_qk"] and again["max_scale_rounding"] == 0.0
    # The source's name travels with its tokenizer (not the new file's stem).
    names = [_core.gguf_read_metadata(str(tmp_path / f))[0]["general.name"] for f in ("a.gguf", "b.gguf")]
    assert names == [models["llama_bitnet"].resolve().name] * 2
    np.testing.assert_array_equal(Model.from_pretrained(tmp_path / "b.gguf").logits(IDS), a.logits(IDS))


@pytest.mark.parametrize("name", ["llama_float", "llama_bitnet"])
def test_f16_of_a_llama_model_is_close(models, tmp_path, name):
    src = Model.from_pretrained(models[name])
    summary = convert(models[name], tmp_path / "m.gguf", type="f16")
    assert summary["tensor_types"] == {"F16": 16, "F32": 5}  # 14 linears, embeddings, output
    out = Model.from_pretrained(tmp_path / "m.gguf")
    # llama_bitnet in F16 is a float model to llama.cpp and binllm alike (no int8 activations).
    assert_close(out.logits(IDS), src.logits(IDS), 2e-3)
    assert greedy(out) == greedy(src)


def test_f16_of_a_bitnet_model_keeps_its_scales(models, tmp_path):
    src = Model.from_pretrained(models["bitnet_silu"])
    convert(models["bitnet_silu"], tmp_path / "m.gguf", type="f16")
    # F16 rounds each tensor's scale (and the embeddings) by up to 2^-11; re-ternarizing with
    # absmean instead would move the logits by ~10% of their range.
    assert_close(Model.from_pretrained(tmp_path / "m.gguf").logits(IDS), src.logits(IDS), 5e-3)


def test_rows_that_are_not_whole_blocks_fall_back_to_f16(tmp_path):
    folder = make_random_hf_model(tmp_path / "odd", layout="bitnet_packed", seed=15, hidden=256, heads=4, kv_heads=2, intermediate=384, layers=1)
    with pytest.warns(UserWarning):
        summary = convert(folder, tmp_path / "m.gguf", type="tq2_0")
    assert summary["fallbacks"] == ["blk.0.ffn_down.weight: row length 384 is not a multiple of 256; written as F16 (code * scale)"]
    _, tensors = _core.gguf_read_metadata(str(tmp_path / "m.gguf"))
    types = {name: dtype for name, dtype, _ in tensors}
    assert types["blk.0.ffn_down.weight"] == "F16" and types["blk.0.ffn_up.weight"] == "TQ2_0"


def test_q8_0_embeddings(models, tmp_path):
    src = Model.from_pretrained(models["llama_float"])
    summary = convert(models["llama_float"], tmp_path / "m.gguf", type="f16", embedding_type="q8_0")
    assert summary["tensor_types"] == {"F16": 14, "Q8_0": 2, "F32": 5}
    assert_close(Model.from_pretrained(tmp_path / "m.gguf").logits(IDS), src.logits(IDS), 2e-2)


def test_tokenizer_travels_in_both_forms(models, tmp_path):
    folder = models["llama_bitnet"]
    convert(folder, tmp_path / "m.gguf", type="tq2_0")
    meta, _ = _core.gguf_read_metadata(str(tmp_path / "m.gguf"))
    assert meta["tokenizer.huggingface.json"] == (folder / "tokenizer.json").read_text()
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (0, 1)
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab = hf.get_vocab(with_added_tokens=True)
    assert meta["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get)
    types = meta["tokenizer.ggml.token_type"]
    assert types[:2] == [3, 3] and types[2] == 1  # <s>, </s> are control tokens
    # The tokenizer rebuilt from tokenizer.ggml.* alone (what llama.cpp sees) splits text the same.
    ggml_only = from_gguf_metadata({k: v for k, v in meta.items() if k != "tokenizer.huggingface.json"})
    for text in (TEXT[:400], "Numbers 12345 and  double  spaces\n\nnew lines </s>"):
        assert ggml_only.encode(text).ids == hf.encode(text).ids


def test_refusals_leave_nothing_behind(models, tmp_path):
    with pytest.raises(ValueError, match="float"):
        convert(models["llama_float"], tmp_path / "m.gguf", type="tq2_0")
    with pytest.raises(ValueError, match=r"\.gguf"):
        convert(models["llama_float"], tmp_path / "m.bin", type="f16")
    # A destination that is a folder, or exists, is binllm's FileError (an OSError too).
    with pytest.raises(FileError, match="is a folder"):
        convert(models["llama_float"], tmp_path, type="f16")
    with pytest.raises(ValueError, match="type"):
        convert(models["llama_float"], tmp_path / "m.gguf", type="q4_0")
    assert list(tmp_path.iterdir()) == []
    convert(models["llama_float"], tmp_path / "m.gguf", type="f16")
    before = (tmp_path / "m.gguf").read_bytes()
    with pytest.raises(ValueError, match="source"):
        convert(tmp_path / "m.gguf", tmp_path / "." / "m.gguf", type="f16")
    assert (tmp_path / "m.gguf").read_bytes() == before
    with pytest.raises(FileError, match="force"):
        convert(models["llama_bitnet"], tmp_path / "m.gguf", type="tq2_0")
    assert (tmp_path / "m.gguf").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
    convert(models["llama_bitnet"], tmp_path / "m.gguf", type="tq2_0", force=True)
    assert (tmp_path / "m.gguf").read_bytes() != before
    assert issubclass(FileError, BinllmError) and issubclass(FileError, OSError)


def test_smollm2_round_trips_through_f16(tmp_path, smollm2_path):
    path = smollm2_path
    src = Model.from_pretrained(path)
    summary = convert(path, tmp_path / "smollm2.f16.gguf", type="f16")
    assert summary["architecture"] == "llama" and not summary["permuted_qk"]  # already interleaved
    out = Model.from_pretrained(tmp_path / "smollm2.f16.gguf")
    src_meta, _ = _core.gguf_read_metadata(str(path))
    out_meta, _ = _core.gguf_read_metadata(str(tmp_path / "smollm2.f16.gguf"))
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.pre", "tokenizer.chat_template"):
        assert out_meta[key] == src_meta[key], key
    ids = src.encode("The capital of France is Paris. The capital of Germany is")
    # Q4_1 weights dequantized, then rounded to fp16: a small change.
    assert_close(out.logits(ids), src.logits(ids), 1e-2)
    assert out.generate("The capital of France is", max_new_tokens=8) == src.generate("The capital of France is", max_new_tokens=8)

