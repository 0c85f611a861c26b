"""Chat templates (Jinja, as Hugging Face writes them) rendered with bounded time and memory.

A template comes with the model file, so it is untrusted input. Jinja's sandbox stops attribute
tricks but not work: ``{{ 'x' * 3000000000 }}`` allocated 5.9 GB and nested loops hung
``--chat``. Here every template-code line checks a deadline (a trace hook on the template's own
frames only, so the cost is on template code), and the operations that make one big object in a
single step are checked before they run: ``*``, ``**`` and ``+``, the ``str`` methods and filters
that take a width or a replacement, format strings' widths, and the length of every block's output. Every failure is a
:class:`~binllm.ModelFormatError` (the template is broken) or an
:class:`~binllm.InvalidArgumentError` (the template refused these messages) starting
``chat template:``.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any

from binllm._core import BinllmError, InvalidArgumentError, ModelFormatError

MAX_CHARS = 1 << 20  # a chat prompt longer than this is far beyond any model's context
MAX_SECONDS = 2.0
MAX_INT_ARGUMENT = MAX_CHARS  # widths and counts handed to str methods and filters

# str methods and filters that build text from a width or count argument.
_SIZED_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_SIZED_FILTERS = ("center", "indent", "wordwrap", "truncate")


def _too_big(what: str) -> ModelFormatError:
    return ModelFormatError(f"chat template: {what} would exceed {MAX_CHARS} characters")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 0


def _check_ints(name: str, args: tuple, kwargs: dict) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and abs(value) > MAX_INT_ARGUMENT:
            raise _too_big(f"'{name}' with {value}")


def _check_format(name: str, spec: Any, args: tuple) -> None:
    """A format string's own widths (``'{:>3000000000}'``, ``'%3000000000d'``) and the
    ``*`` widths it takes from ``args``."""
    if isinstance(spec, str):
        for digits in re.findall(r"\d{7,}", spec):
            if int(digits) > MAX_INT_ARGUMENT:
                raise _too_big(f"'{name}' with width {digits}")
    _check_ints(name, args, {})


def _replaced_size(text: str, old: str, new: str) -> int:
    count = len(text) + 1 if old == "" else text.count(old)
    return len(text) + count * (len(new) - len(old))


def _environment():
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from jinja2.utils import Namespace
    except ImportError as e:  # pragma: no cover
        raise BinllmError("chat templates need jinja2: pip install jinja2") from e

    class BoundedNamespace(Namespace):
        """``namespace()``: a value set in a loop can double each turn; its size is checked."""

        def __setitem__(self, name, value):
            if _size(value) > MAX_CHARS:
                raise _too_big(f"namespace value '{name}'")
            super().__setitem__(name, value)

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context, operator_name, left, right):
            if operator_name == "*":
                for seq, n in ((left, right), (right, left)):
                    if _size(seq) and isinstance(n, int) and _size(seq) * n > MAX_CHARS:
                        raise _too_big("a repetition")
            elif operator_name == "**":
                if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 64:
                    raise ModelFormatError(f"chat template: {left} ** {right} is too large a number")
            elif operator_name == "%":
                _check_format("%", left, right if isinstance(right, tuple) else (right,))
            elif _size(left) + _size(right) > MAX_CHARS:
                raise _too_big("a concatenation")
            return super().call_binop(context, operator_name, left, right)

        def wrap_str_format(self, value):
            """``str.format``/``format_map``, which the sandbox hands out as a wrapper."""
            wrapped = super().wrap_str_format(value)
            if wrapped is None:
                return None

            def checked(*args, **kwargs):
                _check_format(value.__name__, value.__self__, args)
                _check_ints(value.__name__, (), kwargs)
                return wrapped(*args, **kwargs)

            return checked

        @staticmethod
        def concat(pieces):
            """Joins a block's output (a macro's, a ``set`` block's, the whole template's)
            once its length is known to be within bounds."""
            kept, total = [], 0
            for piece in pieces:
                total += len(piece)
                if total > MAX_CHARS:
                    raise _too_big("the rendered text")
                kept.append(piece)
            return "".join(kept)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
            # '~' is not interceptable: a macro doubling its argument stops here.
            if any(_size(value) > MAX_CHARS for value in (*args, *kwargs.values())):
                raise _too_big("an argument")
            name = getattr(__obj, "__name__", "")
            if isinstance(getattr(__obj, "__self__", None), str):
                if name in _SIZED_METHODS:
                    _check_ints(name, args, kwargs)
                if name == "replace" and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
                    if _replaced_size(__obj.__self__, args[0], args[1]) > MAX_CHARS:
                        raise _too_big("'replace'")
            return super().call(__context, __obj, *args, **kwargs)

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["namespace"] = BoundedNamespace
    for name in _SIZED_FILTERS:
        env.filters[name] = _checked_filter(name, env.filters[name])
    format_filter = env.filters["format"]

    def checked_format(value, *args, **kwargs):
        _check_format("format", value, args)
        _check_ints("format", (), kwargs)
        return format_filter(value, *args, **kwargs)

    env.filters["format"] = checked_format
    replace = env.filters["replace"]

    def checked_replace(eval_ctx, text, old, new, count=None):
        if isinstance(text, str) and isinstance(old, str) and isinstance(new, str) and _replaced_size(text, old, new) > MAX_CHARS:
            raise _too_big("'replace'")
        return replace(eval_ctx, text, old, new, count)

    checked_replace.jinja_pass_arg = replace.jinja_pass_arg  # type: ignore[attr-defined]
    env.filters["replace"] = checked_replace
    return env


def _checked_filter(name, function):
    def checked(*args, **kwargs):
        _check_ints(name, args[1:], kwargs)
        return function(*args, **kwargs)

    if hasattr(function, "jinja_pass_arg"):
        checked.jinja_pass_arg = function.jinja_pass_arg  # type: ignore[attr-defined]
    return checked


class _Deadline:
    """A trace hook that stops template code (frames compiled from ``<template>``) once
    ``seconds`` have passed; other frames run untraced."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def __call__(self, frame, event, arg):
        if frame.f_code.co_filename != "<template>":
            return None
        self._check()
        return self._line

    def _line(self, frame, event, arg):
        self._check()
        return self._line

    def _check(self):
        if time.monotonic() > self.end:
            raise ModelFormatError(f"chat template: rendering took more than {MAX_SECONDS:g} s")


def render(template: str, **context: Any) -> str:
    """The template rendered with ``context``; ``raise_exception(message)`` is available to it."""
    from jinja2 import TemplateError

    def raise_exception(message):
        raise InvalidArgumentError(f"chat template: {message}")

    previous = sys.gettrace()
    sys.settrace(_Deadline(MAX_SECONDS))
    try:
        text = _environment().from_string(template).render(raise_exception=raise_exception, **context)
    except TemplateError as e:
        raise ModelFormatError(f"chat template: {e}") from None
    except RecursionError:
        raise ModelFormatError("chat template: recursion too deep") from None
    finally:
        sys.settrace(previous)
    if len(text) > MAX_CHARS:
        raise _too_big("the rendered prompt")
    return text

