"""Serving under load: aggregate tokens/s, time to first token and per-token latency of
`binllm serve` at 1, 4, 8 and 16 concurrent clients, against llama-cpp-python's server
(`llama_cpp.server`) on the same GGUF where its `server` extra is installed, in one run.

    .venv/bin/python benches/bench_serve.py [MODEL] [--clients 1,4,8,16] [--requests-per-client 4]
        [--duration 60] [--max-tokens 64] [--max-batch 16] [--threads N] [--out FILE.md]

MODEL: a model folder or .gguf (default: the embedded model). Each server runs in its own
process on a loopback port. A level is `clients` threads, each streaming /v1/completions
requests back to back (stdlib http.client, events parsed by hand, so the client costs little
beside the server) until clients x --requests-per-client requests are done or --duration has
passed: a bounded load. Prompts rotate over a few lines; sampling at temperature 0.8 with a
seed per request (outputs differ, the load is repeatable); tokens are the server's `usage`.

- aggregate tok/s: completion tokens of the level / its wall time;
- TTFT: request sent to first text event, p50 and p99 over the level's requests;
- per-token latency: a request's (last text event - first) / (tokens - 1), the decode time
  each of its tokens took, p50 and p99 over the level's requests. (Not the gaps between
  events: on loopback several events often arrive in one read.)

The same load also runs on binllm.Engine in this process without HTTP (threads submit and
iterate): the gap to `binllm serve` is what the HTTP layer costs. Ratios are against the
same server's 1-client level in this run. The issue's goal: at 8
clients, aggregate >= 4x and per-token p99 <= 2x one client's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

PROMPTS = ["ROMEO:", "To be, or not to be", "In the beginning God", "It is a truth universally acknowledged", "KING HENRY:", "Elizabeth was", "JULIET:\nO Romeo", "And the LORD said"]
GOAL_CLIENTS, GOAL_AGGREGATE, GOAL_P99 = 8, 4.0, 2.0


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_cpp_server_missing() -> str | None:
    """Why llama_cpp.server cannot run here, or None when it can."""
    try:
        import llama_cpp.server.app  # noqa: F401  (needs the server extra: fastapi, sse-starlette, ...)
    except ImportError as e:
        return f"llama_cpp.server is not importable ({e}; pip install 'llama-cpp-python[server]')"
    return None


class Server:
    """A server process on a loopback port; ready once GET /v1/models answers 200."""

    def __init__(self, label: str, command: list[str], port: int, log: Path):
        self.label, self.port = label, port
        with open(log, "wb") as out:  # the child keeps its own descriptor
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{label} did not start:\n{log.read_text(errors='replace')[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/v1/models")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def stream_one(port: int, body: dict) -> tuple[float, float, int]:
    """(time to first token, decode time a token, completion tokens) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"content-type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    first = last = None
    events = 0
    usage = None
    while line := response.readline():
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            break
        event = json.loads(data)
        if event.get("usage"):
            usage = event["usage"]["completion_tokens"]
        choices = event.get("choices") or []
        if choices and choices[0].get("text"):
            last = time.perf_counter()
            first = first or last
            events += 1
    conn.close()
    tokens = usage if usage is not None else events
    if first is None:
        return float("nan"), float("nan"), tokens
    return first - start, (last - first) / (tokens - 1) if tokens > 1 else float("nan"), tokens


def engine_one(engine, body: dict) -> tuple[float, float, int]:
    """stream_one's numbers for the same request sent to the engine directly (no HTTP)."""
    start = time.perf_counter()
    request = engine.submit(body["prompt"], max_new_tokens=body["max_tokens"], temperature=body.get("temperature"), seed=body.get("seed", 0))
    first = last = None
    for _ in request:
        last = time.perf_counter()
        first = first or last
    tokens = request.completion_tokens
    if first is None:
        return float("nan"), float("nan"), tokens
    return first - start, (last - first) / (tokens - 1) if tokens > 1 else float("nan"), tokens


def run_level(one, clients: int, requests: int, duration: float, max_tokens: int) -> dict:
    """``clients`` threads sending requests through ``one(body)`` until the level's bound."""
    lock = threading.Lock()
    issued = [0]
    results: list[tuple[float, float, int]] = []
    errors: list[str] = []
    deadline = time.perf_counter() + duration

    def client() -> None:
        while True:
            with lock:
                if issued[0] >= requests or time.perf_counter() > deadline:
                    return
                k = issued[0]
                issued[0] += 1
            body = {"prompt": PROMPTS[k % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0.8, "seed": k, "stream": True, "stream_options": {"include_usage": True}}
            try:
                result = one(body)
            except (OSError, RuntimeError, ValueError) as e:
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                results.append(result)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    tokens = sum(r[2] for r in results)
    ttft = np.array([r[0] for r in results]) * 1e3
    per_token = np.array([r[1] for r in results]) * 1e3
    def pct(a, q):
        return float(np.nanpercentile(a, q)) if np.isfinite(a).any() else float("nan")

    return {
        "clients": clients, "requests": len(results), "errors": len(errors), "first_error": errors[0] if errors else None,
        "tokens": tokens, "wall_s": wall, "tok_s": tokens / wall if wall > 0 else 0.0,
        "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99), "token_p50": pct(per_token, 50), "token_p99": pct(per_token, 99),
    }  # fmt: skip


def bench_levels(label: str, one, levels: list[int], args) -> list[dict]:
    one({"prompt": PROMPTS[0], "max_tokens": 8, "stream": True})  # warm-up
    rows = []
    for clients in levels:
        row = run_level(one, clients, clients * args.requests_per_client, args.duration, args.max_tokens)
        row["server"] = label
        say(f"{label}: {clients} clients, {row['requests']} requests, {row['tok_s']:.0f} tok/s" + (f", {row['errors']} errors ({row['first_error']})" if row["errors"] else ""))
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| server | clients | requests | tokens | aggregate tok/s | x 1 client | TTFT p50 / p99 ms | per-token p50 / p99 ms | p99 x 1 client |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {}
    for r in rows:
        one = base.setdefault(r["server"], r)
        lines.append(
            f"| {r['server']} | {r['clients']} | {r['requests']} | {r['tokens']} | {r['tok_s']:.0f} | {r['tok_s'] / one['tok_s']:.2f}x "
            f"| {r['ttft_p50']:.1f} / {r['ttft_p99']:.1f} | {r['token_p50']:.2f} / {r['token_p99']:.2f} | {r['token_p99'] / one['token_p99']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default=None, help="model folder or .gguf (default: the embedded model)")
    ap.add_argument("--clients", default="1,4,8,16", help="comma-separated concurrency levels (default 1,4,8,16)")
    ap.add_argument("--requests-per-client", type=int, default=4, help="requests a level issues per client (default 4)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds a level may run at most (default 60)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=16, help="binllm serve --max-batch (default 16)")
    ap.add_argument("--threads", type=int, default=None, help="compute threads of each server (default: all cores)")
    ap.add_argument("--no-llama-cpp", action="store_true", help="skip llama_cpp.server")
    ap.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    threads = ["--threads", str(args.threads)] if args.threads else []

    from binllm.model import default_model_path

    model = str(args.model or default_model_path())
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    missing = "skipped (--no-llama-cpp)" if args.no_llama_cpp else llama_cpp_server_missing()
    gguf = model
    if missing is None and not model.endswith(".gguf"):
        # Both servers on one file: llama.cpp reads GGUF only.
        gguf = str(workdir / "model.gguf")
        subprocess.run([sys.executable, "-m", "binllm", "convert", model, gguf, "--type", "tq2_0", "--quiet"], check=True)
    rows: list[dict] = []
    binllm_cmd = [sys.executable, "-m", "binllm", "serve", gguf, "--port", "{port}", "--max-batch", str(args.max_batch), "--max-queue", "1024", *threads]
    servers = [("binllm serve", binllm_cmd)]
    if missing is None:
        ctx = json.loads(subprocess.run([sys.executable, "-m", "binllm", "info", gguf, "--json"], capture_output=True, text=True, check=True).stdout)["config"]["max_position_embeddings"]
        n_threads = ["--n_threads", str(args.threads)] if args.threads else []
        servers.append(("llama_cpp.server", [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", "{port}", "--n_ctx", str(ctx), *n_threads]))
    for label, command in servers:
        port = free_port()
        say(f"starting {label} on port {port} ({gguf})")
        server = Server(label, [c.replace("{port}", str(port)) for c in command], port, workdir / f"{label.split()[0]}.log")
        try:
            rows += bench_levels(label, lambda body, port=port: stream_one(port, body), levels, args)
        finally:
            server.close()
    # The same load on binllm.Engine in this process, without HTTP: what the server layer costs.
    from binllm import Model
    from binllm.engine import Engine

    with Engine(Model.from_pretrained(gguf, threads=args.threads), max_batch=args.max_batch, max_queue=1024) as engine:
        rows += bench_levels("Engine (no HTTP)", lambda body: engine_one(engine, body), levels, args)

    text = table(rows)
    cores = os.cpu_count()
    header = f"bench_serve: {Path(gguf).name}, --max-tokens {args.max_tokens}, {args.requests_per_client} requests a client, binllm --max-batch {args.max_batch}, {cores} cores"
    print(header)
    print(text)
    one = next((r for r in rows if r["server"] == "binllm serve" and r["clients"] == 1), None)
    at_goal = next((r for r in rows if r["server"] == "binllm serve" and r["clients"] == GOAL_CLIENTS), None)
    if one and at_goal:
        aggregate, p99 = at_goal["tok_s"] / one["tok_s"], at_goal["token_p99"] / one["token_p99"]
        verdict = "met" if aggregate >= GOAL_AGGREGATE and p99 <= GOAL_P99 else "not met"
        print(f"goal at {GOAL_CLIENTS} clients (aggregate >= {GOAL_AGGREGATE:g}x, per-token p99 <= {GOAL_P99:g}x one client): {aggregate:.2f}x, {p99:.2f}x: {verdict}")
    if missing is not None:
        print(f"llama_cpp.server: {missing}")
    if args.out:
        args.out.write_text(f"{header}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
