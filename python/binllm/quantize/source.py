"""A float model's parts in Hugging Face form, read from a Hugging Face folder or a GGUF file:
its config.json dict, its float32 tensors under HF names, and its tokenizer files.

GGUF llama files store Q and K rows permuted for llama.cpp's interleaved RoPE; they are
permuted back here, so that the folder binllm writes runs with the NeoX RoPE of HF configs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from binllm import _core
from binllm._core import ModelFormatError, UnsupportedError

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

_GGUF_BLOCK = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


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


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's convert_hf_to_gguf permutation of Q/K rows (per head: the two
    rotary halves interleaved back into pairs)."""
    n, k = w.shape
    return w.reshape(heads, n // heads // 2, 2, k).swapaxes(1, 2).reshape(n, k)


def _from_gguf(path: Path) -> Source:
    meta, infos = _core.gguf_read_metadata(str(path))
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise UnsupportedError(f"{path}: binllm quantize reads float llama GGUF files (this one is '{arch}')")

    def key(name: str, default: Any = None) -> Any:
        v = meta.get(f"llama.{name}", default)
        if v is None:
            raise ModelFormatError(f"{path}: GGUF metadata lacks llama.{name}")
        return v

    heads = int(key("attention.head_count"))
    kv_heads = int(key("attention.head_count_kv", heads))
    hidden = int(key("embedding_length"))
    names = {n for n, _, _ in infos}
    tensors_raw = _core.read_tensors(str(path))
    vocab = tensors_raw["token_embd.weight"].shape[0]
    tensors: dict[str, np.ndarray] = {"model.embed_tokens.weight": tensors_raw.pop("token_embd.weight"), "model.norm.weight": tensors_raw.pop("output_norm.weight")}
    tied = "output.weight" not in names
    if not tied:
        tensors["lm_head.weight"] = tensors_raw.pop("output.weight")
    layers = int(key("block_count"))
    for i in range(layers):
        for short, long in _GGUF_BLOCK.items():
            name = f"blk.{i}.{short}.weight"
            if name not in tensors_raw:
                raise ModelFormatError(f"{path}: missing tensor '{name}'")
            w = tensors_raw.pop(name)
            if short == "attn_q":
                w = _unpermute(w, heads)
            elif short == "attn_k":
                w = _unpermute(w, kv_heads)
            tensors[f"model.layers.{i}.{long}.weight"] = w
    bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": int(meta.get("llama.attention.key_length", hidden // heads)),
        "hidden_act": "silu",
        "max_position_embeddings": int(key("context_length", 2048)),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "torch_dtype": "float16",
    }
    if bos is not None:
        config["bos_token_id"] = int(bos)
    if eos is not None:
        config["eos_token_id"] = int(eos)
    from binllm import tokenizer as _tok

    files = {"tokenizer.json": _tok.from_gguf_metadata(meta).to_str()}
    tokens = meta.get("tokenizer.ggml.tokens") or []
    tok_cfg: dict[str, Any] = {}
    if "tokenizer.chat_template" in meta:
        tok_cfg["chat_template"] = meta["tokenizer.chat_template"]
    for name, tid in (("bos_token", bos), ("eos_token", eos)):
        if tid is not None and 0 <= int(tid) < len(tokens):
            tok_cfg[name] = tokens[int(tid)]
    files["tokenizer_config.json"] = json.dumps(tok_cfg, indent=2)
    if eos is not None:
        files["generation_config.json"] = json.dumps({"eos_token_id": int(eos), **({"bos_token_id": int(bos)} if bos is not None else {})}, indent=2)
    return Source(path, config, tensors, files)


def _from_folder(path: Path) -> Source:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{path} has no config.json")
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    qc = config.get("quantization_config") or {}
    if qc.get("quant_method") in ("bitnet", "binllm") or config.get("model_type") == "bitnet":
        raise UnsupportedError(f"{path} is already quantized ({qc.get('quant_method') or config.get('model_type')}); quantize starts from a float model")
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        shards = [path / "model.safetensors"]
    elif index.is_file():
        shards = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        raise FileNotFoundError(f"{path} has no model.safetensors or model.safetensors.index.json")
    tensors: dict[str, np.ndarray] = {}
    for shard in shards:
        tensors.update(_core.read_tensors(str(shard)))
    files = {}
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"):
        if (path / name).is_file():
            files[name] = (path / name).read_text(encoding="utf-8")
    if "tokenizer.json" not in files:
        raise FileNotFoundError(f"{path} has no tokenizer.json")
    config.pop("quantization_config", None)
    return Source(path, config, tensors, files)


def read_source(path: str | Path) -> Source:
    """The float model at `path` (HF folder or .gguf) in Hugging Face form."""
    p = Path(path)
    if p.is_dir():
        src = _from_folder(p)
    elif p.suffix.lower() == ".gguf" and p.is_file():
        src = _from_gguf(p)
    elif not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    else:
        raise UnsupportedError(f"{p}: binllm quantize reads Hugging Face folders and .gguf files")
    for name, _, _ in src.linear_names():
        if f"{name}.weight" not in src.tensors:
            raise ModelFormatError(f"{p}: missing tensor '{name}.weight'")
    return src
