"""Fuzz tier: seeded mutations of the embedded model's files (safetensors, GGUF, config.json,
tokenizer.json, tokenizer_config.json, generation_config.json) through the three ways in:

- the Python API: loaded and generated from; every failure must be one of binllm's documented
  exceptions (``binllm.BinllmError`` and its subclasses), never a bare ``Exception``,
  ``TypeError``, ``IndexError``, ``PanicException``, a hang or a crash;
- the command line (``binllm generate``, ``info``, ``eval`` in a process each): exit 0, or exit 1
  with one ``binllm: error: ...`` line on stderr (besides ``[binllm]`` progress lines), never a
  traceback, a signal or a hang;
- the wasm engine in node (wasm/test/fuzz.test.mjs, js/engine.js as the worker drives it): a
  ``BinLLMError`` with a message, never a trap or a hang.

It runs in every ``pytest tests`` run (so in CI) at a size that takes well under a minute on two
cores. ``BINLLM_FUZZ_CASES`` mutants per file (default 150; the CLI runs one in ten of them, a
process each) goes deeper, ``BINLLM_FUZZ_SEED`` picks the run; a failure is reported with the
file, the seed, the case number and the mutation, so it replays exactly (issue: release
hardening)."""

from __future__ import annotations

import copy
import faulthandler
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import binllm
import pytest
from binllm.convert import convert
from binllm.model import default_model_path

pytestmark = pytest.mark.fuzz

ROOT = Path(__file__).resolve().parent.parent
CASES = int(os.environ.get("BINLLM_FUZZ_CASES", "150"))
CLI_CASES = max(1, CASES // 10)
SEED = int(os.environ.get("BINLLM_FUZZ_SEED", "20261206"))
CASE_SECONDS = 60  # a case running longer than this is a hang
TARGETS = ["model.safetensors", "model.gguf", "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]

HOSTILE_VALUES = [None, True, -1, 0, 1, 2**31, 2**32 + 1, 2**64, 10**30, -(2**63), 1.5, -1e308, float("nan"), "", "x", "\u0000", [], [1, "two"], {}, {"a": {}}]


def _mutate_bytes(data: bytes, rng: random.Random) -> tuple[list[tuple[int, int, bytes]], str]:
    """Edits (offset, bytes removed, bytes put there), applied in order by `_apply` here and by
    wasm/test/fuzz.test.mjs, and what they do in words."""
    work = bytearray(data)
    edits: list[tuple[int, int, bytes]] = []

    def edit(at: int, remove: int, put: bytes) -> None:
        remove = min(remove, len(work) - at)
        work[at : at + remove] = put
        edits.append((at, remove, put))

    kind = rng.choice(["flip", "truncate", "u64", "u32", "insert", "delete"])
    # Headers and metadata are at the front: mutate there most of the time.
    limit = len(data) if rng.random() < 0.2 else min(len(data), 4096)
    at = rng.randrange(max(limit, 1))
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(max(limit, 1))
            edit(i, 1, bytes([work[i] ^ (1 << rng.randrange(8))]))
    elif kind == "truncate":
        edit(at, len(work) - at, b"")
    elif kind in ("u64", "u32"):
        width = 8 if kind == "u64" else 4
        value = rng.choice([0, 1, 2 ** (width * 8) - 1, 2 ** (width * 8 - 1), 2**24, 2**31, 0xFFFFFFFF])
        edit(at, width, (value % 2 ** (width * 8)).to_bytes(width, "little"))
    elif kind == "insert":
        edit(at, 0, bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))))
    else:
        edit(at, rng.randint(1, 64), b"")
    return edits, f"{kind} at {at}"


def _apply(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    work = bytearray(data)
    for at, remove, put in edits:
        work[at : at + remove] = put
    return bytes(work)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:50]):
            yield from _paths(v, (*prefix, i))


def _mutate_json(text: str, rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.15:
        edits, what = _mutate_bytes(text.encode(), rng)
        return _apply(text.encode(), edits).decode("utf-8", errors="replace"), what
    spec = json.loads(text)
    paths = list(_paths(spec))
    path = rng.choice(paths[1:] or paths)
    parent, key = spec, None
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1] if path else None
    if key is None:
        return json.dumps(rng.choice(HOSTILE_VALUES)), "document replaced"
    if isinstance(parent, dict) and rng.random() < 0.25:
        del parent[key]
        return json.dumps(spec), f"deleted {'/'.join(map(str, path))}"
    value = copy.deepcopy(rng.choice(HOSTILE_VALUES))
    parent[key] = value
    return json.dumps(spec), f"{'/'.join(map(str, path))} = {json.dumps(value)[:40]}"


class Mutant:
    """One mutated file of the seed model: `text` for a JSON file, `edits` for a binary one."""

    def __init__(self, target: str, case: int, stream: str, what: str, text: str | None = None, edits=None):
        self.target, self.case, self.what, self.text, self.edits = target, case, what, text, edits
        self.id = f"{target} seed {SEED} {stream}case {case} ({what})"

    def write(self, seeds, where: Path) -> Path:
        """The mutant model under `where` (a .gguf file, or a copy of the folder)."""
        folder, gguf = seeds
        if self.target == "model.gguf":
            path = where / "mutant.gguf"
            path.write_bytes(_apply(gguf.read_bytes(), self.edits))
            return path
        path = where / "mutant"
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(folder, path)
        if self.text is not None:
            (path / self.target).write_text(self.text)
        else:
            (path / self.target).write_bytes(_apply((folder / self.target).read_bytes(), self.edits))
        return path


def mutants(seeds, target: str, count: int, stream: str = ""):
    """`count` mutants of `target`, the same for the same SEED, `stream` and seed model."""
    folder, gguf = seeds
    rng = random.Random(f"{SEED}/{stream}{target}")
    original = (gguf if target == "model.gguf" else folder / target).read_bytes()
    for case in range(count):
        if target.endswith(".json"):
            text, what = _mutate_json(original.decode(), rng)
            yield Mutant(target, case, stream, what, text=text)
        else:
            edits, what = _mutate_bytes(original, rng)
            yield Mutant(target, case, stream, what, edits=edits)


REGRESSIONS = json.loads((ROOT / "tests" / "fixtures" / "fuzz_regressions.json").read_text())


def regression(seeds, number: int) -> Mutant:
    """Case `number` of the committed corpus (tests/fixtures/fuzz_regressions.json): mutants
    that once failed, written as a replacement of bytes in the seed file so they survive a
    retrained embedded model."""
    folder, gguf = seeds
    entry = REGRESSIONS[number]
    target = entry["target"]
    original = (gguf if target == "model.gguf" else folder / target).read_bytes()
    old, new = (part.encode() for part in entry["replace"])
    at = original.find(old)
    assert at >= 0, f"regression {number}: the seed {target} no longer holds {old!r}"
    mutant = Mutant(target, number, "", entry["why"], edits=[(at, len(old), new)])
    mutant.id = f"regression {number} ({target}: {entry['why'][:80]})"
    return mutant


def _exercise(path: Path) -> None:
    model = binllm.Model.from_pretrained(path)
    model.info()
    model.generate("Once upon a time", max_new_tokens=3)
    model.generate("Hi", max_new_tokens=2, temperature=0.8, seed=1)
    if model.chat_template:
        model.generate([{"role": "user", "content": "Hi"}], max_new_tokens=2)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_seeds")
    folder = root / "folder"
    shutil.copytree(default_model_path(), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    convert(folder, root / "model.gguf", type="tq2_0")
    return folder, root / "model.gguf"


@pytest.mark.parametrize("target", TARGETS)
def test_mutants_fail_only_with_binllm_errors(seeds, tmp_path, target):
    failures: list[str] = []
    for mutant in mutants(seeds, target, CASES):
        path = mutant.write(seeds, tmp_path)
        faulthandler.dump_traceback_later(CASE_SECONDS, exit=True)
        start = time.monotonic()
        try:
            _exercise(path)
        except binllm.BinllmError:
            pass
        except BaseException as e:  # noqa: BLE001 (PanicException derives from BaseException)
            if isinstance(e, KeyboardInterrupt):
                raise
            failures.append(f"{mutant.id}: {type(e).__module__}.{type(e).__name__}: {str(e)[:200]}")
        finally:
            faulthandler.cancel_dump_traceback_later()
            if os.environ.get("BINLLM_FUZZ_VERBOSE") and time.monotonic() - start > 1:
                print(f"slow: {mutant.id}: {time.monotonic() - start:.1f} s", flush=True)
    assert not failures, f"{len(failures)} of {CASES} mutants escaped as undocumented exceptions:\n" + "\n".join(failures[:30])


@pytest.mark.parametrize("number", range(len(REGRESSIONS)))
def test_regressions_fail_with_one_clear_error(seeds, tmp_path, number):
    """The corpus through the API and the CLI: the documented exception, one line naming the
    file and the problem. (test_wasm_engine_on_mutants_throws_binllm_errors runs it in wasm.)"""
    path = regression(seeds, number).write(seeds, tmp_path)
    expected = REGRESSIONS[number]["error"]
    with pytest.raises(binllm.BinllmError) as raised:
        _exercise(path)
    assert all(part in str(raised.value) for part in expected) and "\n" not in str(raised.value), str(raised.value)
    proc = subprocess.run([sys.executable, "-m", "binllm", "info", str(path)], capture_output=True, text=True, timeout=CASE_SECONDS, stdin=subprocess.DEVNULL)
    assert cli_failure(proc) is None and proc.returncode == 1, proc.stderr
    assert all(part in proc.stderr for part in expected), proc.stderr


CLI_COMMANDS = [
    ["generate", "{model}", "Once upon a time", "-n", "3"],
    ["info", "{model}"],
    ["eval", "{model}", "--text", "{text}", "--max-tokens", "48", "--no-bench", "--json"],
    ["generate", "{model}", "Hi", "-n", "2", "-t", "0.8", "--seed", "1"],
]


def cli_failure(proc: subprocess.CompletedProcess) -> str | None:
    """What is wrong with a finished command's exit and stderr, or None."""
    lines = proc.stderr.splitlines()
    errors = [line for line in lines if not line.startswith("[binllm] ")]
    if "Traceback" in proc.stderr:
        return f"a traceback: {proc.stderr[-1500:]}"
    if proc.returncode == 0:
        return f"exit 0 with {errors}" if errors else None
    if proc.returncode != 1:
        return f"exit {proc.returncode}: {proc.stderr[-500:]}"
    if len(errors) != 1 or not errors[0].startswith("binllm: error: ") or len(errors[0]) <= len("binllm: error: "):
        return f"exit 1 without one 'binllm: error: ...' line: {errors[:5]}"
    return None


@pytest.mark.parametrize("target", TARGETS)
def test_cli_on_mutants_exits_with_one_error_line(seeds, tmp_path, target):
    text = tmp_path / "text.txt"
    text.write_text("ROMEO: But soft, what light through yonder window breaks? It is the east.\n" * 4)
    failures: list[str] = []
    for mutant in mutants(seeds, target, CLI_CASES, stream="cli/"):
        path = mutant.write(seeds, tmp_path)
        command = [arg.format(model=path, text=text) for arg in CLI_COMMANDS[mutant.case % len(CLI_COMMANDS)]]
        try:
            proc = subprocess.run([sys.executable, "-m", "binllm", *command], capture_output=True, text=True, timeout=CASE_SECONDS, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            failures.append(f"{mutant.id}: binllm {command[0]} hung (over {CASE_SECONDS} s)")
            continue
        problem = cli_failure(proc)
        if problem:
            failures.append(f"{mutant.id}: binllm {command[0]}: {problem}")
    assert not failures, f"{len(failures)} of {CLI_CASES} commands on mutants failed badly:\n" + "\n".join(failures[:30])


def wasm_missing() -> str | None:
    module = ROOT / "wasm" / "pkg" / "binllm_wasm.wasm"
    if shutil.which("node") is None:
        return "node is missing"
    if module.is_file() and module.stat().st_size > 0:
        return None
    from test_browser import missing_tools

    missing = missing_tools()
    if missing:
        return f"the wasm toolchain is missing: {', '.join(missing)}; install with scripts/wasm-toolchain.sh"
    # A clean clone: build it (test_browser.py and test_wasm_kernels.py rebuild it in a full run).
    subprocess.run(["bash", "scripts/build-wasm.sh"], cwd=ROOT, check=True, capture_output=True, timeout=1800)
    return None


def test_wasm_engine_on_mutants_throws_binllm_errors(seeds, tmp_path):
    missing = wasm_missing()
    if missing:
        if os.environ.get("BINLLM_REQUIRE_WASM", "") not in ("", "0"):
            pytest.fail(f"BINLLM_REQUIRE_WASM is set but {missing}")
        pytest.skip(missing)
    folder, gguf = seeds
    cases = []
    corpus = [regression(seeds, number) for number in range(len(REGRESSIONS))]
    for target in TARGETS:
        for mutant in [m for m in corpus if m.target == target] + list(mutants(seeds, target, CASES, stream="wasm/")):
            case = {"id": mutant.id, "target": target, "case": mutant.case}
            if mutant.text is not None:
                case["text"] = mutant.text
            else:
                case["edits"] = [[at, remove, put.hex()] for at, remove, put in mutant.edits]
            cases.append(case)
    manifest = tmp_path / "mutants.json"
    manifest.write_text(json.dumps({"folder": str(folder), "gguf": str(gguf), "cases": cases}))
    progress = tmp_path / "progress.txt"
    env = {**os.environ, "BINLLM_WASM_FUZZ": str(manifest), "BINLLM_WASM_FUZZ_PROGRESS": str(progress)}
    # The test writes each case's id to `progress` before running it: a case that keeps it
    # unchanged for CASE_SECONDS is a hang.
    log = tmp_path / "node.log"
    with log.open("w") as out, subprocess.Popen(["node", "--test", "wasm/test/fuzz.test.mjs"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env) as node:
        last_change = time.monotonic()
        seen = None
        while node.poll() is None:
            time.sleep(0.5)
            now = progress.stat().st_mtime_ns if progress.exists() else None
            if now != seen:
                seen, last_change = now, time.monotonic()
            elif time.monotonic() - last_change > CASE_SECONDS:
                node.kill()
                node.wait()
                pytest.fail(f"the wasm engine hung on {progress.read_text() if progress.exists() else 'loading'}")
    output = log.read_text()
    assert node.returncode == 0 and "# fail 0" in output and "# pass 1" in output, output[-6000:]
