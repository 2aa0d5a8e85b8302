"""Triton's ``config.pbtxt`` for our models: written from what a file knows, validated before it is written.

A ``config.pbtxt`` is Triton's ``ModelConfig`` protobuf in text form. Every config here is built from a
file's own metadata (an ONNX file's ``metadata_props``, an engine's sidecar), never typed by hand, and
is then parsed into the real ``ModelConfig`` message (tritonclient ships its generated module; only
protobuf is needed to load it) and cross-checked against the file: names, types, dims without the
batch axis, the batch range. An unknown field, a type Triton does not have, or a disagreement with the
file is a :class:`ServingConfigError`, and nothing is written.

The model's own metadata also travels in the config, as ``parameters`` with the keys an ONNX file uses
(``vivit_deploy.config``, ``vivit_deploy.preprocessor``, ...): a client reads labels and preprocessing
from the server's model configuration, the way a runtime reads them from a file.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vivit_deploy.errors import BackendUnavailableError, VivitDeployError
from vivit_deploy.artifacts.metadata import DeployMetadata

# numpy dtype name -> Triton data type (the ones our tensors use)
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8",
                "int32": "TYPE_INT32", "bool": "TYPE_BOOL", "bytes": "TYPE_STRING"}


class ServingConfigError(VivitDeployError, ValueError):
    """A Triton model configuration that Triton would reject, or that does not match its model file."""


def import_model_config_pb2():
    """tritonclient's generated ``model_config_pb2``, loaded from its file: needs protobuf, not grpcio."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError("Triton support needs tritonclient: pip install 'vivit-deploy[triton]'")
    return _load_pb2(str(Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"))


@functools.lru_cache(maxsize=1)
def _load_pb2(path: str):
    loader = importlib.util.spec_from_file_location("vivit_deploy_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


@dataclass
class TensorSpec:
    name: str
    dtype: str  # numpy name
    dims: list[int]  # without the batch axis; -1 for any size
    label_filename: str | None = None
    optional: bool = False  # an input a request may leave out

    def pbtxt(self) -> str:
        label = f' label_filename: "{self.label_filename}"' if self.label_filename else ""
        optional = " optional: true" if self.optional else ""
        return (f'{{ name: "{self.name}" data_type: {TRITON_TYPES[self.dtype]} dims: [ {", ".join(map(str, self.dims))} ]'
                f'{label}{optional} }}')


@dataclass
class ModelConfigSpec:
    """One model of a repository, in our terms; ``text()`` renders the config.pbtxt."""

    name: str
    platform: str | None  # "onnxruntime_onnx", "tensorrt_plan", "ensemble"; None for a backend
    backend: str | None  # "python"
    max_batch_size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    kind: str = "KIND_CPU"  # instance_group kind
    instances: int = 1
    dynamic_batching: bool = True
    preferred_batch_sizes: list[int] = field(default_factory=list)
    max_queue_delay_us: int = 0
    parameters: dict[str, str] = field(default_factory=dict)
    ort_tensorrt: dict[str, str] | None = None  # ONNX Runtime's TensorRT accelerator parameters, GPU only
    ensemble_steps: list[dict[str, Any]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"# {c}" for c in self.comments]
        lines.append(f'name: "{self.name}"')
        lines.append(f'platform: "{self.platform}"' if self.platform else f'backend: "{self.backend}"')
        lines.append(f"max_batch_size: {self.max_batch_size}")
        lines.append("input [\n  " + ",\n  ".join(t.pbtxt() for t in self.inputs) + "\n]")
        lines.append("output [\n  " + ",\n  ".join(t.pbtxt() for t in self.outputs) + "\n]")
        if self.platform != "ensemble":
            lines.append(f"instance_group [ {{ kind: {self.kind} count: {self.instances} }} ]")
            if self.dynamic_batching:
                preferred = f" preferred_batch_size: [ {', '.join(map(str, self.preferred_batch_sizes))} ]" if self.preferred_batch_sizes else ""
                lines.append(f"dynamic_batching {{{preferred} max_queue_delay_microseconds: {self.max_queue_delay_us} }}")
        if self.ort_tensorrt is not None:
            params = " ".join(f'parameters {{ key: "{k}" value: "{v}" }}' for k, v in self.ort_tensorrt.items())
            lines.append("optimization { execution_accelerators { gpu_execution_accelerator: [ "
                         f'{{ name: "tensorrt" {params} }} ] }} }}')
        if self.ensemble_steps:
            steps = []
            for step in self.ensemble_steps:
                maps = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in step["inputs"].items())
                maps += " " + " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in step["outputs"].items())
                steps.append(f'{{ model_name: "{step["model"]}" model_version: -1 {maps} }}')
            lines.append("ensemble_scheduling { step [\n  " + ",\n  ".join(steps) + "\n] }")
        for key, value in self.parameters.items():
            lines.append(f"parameters {{ key: {json.dumps(key)} value: {{ string_value: {json.dumps(value)} }} }}")
        return "\n".join(lines) + "\n"


def parse_config(text: str, where: str):
    """Parse config.pbtxt text into Triton's ``ModelConfig``; an unknown field or bad value is a one-line error."""
    from google.protobuf import text_format

    pb2 = import_model_config_pb2()
    try:
        return text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ServingConfigError(f"{where}: Triton's ModelConfig rejects it: {exc}") from exc


def check_against_metadata(config, metadata: DeployMetadata, where: str, *, batch_max: int) -> None:
    """The parsed config of a model serving ``pixel_values -> logits`` must describe the file it serves."""
    pb2 = import_model_config_pb2()
    problems = []
    spec = metadata.input
    if config.max_batch_size != batch_max:
        problems.append(f"max_batch_size {config.max_batch_size}, the model takes batches up to {batch_max}")
    if spec.min_batch > 1:
        problems.append(f"the model needs batches of at least {spec.min_batch}; Triton sends any size from 1")
    inputs = {i.name: i for i in config.input}
    outputs = {o.name: o for o in config.output}
    if set(inputs) != {spec.name}:
        problems.append(f"inputs {sorted(inputs)}, the model has {spec.name!r}")
    else:
        tensor = inputs[spec.name]
        if list(tensor.dims) != list(spec.frame_shape):
            problems.append(f"input dims {list(tensor.dims)}, the model takes {list(spec.frame_shape)} after the batch axis")
        if tensor.data_type != pb2.TYPE_FP32:
            problems.append(f"input type {pb2.DataType.Name(tensor.data_type)}, the model takes TYPE_FP32")
    if set(outputs) != {metadata.output_name}:
        problems.append(f"outputs {sorted(outputs)}, the model has {metadata.output_name!r}")
    else:
        tensor = outputs[metadata.output_name]
        if list(tensor.dims) != [metadata.config.num_labels]:
            problems.append(f"output dims {list(tensor.dims)}, the model has {metadata.config.num_labels} labels")
        if tensor.data_type != pb2.TYPE_FP32:
            problems.append(f"output type {pb2.DataType.Name(tensor.data_type)}, the model writes TYPE_FP32")
    preferred = list(config.dynamic_batching.preferred_batch_size)
    if any(size < 1 or size > config.max_batch_size for size in preferred):
        problems.append(f"preferred batch sizes {preferred} outside 1..{config.max_batch_size}")
    if problems:
        raise ServingConfigError(f"{where} does not match its model file: " + "; ".join(problems))


def check_video_model(config, steps: dict[str, Any], where: str) -> None:
    """A video model (``triton-repo --video``) takes one encoded file (TYPE_STRING, dims [1], no batch axis) and calls a
    model step of the same repository that takes its ``vivit_deploy.input`` and writes its ``vivit_deploy.output_name``
    (``steps``: model name -> its ``ModelConfigSpec``): one a server would load and that would fail every request
    otherwise is refused here."""
    from vivit_deploy.runtimes.triton_runtime import VIDEO_INPUT

    pb2 = import_model_config_pb2()
    parameters = {p: config.parameters[p].string_value for p in config.parameters}
    step = parameters.get("vivit_deploy.video.model_step")
    problems = []
    video = next((i for i in config.input if i.name == VIDEO_INPUT), None)
    if video is None or video.data_type != pb2.TYPE_STRING or list(video.dims) != [1]:
        problems.append(f"its input {VIDEO_INPUT!r} must be TYPE_STRING with dims [1] (one encoded file)")
    if config.max_batch_size != 0:
        problems.append("max_batch_size must be 0 (a request is one file; the model step batches clips)")
    if not step:
        problems.append("no vivit_deploy.video.model_step parameter names the model it calls")
    elif step not in steps:
        problems.append(f"its model step {step!r} is not a model of the repository")
    else:
        spec = steps[step]
        wanted_in = json.loads(parameters.get("vivit_deploy.input", "{}")).get("name")
        wanted_out = parameters.get("vivit_deploy.output_name", "logits")
        if wanted_in not in {t.name for t in spec.inputs} or wanted_out not in {t.name for t in spec.outputs}:
            problems.append(f"its model step {step!r} does not take {wanted_in!r} and write {wanted_out!r}")
    for key in ("vivit_deploy.video.max_bytes", "vivit_deploy.video.max_pixels"):
        if not parameters.get(key, "").isdigit() or int(parameters[key]) < 1:
            problems.append(f"{key} must be a positive whole number, got {parameters.get(key)!r}")
    if problems:
        raise ServingConfigError(f"{where}: not a video model Triton can serve: " + "; ".join(problems))
