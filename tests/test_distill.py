"""binllm distill (the optional PyTorch extra): the student's layers compute what binllm's packed
kernels compute; the block stage lowers each block's output error below its PTQ
initialization; the model stage lowers the KL divergence to the teacher; the exported folder
(and GGUF TQ2_0) gives the training graph's logits in binllm; resuming is exact; bad input is
one clear line. Skipped without torch."""

import copy
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import binllm  # noqa: E402
from binllm import kernels  # noqa: E402
from binllm._core import UnsupportedError  # noqa: E402
from binllm.quantize import quantize_model  # noqa: E402
from binllm.quantize.methods import quantize  # noqa: E402
from binllm.quantize.source import read_source  # noqa: E402
from binllm.train import distill  # noqa: E402
from helpers import TEXT, make_random_hf_model  # noqa: E402

SHAPE = dict(hidden=320, heads=5, kv_heads=1, intermediate=768, layers=2, vocab=1000)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return make_random_hf_model(tmp_path_factory.mktemp("teacher") / "m", layout="llama_float", seed=5, **SHAPE)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("text") / "train.txt"
    p.write_text(TEXT * 4)
    return p


@pytest.fixture(scope="module")
def inits(teacher_dir, tmp_path_factory, text_file):
    """PTQ folders of the teacher: absmean with groups (t2) and ARB (b1: row/column scales, row offsets)."""
    root = tmp_path_factory.mktemp("inits")
    quantize_model(teacher_dir, root / "absmean", "absmean", group_size=256)
    quantize_model(teacher_dir, root / "arb", "arb", calib=text_file, calib_tokens=512, ctx=64)
    quantize_model(teacher_dir, root / "onebit", "onebit")
    return root


def build(teacher_dir, init_folder):
    src = read_source(teacher_dir)
    cfg = distill.model_config(src)
    teacher = distill.teacher_model(src, cfg)
    student = distill.student_model(teacher, src, distill.read_init(init_folder, src), False, False)
    return src, teacher, student


@pytest.mark.parametrize("case", ["t2-tensor", "t2-group", "b1-onebit", "b1-arb"])
def test_student_linear_computes_binllms_packed_kernel(case):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((24, 600)) * 0.05).astype(np.float32)
    x = rng.standard_normal((5, 600)).astype(np.float32) * 3
    method, group = {"t2-tensor": ("absmean", None), "t2-group": ("absmean", 256), "b1-onebit": ("onebit", None), "b1-arb": ("arb", None)}[case]
    q = quantize(w, method, group_size=group)
    layer = distill.InitLayer("q", q.format, q.codes, q.scale, q.group_size, q.col_scale, q.row_offset)
    t = distill._tensor
    student = distill.StudentLinear(q.format, torch.from_numpy(distill.latent_weights(w, layer)), t(q.scale), q.group_size, t(q.col_scale), t(q.row_offset))
    assert np.array_equal(student.codes().numpy(), q.codes)
    scale = q.scale if q.scale.ndim else float(q.scale)
    if q.format == "t2":
        packed = kernels.pack_ternary(q.codes, scale, group_size=q.group_size, row_offset=q.row_offset)
    else:
        packed = kernels.pack_binary(q.codes, scale, col_scale=q.col_scale, row_offset=q.row_offset)
    expected = packed.matmul(x)
    with torch.no_grad():
        got = student(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6 * float(np.abs(expected).max()))
    # The latent weights keep the teacher's values (column scale and offset taken out) where
    # those give the init's codes.
    latent = distill.latent_weights(w, layer)
    back = latent * (1 if q.col_scale is None else q.col_scale[None, :]) + (0 if q.row_offset is None else q.row_offset[:, None])
    assert np.mean(np.isclose(back, w, rtol=1e-5, atol=1e-7)) > 0.5


def test_gradients_reach_latent_weights_scales_and_norms(teacher_dir, inits):
    _, _, student = build(teacher_dir, inits / "arb")
    student(torch.arange(20)[None]).logsumexp(-1).sum().backward()
    q = student.model.layers[0].self_attn.q_proj
    for p in (q.weight, q.scale, q.col_scale, q.row_offset, student.model.layers[0].input_layernorm.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert not student.model.embed_tokens.weight.requires_grad and not student.lm_head.weight.requires_grad


def tokens_of(src):
    return distill.tokenize(src.files["tokenizer.json"], [TEXT * 4])


@pytest.mark.parametrize("init", ["absmean", "arb"])
def test_block_stage_lowers_each_blocks_error_below_its_ptq_init(teacher_dir, inits, tmp_path, init):
    src, teacher, student = build(teacher_dir, inits / init)
    ids = tokens_of(src)
    cfg = distill.DistillConfig(stages=("blocks",), block_steps=40, block_windows=16, ctx=32)
    d = distill.Distiller(teacher, student, ids, torch.from_numpy(ids[:65].astype(np.int64)).reshape(1, -1), cfg, tmp_path, torch.device("cpu"), lambda m: None)
    d.run_blocks()
    blocks = [h for h in d.history if h["stage"] == "blocks"]
    assert len(blocks) == SHAPE["layers"]
    for h in blocks:
        assert h["error_after"] < 0.8 * h["error_before"] and not h["kept_start"], h


def test_a_block_the_stage_made_worse_keeps_its_start(teacher_dir, inits, tmp_path):
    src, teacher, student = build(teacher_dir, inits / "absmean")
    start = {k: v.clone() for k, v in student.state_dict().items()}
    ids = tokens_of(src)
    # A learning rate of 50 times each layer's scale per step scatters the codes: worse blocks.
    cfg = distill.DistillConfig(stages=("blocks",), block_steps=5, block_windows=16, ctx=32, block_lr=50.0)
    d = distill.Distiller(teacher, student, ids, torch.from_numpy(ids[:65].astype(np.int64)).reshape(1, -1), cfg, tmp_path, torch.device("cpu"), lambda m: None)
    d.run_blocks()
    blocks = [h for h in d.history if h["stage"] == "blocks"]
    assert blocks and all(h["kept_start"] and h["error_after"] > h["error_before"] for h in blocks), blocks
    for k, v in student.state_dict().items():
        torch.testing.assert_close(v, start[k], rtol=0, atol=0, msg=k)


def test_model_stage_lowers_the_kl_to_the_teacher(teacher_dir, inits, tmp_path):
    src, teacher, student = build(teacher_dir, inits / "absmean")
    ids = tokens_of(src)
    probe = torch.from_numpy(ids[:64].astype(np.int64))[None]

    def kl():
        with torch.no_grad():
            return distill.kl_to_teacher(student(probe), teacher(probe)).item()

    before = kl()
    cfg = distill.DistillConfig(stages=("model",), tokens=30 * 4 * 32, ctx=32, batch_size=4, lr=1e-2, warmup=2, eval_every=0, checkpoint_every=0, log_every=0)
    d = distill.Distiller(teacher, student, ids, probe, cfg, tmp_path, torch.device("cpu"), lambda m: None)
    assert d.run_model() is False and d.step == 30
    assert kl() < 0.7 * before


def test_a_diverging_model_stage_is_reported_once(teacher_dir, inits, tmp_path):
    src, teacher, student = build(teacher_dir, inits / "absmean")
    ids = tokens_of(src)
    probe = torch.from_numpy(ids[:65].astype(np.int64))[None]
    said = []

    def run(lr):
        said.clear()
        cfg = distill.DistillConfig(stages=("model",), tokens=12 * 2 * 32, ctx=32, batch_size=2, lr=lr, warmup=1, eval_every=2, checkpoint_every=0, log_every=0)
        d = distill.Distiller(teacher, copy.deepcopy(student), ids, probe, cfg, tmp_path / str(lr), torch.device("cpu"), said.append)
        d.history.append({"stage": "init", "heldout_nll": d._eval("init")})
        d.run_model()
        return [m for m in said if m.startswith("warning")]

    # 20 times each layer's scale per step: the codes scatter and the perplexity climbs.
    warnings = run(20.0)
    assert len(warnings) == 1 and "try a lower --lr than 20" in warnings[0], said
    assert run(1e-3) == [], said


def run_cli(teacher_dir, text_file, out, *extra):
    return distill.main([str(teacher_dir), "--out", str(out), "--text", str(text_file), "--ctx", "32", "--batch-size", "2", "--eval-tokens", "64",
                         "--block-steps", "3", "--block-windows", "8", "--heldout-fraction", "0.2", "--eval-every", "2", "--log-every", "0", *extra])


@pytest.mark.parametrize("init", ["absmean", "arb", "onebit"])
def test_export_gives_the_training_graphs_logits_in_binllm(teacher_dir, inits, text_file, tmp_path, init):
    out = tmp_path / "student"
    gguf = ["--gguf", str(tmp_path / "student.gguf")] if init == "absmean" else []
    assert run_cli(teacher_dir, text_file, out, "--init", str(inits / init), "--tokens", "256", "--lr", "1e-2", *gguf) == 0
    src, teacher, student = build(teacher_dir, inits / init)
    state = torch.load(tmp_path / "student-checkpoints" / "distill-checkpoint.pt", weights_only=False)
    student.load_state_dict(state["student"], strict=False)
    assert not torch.equal(student.model.layers[0].self_attn.q_proj.weight, build(teacher_dir, inits / init)[2].model.layers[0].self_attn.q_proj.weight)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["method"] == "distill" and qc["distillation"]["init"] == init
    ids = tokens_of(src)[:48]
    with torch.no_grad():
        expected = student.eval()(torch.from_numpy(ids.astype(np.int64))[None])[0].numpy()
    spread = float(expected.max() - expected.min())
    # The training graph keeps keys and values in f32.
    got = np.asarray(binllm.Model.from_pretrained(out, kv_type="f32").logits(ids.tolist()))
    # Float-order noise (1e-6 per layer) can flip an activation's int8 rounding, which moves
    # logits by up to ~1.5e-4 of their range here; a wrong code or scale moves them by 1e-2.
    np.testing.assert_allclose(got, expected, rtol=0, atol=5e-4 * spread)
    if gguf:
        # GGUF TQ2_0 holds the same codes and scales (compared with float activations: llama.cpp
        # quantizes activations per 256-block, binllm's folders per token).
        folder, tq2 = (binllm.Model.from_pretrained(p, act_quant=False) for p in (out, tmp_path / "student.gguf"))
        want = np.asarray(folder.logits(ids.tolist()))
        np.testing.assert_allclose(np.asarray(tq2.logits(ids.tolist())), want, rtol=0, atol=1e-5 * spread)
    summary = json.loads((tmp_path / "student-checkpoints" / "summary.json").read_text())
    assert summary["tokens"] == 256 and math.isfinite(summary["heldout_perplexity"])


def test_resume_is_exact(teacher_dir, inits, text_file, tmp_path):
    common = ["--init", str(inits / "absmean"), "--tokens", str(6 * 2 * 32), "--checkpoint-every", "2"]
    assert run_cli(teacher_dir, text_file, tmp_path / "whole", *common) == 0
    assert run_cli(teacher_dir, text_file, tmp_path / "parts", *common, "--stop-at-step", "4") == 0
    assert not (tmp_path / "parts").exists()  # stopped runs export nothing
    assert run_cli(teacher_dir, text_file, tmp_path / "parts", *common, "--resume") == 0
    a = (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "parts" / "model.safetensors").read_bytes()
    history = [json.loads((tmp_path / f"{n}-checkpoints" / "summary.json").read_text())["history"] for n in ("whole", "parts")]
    assert [h.get("kl") for h in history[0]] == [h.get("kl") for h in history[1]]


def test_method_init_runs_binllm_quantize_once(teacher_dir, text_file, tmp_path):
    out = tmp_path / "s"
    assert run_cli(teacher_dir, text_file, out, "--init", "gptq-ternary", "--group-size", "256", "--calib-tokens", "256", "--stage", "blocks", "--tokens", "64") == 0
    init = tmp_path / "s-checkpoints" / "init-gptq-ternary"
    assert json.loads((init / "config.json").read_text())["quantization_config"]["method"] == "gptq-ternary"
    assert json.loads((out / "config.json").read_text())["quantization_config"]["distillation"]["stages"] == ["blocks"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--stage", "model,blocks", "--tokens", "64"], "blocks before model"),
        (["--stage", "fast", "--tokens", "64"], "--stage"),
        (["--init", "sign", "--format", "t2", "--tokens", "64"], "neither a folder nor a t2 method"),
        (["--format", "b1", "--gguf", "x.gguf", "--tokens", "64"], "needs --format t2"),
        (["--minutes", "0"], "--minutes must be positive"),
    ],
)
def test_bad_arguments_are_one_clear_error(teacher_dir, text_file, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        run_cli(teacher_dir, text_file, tmp_path / "o", *extra)


def test_an_existing_output_is_never_overwritten(teacher_dir, text_file, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(binllm.FileError, match="exists"):
        run_cli(teacher_dir, text_file, out, "--tokens", "64")
    assert (out / "keep.txt").read_text() == "mine"


def test_a_quantized_teacher_is_refused(tmp_path, text_file):
    bitnet = make_random_hf_model(tmp_path / "b", layout="bitnet_packed", **SHAPE)
    with pytest.raises(UnsupportedError, match="already quantized"):
        run_cli(bitnet, text_file, tmp_path / "o", "--tokens", "64")


@pytest.mark.parametrize("case", ["t2-group", "b1-arb", "b1-onebit"])
def test_fast_linear_equals_its_autograd_reference_with_gradients(case):
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((40, 600)) * 0.05).astype(np.float32)
    method, group = {"t2-group": ("absmean", 256), "b1-arb": ("arb", None), "b1-onebit": ("onebit", None)}[case]
    q = quantize(w, method, group_size=group)
    layer = distill.InitLayer("q", q.format, q.codes, q.scale, q.group_size, q.col_scale, q.row_offset)
    t = distill._tensor
    student = distill.StudentLinear(q.format, torch.from_numpy(distill.latent_weights(w, layer)), t(q.scale), q.group_size, t(q.col_scale), t(q.row_offset))
    x = torch.from_numpy(rng.standard_normal((3, 7, 600)).astype(np.float32)).requires_grad_(True)
    probe = torch.from_numpy(rng.standard_normal((3, 7, 40)).astype(np.float32))
    outputs, grads = [], []
    for run in (student.forward, student.reference):
        student.zero_grad()
        x.grad = None
        y = run(x)
        (y * probe).sum().backward()
        outputs.append(y.detach())
        grads.append([x.grad.clone()] + [p.grad.clone() for p in student.parameters()])
    spread = float(outputs[1].abs().max())
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-6 * spread)
    # The fast backward multiplies in bfloat16 (8-bit mantissa): gradients agree to its precision.
    for fast, ref in zip(grads[0], grads[1]):
        assert float((fast - ref).norm() / ref.norm()) < 1e-2
