"""`vivit-deploy compare`: how far each backend drifts from PyTorch fp32, overall and layer by layer."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vivit_deploy.cli.common import DEVICE, GEOMETRY, Stopwatch, friendly_errors, merge_tokens_option, print_report, writable


@click.command()
@click.option("--model", "source", default=None,
              help="The reference checkpoint (directory or Hub id), run in PyTorch fp32. Default: the demo model.")
@click.option("--onnx", "onnx_files", multiple=True, type=click.Path(path_type=Path),
              help="An exported .onnx file to compare with ONNX Runtime (repeatable).")
@click.option("--openvino", "openvino_files", multiple=True, type=click.Path(path_type=Path),
              help="An exported .onnx file to compare with OpenVINO (repeatable).")
@click.option("--openvino-precision", "openvino_precisions", multiple=True, type=click.Choice(["fp32", "bf16"]),
              help="What OpenVINO computes the --openvino files in (repeatable) [default: fp32].")
@click.option("--engine", "engine_files", multiple=True, type=click.Path(path_type=Path),
              help="A TensorRT engine from build-engine to compare (repeatable; needs TensorRT and a GPU).")
@click.option("--triton", "triton_urls", multiple=True, metavar="URL",
              help="A model on a Triton server, triton://host:port/MODEL (repeatable).")
@click.option("--torch", "torch_precisions", multiple=True, type=click.Choice(["fp16", "bf16"]),
              help="Also compare PyTorch at this precision (repeatable).")
@DEVICE
@click.option("--videos", "videos_dir", type=click.Path(path_type=Path), default=None,
              help="Compare on each video in DIR (labels from DIR/labels.json, {file name: label}, when present).")
@click.option("--manifest", type=click.Path(path_type=Path), default=None,
              help="Compare on the videos a .csv/.parquet manifest lists in its 'path' column, labelled by its 'label' "
                   "column (paths relative to the manifest).")
@click.option("--clips", "views", default=1, show_default=True, type=click.IntRange(min=1),
              help="Temporal views per video, each sampled over its own equal part of it; logits averaged over them on "
                   "both sides, as the ViViT paper evaluates.")
@click.option("--synthetic", type=click.IntRange(min=1), default=None,
              help="Compare on N labelled clips of the demo model's motion task (its held-out distribution).")
@click.option("--samples", type=click.IntRange(min=1), default=None, help="Compare on N random clips.")
@click.option("--demo", is_flag=True, help="Compare on the bundled labelled sample videos.")
@click.option("--inputs", "inputs_file", type=click.Path(path_type=Path), default=None,
              help="Compare on clips saved earlier with --save-inputs (.npz).")
@click.option("--save-inputs", type=click.Path(path_type=Path), default=None,
              help="Save the preprocessed clips (.npz) so another machine can compare on identical tensors.")
@click.option("--calibration", type=click.Path(path_type=Path), default=None,
              help="With no candidate named: calibrate the int8 candidates on these videos (DIR) or clips (.npz) "
                   "[default for the demo model: synthetic clips no evaluation set uses].")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write the report as JSON to this file ('-' for stdout).")
@click.option("--gate", "gates", multiple=True, metavar="GATE",
              help="What every candidate must pass (repeatable, or comma-separated): 'logits' (the precision's logit "
                   "tolerances, the default) and/or 'accuracy:99%' / 'accuracy:99.9%' (top-1 accuracy at least that "
                   "share of the reference's, MLPerf's rule; needs labelled clips).")
@click.option("--html", "html_path", type=click.Path(path_type=Path), default=None,
              help="Also write the report as one self-contained HTML page (charts, intervals, flips with their frames, "
                   "settings; needs matplotlib: pip install 'vivit-deploy[bench]').")
@click.option("--atol", type=click.FloatRange(min=0), default=None, help="Override every candidate's atol.")
@click.option("--rtol", type=click.FloatRange(min=0), default=None, help="Override every candidate's rtol.")
@click.option("--min-cosine", type=click.FloatRange(-1, 1), default=None, help="Override the minimum cosine similarity.")
@click.option("--min-top1", type=click.FloatRange(0, 1), default=None, help="Override the minimum top-1 agreement (0..1).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--layers", is_flag=True,
              help="Also per-layer drift: the hidden states of every layer against PyTorch fp32 hooks, the first layer "
                   "out of tolerance and what broke there (ONNX Runtime, OpenVINO and PyTorch candidates).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="With --layers: write a PNG of drift against depth (needs matplotlib: pip install 'vivit-deploy[bench]').")
@GEOMETRY
@merge_tokens_option(against="also the checkpoint in PyTorch fp32 merging tokens, against the unmerged reference: what "
                             "merging costs on these clips (an exported file merges as it was exported)")
@click.option("--offline", is_flag=True, help="Use only the local Hugging Face cache (like HF_HUB_OFFLINE=1).")
@friendly_errors
def compare(source, onnx_files, openvino_files, openvino_precisions, engine_files, triton_urls, torch_precisions, device, videos_dir,
            manifest, views, synthetic, samples, demo, inputs_file, save_inputs, calibration, json_path, gates, html_path,
            atol, rtol, min_cosine, min_top1, batch_size, layers, plot_path, num_frames, image_size, merge_tokens,
            offline):
    """How far each backend drifts from PyTorch fp32, and whether it still classifies the same.

    With no candidate named, every backend x precision that can run here is compared (ONNX Runtime
    fp32/fp16/int8, OpenVINO fp32/bf16/int8, PyTorch bf16, and on a GPU its fp16/bf16, ONNX Runtime's
    CUDA provider and TensorRT), exported into a temporary directory first.

    On labelled clips: top-1/top-5 accuracy with 95% intervals, the paired difference to the reference with
    McNemar's exact test, per-class accuracy and every clip whose top-1 changed.

    Exit code 0 when every candidate passes every --gate (by default: within its logit tolerances, per
    precision, see vivit_deploy/accuracy/tolerances.py, or the overrides), 1 otherwise: a release pipeline
    can gate on it.
    """
    import importlib.util

    from vivit_deploy.compare.job import CompareOptions, run_compare

    if openvino_precisions and not openvino_files:
        raise click.UsageError("--openvino-precision applies to --openvino files")
    if plot_path is not None and not layers:
        raise click.UsageError("--plot draws the per-layer drift: add --layers")
    for path, option in ((plot_path, "--plot"), (html_path, "--html")):
        if path is not None and importlib.util.find_spec("matplotlib") is None:
            raise click.UsageError(f"{option} needs matplotlib: pip install 'vivit-deploy[bench]'")
    for path, option in ((json_path, "--json"), (plot_path, "--plot"), (html_path, "--html")):
        writable(path, option)
    from vivit_deploy.accuracy.gates import parse_gates

    parse_gates(gates)  # a malformed --gate is a usage error before any model loads
    options = CompareOptions(
        source=source, onnx=onnx_files, openvino=openvino_files, openvino_precisions=openvino_precisions or ("fp32",),
        engines=engine_files, triton=triton_urls, torch_precisions=torch_precisions, device=device, demo=demo, videos_dir=videos_dir,
        manifest=manifest, views=views, gates=gates, html=html_path,
        synthetic=synthetic, samples=samples, inputs_file=inputs_file, save_inputs=save_inputs, calibration=calibration,
        tolerance_overrides=dict(atol=atol, rtol=rtol, min_cosine=min_cosine, min_top1=min_top1),
        batch_size=batch_size, offline=offline, layers=layers, plot=plot_path, num_frames=num_frames, image_size=image_size,
        merge_tokens=merge_tokens,
    )
    report = run_compare(options, Stopwatch())
    print_report(report.format_table() + "\n", report.to_dict(), json_path)
    if not report.passed:
        sys.exit(1)
