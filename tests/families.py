"""Tiny replicas of the public 1-bit/ternary checkpoint families, an independent numpy reference
forward pass written from each family's published modeling code, and a minimal GGUF writer.

Each replica keeps its family's real config keys and values (sizes shrunk), tensor names,
dtypes and packing, and a tokenizer of the same kind. Where the facts come from (read, not
guessed; see also shared/FIELD-NOTES.md):

- ``bitnet_2b4t``: microsoft/bitnet-b1.58-2B-4T's config.json (``BitNetForCausalLM``, relu2,
  theta 500000, eps 1e-5, tied, ``quantization_config`` = bitnet / autobitlinear / offline).
  transformers 5.25 ``AutoBitLinear`` in offline mode MULTIPLIES the output by ``weight_scale``
  (so it holds mean|W|), after ``BitNetDeserialize`` unpacks the uint8 [out/4, in] weights.
  Sub-norms ``attn_sub_norm`` (before o_proj) and ``ffn_sub_norm`` (before down_proj).
  Tokenizer: Llama 3's (``Split`` with the Llama-3 regex, then ``ByteLevel(use_regex=false)``).
- ``bitnet_2b4t_tf5``: the same model as transformers >= 5 saves it (``rope_parameters``).
- ``onebitllm``: 1bitLLM/bitnet_b1_58-large (``BitnetForCausalLM``, ``model_type`` llama,
  ``weight_bits`` 1, ``input_bits`` 8, fp16 latent weights quantized on the fly by
  ``utils_quant.py``'s absmean / absmax, SubLN norms ``self_attn.inner_attn_ln`` and
  ``mlp.ffn_layernorm``, SiLU, tied, theta 10000). Tokenizer: sentencepiece-style BPE
  (``tokenizer.json`` with byte fallback and Metaspace), as its repository ships.
- ``hf1bitllm``: HF1BitLLM/Llama3-8B-1.58-100B-tokens (``LlamaForCausalLM``,
  ``quantization_config`` written twice in the file, the last ``{"quant_method": "bitnet"}``:
  ``BitLinear``, which DIVIDES by ``weight_scale`` = 1/mean|W|; ``is_bitnet_config``,
  ``rope_interleaved`` false, untied, theta 500000, Llama-3 tokenizer).
- ``falcon3``: tiiuae/Falcon3-*-1.58bit (``LlamaForCausalLM``, ``head_dim`` different from
  hidden / heads, theta 1000042, eps 1e-6, ``modules_to_not_convert`` ["lm_head"], the extra
  keys ``activation`` swiglu and ``parallel_attn`` false; weight_scale inverted as TII's
  onebitllms writes it).
- ``llama31``: a float Llama with Llama 3.1's ``rope_scaling`` (type llama3).

GGUF replicas (``write_bitnet_gguf``) hold a ``bitnet_2b4t`` replica's weights as
bitnet.cpp writes them: architecture ``bitnet-b1.58`` or ``bitnet-25``, I2_S linears (codes
0/1/2, blocks of 128 in 32 bytes, one f32 scale = mean|W| after the packed bytes), F16
``token_embd``, F32 norms, ``tokenizer.ggml.pre`` llama-bpe, no ``output.weight`` (tied) or one.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

LLAMA3_REGEX = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)

TEXT = (
    "The old lighthouse keeper walked down to the harbour at 6:45, counting 1234567 waves. "
    "I'M sure you'LL see it's true: binarized models store each weight in 1 or 2 bits.\r\n\r\n"
    "To be, or not to be, that is the question. It is a truth universally acknowledged. "
    "In the beginning God created the heaven and the earth. Once upon a time there was a model.\n"
) * 6

FAMILIES = ("bitnet_2b4t", "bitnet_2b4t_tf5", "onebitllm", "hf1bitllm", "falcon3", "llama31")
# Families transformers implements (its references are committed); the rest are checked against
# the numpy reference of their published formulas.
TRANSFORMERS_FAMILIES = ("bitnet_2b4t", "bitnet_2b4t_tf5", "hf1bitllm", "falcon3", "llama31")

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


# ---------------------------------------------------------------------------------------------
# numeric helpers (plain numpy, so the checkpoint bytes do not depend on torch)
# ---------------------------------------------------------------------------------------------


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(u: np.ndarray) -> np.ndarray:
    return (u.astype(np.uint32) << 16).view(np.float32)


def absmean(w: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """BitNet b1.58 weight quantization: (codes, mean|W|), mean clamped at 1e-5."""
    mean = np.float32(max(np.float32(np.abs(w.astype(np.float32)).mean(dtype=np.float64)), np.float32(1e-5)))
    codes = np.clip(np.round(w.astype(np.float32) * (np.float32(1) / mean)), -1, 1).astype(np.int8)
    return codes, mean


def pack_transformers(codes: np.ndarray) -> np.ndarray:
    """transformers' pack_weights: uint8 [out/4, in]; bits 2i..2i+1 of row r hold row i*(out/4)+r."""
    quarter = codes.shape[0] // 4
    fields = (codes.astype(np.int16) + 1).astype(np.uint8)
    out = np.zeros((quarter, codes.shape[1]), np.uint8)
    for i in range(4):
        out |= fields[i * quarter : (i + 1) * quarter] << (2 * i)
    return out


def unpack_transformers(packed: np.ndarray) -> np.ndarray:
    quarter = packed.shape[0]
    out = np.zeros((4 * quarter, packed.shape[1]), np.int8)
    for i in range(4):
        out[i * quarter : (i + 1) * quarter] = ((packed >> (2 * i)) & 3).astype(np.int8) - 1
    return out


# ---------------------------------------------------------------------------------------------
# tokenizers of each kind
# ---------------------------------------------------------------------------------------------


def llama3_tokenizer(vocab_size: int):
    """A Llama-3-style byte-level BPE: Split(Llama-3 regex) + ByteLevel(use_regex=False)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([TEXT], trainer)
    tok.add_special_tokens(specials)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
    return tok


def sentencepiece_tokenizer(vocab_size: int):
    """A Llama-2-style (sentencepiece BPE) tokenizer.json: Metaspace, byte fallback."""
    from tokenizers import SentencePieceBPETokenizer

    tok = SentencePieceBPETokenizer(unk_token="<unk>", fuse_unk=True)
    tok.train_from_iterator([TEXT], vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    return tok._tokenizer


# ---------------------------------------------------------------------------------------------
# replicas
# ---------------------------------------------------------------------------------------------

# Shrunk sizes: hidden 256 with 4 heads of 64 and 1 KV head (GQA 4:1 as 2B4T's 20/5).
SIZES = dict(hidden=256, heads=4, kv_heads=1, intermediate=384, layers=2, vocab=384)


def _config(name: str, s: dict) -> tuple[dict, str]:
    """(config dict, exact config.json text) of a family's replica."""
    hidden, heads, kv, inter, layers, vocab = (s[k] for k in ("hidden", "heads", "kv_heads", "intermediate", "layers", "vocab"))
    if name in ("bitnet_2b4t", "bitnet_2b4t_tf5"):
        cfg = {
            "architectures": ["BitNetForCausalLM"],
            "auto_map": {"AutoConfig": "configuration_bitnet.BitNetConfig", "AutoModelForCausalLM": "modeling_bitnet.BitNetForCausalLM"},
            "bos_token_id": vocab - 3,
            "eos_token_id": vocab - 2,
            "hidden_act": "relu2",
            "hidden_size": hidden,
            "initializer_range": 0.02,
            "intermediate_size": inter,
            "max_position_embeddings": 4096,
            "model_type": "bitnet",
            "rms_norm_eps": 1e-05,
            "num_attention_heads": heads,
            "num_hidden_layers": layers,
            "num_key_value_heads": kv,
            "rope_theta": 500000.0,
            "tie_word_embeddings": True,
            "torch_dtype": "bfloat16",
            "use_cache": True,
            "vocab_size": vocab,
            "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"},
        }
        if name == "bitnet_2b4t_tf5":
            # transformers >= 5 folds rope_theta into rope_parameters on save.
            del cfg["rope_theta"]
            cfg["rope_parameters"] = {"rope_theta": 500000.0, "rope_type": "default"}
            cfg["dtype"] = cfg.pop("torch_dtype")
            cfg["transformers_version"] = "5.25.0"
        return cfg, json.dumps(cfg, indent=2)
    if name == "onebitllm":
        cfg = {
            "_name_or_path": "1bitLLM/bitnet_b1_58-large",
            "architectures": ["BitnetForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_act": "silu",
            "hidden_size": hidden,
            "initializer_range": 0.02,
            "input_bits": 8,
            "intermediate_size": inter,
            "max_position_embeddings": 2048,
            "model_type": "llama",
            "num_attention_heads": heads,
            "num_hidden_layers": layers,
            "num_key_value_heads": heads,
            "pad_token_id": 0,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            "rope_scaling": None,
            "rope_theta": 10000.0,
            "tie_word_embeddings": True,
            "torch_dtype": "float16",
            "transformers_version": "4.39.0",
            "use_cache": True,
            "vocab_size": vocab,
            "weight_bits": 1,
        }
        return cfg, json.dumps(cfg, indent=2)
    if name == "hf1bitllm":
        cfg = {
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": vocab - 3,
            "eos_token_id": vocab - 1,
            "hidden_act": "silu",
            "hidden_size": hidden,
            "initializer_range": 0.02,
            "intermediate_size": inter,
            "is_bitnet_config": True,
            "max_position_embeddings": 8192,
            "mlp_bias": False,
            "model_type": "llama",
            "num_attention_heads": heads,
            "num_hidden_layers": layers,
            "num_key_value_heads": kv,
            "pretraining_tp": 1,
            "quantization_config": {"modules_to_not_convert": None, "quant_method": "bitnet"},
            "rms_norm_eps": 1e-05,
            "rope_interleaved": False,
            "rope_scaling": None,
            "rope_theta": 500000.0,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "transformers_version": "4.44.0.dev0",
            "use_cache": True,
            "vocab_size": vocab,
        }
        text = json.dumps(cfg, indent=2)
        # The real file names quantization_config twice; JSON readers keep the last one.
        text = text[: text.rindex("}")].rstrip() + ',\n  "quantization_config": {"quant_method": "bitnet"}\n}'
        cfg["quantization_config"] = {"quant_method": "bitnet"}
        return cfg, text
    if name == "falcon3":
        cfg = {
            "activation": "swiglu",
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": vocab - 3,
            "eos_token_id": vocab - 2,
            "head_dim": 128,
            "hidden_act": "silu",
            "hidden_size": hidden,
            "initializer_range": 0.02,
            "intermediate_size": inter,
            "is_bitnet_config": True,
            "max_position_embeddings": 4096,
            "mlp_bias": False,
            "model_type": "llama",
            "num_attention_heads": heads,
            "num_hidden_layers": layers,
            "num_key_value_heads": 2,
            "parallel_attn": False,
            "pretraining_tp": 1,
            "quantization_config": {"modules_to_not_convert": ["lm_head"], "quant_method": "bitnet"},
            "rms_norm_eps": 1e-06,
            "rope_scaling": None,
            "rope_theta": 1000042,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "transformers_version": "4.47.0.dev0",
            "use_cache": True,
            "vocab_size": vocab,
        }
        return cfg, json.dumps(cfg, indent=2)
    if name == "llama31":
        cfg = {
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": False,
            "bos_token_id": vocab - 3,
            "eos_token_id": [vocab - 2, vocab - 1],
            "hidden_act": "silu",
            "hidden_size": hidden,
            "intermediate_size": inter,
            "max_position_embeddings": 131072,
            "mlp_bias": False,
            "model_type": "llama",
            "num_attention_heads": heads,
            "num_hidden_layers": layers,
            "num_key_value_heads": kv,
            "rms_norm_eps": 1e-05,
            # Llama 3.1's values, with a short original context so that all three bands of
            # frequencies (kept, smoothed, divided) occur at head_dim 64.
            "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64, "rope_type": "llama3"},
            "rope_theta": 500000.0,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "vocab_size": vocab,
        }
        return cfg, json.dumps(cfg, indent=2)
    raise ValueError(f"unknown family {name!r}")


def build(name: str, folder: str | Path, seed: int = 20261206, **sizes) -> Path:
    """Writes the replica of family `name` into `folder` (created); returns the folder."""
    s = {**SIZES, **sizes}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg, text = _config(name, s)
    rng = np.random.default_rng([seed, FAMILIES.index(name.replace("_tf5", ""))])
    hidden, heads, inter, vocab = s["hidden"], s["heads"], s["intermediate"], s["vocab"]
    kv = cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or hidden // heads
    half = name in ("bitnet_2b4t", "bitnet_2b4t_tf5", "hf1bitllm", "falcon3")  # bf16 float parts
    fp16 = name == "onebitllm"

    def store(x: np.ndarray) -> np.ndarray:
        if fp16:
            return x.astype(np.float16)
        return to_bf16(x) if half else x.astype(np.float32)

    tensors: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}

    def put(key: str, x: np.ndarray, dtype: str | None = None):
        tensors[key] = x
        if dtype:
            dtypes[key] = dtype

    def float_tensor(key, x):
        y = store(x)
        put(key, y, "BF16" if y.dtype == np.uint16 else None)

    def normal(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    float_tensor("model.embed_tokens.weight", normal(vocab, hidden, std=0.5))
    float_tensor("model.norm.weight", norm(hidden))
    if not cfg["tie_word_embeddings"]:
        float_tensor("lm_head.weight", normal(vocab, hidden, std=0.06))
    shapes = {
        "self_attn.q_proj": (heads * hd, hidden),
        "self_attn.k_proj": (kv * hd, hidden),
        "self_attn.v_proj": (kv * hd, hidden),
        "self_attn.o_proj": (hidden, heads * hd),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }
    sub_norms = {"bitnet_2b4t": ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm"), "onebitllm": ("self_attn.inner_attn_ln", "mlp.ffn_layernorm")}
    sub = sub_norms.get(name.replace("_tf5", ""))
    packed = name != "onebitllm" and name != "llama31"
    multiply = cfg.get("quantization_config", {}).get("linear_class") == "autobitlinear"
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        float_tensor(p + "input_layernorm.weight", norm(hidden))
        float_tensor(p + "post_attention_layernorm.weight", norm(hidden))
        if sub:
            float_tensor(p + sub[0] + ".weight", norm(heads * hd))
            float_tensor(p + sub[1] + ".weight", norm(inter))
        for lin, shape in shapes.items():
            std = 0.08 if lin in ("self_attn.q_proj", "self_attn.k_proj") else 0.03
            w = normal(*shape, std=std)
            if not packed:
                float_tensor(p + lin + ".weight", w)
                continue
            codes, mean = absmean(w)
            put(p + lin + ".weight", pack_transformers(codes))
            scale = np.array([mean if multiply else np.float32(1) / mean], np.float32)
            float_tensor(p + lin + ".weight_scale", scale)
    write_safetensors(folder / "model.safetensors", tensors, dtypes)
    (folder / "config.json").write_text(text)

    if name == "onebitllm":
        tok = sentencepiece_tokenizer(vocab)
        tok_cfg = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True}
    else:
        tok = llama3_tokenizer(vocab)
        tok_cfg = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
    assert tok.get_vocab_size() <= vocab, tok.get_vocab_size()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    gen = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}
    (folder / "generation_config.json").write_text(json.dumps(gen))
    return folder


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtypes: dict[str, str]) -> None:
    """A safetensors file (safetensors.numpy has no bf16: uint16 arrays named in `dtypes` are
    bf16 bit patterns)."""
    names = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.uint8): "U8", np.dtype(np.int8): "I8"}
    header, blobs, offset = {}, [], 0
    for key, x in tensors.items():
        data = np.ascontiguousarray(x).tobytes()
        header[key] = {"dtype": dtypes.get(key) or names[x.dtype], "shape": list(x.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as float32 (BF16 widened) or as stored for integers."""
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    out = {}
    kinds = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "U8": np.uint8, "I8": np.int8}
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        x = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=kinds[meta["dtype"]]).reshape(meta["shape"])
        if meta["dtype"] == "BF16":
            x = from_bf16(x)
        elif meta["dtype"] == "F16":
            x = x.astype(np.float32)
        out[key] = x
    return out


# ---------------------------------------------------------------------------------------------
# the numpy reference: each family's published formulas
# ---------------------------------------------------------------------------------------------


def rope_inv_freq(cfg: dict, hd: int) -> np.ndarray:
    """transformers' RoPE frequencies (default, linear, llama3), in float32 as it computes them."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = cfg.get("rope_theta", params.get("rope_theta"))
    inv = (1.0 / (np.float32(theta) ** (np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd)))).astype(np.float32)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return (inv / np.float32(params["factor"])).astype(np.float32)
    assert kind == "llama3", kind
    factor, low, high, old = (np.float32(params[k]) for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"))
    low_wl, high_wl = old / low, old / high
    wavelen = np.float32(2 * np.pi) / inv
    f = np.where(wavelen > low_wl, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * f / factor + smooth * f
    medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
    return np.where(medium, smoothed, f).astype(np.float32)


def _rmsnorm(x, w, eps):
    var = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    return (w * (x / np.sqrt(var + np.float32(eps)))).astype(np.float32)


def _act_quant(x):
    """Per-token absmax int8 (BitNet b1.58 / utils_quant.activation_quant): codes and scale."""
    m = np.maximum(np.max(np.abs(x), axis=-1, keepdims=True), np.float32(1e-5)).astype(np.float32)
    s = (np.float32(127.0) / m).astype(np.float32)
    return np.clip(np.round(x * s), -128, 127).astype(np.float32), s


def reference_logits(
    folder: str | Path, input_ids, act_quant: bool = True, head: np.ndarray | None = None, embed: np.ndarray | None = None, kv_type: str = "f16"
) -> np.ndarray:
    """Logits [T, vocab] of a replica folder, computed in numpy from config.json and the
    safetensors alone (never binllm), following each family's published modeling code.
    `head` replaces the output layer (a GGUF replica's untied `output.weight`), `embed` the
    embedding matrix (and with it a tied output layer). `kv_type` "f16" rounds keys (after
    RoPE) and values to float16 before attention, as a KV cache of binllm's default type
    (and llama.cpp's) holds them; "f32" keeps them."""
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    t = read_safetensors(folder / "model.safetensors")
    eps, nh = cfg["rms_norm_eps"], cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
    arch = cfg["architectures"][0]
    quant = cfg.get("quantization_config") or {}
    multiply = quant.get("linear_class") == "autobitlinear"
    ternary = arch in ("BitNetForCausalLM", "BitnetForCausalLM") or quant.get("quant_method") == "bitnet"
    sub = {"BitNetForCausalLM": ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm"), "BitnetForCausalLM": ("self_attn.inner_attn_ln", "mlp.ffn_layernorm")}.get(arch)
    ids = np.asarray(input_ids)
    T = len(ids)

    def linear(x, name):
        w = t[name + ".weight"]
        if not ternary:
            return x @ w.T
        if w.dtype == np.uint8:
            codes = unpack_transformers(w).astype(np.float32)
            stored = np.float32(t[name + ".weight_scale"].reshape(-1)[0])
            scale = stored if multiply else np.float32(1) / stored
        else:
            c, scale = absmean(w)
            codes = c.astype(np.float32)
        if not act_quant:
            return (x @ codes.T) * scale
        xq, s = _act_quant(x)
        return (xq @ codes.T) / s * scale

    inv = rope_inv_freq(cfg, hd)
    freqs = np.arange(T, dtype=np.float32)[:, None] * inv[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)

    def rope(x):  # [heads, T, hd], rotate-half
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + np.concatenate([-x2, x1], axis=-1) * sin

    if embed is not None:
        t["model.embed_tokens.weight"] = embed
    x = t["model.embed_tokens.weight"][ids].astype(np.float32)
    mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), k=1)
    act = cfg.get("hidden_act", "silu")
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = _rmsnorm(x, t[p + "input_layernorm.weight"], eps)
        q = linear(h, p + "self_attn.q_proj").reshape(T, nh, hd).transpose(1, 0, 2)
        k = linear(h, p + "self_attn.k_proj").reshape(T, nkv, hd).transpose(1, 0, 2)
        v = linear(h, p + "self_attn.v_proj").reshape(T, nkv, hd).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        if kv_type == "f16":
            k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
        k, v = np.repeat(k, nh // nkv, axis=0), np.repeat(v, nh // nkv, axis=0)
        sc = (q @ k.transpose(0, 2, 1)) * np.float32(hd**-0.5) + mask
        pr = np.exp(sc - sc.max(-1, keepdims=True))
        a = ((pr / pr.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(T, nh * hd)
        if sub:
            a = _rmsnorm(a, t[p + sub[0] + ".weight"], eps)
        x = x + linear(a, p + "self_attn.o_proj")
        h = _rmsnorm(x, t[p + "post_attention_layernorm.weight"], eps)
        g, u = linear(h, p + "mlp.gate_proj"), linear(h, p + "mlp.up_proj")
        m = np.square(np.maximum(g, 0)) * u if act == "relu2" else (g / (1 + np.exp(-g))) * u
        if sub:
            m = _rmsnorm(m, t[p + sub[1] + ".weight"], eps)
        x = x + linear(m, p + "mlp.down_proj")
    x = _rmsnorm(x, t["model.norm.weight"], eps)
    if head is None:
        head = t["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else t["lm_head.weight"]
    return (x @ head.T).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# GGUF as bitnet.cpp writes it (a minimal GGUF v3 writer, independent of binllm's)
# ---------------------------------------------------------------------------------------------

_GGUF_TYPES = {"u8": 0, "i8": 1, "u16": 2, "i16": 3, "u32": 4, "i32": 5, "f32": 6, "bool": 7, "str": 8, "array": 9, "u64": 10, "i64": 11, "f64": 12}
_SCALAR_FMT = {"u8": "<B", "i8": "<b", "u16": "<H", "i16": "<h", "u32": "<I", "i32": "<i", "f32": "<f", "bool": "<?", "u64": "<Q", "i64": "<q", "f64": "<d"}
GGML_F32, GGML_F16, GGML_I2_S = 0, 1, 36


def _gguf_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _gguf_value(kind: str, value) -> bytes:
    if kind == "str":
        return _gguf_str(value)
    if kind.startswith("["):
        inner = kind[1:-1]
        out = struct.pack("<IQ", _GGUF_TYPES[inner], len(value))
        return out + b"".join(_gguf_value(inner, v) for v in value)
    return struct.pack(_SCALAR_FMT[kind], value)


def write_gguf(path: str | Path, metadata: list[tuple[str, str, object]], tensors: list[tuple[str, int, list[int], bytes]]) -> None:
    """metadata: (key, type, value) with types u32, f32, str, bool, [str], [i32], ...;
    tensors: (name, ggml type id, shape in GGUF order (fastest first), bytes)."""
    align = 32
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for key, kind, value in metadata:
        tag = _GGUF_TYPES["array"] if kind.startswith("[") else _GGUF_TYPES[kind]
        out += _gguf_str(key) + struct.pack("<I", tag) + _gguf_value(kind, value)
    offset = 0
    for name, ggml_type, shape, data in tensors:
        out += _gguf_str(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        out += struct.pack("<IQ", ggml_type, offset)
        offset += (len(data) + align - 1) // align * align
    out += b"\0" * (-len(out) % align)
    for _, _, _, data in tensors:
        out += data + b"\0" * (-len(data) % align)
    Path(path).write_bytes(bytes(out))


def i2s_bytes(codes: np.ndarray, scale: float) -> bytes:
    """bitnet.cpp's I2_S (x86 layout): codes 0/1/2 for -1/0/+1; each block of 128 values in 32
    bytes, value j at byte j % 32, bits 6 - 2 * (j // 32); then one f32 scale in a 32-byte tail."""
    flat = (codes.reshape(-1).astype(np.int16) + 1).astype(np.uint8)
    assert flat.size % 128 == 0
    blocks = flat.reshape(-1, 4, 32)
    packed = (blocks[:, 0] << 6) | (blocks[:, 1] << 4) | (blocks[:, 2] << 2) | blocks[:, 3]
    tail = struct.pack("<f", scale) + b"\0" * 28
    return packed.astype(np.uint8).tobytes() + tail


def gguf_tokenizer_metadata(folder: Path, pre: str | None) -> list[tuple[str, str, object]]:
    """`tokenizer.ggml.*` as llama.cpp's converters write a byte-level BPE (gpt2) tokenizer."""
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab = dict(spec["model"]["vocab"])
    for added in spec["added_tokens"]:
        vocab[added["content"]] = added["id"]
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [5] * size
    for tok, i in vocab.items():
        tokens[i] = tok
        types[i] = 1
    for added in spec["added_tokens"]:
        types[added["id"]] = 3 if added["special"] else 4
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    meta = [("tokenizer.ggml.model", "str", "gpt2")]
    if pre is not None:
        meta.append(("tokenizer.ggml.pre", "str", pre))
    return meta + [("tokenizer.ggml.tokens", "[str]", tokens), ("tokenizer.ggml.token_type", "[i32]", types), ("tokenizer.ggml.merges", "[str]", merges)]


def untied_head(emb: np.ndarray) -> np.ndarray:
    """The output layer a GGUF replica gets when untied: distinct from the embeddings, f16-exact."""
    return (emb[::-1] * 0.5).astype(np.float16).astype(np.float32)


def write_bitnet_gguf(folder: str | Path, path: str | Path, arch: str = "bitnet-b1.58", untied: bool = False, pre: str | None = "llama-bpe", extra=()) -> Path:
    """A `bitnet_2b4t` replica as bitnet.cpp's converter + I2_S quantizer write it.

    untied: also writes `output.weight` (F16), as an untied model's file holds it. extra: more
    (name, ggml type, shape, bytes) tensors or (key, type, value) metadata, for strictness tests.
    """
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    t = read_safetensors(folder / "model.safetensors")
    hidden, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    key = lambda k: f"{arch}.{k}"  # noqa: E731
    meta = [
        ("general.architecture", "str", arch),
        ("general.name", "str", "bitnet2b_2501"),
        (key("vocab_size"), "u32", cfg["vocab_size"]),
        (key("context_length"), "u32", cfg["max_position_embeddings"]),
        (key("embedding_length"), "u32", hidden),
        (key("block_count"), "u32", cfg["num_hidden_layers"]),
        (key("feed_forward_length"), "u32", cfg["intermediate_size"]),
        (key("rope.dimension_count"), "u32", hidden // heads),
        (key("attention.head_count"), "u32", heads),
        (key("attention.head_count_kv"), "u32", kv),
        (key("attention.layer_norm_rms_epsilon"), "f32", cfg["rms_norm_eps"]),
        (key("rope.freq_base"), "f32", cfg["rope_theta"]),
        ("general.file_type", "u32", 40),
        ("tokenizer.ggml.bos_token_id", "u32", cfg["bos_token_id"]),
        ("tokenizer.ggml.eos_token_id", "u32", cfg["eos_token_id"]),
        ("tokenizer.ggml.add_bos_token", "bool", True),
    ] + gguf_tokenizer_metadata(folder, pre)
    f32 = lambda x: np.ascontiguousarray(x, np.float32).tobytes()  # noqa: E731
    f16 = lambda x: np.ascontiguousarray(x, np.float16).tobytes()  # noqa: E731
    emb = t["model.embed_tokens.weight"]
    tensors = [("token_embd.weight", GGML_F16, [hidden, cfg["vocab_size"]], f16(emb))]
    if untied:
        # A head distinct from the embeddings, so that using the wrong one shows.
        tensors.append(("output.weight", GGML_F16, [hidden, cfg["vocab_size"]], f16(untied_head(emb))))
    tensors.append(("output_norm.weight", GGML_F32, [hidden], f32(t["model.norm.weight"])))
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(cfg["num_hidden_layers"]):
        p, g = f"model.layers.{i}.", f"blk.{i}."
        tensors.append((g + "attn_norm.weight", GGML_F32, [hidden], f32(t[p + "input_layernorm.weight"])))
        tensors.append((g + "ffn_norm.weight", GGML_F32, [hidden], f32(t[p + "post_attention_layernorm.weight"])))
        sub_a, sub_f = t[p + "self_attn.attn_sub_norm.weight"], t[p + "mlp.ffn_sub_norm.weight"]
        tensors.append((g + "attn_sub_norm.weight", GGML_F32, [sub_a.size], f32(sub_a)))
        tensors.append((g + "ffn_sub_norm.weight", GGML_F32, [sub_f.size], f32(sub_f)))
        for hf, gg in names.items():
            codes = unpack_transformers(t[p + hf + ".weight"])
            # bitnet.cpp keeps 2B4T's weight_scale (mean|W|) as the I2_S scale.
            scale = float(t[p + hf + ".weight_scale"].reshape(-1)[0])
            n, k = codes.shape
            tensors.append((g + gg + ".weight", GGML_I2_S, [k, n], i2s_bytes(codes, scale)))
    for item in extra:
        (tensors if isinstance(item[1], int) else meta).append(item)
    write_gguf(path, meta, tensors)
    return Path(path)
