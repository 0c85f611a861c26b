"""Resident memory: a loaded model costs about its weights (files are memory-mapped and the
map is dropped after loading), plus the KV cache as it fills."""

import subprocess
import sys

from helpers import make_random_hf_model

PROBE = r"""
import re, sys, json
from binllm import _core
def rss():
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
before = rss()
m = _core.Model.load(sys.argv[1])
loaded = rss()
s = m.session(1024)
s.forward(list(range(256)))
for t in range(64):
    s.forward([t])
after = rss()
print(json.dumps({"load": loaded - before, "run": after - before, "weights": m.nbytes, "cache": s.cache_nbytes}))
"""


def measure(path):
    out = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    import json

    return json.loads(out.stdout)


def check(m):
    # 8 MiB of slack for the allocator and the kernels' thread pool.
    slack = 8 * 2**20
    assert m["load"] <= 1.15 * m["weights"] + slack, m
    assert m["run"] <= 1.15 * (m["weights"] + m["cache"]) + slack, m


def test_bitnet_model_memory(tmp_path):
    folder = make_random_hf_model(tmp_path / "m", layout="bitnet_packed", hidden=1024, heads=8, kv_heads=2, intermediate=2816, layers=4, vocab=8000, max_positions=1024)
    check(measure(folder))


def test_smollm2_memory(smollm2_path):
    check(measure(smollm2_path))
