"""A float model's parts in Hugging Face form, read from a Hugging Face folder or a GGUF file:
its config.json dict, its float32 tensors under HF names, and its tokenizer files.

The core reads them (``_core.read_float_source``, ``binllm_core::model::source``) with the
loader's own config parsing, tensor-name table, shard listing and refusals; GGUF llama Q and K
rows come back un-permuted from llama.cpp's interleaved RoPE layout, so the folder binllm
writes runs with the NeoX RoPE of HF configs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from binllm import _core

# HF module names of one decoder block's linears, in forward order, with the calibration
# site (see `Model::forward_observed`) whose activations feed each.
LINEARS = (
    ("self_attn.q_proj", "attn_in"),
    ("self_attn.k_proj", "attn_in"),
    ("self_attn.v_proj", "attn_in"),
    ("self_attn.o_proj", "o_in"),
    ("mlp.gate_proj", "ffn_in"),
    ("mlp.up_proj", "ffn_in"),
    ("mlp.down_proj", "down_in"),
)


@dataclass
class Source:
    path: Path
    config: dict[str, Any]
    tensors: dict[str, np.ndarray]
    # File name -> text, written beside the weights (tokenizer.json, tokenizer_config.json, ...).
    files: dict[str, str] = field(default_factory=dict)

    @property
    def layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    def linear_names(self) -> list[tuple[str, str, int]]:
        """(module path, calibration site, layer) of every decoder linear, in forward order."""
        return [(f"model.layers.{i}.{name}", site, i) for i in range(self.layers) for name, site in LINEARS]


def read_source(path: str | Path) -> Source:
    """The float model at `path` (HF folder or .gguf) in Hugging Face form."""
    p = Path(path)
    config, tensors, files = _core.read_float_source(str(p))
    return Source(p, json.loads(config), tensors, dict(files))
