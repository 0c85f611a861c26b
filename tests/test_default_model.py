"""The ternary model embedded in the package (python/binllm/default_model, made by
scripts/train-default-model.sh): it loads as a packed BitNet checkpoint, stays small, and
generates text."""

from pathlib import Path

import binllm
import numpy as np
import pytest

FOLDER = Path(binllm.__file__).parent / "default_model"


@pytest.fixture(scope="module")
def model():
    return binllm.Model.from_pretrained(FOLDER)


def test_is_a_packed_ternary_bitnet_model_of_a_few_megabytes(model):
    c = model.config
    assert c["bitnet"] and c["sub_norms"] and c["hidden_act"] == "silu" and c["tie_word_embeddings"]
    kinds = {t["kind"]: t for t in model.info()["tensors"]}
    assert kinds["attention"]["storage"] == "t2" and kinds["mlp"]["storage"] == "t2"
    assert (FOLDER / "model.safetensors").stat().st_size < 8 * 2**20
    assert (FOLDER / "MODEL_CARD.md").exists()


def test_generates_text_from_a_prompt(model):
    text = model.generate("ROMEO:", max_new_tokens=20, seed=0)
    assert isinstance(text, str) and len(text.strip()) > 0
    logits = np.asarray(model.logits(model.encode("To be, or not to be")))
    assert np.isfinite(logits).all()
