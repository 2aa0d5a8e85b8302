"""The vivit-deploy command line: default run, JSON, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from vivit_deploy.cli import main
from vivit_deploy.demo import sample_videos


def test_predict_with_no_arguments_uses_the_demo_model_and_a_sample():
    result = CliRunner().invoke(main, ["predict"])
    assert result.exit_code == 0, result.output
    path, label = sample_videos()[0]
    assert f"(true label: {label})" in result.output
    assert f"1. {label}" in result.output


def test_predict_json_with_several_clips():
    path, label = sample_videos()[-1]
    result = CliRunner().invoke(main, ["predict", str(path), "--json", "-", "--top-k", "2", "--clips", "2"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data[0]["true_label"] == label
    assert len(data[0]["predictions"]) == 2
    assert data[0]["predictions"][0]["label"] == label
    assert abs(sum(p["probability"] for p in data[0]["predictions"]) - 1) < 0.05


def test_unreadable_video_is_one_line_and_exit_1(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("nope")
    result = CliRunner().invoke(main, ["predict", str(bad)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert "bad.mp4: not a video FFmpeg can read" in result.stderr
    assert "Traceback" not in result.output


def test_missing_checkpoint_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["predict", "--model", str(tmp_path / "none"), "clip.mp4"])
    assert result.exit_code == 1
    assert "no such checkpoint directory" in result.stderr


def test_model_without_video_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["predict", "--model", str(tmp_path)])
    assert result.exit_code == 2
    assert "give at least one video" in result.stderr


def test_bad_option_values():
    assert CliRunner().invoke(main, ["predict", "--top-k", "0"]).exit_code == 2
    assert CliRunner().invoke(main, ["predict", "--sampling", "random"]).exit_code == 2


def test_predict_with_an_exported_onnx_file(demo_onnx):
    path, label = sample_videos()[1]
    result = CliRunner().invoke(main, ["predict", "--model", str(demo_onnx), str(path), "--json", "-"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["predictions"][0]["label"] == label
    assert "onnxruntime on cpu (fp32)" in result.stderr


def test_export_command_writes_a_file_and_reports(tmp_path):
    from vivit_deploy.cli import export_command
    from vivit_deploy.demo import demo_model_dir

    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(export_command, [str(demo_model_dir()), "-o", str(out), "--max-batch", "4",
                                                 "--json", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "batch 1..4" in result.stdout and "validating with onnxruntime" in result.stderr
    assert json.loads((tmp_path / "report.json").read_text())["passed"] is True
    # --json - prints the JSON instead of the text (it wrote a file named '-' before), as every command's --json does
    again = CliRunner().invoke(export_command, [str(demo_model_dir()), "-o", str(out), "--max-batch", "4", "--json", "-"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["passed"] is True and not (tmp_path / "-").exists() and not Path("-").exists()


def test_export_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(main, ["export", str(tmp_path / "none"), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1 and "no such checkpoint directory" in result.stderr
    assert "Traceback" not in result.output
    assert CliRunner().invoke(main, ["export", "x", "-o", "m.onnx", "--opset", "16"]).exit_code == 2
