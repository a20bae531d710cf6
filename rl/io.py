"""Atomic file writes: a crashed or killed process never leaves a half-written result behind.

Each writer writes to a temporary file in the target's directory, flushes it to disk and renames it over
the target (`os.replace` is atomic on POSIX within one file system). The file gets the permissions a plain
`open()` would give it (0666 minus the umask), not mkstemp's private 0600.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp's files are private (0600)


def _atomic(path: str | os.PathLike, write: Callable[[Any], None], mode: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), _FILE_MODE)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically."""
    return _atomic(path, lambda f: f.write(text), "w")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return _atomic(path, lambda f: f.write(data), "wb")


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save(obj, path)`, atomically."""
    import torch

    return _atomic(path, lambda f: torch.save(obj, f), "wb")


def atomic_to_csv(df: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """`df.to_csv(path, index=False)` for a pandas DataFrame, atomically."""
    kwargs.setdefault("index", False)
    return _atomic(path, lambda f: df.to_csv(f, **kwargs), "w")
