"""Where difflab keeps what it makes for itself, and how every file gets there atomically.

The cache (feature extractors, FID statistics) lives in the first of::

    $DIFFLAB_CACHE
    $XDG_CACHE_HOME/difflab
    ~/.cache/difflab

Every file difflab writes goes through :func:`atomic_path`: it is written under a temporary
name in the same folder and renamed into place only when complete, so a process killed at any
moment leaves either the old file or the new one, never half of one; a write that fails (no
permission, disk full) removes its temporary and is one :class:`~difflab.errors.UserError` line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from difflab.files import os_error

CACHE_ENV = "DIFFLAB_CACHE"
XDG_CACHE_ENV = "XDG_CACHE_HOME"
CACHE_NAME = "difflab"
TMP_PREFIX = ".tmp-"


def cache_dir(*parts: str) -> Path:
    """The difflab cache folder (or a sub-folder of it), created on demand.

    Args:
        parts: optional sub-folder names, e.g. ``cache_dir("features")``.

    Returns:
        ``$DIFFLAB_CACHE``, else ``$XDG_CACHE_HOME/difflab``, else ``~/.cache/difflab``,
        joined with ``parts``.
    """
    if os.environ.get(CACHE_ENV):
        root = Path(os.environ[CACHE_ENV]).expanduser()
    elif os.environ.get(XDG_CACHE_ENV):
        root = Path(os.environ[XDG_CACHE_ENV]).expanduser() / CACHE_NAME
    else:
        root = Path.home() / ".cache" / CACHE_NAME
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it.

    Works for files and for folders (the caller creates what it wants at the yielded path).
    The temporary name is hidden (``.tmp-<pid>-<name>``) and unique per process. An ``OSError`` on the way
    (no permission, disk full) is one :class:`~difflab.errors.UserError` line naming ``what`` and ``path``.

    Example::

        with atomic_path(out / "stats.npz") as tmp:
            np.savez(open(tmp, "wb"), mu=mu)
    """
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        if path.is_dir() and tmp.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:  # no permission, read-only, disk full: one line naming what was being written
        raise os_error(e, path, what) from None
    finally:
        with contextlib.suppress(OSError):
            _remove(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
