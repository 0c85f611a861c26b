#!/usr/bin/env bash
# Unpacks Debian 12's arm64 CPython 3.11 (python3.11 and the libraries it needs, libstdc++6 for
# numpy's bundled OpenBLAS) into a folder, so that qemu-aarch64 can run an aarch64 wheel on this
# x86-64 machine: tests/test_wheels.py installs the aarch64 wheel with pip --platform and runs
# `python3.11 -m binllm generate` as
#
#   qemu-aarch64 -L DIR/sysroot DIR/sysroot/usr/bin/python3.11 ...
#
#   scripts/arm64-python.sh [DIR]        default target/arm64-python; prints DIR/sysroot
#
# Nothing is installed: apt downloads the arm64 packages with its own state and cache under DIR
# (this machine's dpkg and package lists are untouched) and dpkg-deb unpacks them. Needs
# network access to the Debian mirrors in /etc/apt/sources.list.d. Safe to re-run: an unpacked
# sysroot is kept.
set -euo pipefail

dir=$(realpath -m "${1:-$(dirname "$0")/../target/arm64-python}")
sysroot=$dir/sysroot
if [[ ! -x $sysroot/usr/bin/python3.11 ]]; then
    mkdir -p "$dir"/apt/{lists/partial,archives/partial}
    touch "$dir/apt/status"
    apt=(-qq -o Dir::State="$dir/apt" -o Dir::State::Lists="$dir/apt/lists" -o Dir::State::status="$dir/apt/status"
        -o Dir::Cache="$dir/apt" -o Dir::Cache::Archives="$dir/apt/archives" -o Debug::NoLocking=1
        -o APT::Architecture=arm64 -o APT::Architectures::=arm64)
    apt-get "${apt[@]}" update
    # Against an empty status file the whole dependency closure downloads, libc6 included.
    apt-get "${apt[@]}" install --download-only --yes --no-install-recommends python3.11 libstdc++6 >/dev/null
    rm -rf "$sysroot.partial"
    for deb in "$dir"/apt/archives/*.deb; do
        dpkg-deb -x "$deb" "$sysroot.partial"
    done
    mv "$sysroot.partial" "$sysroot"
fi
echo "$sysroot"
