"""binllm: run 1-bit and ternary (1.58-bit) LLMs fast on CPUs and in the browser.

The compute lives in a Rust core (``binllm._core``); this package is the Python face of it.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from binllm import kernels
from binllm._core import (
    BackendError,
    BinllmError,
    FileError,
    InvalidArgumentError,
    ModelFormatError,
    ModelNotFoundError,
    UnsupportedError,
)
from binllm.engine import Engine
from binllm.model import Model

try:
    __version__ = _version("binllm")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "BinllmError",
    "InvalidArgumentError",
    "ModelFormatError",
    "UnsupportedError",
    "BackendError",
    "FileError",
    "ModelNotFoundError",
    "kernels",
    "Engine",
    "Model",
    "__version__",
]
