#!/usr/bin/env python3
"""Checks a built binllm wheel before it is published: what pip and PyPI read from its name, and
what the dynamic loader of an old Linux will meet in its extension module.

    python scripts/check_wheel.py [--arch x86_64|aarch64] WHEEL...

One line per wheel (sizes, ELF machine, newest GLIBC symbol version, needed libraries); exit 1,
naming each failure, if any check fails:
- the name carries the abi3 tag (one wheel for CPython 3.9+) and manylinux2014 /
  manylinux_2_17 for the architecture, which pip on glibc 2.17 or newer accepts;
- the extension is an ELF shared object for that architecture, stripped (no .symtab, no
  .debug_* sections), and within the size budget below;
- its newest GLIBC_ symbol version is at most 2.17 (a newer one fails to load on an older
  glibc whatever the tag says), and it needs no library outside glibc's own.

scripts/build-wheels.sh runs it on what it builds; tests/test_wheels.py loads it from its path.
Needs binutils (readelf, objdump), which read either architecture's ELF files.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

GLIBC_FLOOR = (2, 17)  # manylinux2014
# readelf's name for each architecture's ELF machine.
MACHINES = {"x86_64": "Advanced Micro Devices X86-64", "aarch64": "AArch64"}
# glibc's libraries: always present, so a manylinux wheel may link them without bundling.
GLIBC_LIBRARIES = {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libgcc_s.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"}
# Stripped, the extension was 1.96 MB (x86_64) and 1.58 MB (aarch64) in December 2026; the
# budget leaves room for new kernels and stops a wheel from growing unnoticed.
MAX_EXTENSION_BYTES = 4 << 20


def _tool(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def inspect(wheel: Path) -> dict:
    """What the checks look at, read from WHEEL's name and its extension module."""
    distribution, version, python_tag, abi_tag, platform_tags = wheel.name.removesuffix(".whl").split("-")
    with zipfile.ZipFile(wheel) as archive:
        extensions = [member for member in archive.namelist() if member.endswith(".so")]
        if len(extensions) != 1:
            raise ValueError(f"{wheel.name}: expected one extension module, found {extensions}")
        with tempfile.TemporaryDirectory() as tmp:
            so = Path(archive.extract(extensions[0], tmp))
            header = _tool("readelf", "-h", str(so))
            sections = re.findall(r"^\s*\[\s*\d+\]\s+(\S+)", _tool("readelf", "-S", "-W", str(so)), re.M)
            needed = re.findall(r"\(NEEDED\).*\[(.+)\]", _tool("readelf", "-d", str(so)))
            glibc = {tuple(int(part) for part in v.split(".")) for v in re.findall(r"\bGLIBC_(\d+(?:\.\d+)+)", _tool("objdump", "-T", str(so)))}
            extension_bytes = so.stat().st_size
    return {
        "name": wheel.name,
        "version": version,
        "python_tag": python_tag,
        "abi_tag": abi_tag,
        "platform_tags": platform_tags.split("."),
        "wheel_bytes": wheel.stat().st_size,
        "extension": extensions[0],
        "extension_bytes": extension_bytes,
        "elf_type": re.search(r"Type:\s+(\S+)", header).group(1),
        "machine": re.search(r"Machine:\s+(.+)", header).group(1).strip(),
        "stripped": ".symtab" not in sections and not any(s.startswith(".debug") for s in sections),
        "glibc_max": max(glibc) if glibc else None,
        "needed": needed,
    }


def problems(info: dict, arch: str) -> list[str]:
    """Every check that INFO (from inspect) fails for ARCH, as sentences; empty when it passes."""
    found = []
    if info["python_tag"] != "cp39" or info["abi_tag"] != "abi3":
        found.append(f"tags {info['python_tag']}-{info['abi_tag']}, expected cp39-abi3")
    want = {f"manylinux2014_{arch}", f"manylinux_2_17_{arch}"}
    if set(info["platform_tags"]) != want:
        found.append(f"platform tags {info['platform_tags']}, expected {sorted(want)}")
    if info["elf_type"] != "DYN" or info["machine"] != MACHINES[arch]:
        found.append(f"extension is {info['elf_type']} for {info['machine']}, expected a shared object (DYN) for {MACHINES[arch]}")
    if not info["stripped"]:
        found.append("extension is not stripped (it has .symtab or .debug_* sections)")
    if info["extension_bytes"] > MAX_EXTENSION_BYTES:
        found.append(f"extension is {info['extension_bytes']} bytes, over the {MAX_EXTENSION_BYTES} budget")
    if info["glibc_max"] is None or info["glibc_max"] > GLIBC_FLOOR:
        found.append(f"newest GLIBC symbol version is {_version(info['glibc_max'])}, the floor is {_version(GLIBC_FLOOR)}")
    if set(info["needed"]) - GLIBC_LIBRARIES:
        found.append(f"extension needs libraries outside glibc: {sorted(set(info['needed']) - GLIBC_LIBRARIES)}")
    return found


def _version(v: tuple | None) -> str:
    return "none" if v is None else ".".join(map(str, v))


def _arch_of(info: dict) -> str:
    return next((arch for arch in MACHINES if info["platform_tags"][-1].endswith(arch)), "?")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(MACHINES), help="the architecture each wheel must be for (default: the one its name says)")
    parser.add_argument("wheels", nargs="+", type=Path)
    args = parser.parse_args(argv)
    failed = False
    for wheel in args.wheels:
        info = inspect(wheel)
        arch = args.arch or _arch_of(info)
        print(
            f"{info['name']}: {info['wheel_bytes'] / 1e6:.2f} MB, {info['extension']} {info['extension_bytes'] / 1e6:.2f} MB "
            f"({info['machine']}, {'stripped' if info['stripped'] else 'NOT stripped'}), newest GLIBC_{_version(info['glibc_max'])}, "
            f"needs {' '.join(info['needed'])}"
        )
        for problem in problems(info, arch) if arch in MACHINES else [f"no architecture in the platform tags {info['platform_tags']}"]:
            print(f"  FAIL: {problem}")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
