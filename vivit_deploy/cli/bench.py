"""`vivit-deploy bench`: latency, throughput and memory of every backend, ratios from one run."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from vivit_deploy.cli.common import MERGE_TOKENS, Stopwatch, friendly_errors, parse_image_size, print_report, writable
from vivit_deploy.model.config import PRESETS


@contextlib.contextmanager
def _progress_bar(total: int):
    """One bar on stderr over every call of every backend, labelled with the backend being measured."""
    with click.progressbar(length=total, label="measuring", file=sys.stderr, show_pos=True, show_eta=True,
                           width=24) as bar:
        def advance(backend: str) -> None:
            bar.label = f"{backend:<18}"
            bar.update(1)

        yield advance


@click.command()
@click.option("--model", "source", default=None,
              help="Checkpoint directory or Hub id to measure. Default: the demo model.")
@click.option("--config", "config_preset", type=click.Choice(sorted(PRESETS)), default=None,
              help="Measure this geometry with random weights instead (vivit-b-16x2: the real cost, no download).")
@click.option("--frames", "num_frames", type=click.IntRange(min=1), default=None,
              help="Frames per clip: of the --config preset (a cheaper ViViT-B on a CPU, e.g. 8), or a checkpoint run "
                   "at this many (its positions resized once).")
@click.option("--image-size", "image_size", default=None, callback=parse_image_size, metavar="S|HxW",
              help="Frame size: of the --config preset, or a checkpoint run at this size.")
@click.option("--backends", default=None,
              help="Comma-separated, from: torch-eager, torch-sdpa, onnxruntime, openvino, tensorrt, transformers-eager, "
                   "transformers-sdpa. Default: torch-eager,torch-sdpa,onnxruntime,openvino,tensorrt, those that can run here.")
@click.option("--batch-sizes", default="1,2,4,8", show_default=True, help="Comma-separated batch sizes.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", default="fp32", show_default=True,
              help="fp32, fp16, bf16, int8, int8-bf16 or fp8, or several comma-separated: every backend in each it "
                   "runs (fp16: fp16 ONNX graph and engine, half PyTorch; bf16: PyTorch and OpenVINO; int8: the "
                   "calibrated Q/DQ export on ONNX Runtime, OpenVINO, TensorRT; int8-bf16: OpenVINO, the rest in bf16; "
                   "fp8: TensorRT).")
@click.option("--calibration", type=click.Path(path_type=Path, exists=True), default=None,
              help="int8/fp8: calibrate the export on these videos (DIR) or clips (.npz) [default: synthetic clips "
                   "for the demo model, random clips otherwise, said in the report].")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0), help="Untimed calls per batch size.")
@click.option("--iters", default=10, show_default=True, type=click.IntRange(min=1), help="Timed calls per batch size.")
@click.option("--peers/--no-peers", default=True, show_default=True,
              help="Also measure transformers' model (eager, sdpa) and preprocessor, when transformers is installed.")
@click.option("--stages/--no-stages", default=True, show_default=True,
              help="Also time decode, preprocessing, inference and end to end on video files.")
@click.option("--videos", "videos_dir", type=click.Path(path_type=Path), default=None,
              help="Videos for the stages [default: the bundled sample videos].")
@click.option("--ceiling/--no-ceiling", default=True, show_default=True,
              help="Measure a matrix-product ceiling in the same run and show each backend's share of it.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write the results as JSON to this file ('-' for stdout instead of the tables).")
@click.option("--markdown", "markdown_path", type=click.Path(path_type=Path), default=None,
              help="Also write the tables as markdown to this file (to paste into docs).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Write a PNG of throughput against batch size (needs matplotlib: pip install 'vivit-deploy[bench]').")
@click.option("--onnx", "onnx_file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Measure this file (from vivit-export, of the same model) with onnxruntime instead of exporting one.")
@click.option("--engine", "engine_file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Measure this engine (from build-engine, of the same model) with tensorrt instead of building one.")
@click.option("--offline", is_flag=True, help="Use only the local Hugging Face cache (like HF_HUB_OFFLINE=1).")
@MERGE_TOKENS
@friendly_errors
def bench(source, config_preset, num_frames, image_size, backends, batch_sizes, device, precision, calibration, warmup, iters, peers,
          stages, videos_dir, ceiling, json_path, markdown_path, plot_path, onnx_file, engine_file, offline, merge_tokens):
    """Latency, throughput and peak memory of every backend at each batch size, in one run.

    Each backend runs in a process of its own (its memory is its own); ratios between backends come
    from the same run. Prints markdown tables: latency percentiles, sdpa vs eager in the layout of
    the transformers ViViT doc, speedup over torch-sdpa, drift, ceiling, stages of predict. With
    several precisions (--precision fp32,bf16,int8), a backend x precision table: speedup over
    transformers' fp32 sdpa next to the drift from our fp32 model on identical input.
    """
    import importlib.util

    from vivit_deploy.bench import BenchSettings, parse_batch_sizes, parse_list, run_bench

    for path, option in ((json_path, "--json"), (markdown_path, "--markdown"), (plot_path, "--plot")):
        writable(path, option)
    if plot_path is not None and importlib.util.find_spec("matplotlib") is None:
        raise click.UsageError("--plot needs matplotlib: pip install 'vivit-deploy[bench]'")
    videos = None
    if videos_dir is not None:
        from vivit_deploy.accuracy.inputs import videos_in

        videos = [path for path, _ in videos_in(videos_dir)]
        if not videos:
            raise click.UsageError(f"--videos {videos_dir}: no video files in it")
    settings = BenchSettings(
        source=source, config=config_preset, num_frames=num_frames, image_size=image_size,
        backends=None if backends is None else parse_list(backends, "--backends"),
        batch_sizes=parse_batch_sizes(batch_sizes), device=device, precision=precision,
        warmup=warmup, iters=iters, peers=peers, stages=stages, ceiling=ceiling, offline=offline,
        onnx=onnx_file, engine=engine_file, calibration=calibration, merge_tokens=merge_tokens,
    )
    report = run_bench(settings, progress=Stopwatch(), bar=_progress_bar, videos=videos)
    markdown = report.to_markdown()
    print_report(markdown, report.to_dict(), json_path)
    if markdown_path is not None:
        markdown_path.write_text(markdown, encoding="utf-8")
    if plot_path is not None:
        report.plot(plot_path)
    if report.failed:
        raise click.ClickException("; ".join(f"{name} failed: {why}" for name, why in report.failed.items()))
