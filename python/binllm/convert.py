"""Convert a model binllm loads (Hugging Face folder or GGUF) into a GGUF file llama.cpp loads.

    >>> from binllm.convert import convert
    >>> summary = convert("bitnet-folder", "model.tq2_0.gguf", type="tq2_0")

The weights are written by binllm's core (``binllm._core.export_gguf``): ternary linears as
TQ2_0 / TQ1_0 with their exact codes and scale, float linears as F16, norms F32, embeddings
F16. This module gathers the tokenizer (``tokenizer.ggml.*`` plus the full ``tokenizer.json``
as ``tokenizer.huggingface.json``, which binllm reads first), and writes through a temporary
file that is renamed into place, so a failed conversion never leaves a half-written DST and
never touches SRC.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Union

from binllm import _core
from binllm._core import FileError, InvalidArgumentError, ModelFormatError, ModelNotFoundError
from binllm.files import file_written_whole

TYPES = ("tq2_0", "tq1_0", "f16")
EMBEDDING_TYPES = ("f16", "q8_0", "q6_k")

# llama.cpp's token types (llama_token_type).
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5

Progress = Callable[[str], None]
PathLike = Union[str, "os.PathLike[str]"]


def _llama_cpp_pre(pre: Optional[dict]) -> Optional[str]:
    """llama.cpp's ``tokenizer.ggml.pre`` for a tokenizer.json ``pre_tokenizer``, or None: the
    core's table of the names it implements (``binllm._core.pre_tokenizer_name``)."""
    if not pre:
        return None
    return _core.pre_tokenizer_name(json.dumps(pre))


def _merges(model: dict) -> list[str]:
    merges = model.get("merges", [])
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def tokenizer_metadata(folder: Path, vocab_size: int, bos: Optional[int], eos: Optional[int]) -> tuple[list, list[str]]:
    """``tokenizer.*`` metadata for a Hugging Face folder: (typed entries, warnings).

    Entries are (key, GGUF type tag, value) as ``_core.export_gguf`` takes them. The vocabulary
    is padded with ``[PAD{i}]`` tokens up to the model's embedding rows, as llama.cpp's
    converter does.
    """
    from tokenizers import Tokenizer

    notes: list[str] = []
    path = folder / "tokenizer.json"
    if not path.is_file():
        notes.append(f"{folder} has no tokenizer.json; the GGUF file carries no tokenizer")
        return [], notes
    text = path.read_text(encoding="utf-8")
    spec = json.loads(text)
    tok = Tokenizer.from_str(text)
    entries: list[tuple[str, str, Any]] = [("tokenizer.huggingface.json", "str", text)]

    model = spec.get("model", {})
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) and model.get("type") == "BPE"
    if not byte_level:
        notes.append(
            f"tokenizer model {model.get('type')!r} is not byte-level BPE; only binllm can read this file's "
            "tokenizer (tokenizer.huggingface.json), llama.cpp cannot"
        )
    else:
        vocab = tok.get_vocab(with_added_tokens=True)
        # Checked before the lists below are sized by it: one far id in a small file must
        # not cost gigabytes (and a token without an embedding row could never be used).
        largest = max(vocab, key=vocab.__getitem__, default=None)
        if largest is not None and vocab[largest] >= vocab_size:
            raise ModelFormatError(f"{path}: token {largest!r} has id {vocab[largest]}, beyond the model's {vocab_size} embedding rows")
        size = vocab_size
        tokens = [f"[PAD{i}]" for i in range(size)]
        types = [_UNUSED] * size
        for token, i in vocab.items():
            tokens[i] = token
            types[i] = _NORMAL
        for i, added in tok.get_added_tokens_decoder().items():
            types[i] = _CONTROL if added.special else _USER_DEFINED
        pre = _llama_cpp_pre(spec.get("pre_tokenizer"))
        if pre is None:
            pre = "default"
            notes.append("pre-tokenizer not recognised; llama.cpp will split text with its 'default' rules, which may differ")
        entries += [
            ("tokenizer.ggml.model", "str", "gpt2"),
            ("tokenizer.ggml.pre", "str", pre),
            ("tokenizer.ggml.tokens", "[str]", tokens),
            ("tokenizer.ggml.token_type", "[i32]", types),
            ("tokenizer.ggml.merges", "[str]", _merges(model)),
        ]
    tok_cfg = _read_json(folder / "tokenizer_config.json")
    if bos is not None:
        entries.append(("tokenizer.ggml.bos_token_id", "u32", bos))
        add_bos = tok_cfg.get("add_bos_token")
        if not isinstance(add_bos, bool):
            ids = tok.encode("a").ids
            add_bos = bool(ids) and ids[0] == bos
        entries.append(("tokenizer.ggml.add_bos_token", "bool", add_bos))
    if eos is not None:
        entries.append(("tokenizer.ggml.eos_token_id", "u32", eos))
    template = tok_cfg.get("chat_template")
    if isinstance(template, str) and template:
        entries.append(("tokenizer.chat_template", "str", template))
    return entries, notes


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def convert(
    src: PathLike,
    dst: PathLike,
    type: str = "tq2_0",
    progress: Union[bool, Progress, None] = None,
    embedding_type: str = "f16",
    force: bool = False,
) -> dict:
    """Loads SRC (a Hugging Face folder or a GGUF file) with binllm and writes it to DST as GGUF.

    ``type``: storage of the decoder's linear layers: ``tq2_0`` (2.06 bits/weight), ``tq1_0``
    (1.69) or ``f16``. Ternary types need a BitNet-style model; a float model is refused
    rather than silently ternarized. ``embedding_type``: ``f16``, ``q8_0`` or ``q6_k``. An existing DST is
    replaced only with ``force=True`` (and then only once the new file is complete).
    ``progress``: a callable ``progress(message)`` called at each stage, or True to print the
    stages to stderr.

    Returns a summary: architecture, RoPE pairing, tensor counts per type, bytes, seconds, the
    tensors that fell back to F16 and every warning (things llama.cpp will do differently).
    Warnings also go to ``progress`` when given, else to Python's ``warnings``.
    """
    if progress is True:
        say: Progress = lambda message: print(f"[binllm] {message}", file=sys.stderr, flush=True)  # noqa: E731
    else:
        say = progress or (lambda message: None)
    type = type.lower()
    if type not in TYPES:
        raise InvalidArgumentError(f"type must be one of {', '.join(TYPES)}, got {type!r}")
    if embedding_type not in EMBEDDING_TYPES:
        raise InvalidArgumentError(f"embedding_type must be one of {', '.join(EMBEDDING_TYPES)}, got {embedding_type!r}")
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise ModelNotFoundError(f"no model at '{src}'")
    if dst.resolve() == src.resolve() or _same_file(src, dst):
        raise InvalidArgumentError(f"destination '{dst}' is the source; choose another file name")
    if dst.is_dir():
        raise FileError(f"destination '{dst}' is a folder; give the .gguf file to write")
    if dst.suffix.lower() != ".gguf":
        raise InvalidArgumentError(f"destination '{dst}' must be a .gguf file")
    if dst.exists() and not force:
        raise FileError(f"destination '{dst}' exists; pass force=True (--force) to replace it")

    from binllm.model import Model

    start = time.perf_counter()
    say(f"loading {src}")
    model = Model.from_pretrained(src)
    config = model.config
    eos = config["eos_token_ids"][0] if config["eos_token_ids"] else None
    notes: list[str] = []
    if src.is_dir():
        metadata, notes = tokenizer_metadata(src, config["vocab_size"], config["bos_token_id"], eos)
        name = src.resolve().name
        source_gguf = None
    else:
        # The core carries the source's tokenizer and general.name (the stem when it has none).
        metadata, name, source_gguf = [], src.stem, str(src)

    with file_written_whole(dst, "part") as tmp:  # also removes what a killed convert to DST left
        say(f"writing {dst} ({type})")
        report = _core.export_gguf(
            model._core, str(tmp), type=type, embedding_type=embedding_type, name=name, metadata=metadata, source_gguf=source_gguf
        )
    counts: dict[str, int] = {}
    for _, dtype, _ in report["tensors"]:
        counts[dtype] = counts.get(dtype, 0) + 1
    warn = notes + report["warnings"]
    for w in warn:
        # With a progress channel (the CLI) warnings go there; a library caller gets Python warnings.
        if progress:
            say(f"warning: {w}")
        else:
            warnings.warn(f"binllm convert: {w}", stacklevel=2)
    summary = {
        "source": str(src),
        "destination": str(dst),
        "type": type,
        "embedding_type": embedding_type,
        "architecture": report["architecture"],
        "rope_style": report["rope_style"],
        "permuted_qk": report["permuted_qk"],
        "tensors": len(report["tensors"]),
        "tensor_types": counts,
        "bytes": dst.stat().st_size,
        "seconds": round(time.perf_counter() - start, 3),
        "fallbacks": report["fallbacks"],
        "warnings": warn,
        "max_scale_rounding": report["max_scale_rounding"],
    }
    say(f"wrote {dst}: {summary['bytes'] / 2**20:.1f} MiB in {summary['seconds']:.1f} s")
    return summary


__all__ = ["convert", "tokenizer_metadata", "TYPES", "EMBEDDING_TYPES"]
