"""`vivit-deploy build-engine` and `check-trt`: TensorRT engines and NVIDIA's verdict on a file."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vivit_deploy.cli.common import Stopwatch, friendly_errors, print_report, writable


@click.command("build-engine")
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The engine file to write.")
@click.option("--trt", "edition", type=click.Choice(["auto", "tensorrt", "rtx"]), default="auto", show_default=True,
              help="Which TensorRT builds it: auto = TensorRT 10/11 where it imports, else TensorRT for RTX (builds "
                   "without a GPU, for RTX/Ada/Ampere/Turing GPUs).")
@click.option("--compute-capability", "compute_capabilities", default=None, metavar="8.6,8.9,...",
              help="TensorRT for RTX: the GPU generations to build for (7.5, 8.0, 8.6, 8.9, 12.0, 12.1) [default: "
                   "8.0,8.6,8.9,12.0; for an fp8 graph 8.9,12.0].")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "fp8"]), default=None,
              help="Engine precision [default: the graph's]. Strongly typed builds take it from the graph.")
@click.option("--min-batch", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--opt-batch", default=None, type=click.IntRange(min=1), help="Batch TensorRT tunes for [default: min(8, max)].")
@click.option("--max-batch", default=None, type=click.IntRange(min=1), help="[default: the ONNX file's own limit]")
@click.option("--workspace-gb", default=None, type=float, help="Builder workspace limit in GiB [default: TensorRT's].")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="TensorRT 10/11: read this timing cache if it exists and write it back after the build.")
@click.option("--optimization-level", default=None, type=click.IntRange(0, 5),
              help="TensorRT builder optimization level [default: TensorRT's, 3].")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the build report (edition, targets, memory, layers) as JSON to this file ('-' for stdout).")
@friendly_errors
def build_engine_command(onnx_file, output, edition, compute_capabilities, precision, min_batch, opt_batch, max_batch,
                         workspace_gb, timing_cache, optimization_level, json_path):
    """Build a TensorRT engine from ONNX_FILE (written by vivit-export), with a sidecar JSON next to it.

    TensorRT 10/11 build on the GPU the engine will run on; TensorRT for RTX builds ahead of time on any
    machine, for the compute capabilities named. The report (and the sidecar) hold NVIDIA's own account
    of the build: edition, version, targets, weights and activation memory, the fused layers. A build
    that fails writes nothing and says why in one line.
    """
    from vivit_deploy.export.trt_build import build_engine

    writable(json_path, "--json")
    report = build_engine(
        onnx_file, output, trt=edition, compute_capabilities=compute_capabilities, precision=precision,
        min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, workspace_gb=workspace_gb,
        timing_cache=timing_cache, optimization_level=optimization_level, progress=Stopwatch(),
    )
    print_report(report.format() + "\n", report.to_dict(), json_path)


@click.command("check-trt")
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "fp8"]), default=None,
              help="Engine precision to check for [default: the file's own, from its metadata].")
@click.option("--trt", "edition", type=click.Choice(["auto", "tensorrt", "rtx"]), default="auto", show_default=True,
              help="Whose ONNX parser reads the file: auto = TensorRT 10/11 where it imports, else TensorRT for RTX.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the report as JSON to this file ('-' for stdout).")
@friendly_errors
def check_trt_command(onnx_file, precision, edition, json_path):
    """Check ONNX_FILE against TensorRT's ONNX parser and engine needs.

    NVIDIA's own parser reads the file where an edition of TensorRT imports (its errors verbatim, per
    node); beside it, static checks that need no TensorRT: operators against the parser's supported
    list, opset range, LayerNormalization as one op, the fusable attention pattern, tensor types, fp16
    graph with float32 I/O. Exit code 1 on a blocker.
    """
    from vivit_deploy.export.trt_compat import check_trt

    writable(json_path, "--json")
    report = check_trt(onnx_file, precision, trt=edition)
    print_report(report.format() + "\n", report.to_dict(), json_path)
    if not report.passed:
        sys.exit(1)
