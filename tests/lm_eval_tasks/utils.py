"""Small offline tasks for binllm's lm-evaluation-harness backend, built from PEP 8 (public
domain, shipped in benches/data/pep-0008.txt): no download, deterministic.

- binllm_cloze (multiple_choice, HellaSwag-style): a sentence of PEP 8, then pick the sentence
  that follows it from four (the true one and three drawn from other paragraphs, seeded).
- binllm_lastword (loglikelihood, LAMBADA-style): a paragraph without its last word; the
  model must give the word (acc: it is the greedy continuation; perplexity of the word).
- binllm_lastword_gen (generate_until): the same, generated greedily (exact match).
- binllm_rolling (loglikelihood_rolling): each paragraph's word/byte perplexity.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

TEXT = Path(__file__).resolve().parents[2] / "benches" / "data" / "pep-0008.txt"


def paragraphs() -> list[str]:
    """Prose paragraphs: no code blocks, headings, lists or markup-heavy lines."""
    out = []
    for block in re.split(r"\n\s*\n", TEXT.read_text(encoding="utf-8")):
        lines = block.split("\n")
        if any(line.startswith((" ", "\t", "-", "*", "..", "=", ":")) for line in lines):
            continue
        text = " ".join(line.strip() for line in lines)
        if "``" in text or ":pep:" in text or "_" in text or not text.endswith(".") or not 80 <= len(text) <= 600:
            continue
        out.append(text)
    return out


def sentences(paragraph: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", paragraph) if len(s) > 20]


def _dataset(docs: list[dict]):
    import datasets

    return {"test": datasets.Dataset.from_list(docs)}


def cloze(limit: int | None = None, seed: int = 0, **kwargs):
    rng = random.Random(seed)
    paras = paragraphs()
    docs = []
    for p_index, p in enumerate(paras):
        sents = sentences(p)
        for i in range(len(sents) - 1):
            others = [s for j, q in enumerate(paras) if j != p_index for s in sentences(q)]
            choices = [sents[i + 1], *rng.sample(others, 3)]
            rng.shuffle(choices)
            docs.append({"context": sents[i], "choices": choices, "gold": choices.index(sents[i + 1])})
    return _dataset(docs[:limit])


def lastword(limit: int | None = None, **kwargs):
    docs = []
    for p in paragraphs():
        body = p.rstrip(".")
        head, _, word = body.rpartition(" ")
        if head and word.isalpha():
            docs.append({"context": head, "word": word, "text": p})
    return _dataset(docs[:limit])
