"""`vivit-deploy bench`: end to end on a tiny geometry, the report's arithmetic, and clear errors.

No test here asserts a speed: timings on a shared machine mean nothing on their own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import requires_gpu
from vivit_deploy.bench import BenchReport, BenchSettings, parse_batch_sizes
from vivit_deploy.bench.ceiling import cpu_ceilings
from vivit_deploy.bench.measure import Job, latency_stats, measure_in_child, peak_rss_mb, reset_peak_rss
from vivit_deploy.demo import sample_videos
from vivit_deploy.bench.plan import choose_backends
from vivit_deploy.cli import main
from vivit_deploy.errors import BackendUnavailableError, ConfigError

BACKENDS = ("torch-eager", "torch-sdpa", "onnxruntime")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One real run: tiny geometry, three backends (+ transformers' two when installed), batch 1 and 2."""
    out = tmp_path_factory.mktemp("bench")
    paths = {"json": out / "bench.json", "markdown": out / "bench.md", "plot": out / "bench.png"}
    result = CliRunner().invoke(main, [
        "bench", "--config", "tiny", "--backends", ",".join(BACKENDS), "--batch-sizes", "2,1",
        "--device", "cpu", "--warmup", "1", "--iters", "2", "--no-ceiling",
        "--json", str(paths["json"]), "--markdown", str(paths["markdown"]), "--plot", str(paths["plot"]),
    ])
    return result, paths


@pytest.mark.slow
def test_bench_runs_end_to_end_and_writes_json(cli_run):
    result, paths = cli_run
    assert result.exit_code == 0, result.output
    data = json.loads(paths["json"].read_text())
    assert data["settings"]["batch_sizes"] == [1, 2]  # sorted, ascending
    assert data["model"]["input_shape"] == [4, 3, 32, 32]
    assert set(BACKENDS) <= set(data["results"])
    for name in BACKENDS:
        rows = data["results"][name]["rows"]
        assert [r["batch"] for r in rows] == [1, 2]
        for row in rows:
            assert row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
            assert row["clips_per_s"] == pytest.approx(row["batch"] / row["mean_ms"] * 1e3)
            assert row["peak_mb"] > 0
    for name in ("torch-eager", "onnxruntime"):  # same weights, same input: fp32 drift is tiny
        drift = data["results"][name]["drift"]
        assert drift["max_abs_diff"] < 1e-4 and drift["top1_agreement"] == 1.0
    assert data["speedup_over_torch_sdpa"]["1"]["torch-sdpa"] == pytest.approx(1.0)
    assert [p["batch_size"] for p in data["sdpa_vs_eager"] if p["implementation"] == "vivit_deploy"] == [1, 2]
    stages = data["stages"]["stages"]
    assert list(stages) == ["decode", "preprocess", "inference", "end to end"]
    assert stages["end to end"]["ms_per_clip"] >= stages["inference"]["ms_per_clip"]
    assert data["stages"]["videos"] == len(sample_videos())


@pytest.mark.slow
def test_bench_markdown_has_the_seed_layout_and_the_ratio_tables(cli_run):
    result, paths = cli_run
    text = paths["markdown"].read_text()
    assert text.startswith("## vivit-deploy bench: tiny geometry") and text in result.output  # same tables as printed
    assert "| implementation | batch_size | is cuda | is half | Speedup (%) | Mem eager (MB) | Mem sdpa (MB) | Mem saved (%) |" in text
    assert "### Speedup over torch-sdpa" in text and "### Drift from torch-sdpa" in text
    assert "### Stages of `predict`" in text
    for line in text.splitlines():
        if line.startswith("|"):
            assert line.endswith("|")


@pytest.mark.slow
def test_bench_plot_is_a_png(cli_run):
    _, paths = cli_run
    image = pytest.importorskip("matplotlib.image").imread(paths["plot"])
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.ndim == 3 and image.shape[0] > 100


@pytest.mark.slow
def test_peers_are_measured_when_transformers_is_installed(cli_run):
    pytest.importorskip("transformers")
    _, paths = cli_run
    data = json.loads(paths["json"].read_text())
    assert {"transformers-eager", "transformers-sdpa"} <= set(data["results"])
    assert data["results"]["transformers-sdpa"]["drift"]["max_abs_diff"] < 1e-4  # same weights as ours
    assert data["preprocessing"]["max_abs_diff"] == 0  # parity first, then the speed ratio means something
    assert {"vivit_deploy", "transformers"} == {p["implementation"] for p in data["sdpa_vs_eager"]}
    assert data["speedup_over_transformers_sdpa"]["2"]["transformers-sdpa"] == pytest.approx(1.0)


def test_json_to_stdout_is_only_json():
    result = CliRunner().invoke(main, ["bench", "--config", "tiny", "--backends", "torch-sdpa", "--batch-sizes", "1",
                                       "--device", "cpu", "--warmup", "0", "--iters", "1", "--no-peers", "--no-stages",
                                       "--no-ceiling", "--json", "-"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data["results"]) == ["torch-sdpa"] and data["stages"] is None and data["ceiling"] == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backends", "torch-sdpa,tvm"], "unknown backend(s) tvm; known: torch-eager"),
        (["--batch-sizes", "1,0"], "--batch-sizes takes positive integers"),
        (["--batch-sizes", "1,two"], "--batch-sizes takes positive integers"),
        (["--model", "x", "--config", "tiny"], "give --model or --config, not both"),
        (["--backends", "tensorrt", "--device", "cpu"], "backend tensorrt cannot run here"),
        (["--backends", "onnxruntime", "--precision", "bf16", "--device", "cpu"], "runs fp32/fp16/int8, not bf16"),
        (["--precision", "fp32,int4"], "--precision takes fp32, fp16, bf16, int8, int8-bf16"),
        (["--device", "tpu"], "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        (["--model", "no/such/dir"], "no such checkpoint directory"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_1(args, message):
    result = CliRunner().invoke(main, ["bench", "--no-ceiling", *args])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_output_paths_are_checked_before_measuring(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--json", str(tmp_path / "missing" / "out.json")])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert CliRunner().invoke(main, ["bench", "--iters", "0"]).exit_code == 2


def test_settings_validate_themselves():
    with pytest.raises(ConfigError, match="warmup= must be >= 0"):
        BenchSettings(warmup=-1)
    with pytest.raises(ConfigError, match="backends= is empty"):
        BenchSettings(backends=())
    assert BenchSettings(batch_sizes=(8, 1, 2, 2)).batch_sizes == (1, 2, 8)
    assert BenchSettings(backends=("onnxruntime", "torch-sdpa", "onnxruntime")).backends == ("onnxruntime", "torch-sdpa")
    assert parse_batch_sizes(" 1, 4 ") == (1, 4)


def test_default_backends_leave_out_what_cannot_run_with_the_reason():
    choice = choose_backends(BenchSettings(device="cpu", peers=False))
    assert choice.run[:3] == BACKENDS and "tensorrt" not in choice.run
    assert choice.skipped["tensorrt"] == "needs a CUDA GPU (device cuda)"
    with pytest.raises(BackendUnavailableError, match="backend tensorrt cannot run here"):
        choose_backends(BenchSettings(device="cpu", backends=("tensorrt",)))
    with pytest.raises(BackendUnavailableError, match="x.engine is given, but tensorrt cannot run here: needs a CUDA GPU"):
        choose_backends(BenchSettings(device="cpu", engine=Path("x.engine")))


def test_a_backend_that_fails_in_its_process_comes_back_as_an_error(tmp_path):
    job = Job("torch-sdpa", str(tmp_path / "missing"), "cpu", "fp32", (1,), 0, 1, 0)
    result = measure_in_child(job, tick=lambda: None)
    assert result["backend"] == "torch-sdpa" and "no such checkpoint directory" in result["error"]


def test_latency_stats_are_percentiles_of_milliseconds():
    stats = latency_stats([0.010, 0.020, 0.030, 0.040], batch=2)
    assert stats["mean_ms"] == pytest.approx(25.0) and stats["p50_ms"] == pytest.approx(25.0)
    assert stats["min_ms"] == pytest.approx(10.0) and stats["p99_ms"] == pytest.approx(39.7)
    assert stats["clips_per_s"] == pytest.approx(80.0)


def _row(batch, mean_ms, peak_mb):
    return {"batch": batch, "mean_ms": mean_ms, "peak_mb": peak_mb, "clips_per_s": batch / mean_ms * 1e3,
            **{k: mean_ms for k in ("p50_ms", "p90_ms", "p99_ms", "min_ms")}}


def _report(results) -> BenchReport:
    return BenchReport(
        environment={"date": "2026-11-24", "device": "cuda", "device_name": "GPU", "torch": "2"},
        model={"label": "m", "gflop_per_clip": 900.0}, settings={"batch_sizes": [1, 8], "precision": "fp32",
                                                                  "warmup": 1, "iters": 2},
        results=results,
    )


def test_sdpa_vs_eager_uses_the_seed_tables_formulas():
    # The transformers ViViT doc, A100 fp32 batch 1: eager 715.807 MB, sdpa 317.079 MB -> "125.75" % saved.
    report = _report({
        "torch-eager": {"rows": [_row(1, 115.422, 715.807)], "timed": "t", "memory_kind": "m"},
        "torch-sdpa": {"rows": [_row(1, 100.0, 317.079)], "timed": "t", "memory_kind": "m"},
    })
    (pair,) = report.sdpa_vs_eager()
    assert pair["speedup_pct"] == pytest.approx(15.422) and pair["mem_saved_pct"] == pytest.approx(125.75, abs=0.01)
    assert pair["is_cuda"] is True and pair["is_half"] is False
    assert report.speedups() == {1: {"torch-eager": pytest.approx(100 / 115.422), "torch-sdpa": 1.0}}
    assert report.tflops(report.row("torch-sdpa", 1)) == pytest.approx(9.0)


def test_report_shows_failures_and_out_of_memory_rows():
    report = _report({
        "torch-sdpa": {"rows": [_row(1, 10.0, 1.0), {"batch": 8, "error": "out of memory"}], "timed": "t", "memory_kind": "m"},
        "onnxruntime": {"backend": "onnxruntime", "error": "ONNX Runtime cannot load it"},
    })
    text = report.to_markdown()
    assert "| torch-sdpa | 8 | out of memory |" in text and "failed: ONNX Runtime cannot load it" in text
    assert report.failed == {"onnxruntime": "ONNX Runtime cannot load it"}
    assert report.speedups() == {1: {"torch-sdpa": 1.0}}


def test_peak_rss_mark_restarts():
    reset_peak_rss()
    before = peak_rss_mb()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    grown = peak_rss_mb()
    del block
    reset_peak_rss()
    assert grown >= before + 50 and peak_rss_mb() < grown


def test_cpu_ceilings_measure_each_library_in_the_run_precision():
    ceilings = cpu_ceilings(n=256, reps=1)
    assert {"torch", "numpy"} <= set(ceilings) and all(v > 0 for v in ceilings.values())
    (name, rate), = cpu_ceilings(n=256, reps=1, precision="bf16").items()
    assert name == "torch bf16" and rate > 0


def test_plot_without_matplotlib_is_refused_before_measuring(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    result = CliRunner().invoke(main, ["bench", "--plot", str(tmp_path / "out.png")])
    assert result.exit_code == 2 and "pip install 'vivit-deploy[bench]'" in result.output
    assert not (tmp_path / "out.png").exists()


@pytest.mark.gpu
@requires_gpu
def test_bench_on_cuda_times_with_events_and_reads_the_allocator_peak():
    result = CliRunner().invoke(main, ["bench", "--config", "tiny", "--device", "cuda", "--backends", "torch-eager,torch-sdpa",
                                       "--batch-sizes", "1,4", "--warmup", "1", "--iters", "3", "--no-peers",
                                       "--no-stages", "--json", "-"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["environment"]["device"] == "cuda" and data["ceiling"]["torch fp32"] > 0
    for name in ("torch-eager", "torch-sdpa"):
        assert data["results"][name]["memory_kind"].startswith("PyTorch allocator peak")
        assert [r["batch"] for r in data["results"][name]["rows"]] == [1, 4]
        assert all(r["peak_mb"] > 0 for r in data["results"][name]["rows"])
    assert data["sdpa_vs_eager"][0]["is_cuda"] is True


def test_stages_skip_an_unreadable_video_and_keep_the_timings(tmp_path):
    import shutil

    from vivit_deploy.demo import sample_videos

    shutil.copy(sample_videos()[0][0], tmp_path / "good.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    result = CliRunner().invoke(main, ["bench", "--videos", str(tmp_path), "--backends", "torch-sdpa", "--no-peers",
                                       "--no-ceiling", "--batch-sizes", "1", "--warmup", "0", "--iters", "1",
                                       "--device", "cpu", "--json", "-"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["stages"]["videos"] == 1 and "broken.mp4" in data["stages"]["unreadable"][0]
    assert any("1 unreadable video(s)" in note for note in data["notes"])


def test_a_given_onnx_file_is_measured_instead_of_a_fresh_export(demo_onnx):
    result = CliRunner().invoke(main, ["bench", "--onnx", str(demo_onnx), "--backends", "torch-sdpa,onnxruntime",
                                       "--batch-sizes", "1,3", "--no-peers", "--no-stages", "--no-ceiling",
                                       "--warmup", "0", "--iters", "1", "--device", "cpu", "--json", "-"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["results"]["onnxruntime"]["drift"]["max_abs_diff"] < 1e-4
    assert [r["batch"] for r in data["results"]["onnxruntime"]["rows"]] == [1, 3]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--precision", "fp32"], "is fp16; run the bench with --precision fp16"),
        (["--precision", "fp16", "--config", "tiny"], "is not a file of the measured model"),
        (["--precision", "fp16", "--batch-sizes", "64"], "takes batch 1..32, not 64"),
        (["--precision", "fp16", "--backends", "torch-sdpa"], "is given, but no backend that loads it is measured"),
    ],
)
def test_a_given_onnx_file_that_does_not_fit_the_run_is_refused(demo_onnx_fp16, args, message):
    result = CliRunner().invoke(main, ["bench", "--onnx", str(demo_onnx_fp16), "--no-ceiling", "--device", "cpu", *args])
    assert result.exit_code == 1 and message in result.output, result.output


@pytest.mark.slow
def test_a_backend_by_precision_matrix_reports_speedups_and_drift(tmp_path):
    """Several precisions: each backend in each it runs, keyed backend@precision, with a drift against our fp32."""
    result = CliRunner().invoke(main, [
        "bench", "--config", "tiny", "--backends", "torch-sdpa,onnxruntime,openvino", "--precision", "fp32,int8",
        "--batch-sizes", "1", "--device", "cpu", "--warmup", "0", "--iters", "1", "--no-ceiling", "--no-stages",
        "--no-peers", "--json", str(tmp_path / "m.json"),
    ])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "m.json").read_text())
    expected = {"torch-sdpa@fp32", "onnxruntime@fp32", "onnxruntime@int8"}
    import importlib.util

    if importlib.util.find_spec("openvino") is not None:
        expected |= {"openvino@fp32", "openvino@int8"}
    assert set(data["results"]) == expected
    assert data["settings"]["reference"] == "torch-sdpa@fp32" and data["settings"]["matrix"]
    drift = data["results"]["onnxruntime@int8"]["drift"]
    assert drift["min_cosine"] > 0.9 and 0 <= drift["top1_agreement"] <= 1
    assert "torch-sdpa@int8" in data["skipped"]  # PyTorch runs no int8: said, not silently dropped
    assert "### Backend x precision" in result.stdout
    assert any("int8 calibrated on 8 random clips" in note for note in data["notes"])
    assert "cpu_flags" in data["environment"]
