"""Writes a trained model as a Hugging Face folder in binllm's packed BitNet layout.

The folder is what microsoft/bitnet-b1.58-2B-4T ships and `binllm.Model.from_pretrained` reads:
config.json (BitNetForCausalLM, relu2 or silu, tied embeddings, quantization_config bitnet/offline),
model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json.

Each BitLinear becomes uint8 [out/4, in] (bits 2i..2i+1 of packed row r hold output row
i * out/4 + r, stored as code + 1) plus `weight_scale` [1] = 1 / mean|W| (the INVERTED scale,
divided by at inference). Embeddings (also the output layer) stay float; norms are float32.

A float model without sub-norms (`binllm train --float --arch llama`) is written instead as a
plain Llama folder (LlamaForCausalLM, float32, tied embeddings): a float teacher for `binllm
quantize` and `binllm distill`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from binllm._core import InvalidArgumentError
from binllm.files import folder_written_whole, refuse_existing_folder
from binllm.train.bitlinear import ternary_codes
from binllm.train.model import BitNetLM

BOS, EOS = "<s>", "</s>"


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """int codes {-1, 0, 1} [out, in] -> uint8 [out/4, in] in the bitnet-b1.58-2B-4T layout."""
    out = codes.shape[0]
    if out % 4:
        raise InvalidArgumentError(f"output features ({out}) must be a multiple of 4 to pack")
    quarter = out // 4
    fields = (codes + 1).astype(np.uint8)
    packed = np.zeros((quarter, codes.shape[1]), np.uint8)
    for i in range(4):
        packed |= fields[i * quarter : (i + 1) * quarter] << (2 * i)
    return packed


def state_tensors(model: BitNetLM, embedding_dtype=np.float16) -> dict[str, np.ndarray]:
    """The checkpoint's tensors by Hugging Face name."""
    if not model.config.ternary:
        raise InvalidArgumentError("only ternary models export to the packed layout")
    tensors: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                codes, mean = ternary_codes(module.weight.float())
                tensors[name + ".weight"] = pack_codes(codes.to(torch.int8).numpy())
                inverse = np.float32(1.0) / np.float32(mean.item())
                tensors[name + ".weight_scale"] = np.array([inverse], np.float32)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                tensors[name] = p.detach().float().numpy().copy()
        tensors["model.embed_tokens.weight"] = model.model.embed_tokens.weight.detach().float().numpy().astype(embedding_dtype)
    return tensors


def export_packed(model: BitNetLM, tokenizer_json: str | Path, folder: str | Path, embedding_dtype=np.float16) -> Path:
    """Writes the packed HF folder (which must not exist, or be empty); returns it."""
    return _export(folder, lambda f: _write(model, tokenizer_json, f, embedding_dtype))


def export_float_llama(model: BitNetLM, tokenizer_json: str | Path, folder: str | Path) -> Path:
    """Writes a float model without sub-norms as a float32 Llama HF folder (which must not
    exist, or be empty); returns it."""
    cfg = model.config
    if cfg.ternary or cfg.sub_norms or cfg.hidden_act != "silu" or not cfg.tie_word_embeddings:
        raise InvalidArgumentError("a Llama folder holds a float model with silu, no sub-norms and tied embeddings")
    return _export(folder, lambda f: _write_llama(model, tokenizer_json, f))


def _export(folder: str | Path, write) -> Path:
    final = Path(folder)
    refuse_existing_folder(final, "binllm")
    # Written under a temporary name and renamed when complete: an interrupted export leaves
    # no half-written model under the final name.
    with folder_written_whole(final) as tmp:
        write(tmp)
    return final


def _shape(cfg) -> dict:
    return {
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "hidden_act": cfg.hidden_act,
        "tie_word_embeddings": True,
    }


def _write_llama(model: BitNetLM, tokenizer_json: str | Path, folder: Path) -> None:
    from safetensors.numpy import save_file

    tensors = {name: p.detach().float().numpy().copy() for name, p in model.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "model.safetensors").chmod(0o644)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **_shape(model.config),
              "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32"}
    _write_common(model, tokenizer_json, folder, config)


def _write(model: BitNetLM, tokenizer_json: str | Path, folder: Path, embedding_dtype) -> None:
    from safetensors.numpy import save_file

    save_file(state_tensors(model, embedding_dtype), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "model.safetensors").chmod(0o644)  # safetensors writes 0600; the file ships in a package
    config = {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        **_shape(model.config),
        "torch_dtype": "float16" if embedding_dtype == np.float16 else "float32",
        "quantization_config": {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"},
    }
    _write_common(model, tokenizer_json, folder, config)


def _write_common(model: BitNetLM, tokenizer_json: str | Path, folder: Path, config: dict) -> None:
    """config.json (with the tokenizer's BOS/EOS ids), the tokenizer and generation files."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    bos, eos = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    config = {**config, "bos_token_id": bos, "eos_token_id": eos}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": eos, "do_sample": True, "temperature": 0.8, "top_k": 40}, indent=2) + "\n")
    tokenizer.save(str(folder / "tokenizer.json"))
    tokenizer_config = {
        "bos_token": BOS,
        "eos_token": EOS,
        "add_bos_token": False,
        "model_max_length": model.config.max_position_embeddings,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
