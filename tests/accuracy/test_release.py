"""compare as a release gate: accuracy with its uncertainty (checked against cases worked by hand), McNemar's test,
flips, multi-view evaluation, labelled videos from a directory or a manifest, --gate, and the HTML report rendered by
a real browser."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vivit_deploy.accuracy import evaluation
from vivit_deploy.accuracy.gates import Gate, parse_gates
from vivit_deploy.accuracy.inputs import UNLABELLED, CompareInputs, manifest_videos, videos_in
from vivit_deploy.accuracy.statistics import compare_runtimes
from vivit_deploy.accuracy.tolerances import tolerance_for
from vivit_deploy.cli import main
from vivit_deploy.errors import ConfigError

Z = 1.959963984540054  # the normal quantile of a 95% interval


# ---- the statistics, against cases worked by hand ---------------------------------------------------------------

def _wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson's score interval from its formula (Wilson 1927)."""
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(0, 10), (10, 10), (81, 263), (997, 1000), (500, 1000)])
def test_wilson_intervals_match_the_formula(k, n):
    p = evaluation.proportion(k, n)
    low, high = _wilson(k, n)
    assert (p.k, p.n) == (k, n) and p.value == k / n
    assert p.low == pytest.approx(max(low, 0.0), abs=1e-9) and p.high == pytest.approx(min(high, 1.0), abs=1e-9)
    if k == 0:  # no success in 10: the upper limit is z^2 / (n + z^2)
        assert p.high == pytest.approx(Z * Z / (10 + Z * Z), abs=1e-9)


@pytest.mark.parametrize(("b", "c", "p_value"), [
    (1, 9, 2 * (1 + 10) / 2 ** 10),  # 2 * P(X <= 1), X ~ Binomial(10, 1/2)
    (9, 1, 2 * (1 + 10) / 2 ** 10),  # the test is two-sided: symmetric in b and c
    (0, 5, 2 / 2 ** 5),
    (6, 1, 2 * (1 + 7) / 2 ** 7),
    (10, 0, 2 / 2 ** 10),
    (3, 3, 1.0),
    (0, 0, 1.0),  # no discordant clip: nothing to test
])
def test_mcnemar_exact_p_values_computed_by_hand(b, c, p_value):
    assert evaluation.mcnemar_exact(b, c) == pytest.approx(p_value, rel=1e-12)


def _paired(a: int, b: int, c: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes of a reference and a candidate: a both right, b only the reference, c only the candidate, d neither."""
    reference = np.array([True] * a + [True] * b + [False] * c + [False] * d)
    candidate = np.array([True] * a + [False] * b + [True] * c + [False] * d)
    return reference, candidate


def test_the_paired_difference_interval_is_newcombes_square_and_add():
    a, b, c, d = 12, 9, 2, 21  # Newcombe's (1998) worked example of paired proportions
    n = a + b + c + d
    result = evaluation.paired_difference(*_paired(a, b, c, d))
    p_ref, p_cand = (a + b) / n, (a + c) / n
    (l_ref, u_ref), (l_cand, u_cand) = _wilson(a + b, n), _wilson(a + c, n)
    cross = a * d - b * c  # 234 > n / 2: the correlation is corrected by n / 2
    phi = (cross - n / 2) / math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    low = (p_cand - p_ref) - math.sqrt((p_cand - l_cand) ** 2 + (u_ref - p_ref) ** 2
                                       - 2 * phi * (p_cand - l_cand) * (u_ref - p_ref))
    high = (p_cand - p_ref) + math.sqrt((u_cand - p_cand) ** 2 + (p_ref - l_ref) ** 2
                                        - 2 * phi * (u_cand - p_cand) * (p_ref - l_ref))
    assert result.difference == pytest.approx(-7 / 44)
    assert (result.low, result.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert -0.30 < result.low < -0.29 and -0.012 < result.high < -0.011
    assert (result.only_reference, result.only_candidate, result.n) == (9, 2, 44)
    assert result.p_value == pytest.approx(2 * (1 + 11 + 55) / 2 ** 11) and not result.different  # 0.065


def test_paired_difference_edge_cases():
    same = evaluation.paired_difference(*_paired(90, 0, 0, 10))  # identical outcomes
    assert same.difference == 0 and same.p_value == 1.0 and not same.different
    assert same.low < 0 < same.high  # 100 clips cannot prove the two equal
    all_right = evaluation.paired_difference(*_paired(50, 0, 0, 0))
    assert all_right.difference == 0 and -0.1 < all_right.low <= 0 <= all_right.high < 0.1
    worse = evaluation.paired_difference(*_paired(880, 20, 0, 100))
    assert worse.different and worse.high < 0 and worse.p_value == pytest.approx(2 / 2 ** 20)
    assert evaluation.paired_difference(*_paired(0, 0, 0, 0)).n == 0


def test_flips_carry_both_labels_and_probabilities():
    reference = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    candidate = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    flipped = evaluation.flips(reference, candidate, ["a", "b", "c"], {0: "left", 1: "right"}, np.array([0, 0, UNLABELLED]))
    assert [(f.name, f.label, f.reference, f.candidate, f.change) for f in flipped] == [
        ("b", "left", "right", "left", "fixed"), ("c", None, "left", "right", "changed")]
    assert flipped[0].reference_probability == pytest.approx(1 / (1 + math.exp(-1)))


# ---- compare_runtimes with runtimes of known answers ---------------------------------------------------------------

@dataclass
class _Config:
    num_frames: int = 2
    image_height: int = 8
    image_width: int = 8


@dataclass
class _Spec:
    frame_shape: tuple = (2, 3, 8, 8)


class _Fixed:
    """A runtime whose logits are given: one row per view of the inputs, in order."""

    backend, precision, device = "fixed", "int8", "cpu"
    id2label = {0: "left", 1: "right", 2: "up"}
    num_labels = 3

    def __init__(self, logits: np.ndarray):
        self.logits = logits
        self.config, self.input_spec = _Config(), _Spec()

    def run_batches(self, pixel_values, batch_size):
        assert len(pixel_values) == len(self.logits)
        return self.logits


def _answers(labels: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Logits that put the label first where ``right``, the next class first elsewhere."""
    top = np.where(right, labels, (labels + 1) % 3)
    logits = np.zeros((len(labels), 3), np.float32)
    logits[np.arange(len(labels)), top] = 4.0
    return logits


def _inputs(labels: np.ndarray, views: int = 1) -> CompareInputs:
    return CompareInputs(np.zeros((len(labels) * views, 2, 3, 8, 8), np.float32), labels,
                         tuple(f"clip{i}" for i in range(len(labels))), "known answers", views)


def test_a_candidate_with_a_fixed_number_of_discordant_clips_and_the_accuracy_gate():
    labels = np.arange(1000) % 3
    right = np.arange(1000) < 900  # the reference: 900 of 1000
    reference = _Fixed(_answers(labels, right))
    close = right.copy()
    close[:10] = False  # 10 clips only the reference gets right
    close[900:902] = True  # 2 only the candidate: 892 >= 99% of 900 = 891
    far = right.copy()
    far[:10] = False  # 890 < 891
    candidates = {"close": _Fixed(_answers(labels, close)), "far": _Fixed(_answers(labels, far))}
    gates = parse_gates(["accuracy:99%"])
    report = compare_runtimes(reference, candidates, _inputs(labels), {n: tolerance_for("int8") for n in candidates},
                              gates=gates)
    by = {c.name: c for c in report.candidates}
    assert report.reference_detail.top1.k == 900
    d = by["close"].accuracy.difference
    assert (d.only_reference, d.only_candidate) == (10, 2)
    assert d.p_value == pytest.approx(2 * sum(math.comb(12, k) for k in range(3)) / 2 ** 12)  # 0.0386: different
    assert d.different and by["close"].passed  # different, yet within MLPerf's 99%
    d = by["far"].accuracy.difference
    assert (d.only_reference, d.only_candidate) == (10, 0) and d.p_value == pytest.approx(2 / 2 ** 10)
    assert not by["far"].passed and by["far"].failed_gates == ["accuracy:99%"] and not report.passed
    assert len(by["close"].flips) == 12 and {f.change for f in by["close"].flips} == {"fixed", "broke"}
    data = json.loads(report.to_json())
    far_json = next(c for c in data["candidates"] if c["name"] == "far")
    assert far_json["failed_gates"] == ["accuracy:99%"] and far_json["gates"][0]["passed"] is False
    assert far_json["accuracy"]["difference"]["p_value"] == pytest.approx(2 / 2 ** 10)
    assert data["gates"] == ["accuracy:99%"] and data["passed"] is False
    # 99.9% of 900 is 899.1: both fail; 89% passes both
    strict = compare_runtimes(reference, candidates, _inputs(labels), {n: tolerance_for("int8") for n in candidates},
                              gates=parse_gates(["accuracy:99.9%"]))
    assert [c.passed for c in strict.candidates] == [False, False]
    loose = compare_runtimes(reference, candidates, _inputs(labels), {n: tolerance_for("int8") for n in candidates},
                             gates=parse_gates(["accuracy:0.89"]))
    assert loose.passed


def test_logits_and_accuracy_gates_combine():
    labels = np.arange(300) % 3
    right = np.arange(300) < 290
    logits = _answers(labels, right)
    drifted = logits.copy()
    drifted[:, 2] += 0.9  # every logit row moves (cosine drops), no top-1 changes
    reference, candidate = _Fixed(logits), {"c": _Fixed(drifted)}
    report = compare_runtimes(reference, candidate, _inputs(labels), {"c": tolerance_for("int8")},
                              gates=parse_gates(["logits,accuracy:99.9%"]))
    [c] = report.candidates
    assert [g.gate for g in c.gates] == ["logits", "accuracy:99.9%"]
    assert c.failed_gates == ["logits"] and c.accuracy.difference.difference == 0
    only_accuracy = compare_runtimes(reference, candidate, _inputs(labels), {"c": tolerance_for("int8")},
                                     gates=parse_gates(["accuracy:99.9%"]))
    assert only_accuracy.passed  # the logit drift does not gate when the user gates on accuracy alone


def test_views_are_averaged_on_both_sides():
    labels = np.array([0, 1])
    # per view: clip 0's views say (left, right) with different strengths; their mean says left
    per_view = np.array([[3.0, 0, 0], [0, 1.0, 0], [0, 2.0, 0], [0, 2.0, 0]], np.float32)
    candidate = per_view.copy()
    candidate[0, 0] = 0.5  # the candidate's first view is weaker: its mean says right
    inputs = _inputs(labels, views=2)
    report = compare_runtimes(_Fixed(per_view), {"c": _Fixed(candidate)}, inputs, {"c": tolerance_for("int8")})
    assert report.views == 2 and report.num_inputs == 2 and report.reference_accuracy == 1.0
    [c] = report.candidates
    assert c.stats.accuracy == 0.5 and [f.name for f in c.flips] == ["clip0"]
    assert inputs.per_clip(per_view).tolist() == [[1.5, 0.5, 0.0], [0.0, 2.0, 0.0]]


@pytest.mark.parametrize(("specs", "names"), [
    ([], ["logits"]),
    (["accuracy:99%"], ["accuracy:99%"]),
    (["logits,accuracy:99.9%"], ["logits", "accuracy:99.9%"]),
    (["logits", "accuracy:0.99", "accuracy:99%"], ["logits", "accuracy:99%"]),
])
def test_gate_specs(specs, names):
    assert [g.name for g in parse_gates(specs)] == names


@pytest.mark.parametrize("spec", ["accuracy", "accuracy:", "accuracy:abc%", "accuracy:150%", "accuracy:0", "speed:2x"])
def test_bad_gates_are_one_line_errors(spec):
    with pytest.raises(ConfigError, match="gates="):  # the library names its argument, the command its flag
        parse_gates([spec])
    result = CliRunner().invoke(main, ["compare", "--gate", spec])
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.exit_code != 0 and len(errors) == 1 and "--gate" in errors[0], result.output


def test_gate_describes_mlperf_rule():
    assert Gate("accuracy", 0.999).describe().startswith("accuracy:99.9%: top-1 accuracy at least 99.9% of the reference")


# ---- the command: labelled inputs, the gate's exit code, multi-view ------------------------------------------------

def test_compare_gates_on_accuracy_with_its_exit_code_and_json(tmp_path):
    """The demo model at 4 frames loses accuracy (its positions interpolated): the accuracy gate fails it, a logits
    gate does not apply to another geometry."""
    out = tmp_path / "r.json"
    args = ["compare", "--synthetic", "60", "--frames", "4", "--json", str(out)]
    failed = CliRunner().invoke(main, [*args, "--gate", "logits", "--gate", "accuracy:99%"])
    assert failed.exit_code == 1, failed.output
    [candidate] = json.loads(out.read_text())["candidates"]
    assert candidate["failed_gates"] == ["accuracy:99%"]
    assert candidate["gates"][0] == {"gate": "logits", "passed": True,
                                     "detail": "not applicable: another geometry (4x32x32) computes other logits"}
    assert candidate["accuracy"]["top1"]["low"] < candidate["accuracy"]["top1"]["value"] < candidate["accuracy"]["top1"]["high"]
    assert candidate["flips"] and {"name", "label", "reference", "candidate", "reference_probability",
                                   "candidate_probability", "change"} <= set(candidate["flips"][0])
    assert "gate accuracy:99%: FAIL" in failed.stdout and "flips of" in failed.stdout
    passed = CliRunner().invoke(main, [*args, "--gate", "accuracy:50%"])
    assert passed.exit_code == 0, passed.output


def test_an_accuracy_gate_needs_labels():
    result = CliRunner().invoke(main, ["compare", "--samples", "2", "--torch", "bf16", "--gate", "accuracy:99%"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.exit_code != 0 and len(errors) == 1 and "needs labelled clips" in errors[0], result.output


def test_synthetic_views_are_equal_parts_of_each_video():
    from vivit_deploy.accuracy.inputs import synthetic_inputs
    from vivit_deploy.demo import demo_model_dir
    from vivit_deploy.model.checkpoint import load_config
    from vivit_deploy.video.preprocessing import VideoPreprocessor, preprocessor_config_in

    config = load_config(demo_model_dir())
    preprocessor = VideoPreprocessor(preprocessor_config_in(demo_model_dir()))
    one = synthetic_inputs(config, preprocessor, 3)
    two = synthetic_inputs(config, preprocessor, 3, views=2)
    assert two.pixel_values.shape == (6, *one.pixel_values.shape[1:]) and (two.labels == one.labels).all()
    assert not np.array_equal(two.pixel_values[0], two.pixel_values[1])  # two parts of one video


@pytest.fixture(scope="module")
def labelled_videos(tmp_path_factory) -> Path:
    """Three of the bundled sample videos (labelled) in a directory."""
    from vivit_deploy.demo import sample_videos

    directory = tmp_path_factory.mktemp("labelled")
    labels = {}
    for path, label in sample_videos()[:3]:
        shutil.copy(path, directory / path.name)
        labels[path.name] = label
    (directory / "labels.json").write_text(json.dumps(labels))
    return directory


def test_videos_and_manifests_bring_their_labels(labelled_videos, tmp_path):
    videos = videos_in(labelled_videos)
    assert len(videos) == 3 and all(label for _, label in videos)
    shutil.copytree(labelled_videos, tmp_path / "videos")
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "m.csv"  # paths relative to the manifest, and a column compare does not read
    manifest.write_text("path,label,notes\n" + "".join(f"../videos/{p.name},{label},x\n" for p, label in videos))
    assert [(p, label) for p, label in manifest_videos(manifest)] == [(tmp_path / "videos" / p.name, label)
                                                                       for p, label in videos]
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["compare", "--manifest", str(manifest), "--torch", "bf16", "--clips", "2",
                                       "--json", str(out)])
    assert result.exit_code in (0, 1), result.output
    data = json.loads(out.read_text())
    assert data["views"] == 2 and data["num_inputs"] == 3 and data["reference_detail"]["top1"]["n"] == 3
    assert "2 temporal views each" in data["inputs"]


def test_labels_that_do_not_fit_are_one_line_errors(labelled_videos, tmp_path):
    broken = tmp_path / "v"
    shutil.copytree(labelled_videos, broken)
    labels = json.loads((broken / "labels.json").read_text())
    first = sorted(labels)[0]
    labels[first] = "juggling"
    (broken / "labels.json").write_text(json.dumps(labels))
    result = CliRunner().invoke(main, ["compare", "--videos", str(broken), "--torch", "bf16"])
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.exit_code != 0 and "labels the model does not have: 'juggling'" in error
    del labels[first]
    (broken / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(ConfigError, match=f"no label for 1 of the 3 videos \\({first}\\)"):
        videos_in(broken)
    (tmp_path / "m.csv").write_text("path,label\nmissing.mp4,moving up\n")
    with pytest.raises(FileNotFoundError, match="1 of its 1 videos do not exist"):
        manifest_videos(tmp_path / "m.csv")


# ---- the HTML report in a real browser ------------------------------------------------------------------------------

def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_the_html_report_is_self_contained_and_renders_in_chromium(demo_onnx_int8, tmp_path):
    page = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["compare", "--onnx", str(demo_onnx_int8), "--frames", "4", "--synthetic", "40",
                                       "--layers", "--gate", "logits,accuracy:99%", "--html", str(page)])
    assert result.exit_code == 1, result.output  # 4 frames fail the accuracy gate
    text = page.read_text(encoding="utf-8")
    for section in ("Summary", "Accuracy", "Per class", "Flips", "Per-layer drift", "Settings"):
        assert f">{section}</h" in text, section
    assert "FAILED" in text and "accuracy:99%" in text and "McNemar" in text and "sha256" in text
    assert text.count("data:image/png;base64,") >= 1 and text.count("data:image/svg+xml;base64,") >= 2
    for outside in ("http://", "https://", "src=\"//", "<script", "<link"):
        assert outside not in text.replace("http-equiv", ""), outside
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium): the page was not rendered")
    shot = tmp_path / "shot.png"
    run = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-default-apps", "--disable-sync", "--no-first-run",
                          "--hide-scrollbars", "--enable-logging=stderr", "--v=0", "--window-size=1280,2400",
                          f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.is_file(), run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []  # no error, no refused fetch (the page's policy allows nothing outside it), no log
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert image.shape[:2] == (2400, 1280)
    assert image.std() > 20 and len(np.unique(image.reshape(-1, 3)[::97], axis=0)) > 50  # text, charts, strips


def test_html_without_matplotlib_is_a_one_line_error(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    result = CliRunner().invoke(main, ["compare", "--html", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and "--html needs matplotlib: pip install 'vivit-deploy[bench]'" in result.output
