"""``binllm.Engine``: several generations at once on one model, for servers and batch jobs.

Any number of Python threads submit requests; one engine thread admits them into a running
batch (at most ``max_batch`` sequences), steps the batch a token at a time and hands each request
its text pieces as they are ready. A request that finishes, is cancelled or fails leaves the
batch at the next step and a queued one takes its place (continuous batching).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from typing import Any, Callable, Iterator, Optional, Sequence

from binllm._core import BinllmError, InvalidArgumentError

_DONE = object()


class QueueFullError(BinllmError):
    """The engine's queue holds ``max_queue`` requests already (a server answers 429)."""


class EngineClosedError(BinllmError):
    """The engine was closed."""


class Request:
    """One submitted generation. Iterate it for text pieces (blocks until each is ready), or
    call :meth:`text`. ``finish_reason`` is "stop" (end-of-sequence token or a stop string),
    "length" (``max_new_tokens`` or the context is full), "cancelled" or "error" (then
    ``error`` holds the exception, also raised by iteration) once done. ``completion_tokens``
    counts the tokens generated so far and grows every step.

    A cancelled request's text is what ``max_new_tokens=completion_tokens`` would have given:
    what the stream held back (half a UTF-8 character, as U+FFFD; text that might have begun a
    stop string) comes out as one last piece before the end, as the browser build's ``stop()``
    does."""

    def __init__(self, prompt_tokens: int, listener: Optional[Callable[[Optional[str]], None]]):
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finish_reason: Optional[str] = None
        self.error: Optional[BaseException] = None
        self._listener = listener
        self._pieces: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._done = threading.Event()

    # called by the engine thread
    def _emit(self, piece: str) -> None:
        if self._listener is None:
            self._pieces.put(piece)
            return
        try:
            self._listener(piece)
        except Exception as e:  # a failing listener ends its own request, not the engine
            self.error = e
            self._cancelled.set()

    def _finish(self, reason: str, error: Optional[BaseException] = None) -> None:
        if self.error is not None and reason == "cancelled":
            reason, error = "error", self.error
        self.finish_reason, self.error = reason, error
        self._done.set()
        if self._listener is None:
            self._pieces.put(_DONE)
            return
        try:
            self._listener(None)
        except Exception:  # nothing left to tell it
            pass

    # called by users
    def cancel(self) -> None:
        """Stops the generation at the next step; its sequence leaves the batch, and the text
        it held back comes out as a last piece."""
        self._cancelled.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._done.wait(timeout)

    def __iter__(self) -> Iterator[str]:
        if self._listener is not None:
            raise BinllmError("this request hands its pieces to its listener")
        while True:
            piece = self._pieces.get()
            if piece is _DONE:
                if self.error is not None:
                    raise self.error
                return
            yield piece

    def text(self) -> str:
        return "".join(self)


class Engine:
    """Runs many requests on one :class:`binllm.Model`, batched.

    ``max_batch`` sequences decode together; up to ``max_queue`` more wait. Thread-safe:
    :meth:`submit` from any thread. Use as a context manager, or call :meth:`close`."""

    def __init__(self, model, max_batch: int = 8, max_queue: int = 64):
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise InvalidArgumentError(f"max_batch must be a positive int, got {max_batch!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0:
            raise InvalidArgumentError(f"max_queue must be an int >= 0, got {max_queue!r}")
        self.model = model
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._lock = threading.Condition()
        self._queue: deque = deque()
        self._running: list = []
        self._closed = False
        self._counters = {"requests_total": 0, "requests_finished": 0, "prompt_tokens_total": 0, "generated_tokens_total": 0, "steps_total": 0}
        self._thread = threading.Thread(target=self._loop, name="binllm-engine", daemon=True)
        self._thread.start()

    def submit(
        self,
        prompt,
        max_new_tokens: int = 128,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: str | Sequence[str] | None = None,
        listener: Optional[Callable[[Optional[str]], None]] = None,
    ) -> Request:
        """Queues a generation (same arguments as :meth:`Model.generate`: ``prompt`` is a
        string, chat messages or a list of token ids). Bad values raise here, before anything
        is queued. ``listener``,
        when given, receives each text piece and then ``None`` on the engine thread (it must not
        block) instead of the request queueing them for iteration."""
        ids, params, stops = self.model._prepare(prompt, max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, stop)
        request = Request(len(ids), listener)
        with self._lock:
            if self._closed:
                raise EngineClosedError("the engine is closed")
            if len(self._queue) + len(self._running) >= self.max_batch + self.max_queue:
                raise QueueFullError(f"the engine's queue is full ({self.max_queue} requests waiting)")
            self._queue.append((request, ids, max_new_tokens, params, stops))
            self._counters["requests_total"] += 1
            self._counters["prompt_tokens_total"] += len(ids)
            self._lock.notify()
        return request

    def stats(self) -> dict[str, int]:
        """Counters for metrics: running and queued sequences, totals since start."""
        with self._lock:
            return {"running": len(self._running), "queued": len(self._queue), "max_batch": self.max_batch, **self._counters}

    def close(self) -> None:
        """Cancels what is queued or running and stops the engine thread."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ engine thread

    def _loop(self) -> None:
        core = self.model._engine()
        running: dict[int, Request] = {}
        while True:
            with self._lock:
                while not self._closed and not self._queue and not running:
                    self._lock.wait()
                if self._closed:
                    leftover = [r for r, *_ in self._queue]
                    self._queue.clear()
                    self._running = []
                    for sid, request in running.items():
                        self._cancel(core, sid, request)
                    for request in leftover + list(running.values()):
                        request._finish("cancelled")
                    return
                admitted = []
                while self._queue and len(running) + len(admitted) < self.max_batch:
                    admitted.append(self._queue.popleft())
                # Admitted requests count as running from the moment they leave the queue.
                self._running = list(running.values()) + [job[0] for job in admitted]
            ended: list[tuple[Request, str, Optional[BaseException]]] = []
            for request, ids, max_new, params, stops in admitted:
                try:
                    running[core.add(ids, max_new, stop=stops, **params)] = request
                except Exception as e:  # checked at submit already; reported, never fatal
                    ended.append((request, "error", e))
            for sid, request in list(running.items()):
                if request._cancelled.is_set():
                    self._cancel(core, sid, request)
                    del running[sid]
                    ended.append((request, "cancelled", None))
            events = []
            if running:
                try:
                    events = core.step()
                except Exception as e:  # a failing step ends the running requests, not the engine
                    ended += [(request, "error", e) for request in running.values()]
                    running.clear()
                    core = self.model._engine()
            for sid, text, tokens, reason, _ in events:
                request = running[sid]
                request.completion_tokens = tokens
                if text:
                    request._emit(text)
                if reason is not None:
                    del running[sid]
                    ended.append((request, reason, None))
            with self._lock:
                self._counters["steps_total"] += 1 if events else 0
                self._counters["requests_finished"] += len(ended)
                self._counters["generated_tokens_total"] += sum(r.completion_tokens for r, *_ in ended)
                self._running = list(running.values())
            for request, reason, error in ended:
                request._finish(reason, error)

    @staticmethod
    def _cancel(core, sid: int, request: Request) -> None:
        """Takes a cancelled sequence out of the core engine and hands its request the text the
        stream held back (not to a listener that failed: its request ends with that error)."""
        rest = core.cancel(sid)
        if rest and request.error is None:
            request._emit(rest)
