"""Bad input gets one clear error, never a hang, a truncation or a guess (issue: release
hardening; each case was reproduced before its fix)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from binllm import Model
from binllm.model import default_model_path


@pytest.fixture(scope="module")
def model():
    return Model.from_pretrained(default_model_path())


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    out = subprocess.run([sys.executable, "-m", "binllm", "info", str(fifo)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "not a regular file" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("ids", [[1.7], [True], ["3"], [np.float32(2.0)]])
def test_token_ids_that_are_not_integers_are_refused(model, ids):
    with pytest.raises(ValueError, match="integers"):
        model.logits(ids)


def test_numpy_integer_ids_are_ids(model):
    assert model.logits(np.array([1, 2, 3], dtype=np.int64)).shape == (3, model.config["vocab_size"])


def test_an_empty_model_path_is_not_the_current_folder():
    with pytest.raises(ValueError, match="empty"):
        Model.from_pretrained("")


def test_version():
    out = subprocess.run([sys.executable, "-m", "binllm", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("binllm ")


def test_the_embedded_model_by_name_or_no_argument():
    assert Model.from_pretrained().source == default_model_path() == Model.from_pretrained("default").source


def test_not_a_model_is_a_model_format_error(tmp_path):
    from binllm import ModelFormatError

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelFormatError, match="Hugging Face folders and .gguf files"):
        Model.from_pretrained(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFormatError, match="no config.json"):
        Model.from_pretrained(tmp_path / "empty")


def test_options_may_stand_between_model_and_prompt():
    args = ["generate", str(default_model_path()), "-n", "4", "--seed", "3", "ROMEO:"]
    out = subprocess.run([sys.executable, "-m", "binllm", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    want = Model.from_pretrained().generate("ROMEO:", max_new_tokens=4, seed=3)
    assert out.stdout.rstrip("\n") == want
    assert "generated" in out.stderr
