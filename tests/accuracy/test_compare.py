"""compare: the statistics, the verdicts, saved inputs, and the command a release pipeline gates on."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner

from vivit_deploy.cli import main
from vivit_deploy.demo import demo_model_dir, sample_videos
from vivit_deploy.accuracy.inputs import UNLABELLED, CompareInputs, random_inputs
from vivit_deploy.accuracy.statistics import failures, logit_stats
from vivit_deploy.model.config import preset
from vivit_deploy.errors import ConfigError
from vivit_deploy.accuracy.tolerances import Tolerance, tolerance_for


def test_statistics_on_known_logits():
    reference = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], np.float32)
    candidate = np.array([[1.0, 2.0, 3.5], [1.0, 2.0, 3.0]], np.float32)
    stats = logit_stats(reference, candidate, labels=np.array([2, 0]))
    assert stats.max_abs == pytest.approx(2.0) and stats.mean_abs == pytest.approx(4.5 / 6)
    assert stats.max_rel == pytest.approx(2.0)  # |1 - 3| / 1 in row 2
    assert stats.top1_agreement == 0.5 and stats.top5_agreement == 1.0  # k = 3 labels: the sets are equal
    assert stats.accuracy == 0.5
    assert stats.required_atol == stats.max_abs and stats.required_rtol == stats.max_rel
    assert stats.min_cosine == pytest.approx(10 / 14)


def test_failures_name_each_broken_bound():
    reference = np.array([[1.0, 2.0, 3.0]], np.float32)
    candidate = reference + np.float32(0.01)
    stats = logit_stats(reference, candidate)
    assert failures(reference, candidate, stats, Tolerance(atol=0.02, rtol=0, min_cosine=0.99, min_top1=1.0)) == []
    reasons = failures(reference, candidate, stats, Tolerance(atol=0.001, rtol=0.001, min_cosine=1.0, min_top1=1.0))
    assert reasons[0].startswith("3 of 3 logits outside atol=0.001")
    assert any(r.startswith("cosine") for r in reasons)


def test_tolerances_are_data_per_precision_and_overridable():
    assert tolerance_for("fp32").atol < tolerance_for("fp16").atol
    assert tolerance_for("fp16").override(atol=1.0, rtol=None).atol == 1.0
    assert tolerance_for("fp16").atol < tolerance_for("int8").atol
    with pytest.raises(ConfigError, match="no tolerance for precision 'int4'"):
        tolerance_for("int4")
    with pytest.raises(ConfigError):
        Tolerance(atol=-1, rtol=0, min_cosine=1, min_top1=1)


def test_inputs_round_trip_through_npz(tmp_path):
    inputs = random_inputs(preset("tiny"), 3, seed=1)
    loaded = CompareInputs.load(inputs.save(tmp_path / "inputs.npz"))
    np.testing.assert_array_equal(loaded.pixel_values, inputs.pixel_values)
    assert loaded.names == inputs.names and loaded.source == inputs.source
    assert (loaded.labels == UNLABELLED).all() and not loaded.labelled
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not an inputs file"):
        CompareInputs.load(bad)


def _compare(*args):
    return CliRunner().invoke(main, ["compare", *map(str, args)])


@pytest.mark.slow
def test_compare_on_the_demo_model_passes_and_reports_accuracy(demo_onnx, demo_onnx_fp16, tmp_path):
    report_path = tmp_path / "report.json"
    result = _compare("--onnx", demo_onnx, "--onnx", demo_onnx_fp16, "--json", report_path)
    assert result.exit_code == 0, result.output
    samples = sample_videos()
    card = json.loads((demo_model_dir() / "training.json").read_text())
    assert "PASSED" in result.stdout and f"accuracy {card['sample_video_accuracy']:.1%}" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["num_inputs"] == len(samples)
    assert report["reference_accuracy"] == card["sample_video_accuracy"]  # what training measured on the same videos
    by_precision = {c["precision"]: c for c in report["candidates"]}
    assert by_precision["fp32"]["stats"]["max_abs"] <= 1e-4
    assert by_precision["fp16"]["stats"]["top1_agreement"] == 1.0
    assert by_precision["fp16"]["stats"]["accuracy"] == report["reference_accuracy"]
    assert by_precision["fp32"]["tolerance"]["atol"] < by_precision["fp16"]["tolerance"]["atol"]


def test_absurdly_tight_tolerance_exits_non_zero(demo_onnx):
    result = _compare("--onnx", demo_onnx, "--samples", 2, "--atol", 0, "--rtol", 0)
    assert result.exit_code == 1
    assert "FAIL: " in result.stdout and result.stdout.rstrip().endswith("FAILED")


def test_saved_inputs_give_identical_numbers(demo_onnx, tmp_path):
    saved = tmp_path / "clips.npz"
    first = _compare("--onnx", demo_onnx, "--samples", 3, "--save-inputs", saved, "--json", "-")
    second = _compare("--onnx", demo_onnx, "--inputs", saved, "--json", "-")
    assert first.exit_code == second.exit_code == 0, first.output + second.output
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["candidates"][0]["stats"] == b["candidates"][0]["stats"]


def test_corrupt_and_mismatched_onnx_files_are_one_line_errors(demo_onnx, tiny_onnx, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(demo_onnx.read_bytes()[:5000])
    result = _compare("--onnx", corrupt)
    assert result.exit_code == 1 and "ONNX Runtime cannot load it" in result.stderr
    assert "Traceback" not in result.output
    result = _compare("--onnx", tiny_onnx)
    assert result.exit_code == 1
    assert "does not belong to the reference model" in result.stderr


def test_input_sources_are_exclusive(demo_onnx, tmp_path):
    result = _compare("--onnx", demo_onnx, "--demo", "--samples", 2)
    assert result.exit_code == 1 and "choose one source of inputs, got --samples and --demo" in result.stderr
    result = _compare("--onnx", demo_onnx, "--videos", tmp_path)
    assert result.exit_code == 1 and "no videos to compare on" in result.stderr
    result = _compare("--onnx", demo_onnx, "--calibration", tmp_path)
    assert result.exit_code == 1 and "--calibration is for the int8 candidates made when none is named" in result.stderr


@pytest.mark.slow
def test_with_no_candidate_named_every_backend_and_precision_that_runs_here_is_compared(tmp_path):
    report_path = tmp_path / "report.json"
    result = _compare("--demo", "--json", report_path)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    names = {c["name"] for c in report["candidates"]}
    assert {"pytorch bf16", "onnxruntime fp32", "onnxruntime fp16", "onnxruntime int8"} <= names
    if importlib.util.find_spec("openvino") is not None:
        assert {"openvino fp32", "openvino int8"} <= names
    for candidate in report["candidates"]:  # within tolerance: at most one of the sample videos changes its class
        assert candidate["passed"] and candidate["stats"]["top1_agreement"] >= 1 - 1 / report["num_inputs"] - 1e-9, \
            candidate["name"]
    assert "tensorrt" in report["not_compared"]
    assert "not compared: tensorrt" in result.stdout


def test_synthetic_clips_measure_accuracy_on_hundreds(demo_onnx):
    result = _compare("--onnx", demo_onnx, "--synthetic", 200, "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["num_inputs"] == 200 and report["inputs"] == "200 synthetic motion clips (seed 2)"
    card = json.loads((demo_model_dir() / "training.json").read_text())
    assert abs(report["reference_accuracy"] - card["heldout_accuracy"]) < 0.05  # the same task: 90.5% on 1000 clips
    assert report["candidates"][0]["stats"]["accuracy"] == report["reference_accuracy"]


def test_synthetic_clips_need_the_demo_tasks_labels(tiny_checkpoint):
    result = _compare("--model", tiny_checkpoint, "--torch", "bf16", "--synthetic", 4)
    assert result.exit_code == 1 and "synthetic clips are labelled with the demo task's classes" in result.stderr


def test_the_accuracy_a_smaller_geometry_costs_on_the_same_videos(tmp_path):
    """--frames/--image-size: the checkpoint at another geometry on the same labelled clips, sampled and sized for it:
    its accuracy against the reference's, no logit tolerance (it computes another function)."""
    result = CliRunner().invoke(main, ["compare", "--synthetic", "40", "--frames", "4", "--image-size", "24", "--json",
                                       str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    [candidate] = report["candidates"]
    assert candidate["geometry"] == "4x24x24" and candidate["failures"] == []
    assert 0.25 <= candidate["stats"]["accuracy"] <= 1.0 and report["reference_accuracy"] >= 0.95
    assert "logit tolerances do not apply" in result.output
    refused = CliRunner().invoke(main, ["compare", "--samples", "4", "--frames", "4"])
    assert refused.exit_code != 0 and "on the same videos" in refused.output
