"""Opt-in release tier (BINLLM_TEST_WHEELS=1): the wheels people would install, built by
scripts/build-wheels.sh, installed the way a user would and run.

    BINLLM_TEST_WHEELS=1 python -m pytest tests/test_wheels.py [-k x86_64]

- x86_64: the manylinux2014 abi3 wheel passes scripts/check_wheel.py (tags, stripped, newest
  GLIBC symbol version at most 2.17, glibc's libraries only); pip installs it with its
  dependencies from PyPI into a fresh venv in a temporary folder, and that venv's
  `binllm generate`, run from there so this checkout cannot be imported, writes text with the
  embedded default model. BINLLM_WHEEL_PYTHON picks the venv's interpreter (default: this one);
  a 3.9 checks the abi3 floor.
- aarch64: the same checks on the cross-built wheel; then pip installs it and its aarch64
  dependencies into a folder (--platform), and Debian's arm64 CPython 3.11 (unpacked by
  scripts/arm64-python.sh) runs `python -m binllm generate` under qemu-aarch64 with the NEON
  kernels. That glibc is Debian 12's 2.36: the 2.17 floor is checked on the symbols, not run.

Needs network access to PyPI (and Debian's mirrors for the arm64 CPython), binutils, and for
aarch64 Debian's rustc-web toolchain and qemu-user (scripts/wasm-toolchain.sh); asked for and
missing is a failure. Minutes: each build is incremental in target/wheels-build/ARCH.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("BINLLM_TEST_WHEELS", "") in ("", "0"), reason="opt-in tier: BINLLM_TEST_WHEELS=1 (builds and installs the release wheels, minutes)")

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "ROMEO:"
NEW_TOKENS = 16


def _load_check_wheel():
    spec = importlib.util.spec_from_file_location("binllm_check_wheel", ROOT / "scripts" / "check_wheel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_wheel = _load_check_wheel()


def run(cmd, timeout, cwd=ROOT, env=None):
    # Nothing from this checkout's environment may leak into what runs the installed wheel.
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**clean, **(env or {})})
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout[-8000:]}\n{proc.stderr[-8000:]}"
    return proc


def built_wheel(arch: str, out: Path, timeout: int) -> Path:
    run(["bash", ROOT / "scripts" / "build-wheels.sh", "--arch", arch, "--out", out], timeout=timeout)
    wheels = sorted(out.glob(f"binllm-*_{arch}.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def assert_release_ready(wheel: Path, arch: str) -> None:
    info = check_wheel.inspect(wheel)
    assert check_wheel.problems(info, arch) == []
    # The promises the README makes, spelled out.
    assert "-cp39-abi3-" in wheel.name and f"manylinux2014_{arch}" in wheel.name and f"manylinux_2_17_{arch}" in wheel.name
    assert info["glibc_max"] <= (2, 17)
    assert info["stripped"]


def assert_generated(proc: subprocess.CompletedProcess) -> None:
    pieces = re.search(r"generated (\d+) tokens", proc.stderr)
    assert pieces and int(pieces.group(1)) > 0, proc.stderr
    assert proc.stdout.strip(), proc.stderr


def test_x86_64_wheel_installs_and_generates(tmp_path):
    wheel = built_wheel("x86_64", tmp_path / "wheels", timeout=1200)
    assert_release_ready(wheel, "x86_64")

    python = os.environ.get("BINLLM_WHEEL_PYTHON", sys.executable)
    venv = tmp_path / "venv"
    run([python, "-m", "venv", venv], timeout=120, cwd=tmp_path)
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel], timeout=600, cwd=tmp_path)
    where = run([venv / "bin" / "python", "-c", "import binllm, binllm.kernels; print(binllm.__file__); print(binllm.kernels.backend())"], timeout=60, cwd=tmp_path)
    assert where.stdout.splitlines()[0].startswith(str(venv)), where.stdout
    proc = run([venv / "bin" / "binllm", "generate", PROMPT, "-n", NEW_TOKENS, "-t", 0], timeout=120, cwd=tmp_path)
    assert_generated(proc)


def test_aarch64_wheel_runs_under_qemu(tmp_path):
    missing = [p for p in ("/usr/bin/rustc", "/usr/bin/cargo", "/usr/lib/rustlib/src/rust/library/std") if not Path(p).exists()]
    missing += [tool for tool in ("qemu-aarch64", "dpkg-deb", "apt-get") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {missing}: run scripts/wasm-toolchain.sh (as root) first")
    wheel = built_wheel("aarch64", tmp_path / "wheels", timeout=1800)
    assert_release_ready(wheel, "aarch64")

    sysroot = Path(run(["bash", ROOT / "scripts" / "arm64-python.sh"], timeout=600).stdout.strip())
    site = tmp_path / "site"
    platform = ["--platform", "manylinux2014_aarch64", "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"]
    run([sys.executable, "-m", "pip", "install", "-q", "--no-warn-conflicts", "--target", site, *platform, wheel], timeout=600, cwd=tmp_path)
    python = ["qemu-aarch64", "-L", sysroot, sysroot / "usr" / "bin" / "python3.11", "-s"]
    env = {"PYTHONPATH": str(site)}
    where = run([*python, "-c", "import binllm, binllm.kernels, platform; print(binllm.__file__); print(platform.machine(), binllm.kernels.backend())"], timeout=300, cwd=tmp_path, env=env)
    assert where.stdout.splitlines() == [str(site / "binllm" / "__init__.py"), "aarch64 neon"], where.stdout
    proc = run([*python, "-m", "binllm", "generate", PROMPT, "-n", NEW_TOKENS, "-t", 0], timeout=300, cwd=tmp_path, env=env)
    assert_generated(proc)
