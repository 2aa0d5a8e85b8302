"""`vivit-deploy triton-repo`: a Triton model repository for a deployable file."""

from __future__ import annotations

from pathlib import Path

import click

from vivit_deploy.cli.common import Stopwatch, friendly_errors

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_bytes(text: str, flag: str) -> int:
    """``64M`` -> 67108864 (K, M, G are powers of 1024; a bare number is bytes); anything else is a usage error."""
    value = str(text).strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (value[:-1], value[-1]) if value[-1:] in "KMG" else (value, "")
    if not number.isdigit() or int(number) < 1:
        raise click.BadParameter(f"{text!r} is not a positive size (e.g. 64M, 500K, 1G or bytes)", param_hint=flag)
    return int(number) * _UNITS[unit]


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
@click.option("--video", is_flag=True,
              help="Also write NAME_video: an encoded video file in (one TYPE_BYTES element), the video's logits and labels "
                   "out; decoded on the server by vivit_deploy's reader, run by NAME.")
@click.option("--max-video-bytes", default="64M", show_default=True,
              help="--video: the largest file a request may send (bytes, or with K, M, G); larger ones fail before decoding.")
@click.option("--max-pixels", default=None, type=click.IntRange(min=1),
              help="--video: refuse frames larger than this many pixels [default: 8192x8192].")
@click.option("--video-instances", default=2, show_default=True, type=click.IntRange(min=1),
              help="--video: python-backend instances that decode at once (a slow file holds up one of them).")
@friendly_errors
def triton_repo_command(source, repository, name, platform, kind, instances, max_queue_delay_us, preferred_batch,
                        ensemble, ort_tensorrt, python_backend, python_device, python_precision, video, max_video_bytes,
                        max_pixels, video_instances):
    """Write a Triton model repository for SOURCE: an engine (with its sidecar), an .onnx from vivit-export,
    or a checkpoint (exported to ONNX first).

    config.pbtxt comes from what the file knows (names, types, dims, batch range, labels) and is
    validated against Triton's own ModelConfig before anything is written. See docs/triton.md.
    """
    from vivit_deploy.serving.repository import write_repository

    context = click.get_current_context()
    given = [f"--{name.replace('_', '-')}" for name in ("max_video_bytes", "max_pixels", "video_instances")
             if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
    if given and not video:
        raise click.UsageError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} the video model: add --video")
    preferred = None
    if preferred_batch:
        from vivit_deploy.bench import parse_batch_sizes

        preferred = list(parse_batch_sizes(preferred_batch))
    report = write_repository(
        source, repository, name=name, platform=platform, kind=kind, instances=instances,
        max_queue_delay_us=max_queue_delay_us, preferred_batch=preferred, ensemble=ensemble, ort_tensorrt=ort_tensorrt,
        python_backend=python_backend, python_device=python_device, python_precision=python_precision,
        video=video, max_video_bytes=parse_bytes(max_video_bytes, "--max-video-bytes"), max_pixels=max_pixels,
        video_instances=video_instances, progress=Stopwatch(),
    )
    click.echo(report.format())
