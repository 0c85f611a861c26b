"""``binllm serve``: an OpenAI-compatible HTTP server over :class:`binllm.engine.Engine`.

One process serves one model. The event loop (uvicorn + starlette) parses and validates
requests, counts prompt tokens against the context, and submits them to the engine, which
batches every running generation on its own thread. Text pieces come back through the request's
listener (``loop.call_soon_threadsafe``, never blocking the engine) and leave as JSON or as
server-sent events ending in ``data: [DONE]``.

Invariants: every reply a client can see, errors included, is OpenAI-shaped JSON
(``{"error": {"message", "type", "param", "code"}}``), never a traceback; a client that goes
away cancels its request, so its sequence leaves the batch at the next step; the server keeps
no state between requests, so replicas behind a load balancer need nothing shared.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from binllm._core import BinllmError
from binllm.engine import EngineClosedError, QueueFullError
from binllm.extras import install_hint

try:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
except ImportError as e:  # pragma: no cover - the CLI turns this into one line
    raise BinllmError(install_hint("serve", "binllm serve needs starlette and uvicorn")) from e

log = logging.getLogger("binllm.server")

MAX_BODY_BYTES = 16 * 2**20
MAX_STOP_STRINGS = 4  # OpenAI's limit
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat runs to the context
TOKEN_RATE_WINDOW_S = 10.0
_GONE = object()  # the client disconnected


class ApiError(Exception):
    """An error a client gets as OpenAI-shaped JSON with this HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code, self.headers = status, message, type, param, code, headers

    def response(self) -> JSONResponse:
        return _error_response(self.status, self.message, self.type, self.param, self.code, self.headers)


def _error_response(status: int, message: str, type: str, param: str | None = None, code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status_code=status, headers=headers)


# ---------------------------------------------------------------------------- request values


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


def _int(body: dict, name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, f"'{name}' must be an integer, got {json.dumps(value)}")
    if value < minimum:
        raise _bad(name, f"'{name}' must be >= {minimum}, got {value}")
    return value


def _number(body: dict, name: str, low: float, high: float, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(name, f"'{name}' must be a number, got {json.dumps(value)}")
    if not (low < value if low_open else low <= value) or value > high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise _bad(name, f"'{name}' must be in {interval}, got {value}")
    return float(value)


def _stop(body: dict) -> list[str] | None:
    value = body.get("stop")
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or any(not isinstance(s, str) or not s for s in stops):
        raise _bad("stop", "'stop' must be a non-empty string or a list of them")
    if len(stops) > MAX_STOP_STRINGS:
        raise _bad("stop", f"'stop' takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}")
    return stops or None


def _unsupported(body: dict, name: str, ok) -> None:
    """Refuses a known OpenAI option this server does not implement, unless its value is a no-op."""
    if name in body and body[name] is not None and not ok(body[name]):
        raise ApiError(400, f"'{name}' = {json.dumps(body[name])} is not supported by this server", param=name, code="unsupported_value")


def _sampling(body: dict) -> dict:
    """The sampling options both endpoints share, as Engine.submit arguments."""
    n = _int(body, "n", 1)
    if n not in (None, 1):
        raise ApiError(400, f"'n' must be 1 on this server, got {n}", param="n", code="unsupported_value")
    for name in ("presence_penalty", "frequency_penalty"):
        _unsupported(body, name, lambda v: v == 0)
    _unsupported(body, "logit_bias", lambda v: v == {})
    seed = _int(body, "seed", 0)
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise _bad("stream_options", "'stream_options' must be an object")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise _bad("stream", "'stream' must be a boolean")
    return {
        "temperature": _number(body, "temperature", 0.0, 2.0),
        "top_p": _number(body, "top_p", 0.0, 1.0, low_open=True),
        # Extensions llama.cpp's server and vLLM also take (the openai client sends them in extra_body).
        "top_k": _int(body, "top_k", 0),
        "min_p": _number(body, "min_p", 0.0, 1.0) or 0.0,
        "repetition_penalty": _number(body, "repetition_penalty", 0.0, 1e9, low_open=True) or 1.0,
        # Without a seed every request samples differently, as OpenAI's do.
        "seed": secrets.randbits(32) if seed is None else seed,
        "stop": _stop(body),
        "stream": bool(stream),
        "include_usage": bool((stream_options or {}).get("include_usage", False)),
    }


def _completion_prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        raise ApiError(400, "one prompt per request on this server (send the others as their own requests)", param="prompt", code="unsupported_value")
    if isinstance(prompt, list):
        raise ApiError(400, "'prompt' as token ids is not supported: send text", param="prompt", code="unsupported_value")
    if not isinstance(prompt, str):
        raise _bad("prompt", "'prompt' must be a string")
    if not prompt:
        raise _bad("prompt", "'prompt' is empty")
    _unsupported(body, "echo", lambda v: v is False)
    _unsupported(body, "suffix", lambda v: v == "")
    _unsupported(body, "logprobs", lambda v: False)
    _unsupported(body, "best_of", lambda v: v == 1)
    return prompt


def _chat_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad("messages", f"messages[{i}] must be an object with a string 'role'")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if any(not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str) for p in content):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported", param="messages", code="unsupported_value")
            content = "".join(p["text"] for p in content)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise _bad("messages", f"messages[{i}].content must be a string or a list of text parts")
        out.append({"role": m["role"], "content": content})
    _unsupported(body, "logprobs", lambda v: v is False)
    _unsupported(body, "top_logprobs", lambda v: False)
    _unsupported(body, "tools", lambda v: v == [])
    _unsupported(body, "functions", lambda v: v == [])
    _unsupported(body, "response_format", lambda v: isinstance(v, dict) and v.get("type") == "text")
    return out


# ---------------------------------------------------------------------------- metrics


class _Metrics:
    """The server's own counters; /metrics adds the engine's stats to them."""

    def __init__(self):
        self.started = time.monotonic()
        self.http: dict[tuple[str, int], int] = {}
        self.in_flight = 0
        self.finished: dict[str, int] = {}
        self.completion_tokens = 0
        self._recent: deque = deque()  # (time, tokens) to rate the last TOKEN_RATE_WINDOW_S

    def tokens(self, n: int) -> None:
        if n > 0:
            self.completion_tokens += n
            self._recent.append((time.monotonic(), n))

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - TOKEN_RATE_WINDOW_S:
            self._recent.popleft()
        return sum(n for _, n in self._recent) / max(min(TOKEN_RATE_WINDOW_S, now - self.started), 1e-3)


# engine.stats() keys: Prometheus name, type, help. Keys a newer engine adds go out untyped.
_ENGINE_STATS = {
    "running": ("binllm_running", "gauge", "sequences in the batch now"),
    "queued": ("binllm_queued", "gauge", "requests waiting for a batch slot"),
    "max_batch": ("binllm_max_batch", "gauge", "most sequences in a batch"),
    "requests_total": ("binllm_engine_requests_total", "counter", "requests submitted to the engine"),
    "requests_finished": ("binllm_engine_requests_finished_total", "counter", "requests the engine finished (any reason)"),
    "prompt_tokens_total": ("binllm_engine_prompt_tokens_total", "counter", "prompt tokens submitted"),
    "generated_tokens_total": ("binllm_engine_generated_tokens_total", "counter", "tokens generated by finished requests"),
    "steps_total": ("binllm_engine_steps_total", "counter", "batch steps (one token for each running sequence)"),
}


def _prometheus(stats: dict, metrics: _Metrics, ctx: int) -> str:
    lines = []

    def metric(name: str, kind: str, help: str, samples) -> None:
        lines.append(f"# HELP {name} {help}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines.append(f"{name}{{{label_text}}} {value}" if labels else f"{name} {value}")

    for key, value in stats.items():
        name, kind, help = _ENGINE_STATS.get(key, (f"binllm_engine_{key}", "untyped", f"engine stats: {key}"))
        metric(name, kind, help, [({}, value)])
    metric("binllm_context_tokens", "gauge", "context per sequence (prompt + completion)", [({}, ctx)])
    metric("binllm_http_requests_total", "counter", "HTTP requests answered, by path and status", [({"path": p, "code": c}, n) for (p, c), n in sorted(metrics.http.items())])
    metric("binllm_http_requests_in_flight", "gauge", "HTTP requests being answered now", [({}, metrics.in_flight)])
    metric("binllm_completions_total", "counter", "generations finished, by finish reason (cancelled: the client went away)", [({"reason": r}, n) for r, n in sorted(metrics.finished.items())])
    metric("binllm_completion_tokens_total", "counter", "tokens generated for clients", [({}, metrics.completion_tokens)])
    metric("binllm_tokens_per_second", "gauge", f"tokens generated a second over the last {TOKEN_RATE_WINDOW_S:g} s", [({}, f"{metrics.tokens_per_second():.3f}")])
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- generations


class _Generation:
    """One engine request seen from the event loop: its pieces arrive in an asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, metrics: _Metrics):
        self.loop, self.metrics = loop, metrics
        self.queue: asyncio.Queue = asyncio.Queue()
        self.request: Any = None
        self.gone = False
        self._counted = 0

    def listener(self, piece: str | None) -> None:
        # On the engine thread: hand over, never block, never raise into the engine.
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, piece)
        except RuntimeError:  # the loop is closed: the server stopped
            pass

    def _count(self) -> None:
        n = self.request.completion_tokens
        self.metrics.tokens(n - self._counted)
        self._counted = n

    async def pieces(self) -> AsyncIterator[str]:
        """Text until the request is done or the client went away: each time, all the pieces
        that have arrived, joined (one event for several tokens when the loop falls behind)."""
        end = False
        while not end:
            ready = [await self.queue.get()]
            while not self.queue.empty():
                ready.append(self.queue.get_nowait())
            for i, piece in enumerate(ready):
                if piece is None or piece is _GONE:
                    ready, end = ready[:i], True
                    break
            self._count()
            if ready:
                yield "".join(ready)
        reason = "cancelled" if self.gone else self.request.finish_reason
        self.metrics.finished[reason] = self.metrics.finished.get(reason, 0) + 1

    async def watch_disconnect(self, receive) -> None:
        """Cancels the request when the client disconnects (runs beside the reply)."""
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except OSError as e:  # the connection broke on our side too
            log.debug("connection lost: %s", e)
        if not self.request.done:
            self.gone = True
            self.request.cancel()
            self.queue.put_nowait(_GONE)


class _Reply(Response):
    """Runs a generation while watching for the client going away. ``events`` (streaming)
    yields server-sent events; otherwise ``result`` waits for the end and returns the reply."""

    def __init__(self, generation: _Generation, events: AsyncIterator[bytes] | None = None, result=None):
        self.generation, self.events, self.result = generation, events, result
        super().__init__(status_code=200)

    async def __call__(self, scope, receive, send) -> None:
        watcher = asyncio.ensure_future(self.generation.watch_disconnect(receive))
        try:
            if self.events is not None:
                headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                async for event in self.events:
                    await send({"type": "http.response.body", "body": event, "more_body": True})
                if not self.generation.gone:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                response = await self.result()
                if not self.generation.gone:
                    await response(scope, receive, send)
        except OSError:  # the client went away mid-write
            self.generation.gone = True
        finally:
            watcher.cancel()
            if not self.generation.request.done:
                self.generation.request.cancel()


def _sse(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def _failure(request) -> ApiError | None:
    """The error a finished request reports, if it did not finish normally."""
    if request.finish_reason == "error":
        log.error("generation failed", exc_info=request.error)
        return ApiError(500, f"generation failed: {request.error}", type="server_error", code="generation_failed")
    if request.finish_reason == "cancelled":
        return ApiError(503, "the server is shutting down", type="server_error", code="unavailable")
    return None


class _Server:
    """The app's state: engine, model name, context, key, metrics."""

    def __init__(self, engine, model_name: str, aliases: tuple[str, ...], ctx: int, api_key: str | None):
        self.engine, self.model_name, self.ctx, self.api_key = engine, model_name, ctx, api_key
        self.names = {model_name, *aliases}
        self.created = int(time.time())
        self.metrics = _Metrics()

    # ---------------------------------------------------------------- plumbing

    async def body(self, request: Request) -> dict:
        size = 0
        chunks = []
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ApiError(413, f"the request body is over {MAX_BODY_BYTES // 2**20} MiB", code="request_too_large")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json")
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise _bad("model", "'model' must be a string")
        if model is not None and model not in self.names:
            raise ApiError(404, f"the model '{model}' does not exist; this server serves '{self.model_name}'", param="model", code="model_not_found")
        return body

    def submit(self, prompt, chat: bool, max_tokens: int | None, options: dict, listener):
        """Counts the prompt's tokens, fits max_tokens into the context, submits (threadpool)."""
        model = self.engine.model
        param = "messages" if chat else "prompt"
        text = model.apply_chat_template(prompt) if chat else prompt
        prompt_tokens = len(model.encode(text))
        if prompt_tokens >= self.ctx:
            raise ApiError(
                400,
                f"this model's maximum context length is {self.ctx} tokens, and the prompt is {prompt_tokens} tokens (leave room for at least one completion token)",
                param=param,
                code="context_length_exceeded",
            )
        # As in Model.generate, the context bounds the KV cache: the last token sampled needs
        # no slot, so a prompt of P tokens leaves room for ctx - P + 1.
        room = self.ctx - prompt_tokens + 1
        max_new_tokens = room if max_tokens is None else min(max_tokens, room)
        sampling = {k: v for k, v in options.items() if k not in ("stream", "include_usage")}
        return self.engine.submit(prompt, max_new_tokens=max_new_tokens, listener=listener, **sampling)

    async def start(self, prompt, chat: bool, max_tokens: int | None, options: dict) -> _Generation:
        generation = _Generation(asyncio.get_running_loop(), self.metrics)
        try:
            generation.request = await run_in_threadpool(self.submit, prompt, chat, max_tokens, options, generation.listener)
        except QueueFullError as e:
            raise ApiError(429, f"the server is busy: {e}; retry shortly", type="rate_limit_error", code="rate_limit_exceeded", headers={"retry-after": "1"})
        except EngineClosedError:
            raise ApiError(503, "the server is shutting down", type="server_error", code="unavailable")
        except (BinllmError, ValueError, TypeError) as e:  # no chat template, template errors, values the engine refuses
            raise ApiError(400, str(e), param="messages" if chat else None)
        return generation

    def usage(self, request) -> dict:
        return {"prompt_tokens": request.prompt_tokens, "completion_tokens": request.completion_tokens, "total_tokens": request.prompt_tokens + request.completion_tokens}

    # ---------------------------------------------------------------- endpoints

    async def health(self, request: Request) -> Response:
        stats = self.engine.stats()
        return JSONResponse({"status": "ok", "model": self.model_name, "running": stats["running"], "queued": stats["queued"]})

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(_prometheus(self.engine.stats(), self.metrics, self.ctx), media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_card(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "binllm", "context_length": self.ctx}

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    async def model(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.names:
            raise ApiError(404, f"the model '{name}' does not exist; this server serves '{self.model_name}'", param="model", code="model_not_found")
        return JSONResponse(self.model_card())

    async def completions(self, request: Request) -> Response:
        body = await self.body(request)
        prompt = _completion_prompt(body)
        options = _sampling(body)
        max_tokens = _int(body, "max_tokens", 1)
        generation = await self.start(prompt, False, COMPLETIONS_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens, options)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": self.model_name}

        def choice(text: str, finish_reason: str | None) -> dict:
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}

        return self.reply(generation, options, head, choice, lambda text, reason: {**head, "choices": [choice(text, reason)]}, first=None)

    async def chat_completions(self, request: Request) -> Response:
        body = await self.body(request)
        messages = _chat_messages(body)
        options = _sampling(body)
        max_tokens = _int(body, "max_completion_tokens", 1)
        max_tokens = _int(body, "max_tokens", 1) if max_tokens is None else max_tokens
        generation = await self.start(messages, True, max_tokens, options)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()), "model": self.model_name}

        def choice(text: str | None, finish_reason: str | None) -> dict:
            return {"index": 0, "delta": {} if text is None else {"content": text}, "logprobs": None, "finish_reason": finish_reason}

        def whole(text: str, reason: str) -> dict:
            message = {"role": "assistant", "content": text}
            return {**head, "object": "chat.completion", "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}]}

        first = {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]}
        return self.reply(generation, options, head, choice, whole, first)

    def reply(self, generation: _Generation, options: dict, head: dict, choice, whole, first: dict | None) -> Response:
        """The reply both endpoints share: one JSON object, or events ending in [DONE]."""
        request = generation.request
        usage_in_chunks = {"usage": None} if options["include_usage"] else {}

        async def events() -> AsyncIterator[bytes]:
            if first is not None:
                yield _sse({**first, **usage_in_chunks})
            async for piece in generation.pieces():
                yield _sse({**head, "choices": [choice(piece, None)], **usage_in_chunks})
            if generation.gone:
                return
            error = _failure(request)
            if error is not None:
                yield _sse({"error": {"message": error.message, "type": error.type, "param": None, "code": error.code}})
            else:
                yield _sse({**head, "choices": [choice(None if first is not None else "", request.finish_reason)], **usage_in_chunks})
                if options["include_usage"]:
                    yield _sse({**head, "choices": [], "usage": self.usage(request)})
            yield b"data: [DONE]\n\n"

        async def result() -> Response:
            text = "".join([piece async for piece in generation.pieces()])
            error = _failure(request)
            return error.response() if error is not None else JSONResponse({**whole(text, request.finish_reason), "usage": self.usage(request)})

        return _Reply(generation, events=events()) if options["stream"] else _Reply(generation, result=result)


class _Guard:
    """ASGI middleware: the API key, per-path counters, and JSON for any error left over."""

    PATHS = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/health", "/metrics")

    def __init__(self, app, server: _Server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        label = path if path in self.PATHS else "/v1/models/{id}" if path.startswith("/v1/models/") else "other"
        metrics = self.server.metrics
        status = {"code": 500, "started": False}

        async def counted_send(message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        metrics.in_flight += 1
        try:
            if self.server.api_key is not None and path != "/health" and not self._authorized(scope):
                error = ApiError(401, "invalid or missing API key (send the header 'Authorization: Bearer KEY')", code="invalid_api_key", headers={"www-authenticate": "Bearer"})
                await error.response()(scope, receive, counted_send)
            else:
                await self.app(scope, receive, counted_send)
        except ClientDisconnect:  # gone while sending its body: nobody to answer
            log.debug("client left during %s %s", scope.get("method"), path)
        except Exception:
            log.exception("error answering %s %s", scope.get("method"), path)
            if not status["started"]:
                await _error_response(500, "internal server error", "server_error")(scope, receive, counted_send)
        finally:
            metrics.in_flight -= 1
            key = (label, status["code"])
            metrics.http[key] = metrics.http.get(key, 0) + 1

    def _authorized(self, scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.server.api_key.encode())
        return False


async def _api_error(request: Request, exc: ApiError) -> Response:
    return exc.response()


async def _http_error(request: Request, exc: HTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return _error_response(exc.status_code, message, "invalid_request_error", code=code, headers=getattr(exc, "headers", None))


def create_app(engine, model_name: str = "default", ctx: int | None = None, api_key: str | None = None, aliases: tuple[str, ...] = ()):
    """The ASGI app serving ``engine`` (a :class:`binllm.engine.Engine`) as ``model_name``.

    ``ctx`` caps prompt + completion tokens per request (default and maximum: the model's
    context); ``api_key`` makes every path but /health require ``Authorization: Bearer KEY``.
    The caller owns the engine (closes it)."""
    model_ctx = engine.model.config["max_position_embeddings"]
    ctx = model_ctx if ctx is None else ctx
    if isinstance(ctx, bool) or not isinstance(ctx, int) or not 2 <= ctx <= model_ctx:
        raise ValueError(f"ctx must be an int in [2, {model_ctx}] (the model's context), got {ctx!r}")
    if api_key is not None and not api_key:
        raise ValueError("the API key is empty")
    server = _Server(engine, model_name, aliases, ctx, api_key)
    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/metrics", server.metrics_endpoint, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/models/{name:path}", server.model, methods=["GET"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={ApiError: _api_error, HTTPException: _http_error})
    app.state.server = server
    return _Guard(app, server)


def model_name_for(model_arg: str | None) -> str:
    """The name clients send as ``model``: "default" for the embedded model, else the file or
    folder name (a hub id as given)."""
    if model_arg is None or model_arg == "default":
        return "default"
    path = Path(model_arg)
    return path.name if path.exists() else model_arg


def serve(model_arg: str | None = None, host: str = "127.0.0.1", port: int = 8080, max_batch: int = 8, max_queue: int = 64, ctx: int | None = None, api_key: str | None = None, threads: int | None = None, log_level: str = "info", kv_type: str | None = None) -> None:
    """Loads the model and serves it until interrupted (``binllm serve``)."""
    try:
        import uvicorn
    except ImportError as e:
        raise BinllmError(install_hint("serve", "binllm serve needs starlette and uvicorn")) from e
    from binllm.engine import Engine
    from binllm.model import Model

    model = Model.from_pretrained(model_arg, threads=threads, kv_type=kv_type)
    name = model_name_for(model_arg)
    with Engine(model, max_batch=max_batch, max_queue=max_queue) as engine:
        app = create_app(engine, name, ctx=ctx, api_key=api_key, aliases=(model_arg,) if model_arg else ())
        ctx_used = app.server.ctx
        if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("serving on %s without --api-key: anyone who reaches this port can use it", host)
        print(f"[binllm] serving '{name}' on http://{host}:{port}/v1 (batch {max_batch}, queue {max_queue}, context {ctx_used})", flush=True)
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)).run()
