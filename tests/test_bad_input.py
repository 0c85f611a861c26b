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
