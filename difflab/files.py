"""Every file difflab reads from or writes for a user, guarded: failures become one-line :class:`UserError`\\ s.

A user's file can be missing, a folder, unreadable, truncated, of another format, in another text
encoding, or hold the wrong arrays; a folder can be read-only or its disk full. Each reader here
turns what it can meet into ``UserError("<what> <path> <problem>: <fix>")``, so no library further
down (safetensors, torch, numpy, PIL, yaml) raises first. Writers go through
:func:`difflab.paths.atomic_path`, which does the same for ``OSError`` (no permission, disk full).

Untrusted files stay data: weights are read with safetensors, training states with
``torch.load(weights_only=True)`` (no code runs, whatever the file holds), everything else is
JSON, YAML (``safe_load``), text, NumPy arrays without pickles, or images.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from difflab.errors import UserError

# errno -> (what is wrong, how to fix it) for the OSErrors a user can cause or fix
_OS_FIXES = {
    errno.ENOENT: ("does not exist", "check the path"),
    errno.EACCES: ("is not accessible (permission denied)", "fix its permissions or choose another path"),
    errno.EPERM: ("is not accessible (operation not permitted)", "fix its permissions or choose another path"),
    errno.EROFS: ("is on a read-only file system", "choose a path on a writable disk"),
    errno.ENOSPC: ("cannot be written: the disk is full", "free some space (or choose another disk) and run again"),
    errno.EDQUOT: ("cannot be written: the disk quota is exceeded", "free some space and run again"),
    errno.EISDIR: ("is a folder, not a file", "pass a file"),
    errno.ENOTDIR: ("has a file where a folder is expected", "check the path"),
    errno.ENAMETOOLONG: ("has a name too long for the file system", "choose a shorter path"),
    errno.EIO: ("could not be read or written (input/output error)", "check the disk"),
}


def os_error(e: OSError, path: str | Path | None = None, what: str = "file") -> UserError:
    """A one-line :class:`UserError` for an ``OSError`` met at ``path`` (default: the error's own file name)."""
    where = path if path is not None else (e.filename or "?")
    problem, fix = _OS_FIXES.get(e.errno, (f"could not be used ({e.strerror or e})", "check the path and the disk"))
    return UserError(f"{what} {where} {problem}: {fix}")


def require_file(path: str | Path, what: str = "file", fix: str = "check the path") -> Path:
    """``path`` as a Path, or a one-line error when it is missing or is a folder."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file: {fix}")
    if not path.is_file():
        raise UserError(f"{what} {path} not found: {fix}")
    return path


def read_bytes(path: str | Path, what: str = "file", fix: str = "check the path") -> bytes:
    """The bytes of a user's file (missing, folder, no permission: one line)."""
    path = require_file(path, what, fix)
    try:
        return path.read_bytes()
    except OSError as e:
        raise os_error(e, path, what) from None


def read_text(path: str | Path, what: str = "text file", fix: str = "check the path") -> str:
    """A UTF-8 text file; bytes that are not UTF-8 are a one-line error naming the offset."""
    data = read_bytes(path, what, fix)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{what} {path} is not UTF-8 text (byte {e.start}, line {line}): save it as UTF-8") from None


def read_json(path: str | Path, what: str = "JSON file", fix: str = "check the path") -> Any:
    """A JSON file (wrong syntax: one line naming where)."""
    text = read_text(path, what, fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno}): {fix}") from None


def read_safetensors(path: str | Path, what: str = "weights file",
                     fix: str = "use an earlier checkpoint or retrain") -> dict[str, Any]:
    """The tensors of a safetensors file (missing, truncated, not safetensors: one line)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = read_bytes(path, what, fix)
    try:
        return load(data)
    except (SafetensorError, ValueError, RuntimeError, OSError):  # the reader's own error, or a bad header
        raise UserError(f"{what} {path} is not a complete safetensors file (truncated, or another format): "
                        f"{fix}") from None


def read_torch_state(path: str | Path, what: str = "training state",
                     fix: str = "use an earlier checkpoint or retrain") -> dict[str, Any]:
    """A file of ``torch.save``: plain tensors, numbers, strings and containers only.

    ``torch.load(weights_only=True)`` refuses any other object (no code in the file runs); that refusal
    and a truncated or foreign file are one-line errors.
    """
    import torch

    path = require_file(path, what, fix)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{what} {path} holds Python objects other than tensors and numbers, which difflab does not "
                        f"load (they could run code): {fix}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, AttributeError):
        raise UserError(f"{what} {path} is not a complete PyTorch file (truncated, or another format): {fix}") from None
    except OSError as e:
        raise os_error(e, path, what) from None
    if not isinstance(state, dict):
        raise UserError(f"{what} {path} holds a {type(state).__name__}, not a training state: {fix}")
    return state


ZIP_MAGIC = b"PK\x03\x04"  # a .npz is a zip archive of .npy files


def read_npz(path: str | Path, keys: Iterable[str], what: str = "array file",
             fix: str = "check the path") -> dict[str, Any]:
    """The named arrays of a ``.npz`` (never unpickled); a missing key, a truncated or foreign file: one line."""
    import numpy as np

    path = require_file(path, what, fix)
    with open(path, "rb") as f:
        magic = f.read(len(ZIP_MAGIC))
    if magic != ZIP_MAGIC:  # np.load would read anything else as a .npy or a pickle
        raise UserError(f"{what} {path} is not a .npz (no zip archive: another format, or empty): {fix}")
    try:
        with np.load(path, allow_pickle=False) as f:
            files = list(f.files)
            missing = [k for k in keys if k not in files]
            if missing:
                raise UserError(f"{what} {path} has no {missing[0]!r} array (it holds {', '.join(files) or 'nothing'}):"
                                f" {fix}")
            return {k: f[k] for k in files}
    except UserError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise os_error(e, path, what) from None
        what_is_wrong = "holds Python objects" if "pickle" in str(e) else "is truncated, or another format"
        raise UserError(f"{what} {path} is not a readable .npz (it {what_is_wrong}): {fix}") from None


def read_manifest(path: str | Path, what: str, example: str) -> list[tuple[int, dict[str, Any]]]:
    """The rows of a JSON-lines manifest (``metadata.jsonl``): (line number, object) of every non-blank line, each
    an object with a string ``file_name`` (``example`` shows one in the message); a BOM is ignored."""
    path = Path(path)
    text = read_text(path, what, "fix its permissions or delete it").removeprefix("\ufeff")  # BOM
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path} line {n} is not JSON ({err.msg}): fix or delete that line") from None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise UserError(f'{path} line {n} has no "file_name": write {{"file_name": "{example}", "text": "..."}}')
        rows.append((n, row))
    return rows


NPY_MAGIC = b"\x93NUMPY"


def read_npy(path: str | Path, what: str = "array file", fix: str = "check the path"):
    """The array of a ``.npy`` (never unpickled); a truncated, object or foreign file: one line."""
    import numpy as np

    path = require_file(path, what, fix)
    with open(path, "rb") as f:
        magic = f.read(len(NPY_MAGIC))
    if magic != NPY_MAGIC:
        raise UserError(f"{what} {path} is not a .npy array (another format, or empty): {fix}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise os_error(e, path, what) from None
        what_is_wrong = "holds Python objects" if "pickle" in str(e) else "is truncated"
        raise UserError(f"{what} {path} is not a readable .npy (it {what_is_wrong}): {fix}") from None


def check_output(path: str | Path, what: str = "output", *, folder: bool = False) -> Path:
    """Check before any work that ``path`` can be written: its nearest existing parent is a writable folder,
    and ``path`` itself is not a folder (a file output) or a file (``folder=True``).

    Folders that do not exist yet are fine (they are created when the output is written).
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder: choose a folder name")
    if not folder and path.is_dir():
        raise UserError(f"{what} {path} is a folder: name a file, e.g. {path / 'out'}{path.suffix or '.png'}")
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what} {path} cannot be written: {parent} is a file, not a folder: choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} cannot be written: folder {parent} is not writable: choose another path")
    return path


SIDECAR_SUFFIX = ".json"  # the architecture of a weights file, beside it: model.safetensors -> model.json


def sidecar(path: str | Path) -> Path:
    """The JSON file beside a weights file that records its architecture."""
    return Path(path).with_suffix(SIDECAR_SUFFIX)


def read_sidecar(cls: type, path: str | Path, what: str, fix: str) -> Any:
    """The dataclass ``cls`` recorded beside the weights file ``path`` (lists become tuples, as saved)."""
    import dataclasses

    raw = read_json(sidecar(path), f"{what} config", fix)
    names = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(raw, dict):
        raise UserError(f"{what} config {sidecar(path)} is not a JSON object: {fix}")
    if unknown := sorted(set(raw) - names):
        raise UserError(f"{what} config {sidecar(path)} has unknown keys {unknown}: {fix}")
    if missing := sorted(n for n in names if n not in raw and _required(cls, n)):
        raise UserError(f"{what} config {sidecar(path)} lacks {missing}: {fix}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    except (TypeError, ValueError) as e:
        raise UserError(f"{what} config {sidecar(path)} is not valid ({e}): {fix}") from None


def _required(cls: type, name: str) -> bool:
    import dataclasses

    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def load_weights_into(module: Any, path: str | Path, what: str, fix: str, mismatch_fix: str | None = None) -> None:
    """Load a safetensors file into a ``torch.nn.Module``; one line when it is unreadable (``fix``) or when its
    tensors (names, shapes) do not fit the module (``mismatch_fix``, default ``fix``)."""
    tensors = read_safetensors(path, what, fix)
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [k for k in own if k in tensors and own[k].shape != tensors[k].shape]
    if missing or unexpected or shapes:
        detail = (f"{len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} mismatched tensors"
                  f" (e.g. {(missing + unexpected + shapes)[0]})")
        raise UserError(f"{what} {path} does not fit the model ({detail}): {mismatch_fix or fix}")
    module.load_state_dict(tensors)
