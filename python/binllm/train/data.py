"""Text files -> byte-level BPE tokenizer -> token streams for training and held-out evaluation.

Each file is split once, at a line boundary, into a training head and a held-out tail
(`heldout_fraction` of its characters), so every source is represented in both. Files are
joined with the end-of-text token. The tokenizer is trained on the training heads only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from binllm._core import InvalidArgumentError
from binllm.train.export import BOS, EOS


def read_texts(paths: list[str | Path], heldout_fraction: float) -> tuple[list[str], list[str]]:
    """(training texts, held-out texts), one of each per file."""
    train, heldout = [], []
    for path in paths:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        cut = len(text) - int(len(text) * heldout_fraction)
        newline = text.find("\n", cut)
        cut = len(text) if heldout_fraction <= 0 else (newline + 1 if newline >= 0 else cut)
        train.append(text[:cut])
        heldout.append(text[cut:])
    return train, heldout


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer of exactly `vocab_size` ids, `<s>` = 0 and `</s>` = 1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    # A small corpus can stop short of vocab_size: pad so the ids cover the embedding rows.
    missing = vocab_size - tokenizer.get_vocab_size()
    if missing > 0:
        tokenizer.add_tokens([f"<unused_{i}>" for i in range(missing)])
    return tokenizer


def encode(tokenizer, texts: list[str]) -> np.ndarray:
    """All texts as one token stream (int32), each followed by `</s>`."""
    eos = tokenizer.token_to_id(EOS)
    parts = []
    for text in texts:
        # Encode in line-aligned chunks: one huge string is slow and memory-hungry to pre-tokenize.
        lines = text.splitlines(keepends=True)
        chunks = ["".join(lines[i : i + 2000]) for i in range(0, len(lines), 2000)]
        for encoding in tokenizer.encode_batch(chunks):
            parts.append(np.asarray(encoding.ids, np.int32))
        parts.append(np.array([eos], np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


class Batches:
    """Random windows of `context + 1` tokens from a stream, drawn with a seeded generator."""

    def __init__(self, tokens: np.ndarray, batch_size: int, context: int, seed: int):
        if len(tokens) <= context + 1:
            raise InvalidArgumentError(f"{len(tokens)} training tokens do not fill one window of {context + 1}")
        self.tokens = torch.from_numpy(tokens.astype(np.int64))
        self.batch_size, self.context = batch_size, context
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        starts = torch.randint(0, len(self.tokens) - self.context - 1, (self.batch_size,), generator=self.generator)
        return torch.stack([self.tokens[s : s + self.context + 1] for s in starts.tolist()])


def windows(tokens: np.ndarray, context: int, limit: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of `context + 1` tokens (each predicts `context` next tokens)."""
    count = (len(tokens) - 1) // context
    if limit is not None:
        count = min(count, limit)
    t = torch.from_numpy(tokens.astype(np.int64))
    return torch.stack([t[i * context : i * context + context + 1] for i in range(count)]) if count else torch.zeros(0, context + 1, dtype=torch.long)
