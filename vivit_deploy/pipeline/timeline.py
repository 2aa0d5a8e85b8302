"""Timelines: a long video as windows (``classify --window``), and consecutive windows of one label merged into
segments (``--segments``): what happens when in the video, temporal localisation from a clip classifier.

A segment is a run of windows of one video, in order of their start, with the same label and no error between
them: ``path``, ``start`` (its first window's), ``end`` (its last window's), ``label``, ``probability`` (the mean
of its windows' probabilities), ``windows``. Overlapping windows (a hop shorter than the window) make touching
segments overlap by as much; an error row ends a segment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vivit_deploy.files import atomic_write

SEGMENT_FIELDS = ("path", "start", "end", "label", "probability", "windows")


def segments_path(output: Path) -> Path:
    """``results.parquet`` -> ``results.segments.parquet`` (and the same for .jsonl)."""
    return output.with_name(f"{output.stem}.segments{output.suffix}")


def segments(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The segments of a timeline's rows (any order; rows of several videos)."""
    by_video: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("window") is not None:
            by_video.setdefault(row["path"], []).append(row)
        elif row["error"] is None:
            raise ValueError("segments are made from a timeline's rows (window=)")
    out = []
    for path, windows in by_video.items():
        current: dict[str, Any] | None = None
        for row in sorted(windows, key=lambda r: (r["start"], r["window"])):
            if row["error"] is not None:
                current = None
                continue
            if current is not None and current["label"] == row["label"]:
                current["end"] = row["end"]
                current["probabilities"].append(row["probability"])
                continue
            current = {"path": path, "start": row["start"], "end": row["end"], "label": row["label"],
                       "probabilities": [row["probability"]]}
            out.append(current)
    for segment in out:
        probabilities = segment.pop("probabilities")
        segment["probability"] = sum(probabilities) / len(probabilities)
        segment["windows"] = len(probabilities)
    return out


def write_segments(rows: list[dict[str, Any]], path: Path) -> int:
    """Write the segments of ``rows`` to ``path`` (.parquet or .jsonl) in one atomic step; returns how many."""
    found = segments(rows)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("path", pa.string()), ("start", pa.float64()), ("end", pa.float64()), ("label", pa.string()),
                            ("probability", pa.float64()), ("windows", pa.int32())])
        table = pa.Table.from_pylist(found, schema=schema)
        atomic_write(path, lambda tmp: pq.write_table(table, tmp), durable=True)
    else:
        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                for segment in found:
                    f.write(json.dumps(segment, ensure_ascii=False) + "\n")

        atomic_write(path, write, durable=True)
    return len(found)
