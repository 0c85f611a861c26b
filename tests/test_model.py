"""binllm.Model: loading each checkpoint layout, generation API behaviour, and clear errors
for bad input. Numerical agreement with HF transformers lives in test_golden.py."""

import json
import shutil
import struct
import subprocess
import sys

import binllm
import numpy as np
import pytest
from binllm import Model
from helpers import make_random_hf_model, on_one_and_two_threads

LAYOUTS = ["bitnet_packed", "bitnet_bf16", "llama_bitnet", "llama_float"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {layout: make_random_hf_model(root / layout, layout=layout, seed=3) for layout in LAYOUTS}


@pytest.fixture(scope="module")
def bitnet(models):
    return Model.from_pretrained(models["bitnet_packed"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_loads_with_the_right_config(models, layout):
    m = Model.from_pretrained(models[layout])
    c = m.config
    assert (c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"], c["vocab_size"]) == (320, 5, 1, 864, 1000)
    assert c["bitnet"] == (layout != "llama_float")
    assert c["sub_norms"] == layout.startswith("bitnet")
    assert c["hidden_act"] == ("relu2" if layout.startswith("bitnet") else "silu")
    info = m.info()
    storages = {t["storage"] for t in info["tensors"] if t["kind"] in ("attention", "mlp")}
    assert storages == ({"f32"} if layout == "llama_float" else {"t2"})
    mlp = next(t for t in info["tensors"] if t["kind"] == "mlp")
    if layout != "llama_float":
        # 864 x 320 rows pad to 512 weights: true bits per weight count the padding.
        assert 2.0 < mlp["bits_per_weight"] < 4.0
    logits = m.logits([1, 2, 3])
    assert logits.shape == (3, 1000) and logits.dtype == np.float32 and np.isfinite(logits).all()


def test_packed_and_latent_bitnet_checkpoints_agree(models):
    # The packed checkpoint was made from the same latent weights by the same absmean rule.
    packed = Model.from_pretrained(models["bitnet_packed"]).logits(list(range(10)))
    latent = Model.from_pretrained(models["bitnet_bf16"]).logits(list(range(10)))
    np.testing.assert_allclose(packed, latent, atol=1e-4)


def test_prefill_and_decode_logits_agree_within_1e_5(bitnet):
    ids = [5, 17, 230, 4, 999, 0, 42, 7]
    full = bitnet.logits(ids)
    session = bitnet._core.session(len(ids))
    steps = [session.forward([t]) for t in ids]
    np.testing.assert_allclose(np.stack(steps), full, rtol=1e-5, atol=1e-5)
    # Split prefill: 3 tokens, then 5.
    session = bitnet._core.session(len(ids))
    session.forward(ids[:3])
    np.testing.assert_allclose(session.forward(ids[3:], all_logits=True), full[3:], rtol=1e-5, atol=1e-5)


def test_the_kv_cache_holds_f16_by_default_or_f32_when_asked(models):
    folder = models["llama_float"]
    default, f32 = Model.from_pretrained(folder), Model.from_pretrained(folder, kv_type="f32")
    assert (default.config["kv_type"], f32.config["kv_type"]) == ("f16", "f32")
    ids = np.random.default_rng(2).integers(0, 1000, 40).tolist()
    sessions = [m._core.session(64) for m in (default, f32)]
    halves, floats = (s.forward(ids, all_logits=True) for s in sessions)
    # 40 positions of one KV head of 64 dims, keys and values, 2 layers.
    assert sessions[1].cache_nbytes == 2 * sessions[0].cache_nbytes == 40 * 64 * 2 * 2 * 4
    # Rounding keys and values to f16 moves these logits by 2.2e-5 of their range (the
    # formulas with rounded keys and values are matched in test_families.py).
    scale = np.abs(floats).max()
    assert 0 < np.abs(halves - floats).max() < 1e-3 * scale
    with pytest.raises(ValueError, match="kv_type 'q8_0'.*f16 or f32"):
        Model.from_pretrained(folder, kv_type="q8_0")


@pytest.mark.parametrize("layout", ["bitnet_packed", "llama_float"])
def test_a_prompt_gives_the_same_logits_on_one_and_two_threads(models, layout):
    # 200 rows: norms, activation quantization, activations and the integer kernels' epilogue
    # are split over the pool; every value is computed as on one thread.
    m = Model.from_pretrained(models[layout])
    ids = np.random.default_rng(1).integers(0, 1000, 200).tolist()
    one, two = on_one_and_two_threads(lambda: m.logits(ids))
    np.testing.assert_array_equal(one, two)


def test_generate_greedy_is_deterministic_and_streams_the_same_text(bitnet):
    a = bitnet.generate("the quick brown", max_new_tokens=24)
    b = bitnet.generate("the quick brown", max_new_tokens=24)
    pieces = list(bitnet.generate("the quick brown", max_new_tokens=24, stream=True))
    assert a == b == "".join(pieces)
    assert len(pieces) >= 2
    ids = bitnet.encode("the quick brown")
    # Greedy tokens equal the argmax chain of logits().
    chain = list(ids)
    for _ in range(5):
        chain.append(int(np.argmax(bitnet.logits(chain)[-1])))
    assert bitnet.decode(chain[len(ids) :]) == bitnet.generate("the quick brown", max_new_tokens=5)


def test_sampling_is_seeded(models):
    # The untied Llama model has a flat output distribution, so samples really vary.
    m = Model.from_pretrained(models["llama_bitnet"])
    kw = dict(max_new_tokens=20, temperature=1.0, top_k=50, top_p=0.95, min_p=0.01)
    assert m.generate("to be", seed=1, **kw) == m.generate("to be", seed=1, **kw)
    outs = {m.generate("to be", seed=s, **kw) for s in range(5)}
    assert len(outs) > 1


def test_stop_strings_end_generation_and_are_not_returned(bitnet):
    full = bitnet.generate("once upon", max_new_tokens=30)
    assert len(full) > 6
    stop = full[3:6]
    cut = bitnet.generate("once upon", max_new_tokens=30, stop=[stop])
    assert cut == full[: full.find(stop)]
    assert "".join(bitnet.generate("once upon", max_new_tokens=30, stop=stop, stream=True)) == cut


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(prompt=""), "empty"),
        (dict(prompt="hi", max_new_tokens=0), "max_new_tokens"),
        (dict(prompt="hi", temperature=-1.0), "temperature"),
        (dict(prompt="hi", temperature=float("nan")), "temperature"),
        (dict(prompt="hi", top_p=0.0), "top_p"),
        (dict(prompt="hi", top_k=-3), "top_k"),
        (dict(prompt="hi", min_p=2.0), "min_p"),
        (dict(prompt="hi", repetition_penalty=0.0), "repetition_penalty"),
        (dict(prompt="hi", seed=-1), "seed"),
        (dict(prompt="hi", stop=[""]), "stop"),
        (dict(prompt="the " * 400), "context"),
    ],
)
def test_bad_generation_arguments_raise_clear_errors(bitnet, kwargs, words):
    with pytest.raises(ValueError, match=words):
        bitnet.generate(**kwargs)


def test_bad_token_ids_and_types(bitnet):
    with pytest.raises(ValueError, match="token ids"):
        bitnet.logits([1, 1000])
    with pytest.raises(ValueError, match="token ids"):
        bitnet.logits([-1])
    with pytest.raises(ValueError, match="empty"):
        bitnet.logits([])
    with pytest.raises(TypeError, match="prompt"):
        bitnet.generate(123)


def test_generation_stops_at_the_context_limit(tmp_path):
    m = Model.from_pretrained(make_random_hf_model(tmp_path / "short", layout="llama_float", max_positions=16, layers=1))
    prompt = m.encode("the quick")
    # Every generated token but the last must be run through the model, so a context of 16
    # holds the prompt plus 16 - len(prompt) + 1 new tokens.
    room = 16 - len(prompt) + 1
    assert m.generate("the quick", max_new_tokens=100) == m.generate("the quick", max_new_tokens=room)


# ---------------------------------------------------------------- bad model files


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_bad_hf_folders_raise_clear_errors(models, tmp_path):
    src = models["bitnet_packed"]
    cases = []
    d = copy_model(src, tmp_path / "missing_config")
    (d / "config.json").unlink()
    cases.append((d, binllm.ModelFormatError, "no config.json"))
    d = copy_model(src, tmp_path / "absurd")
    edit_config(d, hidden_size=1 << 40)
    cases.append((d, binllm.ModelFormatError, "hidden_size"))
    d = copy_model(src, tmp_path / "heads")
    edit_config(d, num_key_value_heads=2)
    cases.append((d, binllm.ModelFormatError, "multiple"))
    d = copy_model(src, tmp_path / "arch")
    edit_config(d, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    cases.append((d, binllm.UnsupportedError, "architecture"))
    d = copy_model(src, tmp_path / "act")
    edit_config(d, hidden_act="gelu_new")
    cases.append((d, binllm.UnsupportedError, "gelu_new"))
    d = copy_model(src, tmp_path / "badjson")
    (d / "config.json").write_text("{not json")
    cases.append((d, binllm.ModelFormatError, "JSON"))
    d = copy_model(src, tmp_path / "wrong_shape")
    edit_config(d, intermediate_size=800)
    cases.append((d, binllm.ModelFormatError, "mlp.gate_proj"))
    d = copy_model(src, tmp_path / "more_layers")
    edit_config(d, num_hidden_layers=3)
    cases.append((d, binllm.ModelFormatError, "missing tensor 'model.layers.2."))
    d = copy_model(src, tmp_path / "truncated")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases.append((d, binllm.ModelFormatError, "safetensors"))
    d = copy_model(src, tmp_path / "garbage")
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    cases.append((d, binllm.ModelFormatError, "safetensors"))
    d = copy_model(src, tmp_path / "noweights")
    (d / "model.safetensors").unlink()
    cases.append((d, binllm.ModelFormatError, "model.safetensors"))
    for folder, exc, words in cases:
        with pytest.raises(exc) as info:
            Model.from_pretrained(folder)
        assert words in str(info.value), (folder.name, str(info.value))


def test_bad_gguf_files_raise_clear_errors(tmp_path, smollm2_path):
    good = smollm2_path.read_bytes()
    cases = {
        "empty.gguf": (b"", "truncated"),
        "magic.gguf": (b"GGML" + good[4:4096], "magic"),
        "head.gguf": (good[:4096], "remain"),
        "half.gguf": (good[: len(good) // 2], ""),
        "version.gguf": (good[:4] + struct.pack("<I", 1) + good[8:4096], "version"),
        "tensors.gguf": (good[:8] + struct.pack("<Q", 1 << 60) + good[16:4096], ""),
        "kv.gguf": (good[:16] + struct.pack("<Q", 1 << 60) + good[24:4096], ""),
    }
    for name, (data, words) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises((binllm.ModelFormatError, binllm.UnsupportedError)) as info:
            Model.from_pretrained(p)
        assert words.lower() in str(info.value).lower(), (name, str(info.value))


def test_hostile_files_do_not_crash_the_process(tmp_path, smollm2_path):
    # Truncations at many points, in a child process: a crash would show as a signal exit.
    good = smollm2_path.read_bytes()[:200_000]
    p = tmp_path / "cut.gguf"
    code = (
        "import sys, binllm\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "for n in range(0, len(data), 997):\n"
        "    open(sys.argv[2], 'wb').write(data[:n])\n"
        "    try:\n        binllm.Model.from_pretrained(sys.argv[2])\n"
        "    except binllm.BinllmError:\n        pass\n"
        "print('ok')\n"
    )
    src = tmp_path / "src.gguf"
    src.write_bytes(good)
    out = subprocess.run([sys.executable, "-c", code, str(src), str(p)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_not_a_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model"):
        Model.from_pretrained(tmp_path / "nothing-here")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(binllm.BinllmError, match="gguf"):
        Model.from_pretrained(tmp_path / "notes.txt")


# ---------------------------------------------------------------- a real model: SmolLM2-135M


def test_smollm2_generates_sensible_text(smollm2):
    out = smollm2.generate([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=20)
    assert "Paris" in out
    info = smollm2.info()
    assert info["architecture"] == "llama" and 130e6 < info["parameters"] < 140e6


def test_smollm2_prefill_and_decode_agree_within_1e_4(smollm2):
    ids = smollm2.encode("It is a truth universally acknowledged, that a single man")
    full = smollm2.logits(ids)
    session = smollm2._core.session(len(ids))
    last = [session.forward([t]) for t in ids][-1]
    np.testing.assert_allclose(last, full[-1], rtol=1e-4, atol=1e-4)


def test_hub_ids_download_through_huggingface_hub(models, monkeypatch):
    # No network here: stand in for the hub with a local snapshot, and check what is asked.
    import types

    asked = {}

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        asked.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        return str(models["bitnet_packed"])

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    m = Model.from_pretrained("microsoft/bitnet-b1.58-2B-4T", revision="main")
    assert asked["repo_id"] == "microsoft/bitnet-b1.58-2B-4T" and asked["revision"] == "main"
    assert "*.safetensors" in asked["allow_patterns"]
    assert m.config["bitnet"]

    def failing(**kw):
        # huggingface_hub's offline errors span lines; binllm's message is one.
        raise RuntimeError("network unreachable.\nCheck your connection\n  or set HF_HUB_OFFLINE")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=failing))
    with pytest.raises(binllm.BinllmError, match="could not download") as err:
        Model.from_pretrained("owner/name")
    assert "\n" not in str(err.value) and "Check your connection or set HF_HUB_OFFLINE" in str(err.value)
