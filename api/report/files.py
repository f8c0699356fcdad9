"""Writing what ``eeipu report`` and ``eeipu studies export --out`` produce, and only that.

Each file is written to a temporary name in its own directory and then renamed over the
name asked for (``os.replace``): a failed or interrupted write leaves no half-written file,
and a symbolic link already at that name is replaced, never followed, so nothing outside
the path the user named is written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path


def out_file(text: str) -> Path:
    """``--out FILE`` checked before anything is read: not empty, not a directory, in a
    directory that exists (``ValueError`` with a one-line message otherwise)."""
    if not text.strip():
        raise ValueError("--out is empty: give a file name")
    path = Path(text)
    if path.is_dir():
        raise ValueError(f"--out {text!r} is a directory: give a file name")
    if not path.parent.is_dir():
        raise ValueError(f"--out {text!r}: {str(path.parent)!r} is not an existing directory")
    return path


def out_dir(text: str) -> Path:
    """``--out DIR`` checked before anything is read (created later by ``make_dir``)."""
    if not text.strip():
        raise ValueError("--out is empty: give a directory")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {text!r} is not a directory")
    return path


def make_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {str(path)!r}: cannot create it ({e.strerror or e})") from None
    return path


def write_with(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a fresh temporary file beside ``path`` (same suffix), then
    rename it to ``path``; on any error the temporary file is removed."""
    try:
        fd, tmp_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix or ".tmp"
        )
    except OSError as e:
        raise ValueError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, chunks: Iterable[str]) -> Path:
    """``chunks`` written to ``path`` as UTF-8 (atomically, as ``write_with``)."""

    def go(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            for c in chunks:
                fh.write(c)

    return write_with(path, go)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
