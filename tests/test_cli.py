"""The binllm command: each subcommand works, and every error is one clear line."""

import json
import subprocess
import sys

import pytest
from helpers import make_random_hf_model


def run(*args, input=None):
    return subprocess.run([sys.executable, "-m", "binllm", *map(str, args)], capture_output=True, text=True, input=input, timeout=300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_random_hf_model(tmp_path_factory.mktemp("cli") / "m", layout="bitnet_packed", seed=5)


def test_generate_streams_text_equal_to_the_python_api(model_dir):
    from binllm import Model

    out = run("generate", model_dir, "the quick brown", "-n", "12")
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip("\n") == Model.from_pretrained(model_dir).generate("the quick brown", max_new_tokens=12)
    assert "loaded" in out.stderr
    # --kv-type f32 runs the f32 cache: the Python API's output with that cache.
    out = run("generate", model_dir, "the quick brown", "-n", "12", "--kv-type", "f32")
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip("\n") == Model.from_pretrained(model_dir, kv_type="f32").generate("the quick brown", max_new_tokens=12)


def test_info_and_json(model_dir):
    out = run("info", model_dir)
    assert out.returncode == 0, out.stderr
    assert "bitnet" in out.stdout and "t2" in out.stdout and "bits/weight" in out.stdout
    info = json.loads(run("info", model_dir, "--json").stdout)
    assert info["config"]["hidden_size"] == 320


def test_bench_reports_tokens_per_second(model_dir):
    out = run("bench", model_dir, "--prompt-tokens", "16", "--decode-tokens", "8", "--repeats", "1")
    assert out.returncode == 0, out.stderr
    assert "tok/s" in out.stdout


def test_chat_without_a_template_runs_in_plain_mode(model_dir):
    from binllm import Model
    from binllm.cli import PLAIN_TURN

    # The embedded model has no chat template: plain mode, announced before the first turn.
    out = run("chat", "-n", "12", "-t", "0", input="Good morrow\nWhat news?\n")
    assert out.returncode == 0, out.stderr
    assert "plain mode" in out.stderr and out.stderr.index("plain mode") < out.stderr.index("type a message")
    m = Model.from_pretrained()
    first = m.generate("User: Good morrow\nModel:", max_new_tokens=12, temperature=0, stop=[PLAIN_TURN])
    assert out.stdout.startswith("> " + first + "\n")
    # generate --chat cannot format a prompt without a template: said before any generation.
    out = run("generate", model_dir, "--chat", "hello", "-n", "4")
    assert out.returncode == 1 and "no chat template" in out.stderr and "Traceback" not in out.stderr


def test_bad_thread_settings_are_one_line(model_dir):
    import os

    for value in ("abc", "0", "99999"):
        out = subprocess.run(
            [sys.executable, "-m", "binllm", "generate", str(model_dir), "hi", "-n", "2"],
            capture_output=True, text=True, timeout=300, env=dict(os.environ, BINLLM_THREADS=value),
        )
        assert out.returncode == 1 and f"BINLLM_THREADS={value}" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_eval_defaults_to_the_models_context_when_shorter(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("ROMEO: But soft, what light through yonder window breaks? " * 80)
    out = run("eval", "--text", text, "--json", "--no-bench", "default")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ctx"] == 256  # the embedded model's context, not 512


def test_demo_prints_the_kernel_speed():
    out = run("demo", "--threads", "1")
    assert out.returncode == 0, out.stderr
    assert "speed-up" in out.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["generate", "/no/such/model", "hi"], "no model"),
        (["generate", "MODEL", "hi", "--temperature", "-1"], "temperature"),
        (["generate", "MODEL", ""], "empty"),
        (["generate", "MODEL", "hi", "--threads", "0"], "threads"),
        (["info", "/etc/hostname"], "gguf"),
    ],
)
def test_errors_are_one_clear_line(model_dir, args, words):
    args = [str(model_dir) if a == "MODEL" else a for a in args]
    out = run(*args)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("binllm: error:") and words in out.stderr


def test_chat_with_smollm2(smollm2_path):
    out = run("chat", smollm2_path, "-n", "20", input="What is the capital of France?\n")
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout


def test_generate_without_a_model_uses_the_embedded_default():
    from binllm import Model
    from binllm.model import DEFAULT_MODEL

    out = run("generate", "ROMEO:", "-n", "16", "--seed", "3")
    assert out.returncode == 0, out.stderr
    assert "default_model" in out.stderr
    assert out.stdout.rstrip("\n") == Model.from_pretrained(DEFAULT_MODEL).generate("ROMEO:", max_new_tokens=16, seed=3)


def test_generate_says_when_the_context_stops_it(model_dir):
    from binllm import Model

    model = Model.from_pretrained(model_dir)
    context, prompt = model.config["max_position_embeddings"], "the quick brown"
    # Greedy, this seeded model never samples its EOS: it runs until the context is full (every
    # position holds a token, and the last one sampled is not fed back).
    out = run("generate", model_dir, prompt, "-n", context + 10, "--temperature", "0")
    assert out.returncode == 0, out.stderr
    assert f"generated {context - len(model.encode(prompt)) + 1} tokens" in out.stderr, out.stderr
    assert f"stopped before {context + 10} tokens: the model's context ({context} tokens) is full" in out.stderr
    assert out.stdout.rstrip("\n") == model.generate(prompt, max_new_tokens=context + 10, temperature=0)
    out = run("generate", model_dir, prompt, "-n", "5", "--temperature", "0")
    assert "generated 5 tokens" in out.stderr and "stopped before" not in out.stderr, out.stderr


def test_convert_writes_gguf_and_reports(tmp_path):
    # Row lengths that are whole 256-blocks, so every linear can be TQ2_0.
    model_dir = make_random_hf_model(tmp_path / "src", layout="bitnet_packed", seed=6, hidden=256, heads=4, kv_heads=2, intermediate=512)
    out = run("convert", model_dir, tmp_path / "m.gguf", "--type", "tq2_0")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["tensor_types"]["TQ2_0"] == 14
    from binllm import Model

    assert Model.from_pretrained(tmp_path / "m.gguf").generate("the", max_new_tokens=8) == Model.from_pretrained(model_dir).generate("the", max_new_tokens=8)
    quiet = run("convert", model_dir, tmp_path / "q.gguf", "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == "" and "UserWarning" not in quiet.stderr
    same = run("convert", model_dir, model_dir)
    assert same.returncode == 1 and "binllm: error:" in same.stderr
    # An existing DST is refused without --force, a folder always: one line each, nothing touched.
    before = (tmp_path / "m.gguf").read_bytes()
    for dst, words in ((tmp_path / "m.gguf", "--force"), (tmp_path, "is a folder")):
        out = run("convert", model_dir, dst)
        assert out.returncode == 1 and words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert (tmp_path / "m.gguf").read_bytes() == before
