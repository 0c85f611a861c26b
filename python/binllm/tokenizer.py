"""Tokenizers for binllm models: a Hugging Face folder's ``tokenizer.json``, or the tokenizer
stored in a GGUF file's metadata, both as a ``tokenizers.Tokenizer``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from binllm._core import UnsupportedError

# llama.cpp's pre-tokenizer names whose splitting matches GPT-2's byte-level regex, with the
# extra rule each adds.
_DIGIT_SPLITTING = {"smollm", "smaug-bpe"}


def from_gguf_metadata(meta: dict[str, Any]) -> Tokenizer:
    """Builds the tokenizer a GGUF file describes (``tokenizer.ggml.*``)."""
    if "tokenizer.huggingface.json" in meta:
        return Tokenizer.from_str(meta["tokenizer.huggingface.json"])
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if kind is None or tokens is None:
        raise UnsupportedError("the GGUF file carries no tokenizer (no tokenizer.ggml.model / tokens)")
    if kind != "gpt2":
        raise UnsupportedError(f"GGUF tokenizer model '{kind}': binllm reads byte-level BPE ('gpt2') tokenizers")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if meta.get("tokenizer.ggml.pre") in _DIGIT_SPLITTING:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    # Control tokens (type 3) and user-defined ones (type 4) are matched whole, never split.
    types = meta.get("tokenizer.ggml.token_type", [])
    special = [tokens[i] for i, t in enumerate(types) if t in (3, 4)]
    if special:
        from tokenizers import AddedToken

        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    return tok


def from_folder(path: Path) -> Tokenizer:
    f = path / "tokenizer.json"
    if not f.is_file():
        raise FileNotFoundError(f"{path} has no tokenizer.json")
    return Tokenizer.from_file(str(f))


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
