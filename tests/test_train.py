"""binllm.train (the optional PyTorch extra): the training graph computes what binllm's kernels
compute, gradients reach the latent weights through the straight-through estimator, and an
exported model loads in binllm with the training graph's logits. Skipped without torch."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import binllm  # noqa: E402
from binllm import kernels  # noqa: E402
from binllm.train import data  # noqa: E402
from binllm.train.bitlinear import BitLinear, quantize_activation, ternary_codes  # noqa: E402
from binllm.train.cli import _twin_argv  # noqa: E402
from binllm.train.cli import main as train_main  # noqa: E402
from binllm.train.export import export_packed, state_tensors  # noqa: E402
from binllm.train.model import BitNetLM, ModelConfig  # noqa: E402
from binllm.train.trainer import TrainConfig, Trainer, evaluate  # noqa: E402
from helpers import TEXT  # noqa: E402

TINY = ModelConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    data.train_tokenizer([TEXT], TINY.vocab_size).save(str(path))
    return path


def tokens(tokenizer_file):
    from tokenizers import Tokenizer

    return data.encode(Tokenizer.from_file(str(tokenizer_file)), [TEXT])


def trained(tokenizer_file, steps=3, seed=0, config=TINY):
    batches = data.Batches(tokens(tokenizer_file), batch_size=4, context=32, seed=seed)
    trainer = Trainer(config, TrainConfig(steps=steps, warmup_steps=1, eval_every=0, checkpoint_every=0, seed=seed), batches, torch.zeros(0, 33, dtype=torch.long), "/nonexistent")
    trainer.train()
    return trainer.model


@pytest.mark.parametrize("m,k,n", [(1, 17, 3), (3, 127, 8), (5, 320, 17)])
def test_bitlinear_forward_matches_binllm_kernels(m, k, n):
    torch.manual_seed(k)
    layer = BitLinear(k, n)
    x = torch.randn(m, k) * 3
    codes, mean = ternary_codes(layer.weight.detach())
    packed = kernels.pack_ternary(codes.to(torch.int8).numpy(), float(mean))
    expected = packed.matmul(x.numpy())
    with torch.no_grad():
        got = layer(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))


def test_activation_quantization_gives_binllms_int8_codes():
    torch.manual_seed(1)
    x = torch.randn(7, 129) * torch.tensor([0.0, 1e-7, 1, 10, 100, 0.5, 3])[:, None]
    q, s = kernels.quantize_activations(x.numpy())
    dequantized = quantize_activation(x).numpy()
    # Same integer codes; the float division back may differ in the last bit.
    np.testing.assert_array_equal(np.rint(dequantized * s.reshape(-1, 1)).astype(np.int8), q)
    np.testing.assert_allclose(dequantized, q / s.reshape(-1, 1), rtol=1e-6, atol=0)


def test_straight_through_gradients_reach_latent_weights_and_inputs():
    layer = BitLinear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    layer(x).square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_few_steps_lower_the_loss(tokenizer_file):
    windows = data.windows(tokens(tokenizer_file), 32)[:8]
    torch.manual_seed(0)
    before = evaluate(BitNetLM(TINY), windows)
    after = evaluate(trained(tokenizer_file, steps=30), windows)
    assert after < before - 0.5, (before, after)


@pytest.mark.parametrize("activation", ["relu2", "silu"])
def test_exported_model_gives_the_training_graphs_logits_in_binllm(tokenizer_file, tmp_path, activation):
    from dataclasses import replace

    model = trained(tokenizer_file, steps=20, config=replace(TINY, hidden_act=activation)).eval()
    folder = export_packed(model, tokenizer_file, tmp_path / "model", embedding_dtype=np.float32)
    # The training graph keeps keys and values in f32.
    loaded = binllm.Model.from_pretrained(folder, kv_type="f32")
    assert loaded.config["hidden_act"] == activation
    ids = tokens(tokenizer_file)[:40]
    with torch.no_grad():
        expected = model(torch.from_numpy(ids.astype(np.int64))[None])[0].numpy()
    got = np.asarray(loaded.logits(ids.tolist()))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)


def test_export_round_trips_codes_scales_and_config(tokenizer_file, tmp_path):
    from safetensors.numpy import load_file

    model = trained(tokenizer_file, steps=2)
    folder = export_packed(model, tokenizer_file, tmp_path / "model")
    tensors = load_file(str(folder / "model.safetensors"))
    assert tensors["model.embed_tokens.weight"].dtype == np.float16
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            packed = tensors[name + ".weight"]
            quarter = packed.shape[0]
            unpacked = np.concatenate([((packed >> (2 * i)) & 3).astype(np.int8) - 1 for i in range(4)])
            codes, mean = ternary_codes(module.weight.detach())
            np.testing.assert_array_equal(unpacked, codes.numpy().astype(np.int8))
            assert quarter * 4 == module.out_features
            np.testing.assert_allclose(tensors[name + ".weight_scale"], [1 / mean.item()], rtol=1e-6)
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "bitnet" and config["hidden_act"] == "relu2"
    loaded = binllm.Model.from_pretrained(folder)
    c = loaded.config
    assert (c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["vocab_size"]) == (64, 4, 2, 300)
    assert c["bitnet"] and c["sub_norms"]
    assert isinstance(loaded.generate("the quick", max_new_tokens=5, seed=0), str)
    # Same tensors as an in-memory export: float16 embeddings are the only rounding.
    assert set(tensors) == set(state_tensors(model))


def test_resuming_from_a_checkpoint_reproduces_an_uninterrupted_run(tokenizer_file, tmp_path):
    def run(steps, resume, directory):
        batches = data.Batches(tokens(tokenizer_file), batch_size=2, context=16, seed=5)
        cfg = TrainConfig(steps=steps, warmup_steps=2, eval_every=0, checkpoint_every=2, seed=5)
        trainer = Trainer(TINY, cfg, batches, torch.zeros(0, 17, dtype=torch.long), directory)
        if resume:
            assert trainer.resume()
        trainer.train()
        return trainer.model.state_dict()

    straight = run(4, False, tmp_path / "a")
    run(2, False, tmp_path / "b")
    resumed = run(4, True, tmp_path / "b")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0)


def test_cli_trains_and_exports_a_loadable_model(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 3)
    out = tmp_path / "model"
    argv = [str(corpus), "--out", str(out), "--vocab-size", "300", "--hidden", "32", "--layers", "1", "--heads", "2",
            "--context", "32", "--batch-size", "2", "--steps", "3", "--warmup", "1", "--eval-every", "0", "--threads", "1"]
    assert train_main(argv) == 0
    summary = json.loads((tmp_path / "model-checkpoints" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["heldout_perplexity"] > 1
    assert binllm.Model.from_pretrained(out).config["vocab_size"] == 300
    twin = _twin_argv(argv + ["--twin"], tmp_path / "t.json", tmp_path / "ck")
    assert "--twin" not in twin and "--float" in twin and twin[twin.index("--tokenizer") + 1] == str(tmp_path / "t.json")


def test_float_llama_is_exported_as_a_llama_folder_binllm_and_transformers_run(tokenizer_file, tmp_path):
    from dataclasses import replace

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 3)
    out = tmp_path / "float"
    argv = [str(corpus), "--out", str(out), "--tokenizer", str(tokenizer_file), "--hidden", "64", "--intermediate", "96", "--layers", "2",
            "--heads", "4", "--kv-heads", "2", "--context", "64", "--batch-size", "2", "--steps", "20", "--warmup", "1", "--eval-every", "0",
            "--threads", "1", "--float", "--arch", "llama", "--activation", "silu"]
    assert train_main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] and "quantization_config" not in config
    # The checkpoint's weights, run by the training graph, by binllm and by transformers.
    state = torch.load(tmp_path / "float-checkpoints" / "checkpoint.pt", weights_only=False)["model"]
    model = BitNetLM(replace(TINY, ternary=False, sub_norms=False, hidden_act="silu"))
    model.load_state_dict(state)
    ids = tokens(tokenizer_file)[:40]
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(ids.astype(np.int64))[None])[0].numpy()
    got = np.asarray(binllm.Model.from_pretrained(out, kv_type="f32").logits(ids.tolist()))
    # Observed: 2e-7 of the range (float sums in another order); transformers: identical.
    np.testing.assert_allclose(got, expected, atol=1e-5 * np.ptp(expected), rtol=0)
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        reference = hf(torch.from_numpy(ids.astype(np.int64))[None]).logits[0].numpy()
    np.testing.assert_allclose(expected, reference, atol=1e-6 * np.ptp(expected), rtol=0)


def test_arch_llama_is_a_float_silu_model_only(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    base = [str(corpus), "--out", str(tmp_path / "m"), "--steps", "1", "--arch", "llama"]
    for extra in ([], ["--float"], ["--activation", "silu"]):
        with pytest.raises(binllm.InvalidArgumentError, match="--arch llama"):
            train_main(base + extra)
    assert not (tmp_path / "m").exists()


def test_training_never_overwrites_and_an_interrupted_export_leaves_nothing(tokenizer_file, tmp_path, monkeypatch):
    from binllm.train import export

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 3)
    out = tmp_path / "model"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(binllm.FileError, match="never overwrites"):
        train_main([str(corpus), "--out", str(out), "--vocab-size", "300", "--hidden", "32", "--layers", "1", "--heads", "2", "--steps", "1"])
    assert (out / "mine.txt").read_text() == "keep"

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export, "_write", fail)
    with pytest.raises(OSError, match="disk full"):
        export_packed(trained(tokenizer_file, steps=1), tokenizer_file, tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "model"]
