"""``binllm serve`` through the official ``openai`` client, on loopback: greedy outputs equal
``Model.generate``, concurrent clients equal sequential ones, every bad request gets an
OpenAI-shaped error and the server goes on serving, a client that leaves frees its sequence."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

if os.environ.get("CI") == "true":  # scripts/setup.sh --test installs them: CI never skips
    import openai
    import starlette  # noqa: F401
    import uvicorn
else:
    pytest.importorskip("starlette")
    uvicorn = pytest.importorskip("uvicorn")
    openai = pytest.importorskip("openai")

from binllm import Model
from binllm.engine import Engine
from binllm.model import default_model_path
from binllm.server import create_app

# Speaker turns, as the embedded model's plays are written.
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] | upper }}:\n{{ m['content'] }}\n\n{% endfor %}{% if add_generation_prompt %}ASSISTANT:\n{% endif %}"
PROMPTS = ["ROMEO:", "To be, or not", "In the beginning", "It is a truth universally", "JULIET:\nO", "KING HENRY:", "Elizabeth", "And God said"]


@contextlib.contextmanager
def serving(engine, **kwargs):
    """Serves ``engine`` on a free loopback port from a thread; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine, **kwargs), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def raw(base: str, method: str, path: str, body=None, headers=None):
    """(status, headers, parsed JSON or text) of one plain HTTP request."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    conn.request(method, path, body=data, headers={"content-type": "application/json", **(headers or {})})
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    try:
        return response.status, dict(response.getheaders()), json.loads(text)
    except ValueError:
        return response.status, dict(response.getheaders()), text


def metrics(base: str, headers=None) -> dict[str, float]:
    status, _, text = raw(base, "GET", "/metrics", headers=headers)
    assert status == 200
    return {m[1]: float(m[2]) for m in re.finditer(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", text, re.MULTILINE)}


def assert_error_shape(body, status, code=None, param=None):
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    assert "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error


class Blocker:
    """A listener that holds the engine thread at its second piece until released: the engine
    cannot step, so what the test does meanwhile happens, deterministically, between steps.
    (At the second piece, not the first: by then a step has ended and the engine counts the
    request as running.)"""

    def __init__(self):
        self.pieces = 0
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, piece):
        self.pieces += piece is not None
        if self.pieces == 2:
            self.entered.set()
            self.release.wait(30)


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory):
    """The embedded model with a chat template (its own folder has none)."""
    folder = tmp_path_factory.mktemp("serve") / "default-chat"
    shutil.copytree(default_model_path(), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    return folder


@pytest.fixture(scope="module")
def model(chat_model_dir):
    return Model.from_pretrained(chat_model_dir)


@pytest.fixture(scope="module")
def served(model):
    with Engine(model, max_batch=8) as engine, serving(engine, model_name="default-chat") as base:
        yield base, engine


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_and_health(served, client):
    assert [m.id for m in client.models.list().data] == ["default-chat"]
    assert client.models.retrieve("default-chat").id == "default-chat"
    status, _, body = raw(served[0], "GET", "/health")
    assert status == 200 and body["status"] == "ok"


@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_completions_greedy_equal_generate_streamed_or_not(client, model, prompt):
    expected = model.generate(prompt, max_new_tokens=40, temperature=0)
    reply = client.completions.create(model="default-chat", prompt=prompt, max_tokens=40, temperature=0)
    choice = reply.choices[0]
    assert choice.text == expected and choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens == len(model.encode(prompt))
    assert 0 < reply.usage.completion_tokens <= 40 and reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    chunks = list(client.completions.create(model="default-chat", prompt=prompt, max_tokens=40, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


def test_chat_greedy_equal_generate_streamed_or_not(client, model):
    messages = [{"role": "system", "content": "Speak as in a play."}, {"role": "user", "content": "Who comes here?"}]
    expected = model.generate(messages, max_new_tokens=48, temperature=0)
    reply = client.chat.completions.create(model="default-chat", messages=messages, max_tokens=48, temperature=0)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected
    assert reply.usage.prompt_tokens == len(model.encode(model.apply_chat_template(messages)))

    chunks = list(client.chat.completions.create(model="default-chat", messages=messages, max_tokens=48, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason


def test_stop_seed_and_top_p_match_generate(client, model):
    full = model.generate("ROMEO:", max_new_tokens=60, temperature=0)
    stop = full.strip().split()[3]  # a word that appears after the start
    reply = client.completions.create(model="default-chat", prompt="ROMEO:", max_tokens=60, temperature=0, stop=[stop])
    assert reply.choices[0].text == model.generate("ROMEO:", max_new_tokens=60, temperature=0, stop=[stop]) == full[: full.find(stop)]
    assert reply.choices[0].finish_reason == "stop"

    sampled = model.generate("JULIET:", max_new_tokens=30, temperature=0.9, top_p=0.9, seed=7)
    for _ in range(2):
        reply = client.completions.create(model="default-chat", prompt="JULIET:", max_tokens=30, temperature=0.9, top_p=0.9, seed=7)
        assert reply.choices[0].text == sampled


def test_max_tokens_is_cut_to_the_context(served, model):
    base, _ = served
    prompt = "ROMEO: " * 40  # 201 tokens of 256
    room = model.config["max_position_embeddings"] - len(model.encode(prompt)) + 1
    status, _, body = raw(base, "POST", "/v1/completions", {"prompt": prompt, "max_tokens": 10_000, "temperature": 0})
    assert status == 200 and body["usage"]["completion_tokens"] == room and body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["text"] == model.generate(prompt, max_new_tokens=10_000, temperature=0)


def test_eight_concurrent_clients_equal_sequential_runs(served, client):
    def one(prompt):
        return client.completions.create(model="default-chat", prompt=prompt, max_tokens=48, temperature=0).choices[0].text

    sequential = [one(p) for p in PROMPTS]
    assert len(set(sequential)) == len(PROMPTS)
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(one, PROMPTS))
    assert concurrent == sequential
    stats = served[1].stats()
    assert stats["running"] == 0 and stats["queued"] == 0


LONG = "ROMEO: " * 400
BAD_REQUESTS = [
    # (path, body, status, code, param)
    ("/v1/completions", b"{not json", 400, "invalid_json", None),
    ("/v1/completions", b"[1, 2]", 400, "invalid_json", None),
    ("/v1/completions", {"prompt": 42}, 400, None, "prompt"),
    ("/v1/completions", {"prompt": ""}, 400, None, "prompt"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "unsupported_value", "prompt"),
    ("/v1/completions", {"prompt": [1, 2, 3]}, 400, "unsupported_value", "prompt"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "ten"}, 400, "invalid_value", "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "temperature": -1}, 400, "invalid_value", "temperature"),
    ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, 400, "invalid_value", "temperature"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, 400, "invalid_value", "top_p"),
    ("/v1/completions", {"prompt": "hi", "seed": -3}, 400, "invalid_value", "seed"),
    ("/v1/completions", {"prompt": "hi", "stop": [""]}, 400, "invalid_value", "stop"),
    ("/v1/completions", {"prompt": "hi", "stop": 7}, 400, "invalid_value", "stop"),
    ("/v1/completions", {"prompt": "hi", "stream": "yes"}, 400, "invalid_value", "stream"),
    ("/v1/completions", {"prompt": "hi", "n": 2}, 400, "unsupported_value", "n"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 3}, 400, "unsupported_value", "logprobs"),
    ("/v1/completions", {"prompt": "hi", "model": "gpt-4o"}, 404, "model_not_found", "model"),
    ("/v1/completions", {"prompt": "hi", "model": 5}, 400, "invalid_value", "model"),
    ("/v1/completions", {"prompt": LONG}, 400, "context_length_exceeded", "prompt"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "invalid_value", "messages"),
    ("/v1/chat/completions", {"messages": []}, 400, "invalid_value", "messages"),
    ("/v1/chat/completions", {"messages": [{"content": "no role"}]}, 400, "invalid_value", "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "unsupported_value", "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}]}, 400, "context_length_exceeded", "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "unsupported_value", "n"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, 400, "unsupported_value", "tools"),
    ("/v1/nothing", {}, 404, "not_found", None),
]


@pytest.mark.parametrize("path, body, status, code, param", BAD_REQUESTS, ids=[f"{i}-{r[0].rsplit('/', 1)[1]}-{r[3]}" for i, r in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_openai_errors_and_the_server_goes_on(served, path, body, status, code, param):
    base, _ = served
    got, headers, reply = raw(base, "POST", path, body)
    assert got == status, reply
    assert headers["content-type"] == "application/json"
    assert_error_shape(reply, status, code, param)
    ok, _, reply = raw(base, "POST", "/v1/completions", {"prompt": "ROMEO:", "max_tokens": 3, "temperature": 0})
    assert ok == 200 and reply["choices"][0]["text"]


def test_errors_reach_the_openai_client_typed(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="default-chat", prompt=LONG, max_tokens=5)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    status, _, body = raw(client.base_url.scheme + "://" + client.base_url.netloc.decode(), "GET", "/v1/completions")
    assert status == 405
    assert_error_shape(body, 405, "method_not_allowed")


def test_a_full_queue_answers_429_then_serves_again(chat_model_dir):
    model = Model.from_pretrained(chat_model_dir)
    with Engine(model, max_batch=1, max_queue=0) as engine, serving(engine) as base:
        blocker = Blocker()
        engine.submit("ROMEO:", max_new_tokens=8, temperature=0, listener=blocker)
        assert blocker.entered.wait(30)  # the one batch slot is taken and the engine holds
        status, headers, body = raw(base, "POST", "/v1/completions", {"prompt": "JULIET:", "max_tokens": 4})
        assert status == 429 and headers["retry-after"] == "1"
        assert_error_shape(body, 429, "rate_limit_exceeded")
        blocker.release.set()
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=3, timeout=60)
        assert client.completions.create(model="default", prompt="JULIET:", max_tokens=4, temperature=0).choices[0].text
        assert metrics(base)['binllm_http_requests_total{path="/v1/completions",code="429"}'] == 1


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_frees_its_sequence(chat_model_dir, stream):
    model = Model.from_pretrained(chat_model_dir)
    with Engine(model, max_batch=4) as engine, serving(engine) as base:
        blocker = Blocker()
        engine.submit("ROMEO:", max_new_tokens=8, temperature=0, listener=blocker)
        assert blocker.entered.wait(30)
        host, port = base.removeprefix("http://").split(":")
        payload = json.dumps({"messages": [{"role": "user", "content": "Speak."}], "max_tokens": 200, "stream": stream}).encode()
        conn = socket.create_connection((host, int(port)), timeout=30)
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload))
        deadline = time.monotonic() + 30
        if stream:
            received = b""
            while b"data: " not in received:  # the role chunk: the reply has started
                received += conn.recv(65536)
            assert received.startswith(b"HTTP/1.1 200")
        else:
            while engine.stats()["queued"] + engine.stats()["running"] < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        conn.close()
        deadline = time.monotonic() + 30
        while metrics(base).get('binllm_completions_total{reason="cancelled"}') != 1:
            assert time.monotonic() < deadline, "the server did not see the client leave"
            time.sleep(0.02)
        blocker.release.set()
        while (m := metrics(base))["binllm_running"] or m["binllm_queued"]:
            assert time.monotonic() < deadline, m
            time.sleep(0.02)
        stats = engine.stats()
        assert stats["requests_finished"] == stats["requests_total"] == 2
        assert stats["generated_tokens_total"] < 8 + 200


def test_metrics_are_prometheus_text(served, client):
    client.completions.create(model="default-chat", prompt="ROMEO:", max_tokens=8, temperature=0)
    m = metrics(served[0])
    for name in ("binllm_running", "binllm_queued", "binllm_max_batch", "binllm_engine_requests_total", "binllm_completion_tokens_total", "binllm_tokens_per_second", "binllm_http_requests_in_flight"):
        assert name in m, name
    assert m["binllm_max_batch"] == 8 and m["binllm_completion_tokens_total"] > 0 and m["binllm_tokens_per_second"] > 0
    assert m['binllm_http_requests_total{path="/v1/completions",code="200"}'] >= 1


def test_cli_serves_the_embedded_model_behind_an_api_key():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "binllm", "serve", "--port", str(port), "--api-key", "sesame", "--max-batch", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read() if process.poll() is not None else "no start"
            with contextlib.suppress(OSError):
                if raw(base, "GET", "/health")[0] == 200:  # /health needs no key: load balancers probe it
                    break
            time.sleep(0.1)
        status, headers, body = raw(base, "GET", "/v1/models")
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert_error_shape(body, 401, "invalid_api_key")
        assert raw(base, "GET", "/metrics", headers={"authorization": "Bearer wrong"})[0] == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=base + "/v1", api_key="sesame", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["default"]
        expected = Model.from_pretrained().generate("ROMEO:", max_new_tokens=12, temperature=0)
        assert client.completions.create(model="default", prompt="ROMEO:", max_tokens=12, temperature=0).choices[0].text == expected
        with pytest.raises(openai.BadRequestError, match="no chat template"):
            client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert "serving 'default'" in output and "Traceback" not in output


def test_cli_refuses_a_context_beyond_the_model_in_one_line():
    out = subprocess.run([sys.executable, "-m", "binllm", "serve", "--ctx", "100000"], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "ctx must be an int in [2, 256]" in out.stderr and "Traceback" not in out.stderr
