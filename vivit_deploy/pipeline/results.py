"""The job's output: parts while it runs, one file at the end, and never anything half-written.

While a job runs, each finished batch of rows is written as a part (``OUTPUT.parts/part-*.jsonl``,
renamed into place whole), so a job killed at any moment loses at most the batch in flight. At the
end the rows of the existing output (when resuming) and of every part are merged, one row per video,
into ``OUTPUT`` (``.parquet`` or ``.jsonl``), written beside it and renamed over it, and only then are
the parts removed. A rerun after a kill finds the parts (and the output, if the kill came after its
rename) and skips every video already in them: each video ends up in the output exactly once.

A row carries the settings that made it (:class:`ResultSettings`); a rerun with other settings is
refused rather than mixing rows, unless ``resume=False`` starts over. One job at a time may write an
output (a lock in the parts directory, released by the kernel if the job dies).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from vivit_deploy.errors import ConfigError, VivitDeployError
from vivit_deploy.files import atomic_write, fsync_directory
from vivit_deploy.video.manifests import require_pyarrow
from vivit_deploy.pipeline.inputs import row_key
from vivit_deploy.pipeline.stages import LEGACY_DEFAULTS, ROW_FIELDS, VIDEO_SETTINGS, WINDOW_FIELDS, ResultSettings

OUTPUT_SUFFIXES = (".parquet", ".jsonl")
JOB_FILE = "job.json"
LOCK_FILE = "lock"


class JobLockedError(VivitDeployError, RuntimeError):
    """Another job is writing the same output."""


# ---- formats -------------------------------------------------------------------------------------

def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(rows: Iterable[dict[str, Any]], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


TIMELINE_FIELDS = ("path", *WINDOW_FIELDS, "label", "probability", "top_k", "error", "damaged_frames", *VIDEO_SETTINGS,
                   "window_s", "hop_s")


def parquet_schema(fields: tuple[str, ...] = ROW_FIELDS):
    pa = require_pyarrow("a .parquet output")
    prediction = pa.struct([("label", pa.string()), ("probability", pa.float64())])
    types = {
        "path": pa.string(), "label": pa.string(), "probability": pa.float64(), "top_k": pa.list_(prediction),
        "error": pa.string(), "model": pa.string(), "model_sha256": pa.string(), "backend": pa.string(),
        "precision": pa.string(), "sampling": pa.string(), "clips": pa.int32(), "frame_sample_rate": pa.int32(),
        "top_k_count": pa.int32(), "damaged_frames": pa.int32(), "autorotate": pa.bool_(), "window": pa.int32(), "start": pa.float64(), "end": pa.float64(),
        "window_s": pa.float64(), "hop_s": pa.float64(),
    }
    return pa.schema([(name, types[name]) for name in fields])


def row_fields(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """A results file's columns: a row per video, or a timeline's row per window."""
    return TIMELINE_FIELDS if rows and "window" in rows[0] else ROW_FIELDS


def read_results(path: Path) -> list[dict[str, Any]]:
    """The rows of an existing output; an error if it is not one this job wrote (never overwrite foreign data)."""
    foreign = ConfigError(f"{path} exists and is not a results file of `vivit-deploy classify`; "
                          "move it away or write to another file")
    try:
        if path.suffix == ".parquet":
            pa = require_pyarrow("a .parquet output")
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except (OSError, pa.ArrowException) as exc:
                raise foreign from exc
            rows = table.to_pylist()
            if set(table.column_names) | set(LEGACY_DEFAULTS) not in (set(ROW_FIELDS), set(TIMELINE_FIELDS)):
                raise foreign
        else:
            rows = read_jsonl(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise foreign from exc
    if any(not isinstance(r, dict) for r in rows):
        raise foreign
    rows = [{**LEGACY_DEFAULTS, **r} if not set(LEGACY_DEFAULTS) & set(r) else r for r in rows]
    fields = set(row_fields(rows))
    if any(set(r) != fields for r in rows):
        raise foreign
    return rows


def write_results(rows: list[dict[str, Any]], path: Path) -> None:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows, schema=parquet_schema(row_fields(rows)))
        atomic_write(path, lambda tmp: pq.write_table(table, tmp), durable=True)
    else:
        atomic_write(path, lambda tmp: write_jsonl(rows, tmp), durable=True)


# ---- the store -----------------------------------------------------------------------------------

class ResultStore:
    """Rows of one job: which videos are done, parts as they finish, the final file at the end.

    ``retry_failed`` treats rows with an error as not done, so those videos are tried again.
    """

    def __init__(self, output: str | os.PathLike, settings: ResultSettings, *, resume: bool = True,
                 retry_failed: bool = False, warn: Callable[[str], None] | None = None):
        self.output = Path(output)
        self.settings = settings
        self.resume = resume
        self.retry_failed = retry_failed
        self.warn = warn or (lambda message: None)
        self.parts_dir = self.output.with_name(self.output.name + ".parts")
        self.rows: dict[str, dict[str, Any]] = {}  # path -> row, from the output and the parts
        self._lock_fd: int | None = None
        self._seq = 0
        if self.output.suffix not in OUTPUT_SUFFIXES:
            raise ConfigError(f"{self.output}: the output must end in {' or '.join(OUTPUT_SUFFIXES)}")
        if self.output.suffix == ".parquet":
            require_pyarrow("a .parquet output")
        if not self.output.parent.is_dir():
            raise FileNotFoundError(f"{self.output.parent}: the output directory does not exist")
        if self.output.is_dir():
            raise ConfigError(f"{self.output} is a directory; give a file name ending in .parquet or .jsonl")

    # -- opening: lock, settings, what is done --

    def open(self) -> "ResultStore":
        self._lock()
        try:
            fresh = self._read_job_file()
            if self.output.exists():
                existing = read_results(self.output)  # checked even when replaced: never overwrite foreign data
                if not fresh:
                    self._check_settings(existing, str(self.output))
                    for row in existing:
                        self.rows[_key(row)] = row
            for part in sorted(self.parts_dir.glob("part-*.jsonl")):
                try:
                    rows = read_jsonl(part)
                except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                    # Parts are renamed into place whole, so this takes a disk fault: set it aside and
                    # let its videos be classified again rather than fail or lose them.
                    part.rename(part.with_suffix(".corrupt"))
                    self.warn(f"{part}: unreadable ({exc}); its videos will be classified again")
                    continue
                self._check_settings(rows, str(part))
                for row in rows:
                    self.rows[_key(row)] = row
        except BaseException:
            self.close()
            raise
        return self

    def _lock(self) -> None:
        """Lock ``parts/lock``; a lock file is only removed by its holder, so re-check it is still the one there."""
        for _ in range(10):
            self.parts_dir.mkdir(exist_ok=True)
            path = self.parts_dir / LOCK_FILE
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                continue  # a finishing job removed the directory between our mkdir and open
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise JobLockedError(f"another classify job (pid {holder}) is writing {self.output}; "
                                     "wait for it or write to another file") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
                self._lock_fd = fd
                return
            os.close(fd)
        raise JobLockedError(f"could not lock {self.parts_dir / LOCK_FILE}: other jobs keep replacing it")

    def _read_job_file(self) -> bool:
        """Record (or check) the settings of the unfinished job in the parts directory; True when it starts over."""
        path = self.parts_dir / JOB_FILE
        if not self.resume:
            for part in self.parts_dir.glob("part-*"):
                part.unlink()
        elif path.is_file():
            job = json.loads(path.read_text(encoding="utf-8"))
            diff = self.settings.differences(job["settings"])
            if diff:
                raise ConfigError(
                    f"{self.parts_dir} holds an unfinished job with other settings ({'; '.join(diff)}): rerun it with "
                    "its settings to finish it, or pass resume=False to discard it"
                )
            return bool(job["fresh"])
        text = json.dumps({"settings": self.settings.to_dict(), "fresh": not self.resume,
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n"
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return not self.resume

    def _check_settings(self, rows: list[dict[str, Any]], where: str) -> None:
        mine = self.settings.key()
        for row in rows:
            if ResultSettings.of_row(row).key() != mine:
                diff = self.settings.differences(row)
                raise ConfigError(
                    f"{where} holds rows made with other settings ({'; '.join(diff)}); rows of different "
                    "settings are never mixed: pass resume=False to replace them, or write to another file"
                )

    # -- running --

    def is_done(self, key: str) -> bool:
        """Whether the row of ``key`` (``VideoItem.key``: a video, or a timeline's window) is in, and counts."""
        row = self.rows.get(key)
        return row is not None and (row["error"] is None or not self.retry_failed)

    def write_part(self, rows: list[dict[str, Any]]) -> None:
        """Write finished rows as one part, whole or not at all."""
        if not rows:
            return
        self._seq += 1
        name = f"part-{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.jsonl"
        atomic_write(self.parts_dir / name, lambda tmp: write_jsonl(rows, tmp))
        for row in rows:
            self.rows[_key(row)] = row

    # -- finishing --

    def finalize(self, order: dict[str, int]) -> list[dict[str, Any]]:
        """Write every row, one per video (or window), into the output (input order first, then older rows by key);
        ``order`` maps ``VideoItem.key`` to its position."""
        rows = sorted(self.rows.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
        rows = [row for _, row in rows]
        write_results(rows, self.output)
        self._release(remove=True)
        return rows

    def _release(self, remove: bool) -> None:
        """Release the lock; with ``remove``, first delete the parts directory while still holding it."""
        if self._lock_fd is None:
            return
        if remove:
            for path in self.parts_dir.iterdir():
                if path.name != LOCK_FILE:
                    path.unlink()
            (self.parts_dir / LOCK_FILE).unlink(missing_ok=True)  # a new job re-checks the lock's inode
            try:
                self.parts_dir.rmdir()
                fsync_directory(self.output.parent)
            except OSError:
                pass  # a new job has already made it its own
        os.close(self._lock_fd)  # releases the flock
        self._lock_fd = None

    def close(self) -> None:
        """Release the lock, keeping the parts of an unfinished job (and dropping the directory if it has none)."""
        if self._lock_fd is not None:
            self._release(remove=not any(self.parts_dir.glob("part-*.jsonl")))

    def __enter__(self) -> "ResultStore":
        return self.open()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _key(row: dict[str, Any]) -> str:
    return row_key(row["path"], row.get("window"))
