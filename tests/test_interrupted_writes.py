"""A write that fails or is interrupted leaves no file under its final name and no temporary
file behind (issue: release hardening): convert, quantize and the single-file writers write
through a temporary name and rename at the end; SIGTERM cleans up as Ctrl-C does; a killed
writer's leftover is removed by the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import binllm.convert
import pytest
from binllm.convert import convert
from binllm.model import default_model_path
from binllm.quantize import quantize_model
from helpers import make_random_hf_model


def _fail_after_writing(path_argument):
    """A writer that writes part of its file, then fails as a full disk would."""

    def write(*args, **kwargs):
        path = path_argument(args, kwargs)
        with open(path, "wb") as fh:
            fh.write(b"GGUF half a file")
        raise OSError(28, "No space left on device")

    return write


def test_a_failed_convert_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(binllm.convert._core, "export_gguf", _fail_after_writing(lambda args, kwargs: args[1]))
    dst = tmp_path / "out" / "m.gguf"
    with pytest.raises(OSError, match="No space left"):
        convert(default_model_path(), dst, type="tq2_0")
    assert list((tmp_path / "out").iterdir()) == []
    # With --force an existing file stays as it was until the new one is complete.
    dst.write_bytes(b"the old model")
    with pytest.raises(OSError, match="No space left"):
        convert(default_model_path(), dst, type="tq2_0", force=True)
    assert dst.read_bytes() == b"the old model" and list((tmp_path / "out").iterdir()) == [dst]


def test_a_failed_quantize_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.numpy

    src = make_random_hf_model(tmp_path / "float", layout="llama_float", seed=1, hidden=64, heads=2, kv_heads=1, intermediate=128, layers=1, vocab=300)
    monkeypatch.setattr(safetensors.numpy, "save_file", _fail_after_writing(lambda args, kwargs: args[1]))
    with pytest.raises(OSError, match="No space left"):
        quantize_model(src, tmp_path / "q", method="absmean")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float"]


def test_sigterm_during_convert_removes_its_temporary_file(tmp_path):
    dst = tmp_path / "m.gguf"
    script = textwrap.dedent(f"""
        import sys, time
        import binllm.convert
        from binllm import cli

        def slow_export(model, path, **kwargs):
            open(path, "wb").write(b"GGUF partial")
            print("writing", flush=True)
            time.sleep(60)

        binllm.convert._core.export_gguf = slow_export
        sys.exit(cli.main(["convert", {str(default_model_path())!r}, {str(dst)!r}, "--type", "tq2_0"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")]
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert list(tmp_path.iterdir()) == []


def test_a_killed_converts_leftover_is_removed_by_the_next(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".m.gguf.{dead}.0123abcd.part"
    live = tmp_path / f".m.gguf.{os.getpid()}.4567cdef.part"  # a convert still running
    stale.write_bytes(b"GGUF killed mid-write")
    live.write_bytes(b"GGUF in progress")
    convert(default_model_path(), tmp_path / "m.gguf", type="f16")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.gguf", live.name])


def test_a_killed_quantizes_folder_is_removed_by_the_next(tmp_path):
    # A quantize killed (SIGKILL: no cleanup runs) while writing leaves its temporary folder.
    src = make_random_hf_model(tmp_path / "float", layout="llama_float", seed=1, hidden=64, heads=2, kv_heads=1, intermediate=128, layers=1, vocab=300)
    dst = tmp_path / "q"
    script = textwrap.dedent(f"""
        import time
        import safetensors.numpy
        from binllm.quantize import quantize_model

        def slow_save(tensors, path, **kwargs):
            open(path, "wb").write(b"half a model")
            print("writing", flush=True)
            time.sleep(60)

        safetensors.numpy.save_file = slow_save
        quantize_model({str(src)!r}, {str(dst)!r}, method="absmean")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    proc.stdout.close()
    stale = [p.name for p in tmp_path.iterdir() if p.name.startswith(".q.")]
    assert len(stale) == 1 and (tmp_path / stale[0]).is_dir()
    # A folder of a writer that still runs (this process) is left alone.
    live = tmp_path / f".q.{os.getpid()}.4567cdef.tmp"
    live.mkdir()
    quantize_model(src, dst, method="absmean")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["float", "q", live.name])


def test_a_killed_single_file_writers_leftover_is_removed_by_the_next(tmp_path):
    # Single files (A/B base logits and reports, plots, training checkpoints) are written through
    # files.file_written_whole: a killed writer's `.NAME.PID.HEX.tmp` is removed by the next
    # writer of NAME once its process is gone; one of a writer that still runs is left alone.
    from binllm import ab

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    dst = tmp_path / "report.json"
    stale = tmp_path / f".report.json.{dead}.0123abcd.tmp"
    live = tmp_path / f".report.json.{os.getpid()}.4567cdef.tmp"
    other = tmp_path / f".other.json.{dead}.89abcdef.tmp"  # another file's: not this writer's to remove
    for path in (stale, live, other):
        path.write_text("half a report")
    umask = os.umask(0o027)
    try:
        ab.write_text_atomic(dst, "{}\n")
    finally:
        os.umask(umask)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["report.json", live.name, other.name])
    assert dst.read_text() == "{}\n"
    assert dst.stat().st_mode & 0o777 == 0o640  # an ordinary file: 0o666 less the umask


def test_a_failed_single_file_write_keeps_the_old_file(tmp_path):
    from binllm.files import file_written_whole

    dst = tmp_path / "checkpoint.pt"
    dst.write_bytes(b"the previous checkpoint")
    with pytest.raises(OSError, match="No space left"):
        with file_written_whole(dst) as tmp:
            tmp.write_bytes(b"half a checkpoint")
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == [dst] and dst.read_bytes() == b"the previous checkpoint"
    with file_written_whole(dst) as tmp:
        tmp.write_bytes(b"the new checkpoint")
    assert list(tmp_path.iterdir()) == [dst] and dst.read_bytes() == b"the new checkpoint"
