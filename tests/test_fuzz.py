"""Opt-in fuzz tier (``pytest -m fuzz``): seeded mutations of the embedded model's files
(safetensors, GGUF, config.json, tokenizer.json, tokenizer_config.json, generation_config.json)
loaded and run through the Python API. Every failure must be one of binllm's documented
exceptions (``binllm.BinllmError`` and its subclasses), never a bare ``Exception``,
``TypeError``, ``IndexError``, ``PanicException``, a hang or a crash (issue: release hardening).

``BINLLM_FUZZ_CASES`` mutants per file (default 150) and ``BINLLM_FUZZ_SEED`` pick the run; a
failure is reported with the file, the seed and the mutation, so it replays exactly."""

from __future__ import annotations

import copy
import faulthandler
import json
import os
import random
import shutil
import time
from pathlib import Path

import binllm
import pytest
from binllm.convert import convert
from binllm.model import default_model_path

pytestmark = pytest.mark.fuzz

CASES = int(os.environ.get("BINLLM_FUZZ_CASES", "150"))
SEED = int(os.environ.get("BINLLM_FUZZ_SEED", "20261206"))
CASE_SECONDS = 60  # a case running longer than this is a hang: the run stops with a traceback

HOSTILE_VALUES = [None, True, -1, 0, 1, 2**31, 2**32 + 1, 2**64, 10**30, -(2**63), 1.5, -1e308, float("nan"), "", "x", "\u0000", [], [1, "two"], {}, {"a": {}}]


def _mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(data)
    kind = rng.choice(["flip", "truncate", "u64", "u32", "insert", "delete"])
    # Headers and metadata are at the front: mutate there most of the time.
    limit = len(data) if rng.random() < 0.2 else min(len(data), 4096)
    at = rng.randrange(max(limit, 1))
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(max(limit, 1))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del data[at:]
    elif kind in ("u64", "u32"):
        width = 8 if kind == "u64" else 4
        value = rng.choice([0, 1, 2 ** (width * 8) - 1, 2 ** (width * 8 - 1), 2**24, 2**31, 0xFFFFFFFF])
        data[at : at + width] = (value % 2 ** (width * 8)).to_bytes(width, "little")
    elif kind == "insert":
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        del data[at : at + rng.randint(1, 64)]
    return bytes(data), f"{kind} at {at}"


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
        data, what = _mutate_bytes(text.encode(), rng)
        return data.decode("utf-8", errors="replace"), what
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


@pytest.mark.parametrize("target", ["model.safetensors", "model.gguf", "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"])
def test_mutants_fail_only_with_binllm_errors(seeds, tmp_path, target):
    folder, gguf = seeds
    rng = random.Random(f"{SEED}/{target}")
    failures: list[str] = []
    for case in range(CASES):
        if target == "model.gguf":
            mutant = tmp_path / "mutant.gguf"
            data, what = _mutate_bytes(gguf.read_bytes(), rng)
            mutant.write_bytes(data)
        else:
            mutant = tmp_path / "mutant"
            shutil.rmtree(mutant, ignore_errors=True)
            shutil.copytree(folder, mutant)
            original = (folder / target).read_bytes()
            if target.endswith(".json"):
                text, what = _mutate_json(original.decode(), rng)
                (mutant / target).write_text(text)
            else:
                data, what = _mutate_bytes(original, rng)
                (mutant / target).write_bytes(data)
        faulthandler.dump_traceback_later(CASE_SECONDS, exit=True)
        start = time.monotonic()
        try:
            _exercise(mutant)
        except binllm.BinllmError:
            pass
        except BaseException as e:  # noqa: BLE001 (PanicException derives from BaseException)
            if isinstance(e, KeyboardInterrupt):
                raise
            failures.append(f"{target} seed {SEED} case {case} ({what}): {type(e).__module__}.{type(e).__name__}: {str(e)[:200]}")
        finally:
            faulthandler.cancel_dump_traceback_later()
            if os.environ.get("BINLLM_FUZZ_VERBOSE") and time.monotonic() - start > 1:
                print(f"slow: {target} case {case} ({what}): {time.monotonic() - start:.1f} s", flush=True)
    assert not failures, f"{len(failures)} of {CASES} mutants escaped as undocumented exceptions:\n" + "\n".join(failures[:30])
