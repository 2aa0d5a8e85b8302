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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it a normal file's mode
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_directory(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
