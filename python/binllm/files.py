"""Writing a file or a model folder whole: under a temporary name beside it, renamed when complete
(`file_written_whole`, `folder_written_whole`).

A temporary name is ``.DST.PID.HEX.KIND`` (`temporary_path`): the writer's process id lets the
next writer of DST remove what a killed one left (`remove_stale_temporaries`), and only that:
a name of another form, or a process that still runs, is left alone.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from binllm._core import FileError


def temporary_path(dst: Path, kind: str) -> Path:
    """A new name beside `dst` (so the final rename is atomic) for writing it: ``.DST.PID.HEX.KIND``."""
    return dst.parent / f".{dst.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}"


def remove_stale_temporaries(dst: Path, kind: str) -> None:
    """Deletes the temporary files or folders of this `kind` that writers of `dst` killed
    mid-write left (SIGKILL, power loss): those whose process is gone."""
    own = re.compile(rf"\.{re.escape(dst.name)}\.(\d+)\.[0-9a-f]{{8}}\.{re.escape(kind)}")
    for path in dst.parent.glob(f".{glob.escape(dst.name)}.*.{kind}"):
        match = own.fullmatch(path.name)
        if match is None:
            continue
        try:
            os.kill(int(match[1]), 0)
        except ProcessLookupError:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        except (PermissionError, OverflowError):
            pass  # another user's live process, or not a pid


def refuse_existing_folder(dst: Path, who: str) -> None:
    """A model is written only where nothing is: `dst` absent or an empty folder; anything else
    is a FileError saying that `who` (the command) never overwrites."""
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileError(f"{dst} already exists; {who} never overwrites a model (choose a new folder)")


@contextmanager
def file_written_whole(dst: Path, kind: str = "tmp") -> Iterator[Path]:
    """Yields the name of a new empty file beside `dst` (an ordinary file: mode 0o666 less the
    umask) for the block to write; when the block ends it replaces `dst`, and if the block fails
    it is removed: no half-written file ever has the final name, and an existing `dst` stays
    whole until the new one is complete. Whether `dst` may be replaced is the caller's to check.
    A killed writer's file is removed by the next writer of `dst`."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dst, kind)
    tmp = temporary_path(dst, kind)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def folder_written_whole(dst: Path) -> Iterator[Path]:
    """Yields a new temporary folder beside `dst` (which must be absent or empty); when the block
    ends it becomes `dst`, and if the block fails it is removed: no half-written folder ever
    has the final name. A killed writer's folder is removed by the next writer of `dst`."""
    remove_stale_temporaries(dst, "tmp")
    tmp = temporary_path(dst, "tmp")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if dst.exists():
            dst.rmdir()  # empty (the callers check before they start)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
