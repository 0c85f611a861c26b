"""How to install an optional part of binllm, said the same way everywhere it is missing."""

from __future__ import annotations

# What each extra brings beyond the base package (pyproject.toml's optional-dependencies).
_NOTES = {
    # PyPI's default torch wheel for Linux carries CUDA (gigabytes); the CPU build is smaller.
    "train": "; for the CPU-only torch first: pip install torch --index-url https://download.pytorch.org/whl/cpu",
}


def install_hint(extra: str, what: str) -> str:
    """One line: `what` needs the extra, and the pip commands for an installed package and for
    a source checkout (binllm is built from this repository, not yet on PyPI)."""
    return f"{what}: pip install 'binllm[{extra}]' (from a checkout of binllm: pip install '.[{extra}]'){_NOTES.get(extra, '')}"
