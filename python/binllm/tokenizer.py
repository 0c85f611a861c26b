"""Tokenizers for binllm models: a Hugging Face folder's ``tokenizer.json``, or the tokenizer
stored in a GGUF file's metadata, both as a ``tokenizers.Tokenizer``.

The GGUF mapping (``tokenizer.ggml.*`` -> tokenizer.json, pre-tokenizer chosen by
``tokenizer.ggml.pre``) lives in binllm's core (``binllm._core.gguf_tokenizer_json``), the same
code the browser build tokenizes with; an unknown pre-tokenizer is an ``UnsupportedError``."""

from __future__ import annotations

import os
from typing import Any, Union

from tokenizers import Tokenizer

from binllm import _core


def from_gguf_metadata(meta: dict[str, Any]) -> Tokenizer:
    """Builds the tokenizer a GGUF file's metadata describes (``tokenizer.huggingface.json``, or
    ``tokenizer.ggml.*``), as ``_core.gguf_read_metadata`` returns it."""
    return Tokenizer.from_str(_core.gguf_tokenizer_json(meta))


def from_gguf(path: Union[str, "os.PathLike[str]"]) -> Tokenizer:
    """Builds the tokenizer a GGUF file describes."""
    return Tokenizer.from_str(_core.gguf_tokenizer_json(str(path)))


def from_json(text: str, name: str = "tokenizer.json") -> Tokenizer:
    """A tokenizer from tokenizer.json's text (what ``_core.load_model`` returns with a model);
    `name` says where the text came from in an error.

    The text is also checked as generation's detokenizer (``_core.Detokenizer``) reads it, so a
    file it cannot hold (a token id of 2**31, which ``tokenizers`` accepts) is refused here, at
    load, and not at the first generation; the detokenizer itself is built on first use."""
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise _core.ModelFormatError(f"{name}: {e}") from e
    _core.Detokenizer.check(text, name)
    return tokenizer
