"""Atomic file writes: a reader never sees a half-written map, STAR or checkpoint.

Everything faml writes goes to a temporary file in the destination's folder, is flushed to
disk, and is then renamed over the destination (``os.replace`` is atomic on POSIX file
systems). A run killed at any moment leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "write_text_atomic"]


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; on success rename it over it.

    The temporary file is removed if the block raises. Parent folders must exist.
    """
    dest = Path(destination)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates the file readable by its owner only; results should carry the usual
    # permissions of a new file (0666 less the umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text_atomic(destination: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``destination`` atomically."""
    with atomic_path(destination) as tmp:
        tmp.write_text(text, encoding="utf-8")
