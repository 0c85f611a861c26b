"""Writing a model folder whole: under a temporary name beside it, renamed when complete."""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def folder_written_whole(dst: Path) -> Iterator[Path]:
    """Yields a new temporary folder beside `dst` (which must be absent or empty); when the block
    ends it becomes `dst`, and if the block fails it is removed: no half-written folder ever
    has the final name."""
    tmp = dst.parent / f".{dst.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if dst.exists():
            dst.rmdir()  # empty (the callers check before they start)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
