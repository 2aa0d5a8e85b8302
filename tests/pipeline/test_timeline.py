"""classify --window: a row per window of each video, segments, and the corpus job's guarantees for windows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vivit_deploy.cli import main
from vivit_deploy.errors import ConfigError
from vivit_deploy.pipeline import ClassifyJob, classify_corpus
from vivit_deploy.pipeline.results import read_results
from vivit_deploy.pipeline.timeline import segments, segments_path
from vivit_deploy.demo.motion import LABELS, write_phases

from tests.pipeline.conftest import classify_killed_midway

RIGHT, LEFT, UP = 1, 0, 2


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory) -> Path:
    """Two videos whose motion changes: right 6 s then left 4 s; up 4 s then right 4 s."""
    directory = tmp_path_factory.mktemp("long")
    write_phases(directory / "a.mp4", [(RIGHT, 3), (LEFT, 2)], seed=1)
    write_phases(directory / "b.mp4", [(UP, 2), (RIGHT, 2)], seed=2)
    return directory


def test_a_row_per_window_and_segments_of_one_label(long_videos, tmp_path):
    output = tmp_path / "timeline.jsonl"
    summary = classify_corpus([long_videos], output, ClassifyJob(window=2.0, segments=True, workers=2))
    assert summary.unit == "windows" and summary.total == 5 + 4 and summary.failed == 0
    rows = read_results(output)
    by_video = {}
    for row in rows:
        by_video.setdefault(Path(row["path"]).name, []).append(row)
    assert [(r["window"], r["start"], r["end"]) for r in by_video["a.mp4"]] == [(k, 2.0 * k, 2.0 * k + 2) for k in range(5)]
    assert [r["label"] for r in by_video["a.mp4"]] == [LABELS[RIGHT]] * 3 + [LABELS[LEFT]] * 2
    assert [r["label"] for r in by_video["b.mp4"]] == [LABELS[UP]] * 2 + [LABELS[RIGHT]] * 2
    assert all(r["window_s"] == 2.0 and r["hop_s"] == 2.0 and r["error"] is None for r in rows)
    found = [json.loads(line) for line in segments_path(output).read_text().splitlines()]
    assert [(Path(s["path"]).name, s["start"], s["end"], s["label"], s["windows"]) for s in found] == [
        ("a.mp4", 0.0, 6.0, LABELS[RIGHT], 3), ("a.mp4", 6.0, 10.0, LABELS[LEFT], 2),
        ("b.mp4", 0.0, 4.0, LABELS[UP], 2), ("b.mp4", 4.0, 8.0, LABELS[RIGHT], 2)]
    assert all(0.9 < s["probability"] <= 1 for s in found)


def test_overlapping_windows_parquet_and_unreadable_videos(long_videos, corpus, tmp_path):
    pytest.importorskip("pyarrow")
    directory, _ = corpus
    output = tmp_path / "t.parquet"
    classify_corpus([long_videos / "a.mp4", directory / "empty.mp4", directory / "clip00.mp4"], output,
                    ClassifyJob(window=2.0, hop=1.0, workers=1))
    rows = read_results(output)
    a = [r for r in rows if r["path"].endswith("a.mp4")]
    assert [r["start"] for r in a] == [float(k) for k in range(9)]  # 10 s, a 2 s window every second
    [empty] = [r for r in rows if r["path"].endswith("empty.mp4")]
    assert empty["window"] is None and "empty file" in empty["error"]
    short = [r for r in rows if r["path"].endswith("clip00.mp4")]  # 2 s: one window, the whole video
    assert [(r["start"], r["end"]) for r in short] == [(0.0, 2.0)]
    assert len(segments(rows)) >= 2


def test_a_killed_window_job_rerun_ends_with_every_window_exactly_once(long_videos, tmp_path):
    import shutil

    for i in range(4):
        shutil.copy(long_videos / "a.mp4", tmp_path / f"a{i}.mp4")
    output = tmp_path / "t.jsonl"
    parts = tmp_path / "t.jsonl.parts"
    done_before = classify_killed_midway([str(tmp_path), "-o", str(output), "--window", "1", "--hop", "0.5"], parts,
                                         "windows")
    total = 4 * 19  # 10 s videos, 1 s windows every 0.5 s
    assert 3 <= done_before < total
    summary = classify_corpus([tmp_path], output, ClassifyJob(window=1.0, hop=0.5, workers=1))
    assert summary.skipped == done_before and summary.classified == total - done_before
    rows = read_results(output)
    keys = [(r["path"], r["window"]) for r in rows]
    assert len(keys) == len(set(keys)) == total  # every window exactly once
    with pytest.raises(ConfigError, match="hop_s"):  # other windows are other settings: never mixed
        classify_corpus([tmp_path], output, ClassifyJob(window=1.0, hop=1.0, workers=1))


@pytest.mark.parametrize(("args", "message"), [
    (["--hop", "1"], "--hop and --segments make a timeline: give --window SECONDS"),
    (["--segments"], "--hop and --segments make a timeline"),
    (["--window", "2", "--clips", "4"], "--clips is for a row per video"),
])
def test_bad_timeline_options_are_one_line_errors(long_videos, tmp_path, args, message):
    result = CliRunner().invoke(main, ["classify", str(long_videos), "-o", str(tmp_path / "t.jsonl"), *args])
    assert result.exit_code == 1 and message in result.stderr, result.output
    assert not (tmp_path / "t.jsonl").exists()


def test_a_timeline_does_not_resume_a_row_per_video_output(long_videos, tmp_path):
    output = tmp_path / "t.jsonl"
    classify_corpus([long_videos], output, ClassifyJob(workers=1))
    with pytest.raises(ConfigError, match="other settings"):
        classify_corpus([long_videos], output, ClassifyJob(window=2.0, workers=1))
