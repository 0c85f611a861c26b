"""Tokenizers, one truth: the core's byte-level BPE (what the browser build runs) and the GGUF
metadata -> tokenizer.json mapping give the `tokenizers` library's ids, for each llama.cpp
pre-tokenizer name binllm reads.

The reference pre-tokenizer of each name is built here with the `tokenizers` API from its
published form (GPT-2's ByteLevel, SmolLM's Digits + ByteLevel, Meta-Llama-3's Split regex +
ByteLevel), independently of the core's table; a small BPE vocabulary is trained with each.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest
from binllm import _core
from binllm.tokenizer import from_gguf, from_gguf_metadata
from helpers import TEXT
from test_browser import TOKENIZER_CASES
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]


def gpt2_pre():
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def smollm_pre():
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2_pre()])


def llama3_pre():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


# llama.cpp name -> (reference pre-tokenizer, llama.cpp's ignore_merges for the name).
NAMES = {
    "gpt-2": (gpt2_pre, False),
    "smollm": (smollm_pre, False),
    "llama-bpe": (llama3_pre, True),
    "llama3": (llama3_pre, True),
    "llama-v3": (llama3_pre, True),
    "falcon3": (llama3_pre, True),
    "falcon_e": (llama3_pre, True),
    "smaug-bpe": (llama3_pre, False),
}
CANONICAL = {gpt2_pre: "gpt-2", smollm_pre: "smollm", llama3_pre: "llama-bpe"}

TRICKY = [
    "1234567",
    "12345678901 and 9876543210.5",
    "I'M you'LL HE'D we'VE they'RE it'S don'T",
    "'s 't 're 've 'm 'll 'd 'S 'x 'hello",
    "ſ'ſ 'ſ 'ſx it'ſelf 'Sup 'LLama 'REd",
    "\r\n\r\n",
    "a\r\n\r\nb\r\n",
    "  \n",
    "x  \n  y",
    "trailing spaces   ",
    "   leading",
    " \t\n \u00a0x\u00a0\u00a0y",
    "\n\n\n",
    "\r\r\n\n\r",
    "tab\t\tsep\t",
    "👍🏽🤖 🦙🦙 😶\u200d🌫️",
    "日本語のテキスト 中文字符 한국어",
    "١٢٣٤٥٦٧ ۱۲۳ ४५६",
    "e\u0301 n\u0303 a\u0308\u0308b",
    "नमस्ते दुनिया สวัสดี",
    "$1,234.56 ...a.b .com ?!",
    "a\u200bb\u2028c\u2029d\u0085e\u000bf\u000cg",
    "\u180e\u3000\u2003x \x1c\x1d\x1e\x1f y\ufeffz \x00\x7f",
    "Ⅻ ½ ² ⅓",
    "x86_64 v2.0-rc1 4x4",
]


def random_strings(n: int, seed: int) -> list[str]:
    alphabet = list("aZé 'sStTlLdDmMrReEvV1234567890\r\n\t.,!?-_$") + [
        "\u00a0", "\u3000", "\u2028", "\u0085", "\u0301", "日", "ſ", "👍", "\u200b", "١", "Ⅻ", "½", "ा", "  ", "\r\n",
    ]  # fmt: skip
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(n)]


STRINGS = TOKENIZER_CASES + TRICKY + random_strings(400, seed=3)


def train(pre_factory, ignore_merges: bool) -> Tokenizer:
    """A small byte-level BPE trained with this pre-tokenizer, as tokenizer.json text's owner."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_factory()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([TEXT] + TOKENIZER_CASES + TRICKY, trainer)
    spec = json.loads(tok.to_str())
    spec["model"]["ignore_merges"] = ignore_merges
    return Tokenizer.from_str(json.dumps(spec))


@pytest.fixture(scope="module", params=sorted(NAMES))
def named(request):
    pre_factory, ignore_merges = NAMES[request.param]
    return request.param, train(pre_factory, ignore_merges)


# ------------------------------------------------------------------ GGUF files, metadata only


def _gguf_string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def write_gguf(path: Path, meta: dict) -> Path:
    """A GGUF v3 file holding `meta` (str, bool, int as u32, lists of str or i32) and no tensors."""
    out = [b"GGUF", struct.pack("<IQQ", 3, 0, len(meta))]
    for key, value in meta.items():
        out.append(_gguf_string(key))
        if isinstance(value, bool):
            out.append(struct.pack("<IB", 7, value))
        elif isinstance(value, int):
            out.append(struct.pack("<II", 4, value))
        elif isinstance(value, str):
            out.append(struct.pack("<I", 8) + _gguf_string(value))
        elif value and isinstance(value[0], int):
            out.append(struct.pack("<IIQ", 9, 5, len(value)) + struct.pack(f"<{len(value)}i", *value))
        else:
            out.append(struct.pack("<IIQ", 9, 8, len(value)) + b"".join(_gguf_string(v) for v in value))
    path.write_bytes(b"".join(out))
    return path


def ggml_metadata(tok: Tokenizer, pre: str | None) -> dict:
    """`tokenizer.ggml.*` as llama.cpp's converter writes them for `tok`."""
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    special = {t.content for t in tok.get_added_tokens_decoder().values()}
    spec = json.loads(tok.to_str())
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3 if t in special else 1 for t in tokens],
        "tokenizer.ggml.merges": [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]],
    }
    if pre is not None:
        meta["tokenizer.ggml.pre"] = pre
    return meta


# ------------------------------------------------------------------ tests


def test_core_tokenizer_json_matches_tokenizers(named):
    name, hf = named
    core = _core.Tokenizer.from_json(hf.to_str())
    for text in STRINGS:
        want = hf.encode(text).ids
        assert core.encode(text) == want, (name, text)
        assert core.decode(want) == hf.decode(want, skip_special_tokens=False), (name, text)
        assert core.decode(want, skip_special=True) == hf.decode(want, skip_special_tokens=True), (name, text)


@pytest.mark.parametrize("pre_factory", list(CANONICAL), ids=list(CANONICAL.values()))
def test_core_splits_like_tokenizers(pre_factory):
    """Every piece the reference pre-tokenizer makes becomes one token (ignore_merges), so the
    ids show each piece boundary: any split that differs changes them."""
    spec = json.loads(train(pre_factory, True).to_str())
    reference = Tokenizer.from_str(json.dumps(spec))
    vocab = spec["model"]["vocab"]
    for text in STRINGS:
        for piece, _ in reference.pre_tokenizer.pre_tokenize_str(text):
            vocab.setdefault(piece, len(vocab) + len(SPECIAL))
    hf = Tokenizer.from_str(json.dumps(spec))
    core = _core.Tokenizer.from_json(hf.to_str())
    for text in STRINGS:
        pieces = [p for p, _ in hf.pre_tokenizer.pre_tokenize_str(text)]
        want = hf.encode(text).ids
        assert len(want) == len(pieces) or any(s in text for s in SPECIAL)
        assert core.encode(text) == want, (text, pieces)


def test_gguf_metadata_tokenizes_like_tokenizers(named, tmp_path):
    name, hf = named
    meta = ggml_metadata(hf, name)
    path = write_gguf(tmp_path / "tok.gguf", meta)
    via_dict = from_gguf_metadata(meta)
    via_file = from_gguf(path)
    core = _core.Tokenizer.from_gguf(path)
    assert _core.gguf_tokenizer_json(str(path)) == _core.gguf_tokenizer_json(meta)
    for text in STRINGS:
        want = hf.encode(text).ids
        assert via_dict.encode(text).ids == want, (name, text)
        assert via_file.encode(text).ids == want, (name, text)
        assert core.encode(text) == want, (name, text)
    ids = hf.encode(TOKENIZER_CASES[-2]).ids
    assert via_file.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("name", sorted(set(NAMES) - {"falcon_e"}))  # falcon_e: BitNet's llama.cpp fork only
def test_llama_cpp_reads_the_same_metadata_alike(name, tmp_path):
    """llama.cpp, given the same tokenizer.ggml.* (and a stub llama architecture), gives the
    same ids: the name -> pre-tokenizer table agrees with llama.cpp's own."""
    llama_cpp = pytest.importorskip("llama_cpp")
    pre_factory, ignore_merges = NAMES[name]
    hf = train(pre_factory, ignore_merges)
    arch = {"general.architecture": "llama", "llama.context_length": 64, "llama.embedding_length": 64, "llama.block_count": 1}
    arch |= {"llama.feed_forward_length": 64, "llama.attention.head_count": 1, "llama.rope.dimension_count": 64}
    path = write_gguf(tmp_path / "tok.gguf", {**arch, **ggml_metadata(hf, name), "tokenizer.ggml.add_bos_token": False})
    llm = llama_cpp.Llama(str(path), n_ctx=64, vocab_only=True, verbose=False)
    try:
        for text in STRINGS:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == hf.encode(text).ids, (name, text)
    finally:
        llm.close()


def test_embedded_tokenizer_json_wins(tmp_path):
    hf = train(llama3_pre, True)
    meta = {**ggml_metadata(hf, "not-a-name"), "tokenizer.huggingface.json": hf.to_str()}
    path = write_gguf(tmp_path / "tok.gguf", meta)
    assert _core.gguf_tokenizer_json(str(path)) == hf.to_str()
    assert _core.Tokenizer.from_gguf(path).encode("I'M 1234567") == hf.encode("I'M 1234567").ids


def test_pre_tokenizer_names_follow_the_core_table():
    for factory, name in CANONICAL.items():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = factory()
        pre = json.loads(tok.to_str())["pre_tokenizer"]
        assert _core.pre_tokenizer_name(json.dumps(pre)) == name
    from binllm.convert import _llama_cpp_pre

    assert _llama_cpp_pre({"type": "ByteLevel", "add_prefix_space": True, "use_regex": True}) is None
    assert _llama_cpp_pre({"type": "Whitespace"}) is None
    assert _llama_cpp_pre(None) is None


@pytest.mark.parametrize("pre", ["qwen2", "default", "gpt2", "Llama-Bpe", None])
def test_unknown_pre_tokenizer_is_refused(pre, tmp_path):
    hf = train(gpt2_pre, False)
    meta = ggml_metadata(hf, pre)
    path = write_gguf(tmp_path / "tok.gguf", meta)
    needle = f"'{pre}'" if pre is not None else "no tokenizer.ggml.pre"
    for build in (lambda: from_gguf_metadata(meta), lambda: from_gguf(path), lambda: _core.Tokenizer.from_gguf(path)):
        with pytest.raises(_core.UnsupportedError, match="pre") as err:
            build()
        message = str(err.value)
        assert needle in message and "\n" not in message


def test_unknown_split_regex_is_refused():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_REGEX.replace("{1,3}", "{1,2}")), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    with pytest.raises(_core.UnsupportedError, match="Split"):
        _core.Tokenizer.from_json(tok.to_str())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="removed"), pre_tokenizers.ByteLevel(use_regex=False)]
    )
    with pytest.raises(_core.UnsupportedError, match="Split"):
        _core.Tokenizer.from_json(tok.to_str())


def test_added_tokens_are_matched_whole():
    hf = train(llama3_pre, True)
    hf.add_tokens([AddedToken("<tool>", special=False, normalized=False)])
    core = _core.Tokenizer.from_json(hf.to_str())
    for text in ["a<tool>b<|im_start|>x<|im_end|>", "<tool><tool>\r\n<s>1234567</s>"]:
        assert core.encode(text) == hf.encode(text).ids
