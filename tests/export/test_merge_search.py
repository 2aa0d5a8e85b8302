"""`vivit-export --merge-tokens auto`: the largest r that passes the gate on labelled clips, or a refusal that writes
nothing; the curve in the report and as a picture."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vivit_deploy.accuracy.gates import parse_gates
from vivit_deploy.accuracy.inputs import CompareInputs
from vivit_deploy.demo import SAMPLES, demo_model_dir
from vivit_deploy.errors import ConfigError
from vivit_deploy.export.merge_search import MergeSearchOptions, default_tries, search
from vivit_deploy.model.checkpoint import load_model


def _Config():
    """A model config of 4 layers over 64 tubelets and 2 labels: the token arithmetic and labels the search reads."""
    from vivit_deploy.model.config import VivitConfig

    return VivitConfig(image_size=32, num_frames=8, tubelet_size=(2, 8, 8), hidden_size=16, num_hidden_layers=4,
                       num_attention_heads=2, intermediate_size=32, id2label={0: "zero", 1: "one"})


def _case(right_by_r: dict[int, np.ndarray], n: int = 200):
    """Clips whose label is class 0, and logits per r that get exactly the clips ``right_by_r[r]`` right: the
    accuracy each r reaches is built in, so the r the gate keeps is known before the search runs."""
    inputs = CompareInputs(np.zeros((n, 1, 1, 1, 1), np.float32), np.zeros(n, np.int64), tuple(f"c{i}" for i in range(n)),
                           "a built case")

    def run(r):
        logits = np.zeros((n, 2))
        logits[~right_by_r[r], 1] = 1.0  # class 1 wins where the clip is to be wrong
        return logits, 1.0

    return inputs, run


def _right(n: int, wrong) -> np.ndarray:
    right = np.ones(n, bool)
    right[list(wrong)] = False
    return right


def test_the_search_keeps_the_largest_r_that_passes_a_case_built_so_the_answer_is_known():
    reference = _right(200, range(20))  # 90%
    curve = {
        0: reference,
        3: _right(200, [*range(2, 20), 150, 151]),  # 90%: 2 clips fixed, 2 broke
        6: _right(200, range(21)),  # 89.5%: at least 99% of 90% (89.1%), not 99.9% (89.91%)
        9: _right(200, range(23)),  # 88.5%
        12: _right(200, range(50)),  # 75%
    }
    inputs, run = _case(curve)
    result = search(run, inputs, _Config(), parse_gates(["accuracy:99%"])[0], [12, 3, 9, 6], "a CPU")
    assert [p.r for p in result.points] == [0, 3, 6, 9, 12] and result.chosen == 6
    assert [p.gate.passed for p in result.points] == [True, True, True, False, False]
    three = result.points[1]
    assert three.flips == 4 and (three.compared.difference.only_reference, three.compared.difference.only_candidate) == (2, 2)
    assert three.accuracy.k == 180 and three.accuracy.low < 0.9 < three.accuracy.high
    assert result.points[1].token_counts == (62, 59, 56, 53) and result.points[1].gflop < result.points[0].gflop
    assert search(run, inputs, _Config(), parse_gates(["accuracy:99.9%"])[0], [3, 6, 9, 12], "a CPU").chosen == 3
    refused = search(run, inputs, _Config(), parse_gates(["accuracy:100%"])[0], [6, 9, 12], "a CPU")
    assert refused.chosen is None and "no r above 0 passes" in refused.format()
    as_json = json.loads(json.dumps(result.to_dict()))
    assert as_json["chosen"] == 6 and [p["r"] for p in as_json["curve"]] == [0, 3, 6, 9, 12]
    assert as_json["curve"][2]["top1"]["k"] == 179 and as_json["curve"][2]["gate"]["passed"]


def test_default_tries_run_from_0_to_half_the_tokens():
    assert default_tries(_Config()) == (0, 5, 9, 14, 18, 23, 27, 32)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "give videos= .* or manifest="),
    ({"videos": "a", "manifest": "b"}, "one of them"),
    ({"videos": "a", "gate": "logits"}, "only an accuracy gate applies"),
    ({"videos": "a", "gate": "accuracy:150%"}, "at most 100%"),
    ({"videos": "a", "tries": (4, -1)}, "0 or more"),
    ({"videos": "a", "tries": (2.5,)}, "whole numbers"),
])
def test_bad_search_options_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MergeSearchOptions(**kwargs)


def _predictions(r: int) -> dict[str, bool]:
    """Which shipped sample videos the demo model gets right when it merges r tokens per layer, computed here from the
    model and the videos, apart from the search."""
    from vivit_deploy.demo import sample_videos
    from vivit_deploy.video.preprocessing import VideoPreprocessor, preprocessor_config_in
    from vivit_deploy.video.reading import read_video

    model = load_model(demo_model_dir())
    model.set_token_merging(r)
    pre = VideoPreprocessor(preprocessor_config_in(demo_model_dir()))
    out = {}
    for path, label in sample_videos():
        clip = pre(read_video(path, model.config.num_frames, sampling="uniform"))
        with torch.no_grad():
            predicted = model.config.id2label[int(model(torch.from_numpy(clip)).logits.argmax())]
        out[path.name] = predicted == label
    return out


def test_auto_exports_the_r_the_curve_allows_and_refuses_writing_nothing_when_none_passes(tmp_path):
    from vivit_deploy.artifacts.metadata import read_onnx_metadata
    from vivit_deploy.cli.export import export_command

    r = 32  # the largest r of the demo model: 5 tokens after the last layer
    reference, merged = _predictions(0), _predictions(r)
    kept = sum(merged.values()) / sum(reference.values())
    runner = CliRunner()
    out = tmp_path / "merged.onnx"
    args = [str(demo_model_dir()), "-o", str(out), "--merge-tokens", "auto", "--videos", str(SAMPLES), "--merge-tries",
            f"0,{r}", "--json", str(tmp_path / "report.json")]
    result = runner.invoke(export_command, [*args, "--gate", "accuracy:1%"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["merge_search"]["chosen"] == r and report["merge_tokens"] == [r] * 4
    top1 = [p["top1"]["k"] for p in report["merge_search"]["curve"]]
    assert top1 == [sum(reference.values()), sum(merged.values())]
    assert read_onnx_metadata(out).merge_tokens == (r,) * 4
    plot = tmp_path / "merged.merge-curve.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report["merge_search"]["plot"] == str(plot)

    strict = tmp_path / "strict.onnx"
    result = runner.invoke(export_command, [*args[:2], str(strict), *args[3:], "--gate", "accuracy:100%",
                                            "--merge-plot", str(tmp_path / "strict.png")])
    if kept >= 1.0:  # merging lost no clip: the strict gate passes too
        assert result.exit_code == 0 and strict.is_file()
    else:
        assert result.exit_code == 1 and "no r above 0 passes accuracy:100%" in result.output
        assert "Traceback" not in result.output
        assert not strict.exists() and not (tmp_path / "strict.png").exists()


def test_auto_options_are_usage_errors_without_auto_and_auto_needs_labelled_clips(tmp_path):
    from vivit_deploy.cli.export import export_command

    runner = CliRunner()
    out = str(tmp_path / "m.onnx")
    result = runner.invoke(export_command, [str(demo_model_dir()), "-o", out, "--gate", "accuracy:99%"])
    assert result.exit_code == 2 and "--gate apply to --merge-tokens auto" in result.output
    result = runner.invoke(export_command, [str(demo_model_dir()), "-o", out, "--merge-tokens", "auto"])
    assert result.exit_code == 2 and "give --videos DIR" in result.output
    unlabelled = tmp_path / "videos"
    unlabelled.mkdir()
    (unlabelled / "a.mp4").write_bytes((SAMPLES / "moving_up_0.mp4").read_bytes())
    result = runner.invoke(export_command, [str(demo_model_dir()), "-o", out, "--merge-tokens", "auto", "--videos",
                                            str(unlabelled)])
    assert result.exit_code == 1 and "without a label" in result.output and "Traceback" not in result.output
    result = runner.invoke(export_command, [str(demo_model_dir()), "-o", out, "--merge-tokens", "auto", "--videos",
                                            str(SAMPLES), "--gate", "logits"])
    assert result.exit_code == 1 and "only an accuracy gate applies" in result.output
    result = runner.invoke(export_command, [str(demo_model_dir()), "-o", out, "--merge-tokens", "auto", "--videos",
                                            str(SAMPLES), "--merge-tries", "4,x"])
    assert result.exit_code == 2 and "--merge-tries" in result.output
    assert not (tmp_path / "m.onnx").exists()
