"""Lists of videos in a file: a manifest names videos by path, and, for an evaluation, their labels.

- ``.txt``: one path per line; blank lines and ``#`` comments skipped (no other columns);
- ``.csv``: a header with a ``path`` column (and any others, such as ``label``);
- ``.parquet``: a ``path`` column and any others (needs pyarrow).

A relative path is relative to the manifest's own directory, so a manifest and its videos can move together
(``manifest_path``). The corpus job reads the paths (``pipeline.inputs``); ``compare`` reads the paths and labels.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from vivit_deploy.errors import ConfigError

MANIFEST_SUFFIXES = (".txt", ".csv", ".parquet")


def require_pyarrow(why: str):
    try:
        import pyarrow
    except ImportError:
        raise ConfigError(f"{why} needs pyarrow: pip install 'vivit-deploy[parquet]'") from None
    return pyarrow


def read_manifest(path: Path, columns: tuple[str, ...] = ()) -> list[dict[str, str | None]]:
    """The rows of a manifest, in its order: each a dict with ``path`` (as written there) and ``columns`` (None where
    the manifest has no such column or the row leaves it empty). Rows without a path are skipped."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ConfigError(f"{path}: a manifest is a {', '.join(MANIFEST_SUFFIXES)} file")
    if suffix == ".txt":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable text manifest ({exc})") from exc
        return [{"path": s, **dict.fromkeys(columns)} for s in (line.strip() for line in lines)
                if s and not s.startswith("#")]
    if suffix == ".csv":
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or "path" not in reader.fieldnames:
                    raise ConfigError(f"{path}: a CSV manifest needs a 'path' column, got {reader.fieldnames}")
                return [{"path": row["path"].strip(), **{c: _cell(row.get(c)) for c in columns}}
                        for row in reader if (row["path"] or "").strip()]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ConfigError(f"{path}: not a readable CSV manifest ({exc})") from exc
    pyarrow = require_pyarrow("a .parquet manifest")
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pyarrow.ArrowException) as exc:
        raise ConfigError(f"{path}: not a readable Parquet manifest ({exc})") from exc
    if "path" not in table.column_names:
        raise ConfigError(f"{path}: a Parquet manifest needs a 'path' column, got {table.column_names}")
    data = {c: table.column(c).to_pylist() for c in ("path", *columns) if c in table.column_names}
    return [{"path": str(p).strip(), **{c: _cell(data[c][i]) if c in data else None for c in columns}}
            for i, p in enumerate(data["path"]) if p is not None and str(p).strip()]


def _cell(value) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def manifest_path(manifest: Path, written: str) -> Path:
    """A path as a manifest wrote it, made absolute: relative paths are relative to the manifest's directory."""
    path = Path(written).expanduser()
    return Path(os.path.abspath(path if path.is_absolute() else Path(manifest).parent / path))


__all__ = ["MANIFEST_SUFFIXES", "manifest_path", "read_manifest", "require_pyarrow"]
