"""Writing files so that a reader never sees half of one: write beside it, then rename over it.

Shared by every writer in the package (checkpoints, exported models, engines, saved inputs, the
corpus job's results). Standard library only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, durable: bool = False) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then move it to ``path`` in one step.

    If ``write`` raises (or the process is killed), ``path`` keeps what it held and the temporary file
    is removed (or, after a kill, left as a hidden ``.NAME.*.tmp`` that nothing reads). ``durable``
    also flushes the file and the directory entry to disk, so a power cut leaves the old or the new file.
    """
    path = Path(path)
    tmp = str(staged_path(path))
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_directory(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def staged_path(target: str | os.PathLike, tag: str = "") -> Path:
    """A new, empty, hidden file beside ``target`` (``.NAME.TAG*.tmp``, nothing reads it) with an ordinary file's mode,
    to write what will replace ``target`` in one rename (``atomic_write``, ``publish``)."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{tag + '.' if tag else ''}", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it a normal file's mode
    return Path(tmp)


def publish(moves: list[tuple[str | os.PathLike, str | os.PathLike]]) -> None:
    """Move each staged file or directory onto its target (same file system), in order, as one outcome: either every
    target holds its new content, or, when a move fails, every target holds what it held before and the staged
    entries are gone. Order the moves so that the entry a reader opens first (a model whose parts sit beside it, an
    ensemble over its steps) comes last: a reader never finds it without what it needs."""
    done: list[tuple[Path, Path | None]] = []
    try:
        for staged, target in moves:
            staged, target = Path(staged), Path(target)
            backup = None
            if target.exists() or target.is_symlink():
                backup = target.with_name(f".{target.name}.replaced-{os.getpid()}")
                os.replace(target, backup)
            try:
                os.replace(staged, target)
            except BaseException:
                if backup is not None:
                    os.replace(backup, target)
                raise
            done.append((target, backup))
    except BaseException:
        for target, backup in reversed(done):  # undo, newest first
            _remove(target)
            if backup is not None:
                os.replace(backup, target)
        for staged, _ in moves:
            if Path(staged).exists():
                _remove(Path(staged))
        raise
    for _, backup in done:
        if backup is not None:
            _remove(backup)


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def fsync_directory(directory: str | os.PathLike) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(*paths: str | os.PathLike) -> str:
    """Hex sha256 of the files' contents, one after another (a model's identity in sidecars and results)."""
    import hashlib

    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def json_text(value, **dumps) -> str:
    """``value`` as JSON every reader accepts (jq, browsers, strict parsers): a NaN or an infinity, which Python's
    json would write as the non-standard ``NaN``/``Infinity``, becomes null; a final newline."""
    import json
    import math

    def clean(v):
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), allow_nan=False, **{"indent": 2, **dumps}) + "\n"
