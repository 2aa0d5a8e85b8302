"""`vivit-deploy triton-repo`: a Triton model repository for a deployable file."""

from __future__ import annotations

from pathlib import Path

import click

from vivit_deploy.cli.common import Stopwatch, friendly_errors


@click.command("triton-repo")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", "repository", required=True, type=click.Path(path_type=Path),
              help="The model repository directory (created if missing; existing models are never overwritten).")
@click.option("--name", default="vivit", show_default=True, help="The model's name; the ensemble is NAME_frames.")
@click.option("--platform", type=click.Choice(["tensorrt", "onnxruntime", "python"]), default=None,
              help="tensorrt_plan for an engine, onnxruntime_onnx for an .onnx file [default: by the file], or "
                   "python: vivit_deploy's own runtime inside Triton's python backend (CPU-only servers).")
@click.option("--kind", type=click.Choice(["gpu", "cpu"]), default=None,
              help="instance_group kind [default: gpu; cpu for --platform python on the CPU].")
@click.option("--instances", default=1, show_default=True, type=click.IntRange(min=1), help="Instances of each model.")
@click.option("--max-queue-delay-us", default=100, show_default=True, type=click.IntRange(min=0),
              help="How long the dynamic batcher waits to fill a batch.")
@click.option("--preferred-batch", default=None,
              help="Comma-separated preferred batch sizes [default: the engine's opt batch; none for ONNX].")
@click.option("--ensemble/--no-ensemble", default=True, show_default=True,
              help="Also write the uint8-frames preprocessing model and the ensemble that chains it to the model.")
@click.option("--ort-tensorrt", is_flag=True, help="ONNX Runtime's TensorRT accelerator (--platform onnxruntime --kind gpu).")
@click.option("--python-backend", type=click.Choice(["onnxruntime", "openvino", "tensorrt", "torch"]), default=None,
              help="--platform python: the runtime inside Triton [default: onnxruntime; tensorrt for an engine].")
@click.option("--python-device", default=None, help="--platform python: cpu or cuda [default: cuda for an engine, else cpu].")
@click.option("--python-precision", default=None, help="--platform python: the runtime's precision (e.g. OpenVINO bf16).")
@friendly_errors
def triton_repo_command(source, repository, name, platform, kind, instances, max_queue_delay_us, preferred_batch,
                        ensemble, ort_tensorrt, python_backend, python_device, python_precision):
    """Write a Triton model repository for SOURCE: an engine (with its sidecar), an .onnx from vivit-export,
    or a checkpoint (exported to ONNX first).

    config.pbtxt comes from what the file knows (names, types, dims, batch range, labels) and is
    validated against Triton's own ModelConfig before anything is written. See docs/triton.md.
    """
    from vivit_deploy.serving.repository import write_repository

    preferred = None
    if preferred_batch:
        from vivit_deploy.bench import parse_batch_sizes

        preferred = list(parse_batch_sizes(preferred_batch))
    report = write_repository(
        source, repository, name=name, platform=platform, kind=kind, instances=instances,
        max_queue_delay_us=max_queue_delay_us, preferred_batch=preferred, ensemble=ensemble, ort_tensorrt=ort_tensorrt,
        python_backend=python_backend, python_device=python_device, python_precision=python_precision,
        progress=Stopwatch(),
    )
    click.echo(report.format())
