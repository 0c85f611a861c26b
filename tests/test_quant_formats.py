"""Post-training-quantized (PTQ) weights on the packed kernels: per-group scales, per-row
offsets, binllm's quantized Hugging Face folders and their GGUF round trip.

- Kernels against numpy formulas on odd shapes: grouped t2 (every backend's per-group integer
  sums exact), row offsets on t2 and b1 (OneBit included).
- A tiny random Llama written as a binllm-quantized folder (grouped t2, OneBit b1 with row
  offsets, q8 embeddings and output layer) gives the logits of the same Llama with float
  weights equal to the dequantized values; malformed folders raise ModelFormatError.
- Grouped t2 written as GGUF TQ2_0 / TQ1_0 reloads to the same logits, and llama.cpp (when
  installed) agrees with binllm on it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import binllm
import numpy as np
import pytest
from binllm import kernels
from helpers import make_random_hf_model
from test_kernels import np_quantize

BACKENDS = kernels.backends()
ODD_SHAPES = [(1, 1, 1), (3, 17, 2), (7, 700, 3), (5, 1023, 1), (9, 1537, 4), (4, 2560, 1)]


def group_sums(codes, q, group):
    """(M, N, groups) exact integer sums of codes with q over each group of columns."""
    n, k = codes.shape
    groups = -(-k // group)
    out = np.zeros((q.shape[0], n, groups), np.int64)
    for g in range(groups):
        cols = slice(g * group, min((g + 1) * group, k))
        out[:, :, g] = q[:, cols].astype(np.int64) @ codes[:, cols].astype(np.int64).T
    return out


def random_codes(rng, n, k, ternary=True):
    if ternary:
        return rng.integers(-1, 2, size=(n, k)).astype(np.int8)
    return (rng.integers(0, 2, size=(n, k)) * 2 - 1).astype(np.int8)


# ----------------------------------------------------------------------------------------
# Kernels


@pytest.mark.parametrize("n,k,m", ODD_SHAPES)
@pytest.mark.parametrize("group", [256, 512, 768])
def test_grouped_t2_is_the_per_group_formula_on_every_backend(n, k, m, group):
    rng = np.random.default_rng(n * 1000 + k + group)
    codes = random_codes(rng, n, k)
    groups = -(-k // group)
    scales = rng.uniform(0.1, 2.0, size=(n, groups)).astype(np.float32)
    w = kernels.pack_ternary(codes, scales, group_size=group)
    assert w.group_size == group
    x = rng.standard_normal((m, k)).astype(np.float32)
    q, s = np_quantize(x)
    want_sums = group_sums(codes, q, group)
    for b in BACKENDS:
        got = w.integer_sums(x, backend=b)
        assert got.shape == (m, n, groups)
        np.testing.assert_array_equal(got, want_sums, err_msg=f"backend {b}")
    want = (want_sums * scales[None].astype(np.float64)).sum(-1) / s[:, None]
    for b in BACKENDS:
        np.testing.assert_allclose(w.matmul(x, backend=b), want, rtol=1e-5, atol=1e-4 * np.abs(want).max(), err_msg=f"backend {b}")
    # Decoded weights (act_quant off) are codes times their group's scale.
    np.testing.assert_array_equal(w.unpack(), codes)


@pytest.mark.parametrize("n,m", [(1, 1), (70, 1), (70, 5), (33, 3)])
def test_scale_epilogue_is_exact_float32_in_its_stated_order(n, m):
    """The float epilogue after the integer sums, bit for bit, for decode (m = 1) and prompts
    (rows in blocks of 32, remainders included): grouped scales sum s_g * sum_g in group order
    from 0 then divide by the activation scale; per-row scales compute sum * s_row / s_act."""
    rng = np.random.default_rng(n * 10 + m)
    k, group = 700, 256
    codes = random_codes(rng, n, k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    q, s = np_quantize(x)
    scales = rng.uniform(0.1, 2.0, size=(n, 3)).astype(np.float32)
    sums = group_sums(codes, q, group).astype(np.float32)  # exact: |sum| < 2^24
    want = np.zeros((m, n), np.float32)
    for g in range(3):
        want = want + scales[None, :, g] * sums[:, :, g]
    want = want / s[:, None]
    np.testing.assert_array_equal(kernels.pack_ternary(codes, scales, group_size=group).matmul(x), want)
    row = scales[:, 0]
    want = sums.sum(-1) * row[None] / s[:, None]
    np.testing.assert_array_equal(kernels.pack_ternary(codes, row).matmul(x), want)


def test_grouped_bits_per_weight_and_packed_bytes():
    rng = np.random.default_rng(1)
    n, k, group = 6, 700, 256
    codes = random_codes(rng, n, k)
    scales = np.ones((n, 3), np.float32)
    w = kernels.pack_ternary(codes, scales, group_size=group)
    assert w.row_bytes == 3 * 64
    data = w.data
    assert data.dtype == np.uint8 and data.shape == (n, w.row_bytes)
    plain = kernels.pack_ternary(codes, 1.0)
    np.testing.assert_array_equal(data, plain.data)
    assert w.bits_per_weight == pytest.approx((n * 192 * 8 + 32 * n * 3) / (n * k))
    assert w.nbytes == n * 192 + 4 * n * 3
    # Byte j of a block holds weights j + 64p (p = plane) as code + 1 in bits 2p..2p+1.
    expect = np.zeros(64, np.uint8)
    for p in range(4):
        expect |= ((codes[0, 64 * p : 64 * p + 64] + 1).astype(np.uint8) << (2 * p)).astype(np.uint8)
    np.testing.assert_array_equal(data[0, :64], expect)


@pytest.mark.parametrize("group,err", [(100, "multiple"), (0, "positive"), (-256, "positive")])
def test_bad_group_sizes_are_rejected(group, err):
    codes = np.zeros((2, 300), np.int8)
    with pytest.raises(ValueError, match=err):
        kernels.pack_ternary(codes, np.ones((2, 3), np.float32), group_size=group)


def test_grouped_scale_shapes_are_checked():
    codes = np.zeros((2, 300), np.int8)
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        kernels.pack_ternary(codes, np.ones((2, 3), np.float32), group_size=256)
    with pytest.raises(TypeError):
        kernels.pack_ternary(codes, 1.0, group_size=256)
    with pytest.raises(ValueError, match="finite"):
        kernels.pack_ternary(codes, np.array([[1.0, np.inf], [1.0, 1.0]], np.float32), group_size=256)


@pytest.mark.parametrize("n,k,m", ODD_SHAPES)
def test_row_offsets_add_mu_times_the_row_sum_of_x(n, k, m):
    rng = np.random.default_rng(7 * n + k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    mu = rng.standard_normal(n).astype(np.float32)
    q, s = np_quantize(x)
    xsum = x.astype(np.float64).sum(1)

    # t2, per-row scale.
    codes = random_codes(rng, n, k)
    rs = rng.uniform(0.5, 1.5, n).astype(np.float32)
    w = kernels.pack_ternary(codes, rs, row_offset=mu)
    np.testing.assert_array_equal(w.row_offset, mu)
    want = (q.astype(np.int64) @ codes.astype(np.int64).T) * rs / s[:, None] + xsum[:, None] * mu
    np.testing.assert_allclose(w.matmul(x), want, rtol=1e-5, atol=1e-4 * np.abs(want).max())

    # t2, per-group scales.
    groups = -(-k // 256)
    gs = rng.uniform(0.5, 1.5, (n, groups)).astype(np.float32)
    w = kernels.pack_ternary(codes, gs, group_size=256, row_offset=mu)
    want = (group_sums(codes, q, 256) * gs[None]).sum(-1) / s[:, None] + xsum[:, None] * mu
    np.testing.assert_allclose(w.matmul(x), want, rtol=1e-5, atol=1e-4 * np.abs(want).max())

    # b1 OneBit: x scaled by h before quantization; mu multiplies the sum of the raw x.
    bcodes = random_codes(rng, n, k, ternary=False)
    h = rng.uniform(0.5, 1.5, k).astype(np.float32)
    w = kernels.pack_binary(bcodes, rs, h, row_offset=mu)
    qh, sh = np_quantize(x * h)
    want = (qh.astype(np.int64) @ bcodes.astype(np.int64).T) * rs / sh[:, None] + xsum[:, None] * mu
    np.testing.assert_allclose(w.matmul(x), want, rtol=1e-5, atol=1e-4 * np.abs(want).max())
    # b1 with a per-tensor scale.
    w = kernels.pack_binary(bcodes, 0.75, row_offset=mu)
    want = (q.astype(np.int64) @ bcodes.astype(np.int64).T) * 0.75 / s[:, None] + xsum[:, None] * mu
    np.testing.assert_allclose(w.matmul(x), want, rtol=1e-5, atol=1e-4 * np.abs(want).max())


def test_row_offset_shape_is_checked():
    with pytest.raises(ValueError, match=r"\(2,\)"):
        kernels.pack_ternary(np.zeros((2, 5), np.int8), 1.0, row_offset=np.zeros(3, np.float32))
    with pytest.raises(TypeError):
        kernels.pack_binary(np.ones((2, 5), np.int8), 1.0, row_offset=np.zeros(2, np.float64))


# ----------------------------------------------------------------------------------------
# binllm quantized folders


def fp16_exact(v):
    return np.asarray(v, np.float32).astype(np.float16).astype(np.float32)


def quantize_t2(w, group=None, offset=False, fp16=False):
    """Absmean ternary codes per row or per group; returns (tensors, dequantized W, spec)."""
    n, k = w.shape
    mu = w.mean(1).astype(np.float32) if offset else None
    r = w - mu[:, None] if offset else w
    size = group or k
    groups = -(-k // size)
    padded = np.zeros((n, groups * size), np.float32)
    padded[:, :k] = r
    scales = np.abs(padded.reshape(n, groups, size)).mean(-1).astype(np.float32)
    scales = np.maximum(scales, 1e-5).astype(np.float32)
    if fp16:
        scales = fp16_exact(scales)
    per_col = np.repeat(scales, size, axis=1)[:, :k]
    codes = np.clip(np.rint(r / per_col), -1, 1).astype(np.int8)
    if group:
        m = kernels.pack_ternary(codes, scales, group_size=group, row_offset=mu)
        scale_tensor = scales
    else:
        m = kernels.pack_ternary(codes, scales[:, 0].copy(), row_offset=mu)
        scale_tensor = scales[:, 0].copy()
    w_hat = codes.astype(np.float32) * per_col
    tensors = {"weight": m.data, "weight_scale": scale_tensor}
    if offset:
        w_hat = w_hat + mu[:, None]
        tensors["weight_row_offset"] = mu
    spec = {"format": "t2"} | ({"group_size": group} if group else {})
    return tensors, w_hat.astype(np.float32), spec


def quantize_onebit(w):
    """OneBit signs with ARB-LLM's row mean: W ~ mu + g * sign * h."""
    mu = w.mean(1).astype(np.float32)
    r = w - mu[:, None]
    codes = np.where(r >= 0, 1, -1).astype(np.int8)
    h = np.abs(r).mean(0).astype(np.float32)
    h = (h / h.mean()).astype(np.float32)
    g = np.abs(r).mean(1).astype(np.float32)
    m = kernels.pack_binary(codes, g, h, row_offset=mu)
    w_hat = (codes.astype(np.float32) * g[:, None]) * h[None, :] + mu[:, None]
    return {"weight": m.data, "weight_scale": g, "weight_col_scale": h, "weight_row_offset": mu}, w_hat.astype(np.float32), {"format": "b1"}


def quantize_q8(w):
    n, k = w.shape
    blocks = -(-k // 32)
    padded = np.zeros((n, blocks * 32), np.float32)
    padded[:, :k] = w
    d = (np.abs(padded.reshape(n, blocks, 32)).max(-1) / 127).astype(np.float32)
    inv = np.where(d > 0, 1 / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.clip(np.rint(w * np.repeat(inv, 32, axis=1)[:, :k]), -127, 127).astype(np.int8)
    w_hat = q.astype(np.float32) * np.repeat(d, 32, axis=1)[:, :k]
    return {"weight": q, "weight_scale": d}, w_hat.astype(np.float32), {"format": "q8"}


def write_folder(folder: Path, src: Path, tensors: dict, config: dict) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(src / name, folder / name)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def make_ptq_pair(root: Path, plan, seed=0, fp16=False, **shape):
    """A random float Llama quantized module by module as `plan(module_path) -> quantizer or
    None`; returns (quantized folder, float folder holding the dequantized weights, tensors,
    config) so that tests can write hostile variants."""
    from safetensors.numpy import load_file

    src = make_random_hf_model(root / "src", layout="llama_float", seed=seed, **shape)
    float_tensors = load_file(str(src / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    quant, dequant, layers = {}, {}, {}
    for name, w in float_tensors.items():
        module = name.removesuffix(".weight")
        quantizer = plan(module) if w.ndim == 2 else None
        if quantizer is None:
            quant[name] = dequant[name] = w
            continue
        parts, w_hat, spec = quantizer(w)
        layers[module] = spec
        dequant[name] = w_hat
        for suffix, t in parts.items():
            quant[f"{module}.{suffix}"] = t
    qconfig = config | {"quantization_config": {"quant_method": "binllm", "layers": layers, "bits": "mixed"}}
    qfolder = write_folder(root / "quantized", src, quant, qconfig)
    ffolder = write_folder(root / "float", src, dequant, config)
    return qfolder, ffolder, quant, qconfig


SMALL = dict(hidden=320, heads=5, kv_heads=1, intermediate=544, layers=2, vocab=300)
IDS = list(range(2, 40))


def mixed_plan(module):
    if module in ("model.embed_tokens", "lm_head"):
        return quantize_q8
    if module.endswith("mlp.gate_proj"):
        return quantize_onebit
    if module.endswith("mlp.down_proj"):
        return lambda w: quantize_t2(w, group=512, offset=True)
    if module.endswith("self_attn.v_proj"):
        return lambda w: quantize_t2(w)
    if module.endswith("self_attn.o_proj") and ".1." in module:
        return None  # stays float
    return lambda w: quantize_t2(w, group=256)


@pytest.fixture(scope="module")
def ptq_pair(tmp_path_factory):
    return make_ptq_pair(tmp_path_factory.mktemp("ptq"), mixed_plan, seed=3, **SMALL)


def test_quantized_folder_matches_float_model_of_its_dequantized_weights(ptq_pair):
    qfolder, ffolder, _, _ = ptq_pair
    q = binllm.Model.from_pretrained(qfolder, act_quant=False)
    f = binllm.Model.from_pretrained(ffolder, act_quant=False)
    storages = {storage for _, storage, *_ in q._core.tensor_summary()}
    assert {"t2", "b1", "q8", "f32"} <= storages
    got, want = q.logits(IDS), f.logits(IDS)
    np.testing.assert_allclose(got, want, atol=1e-3 * max(1.0, np.abs(want).max()), rtol=0)
    # With int8 activations the packed linears run on the integer kernels: close, not equal.
    qa = binllm.Model.from_pretrained(qfolder, act_quant=True).logits(IDS)
    assert np.abs(qa - want).max() < 0.1 * np.abs(want).max()
    assert (qa.argmax(-1) == want.argmax(-1)).mean() >= 0.8


def hostile(root: Path, name: str, tensors: dict, config: dict, src: Path) -> Path:
    return write_folder(root / name, src, tensors, config)


Q = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize(
    "case,needle",
    [
        ("row_bytes", "needs U8"),
        ("scale_count", "weight_scale"),
        ("format_name", "unknown format"),
        ("nan_scale", "non-finite"),
        ("group_not_multiple", "multiple"),
        ("missing_module", "model.layers.9.mlp.up_proj"),
        ("q8_scale_shape", "q8 needs"),
        ("offset_shape", "weight_row_offset"),
        ("field_three", "field 3"),
    ],
)
def test_malformed_quantized_folders_raise_model_format_error(ptq_pair, tmp_path, case, needle):
    qfolder, _, tensors, config = ptq_pair
    tensors = dict(tensors)
    config = json.loads(json.dumps(config))
    layers = config["quantization_config"]["layers"]
    if case == "row_bytes":
        tensors[f"{Q}.weight"] = tensors[f"{Q}.weight"][:, :-64]
    elif case == "scale_count":
        tensors[f"{Q}.weight_scale"] = tensors[f"{Q}.weight_scale"][:, :1]
    elif case == "format_name":
        layers[Q]["format"] = "t3"
    elif case == "nan_scale":
        s = tensors[f"{Q}.weight_scale"].copy()
        s[1, 1] = np.nan
        tensors[f"{Q}.weight_scale"] = s
    elif case == "group_not_multiple":
        layers[Q]["group_size"] = 160
    elif case == "missing_module":
        layers["model.layers.9.mlp.up_proj"] = {"format": "t2"}
    elif case == "q8_scale_shape":
        tensors["lm_head.weight_scale"] = tensors["lm_head.weight_scale"][:, :-1]
    elif case == "offset_shape":
        name = "model.layers.0.mlp.down_proj.weight_row_offset"
        tensors[name] = tensors[name][:-1]
    elif case == "field_three":
        w = tensors[f"{Q}.weight"].copy()
        w[0, 0] = 0xFF
        tensors[f"{Q}.weight"] = w
    folder = hostile(tmp_path, case, tensors, config, qfolder)
    with pytest.raises(binllm.ModelFormatError, match=needle):
        binllm.Model.from_pretrained(folder)


def test_unlisted_quant_method_still_refused(tmp_path, ptq_pair):
    qfolder, _, tensors, config = ptq_pair
    config = json.loads(json.dumps(config))
    config["quantization_config"]["quant_method"] = "gptq"
    folder = hostile(tmp_path, "gptq", tensors, config, qfolder)
    with pytest.raises(binllm.UnsupportedError):
        binllm.Model.from_pretrained(folder)


# ----------------------------------------------------------------------------------------
# GGUF: grouped t2 as TQ2_0 / TQ1_0


GGUF_SHAPE = dict(hidden=512, heads=4, kv_heads=2, intermediate=768, layers=2, vocab=300)


def gguf_plan(module):
    if module in ("model.embed_tokens", "lm_head"):
        return None  # float, stored as f16 below: exact in the F16 GGUF tensors
    if module.endswith("mlp.down_proj"):
        return lambda w: quantize_t2(w, group=512, fp16=True)  # 768 = one group of 512, one of 256
    if module.endswith("self_attn.v_proj"):
        return lambda w: quantize_t2(w, fp16=True)
    return lambda w: quantize_t2(w, group=256, fp16=True)


@pytest.fixture(scope="module")
def gguf_pair(tmp_path_factory):
    from safetensors.numpy import save_file

    qfolder, _, tensors, _ = make_ptq_pair(tmp_path_factory.mktemp("ptq_gguf"), gguf_plan, seed=5, **GGUF_SHAPE)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        tensors[name] = tensors[name].astype(np.float16)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(qfolder / "model.safetensors"))
    return qfolder


@pytest.mark.parametrize("gguf_type", ["tq2_0", "tq1_0"])
def test_grouped_t2_survives_gguf(gguf_pair, tmp_path, gguf_type):
    from binllm.convert import convert

    path = tmp_path / f"ptq.{gguf_type}.gguf"
    summary = convert(gguf_pair, path, type=gguf_type)
    assert summary["fallbacks"] == [], summary["fallbacks"]
    assert summary["tensor_types"][gguf_type.upper()] == 7 * GGUF_SHAPE["layers"]
    src = binllm.Model.from_pretrained(gguf_pair, act_quant=False)
    back = binllm.Model.from_pretrained(path, act_quant=False)
    assert {storage for kind, storage, *_ in back._core.tensor_summary() if kind in ("attention", "mlp")} == {"t2"}
    want = src.logits(IDS)
    np.testing.assert_allclose(back.logits(IDS), want, atol=1e-4 * np.abs(want).max(), rtol=0)
    # The integer kernels too (activations quantized the same way in both).
    np.testing.assert_allclose(
        binllm.Model.from_pretrained(path).logits(IDS), binllm.Model.from_pretrained(gguf_pair).logits(IDS), atol=1e-4 * np.abs(want).max(), rtol=0
    )


def test_llama_cpp_agrees_on_grouped_tq2_0(gguf_pair, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    from binllm.convert import convert

    path = tmp_path / "ptq.tq2_0.gguf"
    convert(gguf_pair, path, type="tq2_0")
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_batch=len(IDS), n_ubatch=len(IDS), n_threads=2, logits_all=True, verbose=False)
    try:
        llm.eval(IDS)
        theirs = np.array(llm.scores[: len(IDS)], dtype=np.float32)
    finally:
        llm.close()
    ours = binllm.Model.from_pretrained(gguf_pair, act_quant=False).logits(IDS)
    diff = np.abs(theirs - ours)
    max_rel = diff.max() / np.abs(ours).max()
    argmax = (theirs.argmax(-1) == ours.argmax(-1)).mean()
    print(f"\n[grouped TQ2_0] llama.cpp vs binllm: max|diff|/max|logit| {max_rel:.2e}, argmax agreement {argmax:.3f}")
    # llama.cpp quantizes activations per 256-block (Q8_K); binllm runs them in float here.
    assert max_rel < 2e-2 and argmax >= 0.9


def test_what_gguf_cannot_hold_falls_back_to_f16(ptq_pair, tmp_path):
    """Rows of 320 weights (not whole 256-blocks), b1 and row offsets: F16, reported."""
    from binllm.convert import convert

    qfolder, _, _, _ = ptq_pair
    summary = convert(qfolder, tmp_path / "mixed.gguf", type="tq2_0")
    reasons = " ".join(summary["fallbacks"])
    assert "not a multiple of 256" in reasons and "row offsets" in reasons
    assert "TQ2_0" not in summary["tensor_types"]
    want = binllm.Model.from_pretrained(qfolder, act_quant=False).logits(IDS)
    got = binllm.Model.from_pretrained(tmp_path / "mixed.gguf", act_quant=False).logits(IDS)
    # F16 rounding of the decoded weights (and embeddings) only.
    assert np.abs(got - want).max() < 1e-2 * np.abs(want).max()
