"""vivit-deploy classify on one machine: rows and errors, parity with predict, inputs, resume, kills, crashes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vivit_deploy.cli import main
from vivit_deploy.errors import ConfigError
from vivit_deploy.pipeline import ClassifyJob, JobSummary, classify_corpus
from vivit_deploy.pipeline.results import read_results

from tests.pipeline.conftest import BAD, GOOD, classify_killed_midway


def rows_by_name(path: Path) -> dict[str, dict]:
    rows = read_results(path)
    names = [Path(r["path"]).name for r in rows]
    assert len(names) == len(set(names)), "a video appears more than once"
    return dict(zip(names, rows))


def run(inputs, output, **job) -> JobSummary:
    return classify_corpus([str(i) for i in inputs], output, ClassifyJob(**{"workers": 2, **job}))


def test_every_video_is_one_row_and_unreadable_files_are_rows_with_their_error(corpus, tmp_path):
    directory, labels = corpus
    output = tmp_path / "results.jsonl"
    summary = run([directory], output)
    assert (summary.total, summary.classified, summary.failed, summary.skipped) == (GOOD + len(BAD), GOOD + len(BAD), 3, 0)
    rows = rows_by_name(output)
    assert set(rows) == set(labels)
    for name, row in rows.items():
        assert row["path"] == str(directory / name)
        assert (row["model_sha256"], row["backend"], row["precision"]) == (summary_sha(row), "torch", "fp32")
        assert (row["sampling"], row["clips"], row["frame_sample_rate"], row["top_k_count"]) == ("uniform", 1, 4, 4)
        if labels[name] is None:
            assert BAD[name] in row["error"] and name in row["error"] and "\n" not in row["error"]
            assert row["label"] is None and row["probability"] is None and row["top_k"] is None
        else:
            assert row["error"] is None
            assert row["label"] == row["top_k"][0]["label"] and row["probability"] == row["top_k"][0]["probability"]
            assert len(row["top_k"]) == 4
    correct = sum(rows[n]["label"] == label for n, label in labels.items() if label is not None)
    assert correct >= GOOD - 1  # clear clips of the task (render_clip's easy case): the demo model gets them right
    assert list(rows) == sorted(rows)  # the file is in input order: the directory's, sorted
    assert not (tmp_path / "results.jsonl.parts").exists()


def summary_sha(row: dict) -> str:
    from vivit_deploy.demo import demo_model_dir
    from vivit_deploy.pipeline.model import describe_model

    return describe_model(demo_model_dir()).sha256


def test_predictions_are_those_of_predict(corpus, tmp_path):
    directory, labels = corpus
    good = sorted(directory / n for n, label in labels.items() if label is not None)
    output = tmp_path / "results.jsonl"
    run(good, output, num_clips=2, sampling="stride", frame_sample_rate=2, batch_size=3, top_k=3)
    result = CliRunner().invoke(main, ["predict", *map(str, good), "--json", "-", "--clips", "2", "--sampling", "stride",
                                       "--frame-sample-rate", "2", "--top-k", "3"])
    assert result.exit_code == 0, result.output
    rows = rows_by_name(output)
    for entry in json.loads(result.stdout):
        row = rows[Path(entry["video"]).name]
        assert [p["label"] for p in entry["predictions"]] == [p["label"] for p in row["top_k"]]
        np.testing.assert_allclose([p["probability"] for p in row["top_k"]],
                                   [p["probability"] for p in entry["predictions"]], atol=1e-5)


def test_manifests_and_parquet_give_the_same_rows_once_each(corpus, tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory, labels = corpus
    names = sorted(labels)
    (directory / "list.txt").write_text("# the first half, relative to this file\n\n" + "\n".join(names[:8]) + "\n")
    with open(tmp_path / "rest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "note"])
        writer.writerows([[str(directory / n), "x"] for n in names[6:12]])  # overlaps the .txt
    pq.write_table(pa.table({"path": [str(directory / n) for n in names[12:]]}), tmp_path / "rest.parquet")
    output = tmp_path / "results.parquet"
    summary = run([directory / "list.txt", tmp_path / "rest.csv", tmp_path / "rest.parquet", directory / names[0]], output)
    assert summary.total == len(names)
    by_manifest = rows_by_name(output)
    reference = tmp_path / "reference.jsonl"
    run([directory], reference)
    by_directory = rows_by_name(reference)
    assert set(by_manifest) == set(by_directory)
    for name in names:
        assert by_manifest[name]["label"] == by_directory[name]["label"]
        assert by_manifest[name]["error"] == by_directory[name]["error"]
    assert pq.read_schema(output).field("top_k").type == pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float64())]))


def test_rerun_skips_what_is_done_and_refuses_to_mix_settings(corpus, tmp_path):
    directory, _ = corpus
    output = tmp_path / "results.jsonl"
    run([directory], output)
    before = output.read_text()
    again = run([directory], output)
    assert (again.skipped, again.classified) == (GOOD + len(BAD), 0)
    assert output.read_text() == before
    with pytest.raises(ConfigError, match=r"other settings \(clips 1 \(now 2\)\).*resume=False"):
        run([directory], output, num_clips=2)
    replaced = run([directory], output, num_clips=2, resume=False)
    assert replaced.classified == GOOD + len(BAD)
    assert {r["clips"] for r in read_results(output)} == {2}


def test_a_new_video_in_the_corpus_is_the_only_one_classified(corpus, tmp_path):
    directory, _ = corpus
    output = tmp_path / "results.jsonl"
    run([directory], output)
    shutil.copy(directory / "clip03.mp4", directory / "late.mp4")
    summary = run([directory], output)
    assert (summary.classified, summary.skipped) == (1, GOOD + len(BAD))
    assert len(rows_by_name(output)) == GOOD + len(BAD) + 1


def test_retry_failed_classifies_repaired_videos_again(corpus, tmp_path):
    directory, _ = corpus
    output = tmp_path / "results.jsonl"
    run([directory], output)
    shutil.copy(directory / "clip01.mp4", directory / "notes.mp4")  # repaired
    assert run([directory], output).classified == 0
    summary = run([directory], output, retry_failed=True)
    assert (summary.classified, summary.failed) == (3, 2)
    rows = rows_by_name(output)
    assert rows["notes.mp4"]["error"] is None and rows["notes.mp4"]["label"] == rows["clip01.mp4"]["label"]


def test_a_killed_job_rerun_ends_with_every_video_exactly_once(corpus, tmp_path):
    directory, labels = corpus
    for copy in ("a", "b"):  # 45 videos: enough batches to kill it in the middle
        shutil.copytree(directory, tmp_path / "more" / copy)
    inputs = [str(directory), str(tmp_path / "more")]
    output = tmp_path / "results.parquet"
    parts = tmp_path / "results.parquet.parts"
    done_before = classify_killed_midway([*inputs, "-o", str(output)], parts, "videos")
    assert not output.exists()
    assert 3 <= done_before < 3 * (GOOD + len(BAD))

    summary = classify_corpus(inputs, output, ClassifyJob(workers=1))
    assert summary.skipped == done_before
    assert summary.classified == 3 * (GOOD + len(BAD)) - done_before
    rows = read_results(output)
    assert sorted(r["path"] for r in rows) == sorted({r["path"] for r in rows})  # exactly once
    assert len(rows) == 3 * (GOOD + len(BAD))
    reference = tmp_path / "reference.parquet"
    classify_corpus(inputs, reference, ClassifyJob(workers=2))
    expected = {r["path"]: (r["label"], r["error"]) for r in read_results(reference)}
    assert {r["path"]: (r["label"], r["error"]) for r in rows} == expected
    assert not parts.exists()


def test_kill_between_the_final_rename_and_removing_the_parts(corpus, tmp_path):
    """The parts still there after the output was written: the rerun keeps one row per video."""
    from vivit_deploy.pipeline.results import ResultStore

    directory, _ = corpus
    output = tmp_path / "results.jsonl"
    original = ResultStore.finalize

    def finalize_then_die(self, order):
        from vivit_deploy.pipeline.results import write_results

        rows = sorted(self.rows.values(), key=lambda r: order.get(r["path"], 0))
        write_results(rows, self.output)
        raise KeyboardInterrupt  # as if killed right after the rename

    ResultStore.finalize = finalize_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            run([directory], output)
    finally:
        ResultStore.finalize = original
    assert output.exists() and list((tmp_path / "results.jsonl.parts").glob("part-*"))
    summary = run([directory], output)
    assert summary.skipped == GOOD + len(BAD)
    assert len(rows_by_name(output)) == GOOD + len(BAD)
    assert not (tmp_path / "results.jsonl.parts").exists()


def test_second_job_on_the_same_output_is_refused(corpus, tmp_path):
    from vivit_deploy.pipeline.results import JobLockedError, ResultStore
    from vivit_deploy.pipeline.stages import ResultSettings

    settings = ResultSettings("m", "sha", "torch", "fp32", "uniform", 1, 4, 5)
    output = tmp_path / "results.jsonl"
    with ResultStore(output, settings):
        with pytest.raises(JobLockedError, match=rf"another classify job \(pid {os.getpid()}\) is writing"):
            ResultStore(output, settings).open()
    with ResultStore(output, settings):  # released
        pass
    assert not (tmp_path / "results.jsonl.parts").exists()  # nothing to keep: no directory left behind


def test_cli_summary_strict_and_json(corpus, tmp_path):
    directory, _ = corpus
    output = tmp_path / "results.jsonl"
    result = CliRunner().invoke(main, ["classify", str(directory), "-o", str(output), "--workers", "2", "--json", "-"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["classified"], summary["failed"], summary["errors_in_output"]) == (GOOD + len(BAD), 3, 3)
    assert {"decode", "preprocess", "inference", "write"} == set(summary["stages"])
    strict = CliRunner().invoke(main, ["classify", str(directory), "-o", str(output), "--strict"])
    assert strict.exit_code == 1
    assert "15 videos: 0 classified, 0 failed, 15 skipped" in strict.stdout
    again = CliRunner().invoke(main, ["classify", str(directory), "-o", str(output), "--retry-failed"])
    assert "stage seconds: decode" in again.stdout, again.stdout  # every run that classified says where time went
    assert strict.stderr.strip().splitlines()[-1] == "Error: 3 of 15 videos have an error row (--strict)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing-dir", "-o", "{tmp}/r.jsonl"], "missing-dir: no such video, directory or manifest"),
        (["{videos}", "-o", "{tmp}/r.csv"], "the output must end in .parquet or .jsonl"),
        (["{videos}", "-o", "{tmp}/no-such-dir/r.jsonl"], "the output directory does not exist"),
        (["{videos}", "-o", "{tmp}/foreign.jsonl"], "is not a results file of `vivit-deploy classify`"),
        (["{tmp}/empty-dir", "-o", "{tmp}/r.jsonl"], "no videos in"),
        (["{tmp}/bad.csv", "-o", "{tmp}/r.jsonl"], "a CSV manifest needs a 'path' column"),
        (["-o", "{tmp}/r.jsonl", "--ray", "{videos}"], "--ray takes a Ray address, not a path"),
        (["{videos}", "-o", "{tmp}/r.jsonl", "--actors", "2"], "actors (at least 1) applies to a Ray job only"),
    ],
)
def test_bad_invocations_are_one_line_errors(corpus, tmp_path, args, message):
    directory, _ = corpus
    (tmp_path / "foreign.jsonl").write_text('{"id": 1}\n')
    (tmp_path / "empty-dir").mkdir()
    (tmp_path / "bad.csv").write_text("file\nx.mp4\n")
    args = [a.format(tmp=tmp_path, videos=directory) for a in args]
    result = CliRunner().invoke(main, ["classify", *args])
    assert result.exit_code in (1, 2), result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert (tmp_path / "foreign.jsonl").read_text() == '{"id": 1}\n'  # never overwritten


def test_ray_missing_is_a_one_line_error_naming_the_extra(corpus, tmp_path, monkeypatch):
    directory, _ = corpus
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    result = CliRunner().invoke(main, ["classify", str(directory), "-o", str(tmp_path / "r.jsonl"), "--ray"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == "Error: --ray needs Ray Data: pip install 'vivit-deploy[ray]'"
