"""`vivit-deploy triton-repo`: a Triton model repository for a deployable file, with a uint8-frames ensemble.

    REPO/<name>/config.pbtxt            the model: tensorrt_plan, onnxruntime_onnx, or our runtime in the
    REPO/<name>/1/model.plan|model.onnx   python backend (--platform python; ONNX Runtime or OpenVINO on a
    REPO/<name>/labels.txt                CPU-only server); labels for Triton's classification extension
    REPO/<name>_preprocess/...          python backend: uint8 frames (T, H, W, 3) -> pixel_values, through
                                        vivit_deploy's bit-exact shared preprocessor
    REPO/<name>_frames/config.pbtxt     ensemble: frames -> <name>_preprocess -> <name> -> logits
    REPO/<name>_video/...               (--video) python backend: an encoded file (TYPE_BYTES) -> the video's logits,
                                        read from memory by vivit_deploy's reader, preprocessed, and run by <name>
                                        through business-logic scripting

Clients of the ensemble send uint8 frames (4.8 MB for a 32-frame 224x224 clip instead of 19 MB of
float32), and preprocessing stays identical to every other path. Every config is built from the file's
metadata (or the engine's sidecar), parsed into Triton's ``ModelConfig`` and cross-checked against the
file before anything is written; the repository appears whole or not at all.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vivit_deploy.artifacts.engines import describe_build, edition
from vivit_deploy.errors import ConfigError
from vivit_deploy.files import publish
from vivit_deploy.artifacts.metadata import DeployMetadata
from vivit_deploy.runtimes.triton_runtime import (DAMAGED_OUTPUT, FRAMES_INPUT, READ_NOTES_OUTPUT, VIDEO_INPUT,
                                                 VIDEO_OPTIONS)
from vivit_deploy.serving.model_config import (
    ModelConfigSpec, ServingConfigError, TensorSpec, check_against_metadata, check_video_model, parse_config,
)

PLATFORMS = ("tensorrt", "onnxruntime", "python")
# Triton releases since mid-2025 refuse HTTP bodies over 64 MiB unless started with --http-max-input-size (2.51 has no
# such limit): the video model's default, so that its own limit is the one a client meets
DEFAULT_MAX_VIDEO_BYTES = 64 << 20
DEFAULT_VIDEO_INSTANCES = 2  # so that one slow file does not hold up every other request
MAX_CLIPS = 16  # clips one request may ask of a video (each is a model input: a bound on the work one request makes)
_TRITON_DTYPES = {"INT32": "int32", "BYTES": "bytes", "BOOL": "bool"}
KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
Progress = Callable[[str], None]


@dataclass
class RepositoryReport:
    repository: Path
    models: dict[str, str]  # name -> what it is
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"{self.repository}: Triton model repository"]
        lines += [f"  {name}: {what}" for name, what in self.models.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Source:
    ARTIFACTS = ("onnx", "engine", "checkpoint")  # what a repository serves: the artifact kinds of vivit_deploy's runtimes

    path: Path
    kind: str  # one of ARTIFACTS
    metadata: DeployMetadata
    sidecar: dict | None = None


def write_repository(
    source: str | os.PathLike,
    repository: str | os.PathLike,
    *,
    name: str = "vivit",
    platform: str | None = None,
    kind: str | None = None,
    instances: int = 1,
    max_queue_delay_us: int = 100,
    preferred_batch: list[int] | None = None,
    ensemble: bool = True,
    ort_tensorrt: bool = False,
    python_backend: str | None = None,
    python_device: str | None = None,
    python_precision: str | None = None,
    video: bool = False,
    max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES,
    max_pixels: int | None = None,
    video_instances: int = DEFAULT_VIDEO_INSTANCES,
    progress: Progress | None = None,
) -> RepositoryReport:
    """Write the repository for ``source`` (.engine with its sidecar, .onnx from vivit-export, or a checkpoint,
    exported first). Nothing is written unless every config parses and matches its file.

    ``video``: also a video model, ``<name>_video``, that takes an encoded file (one ``TYPE_BYTES`` element, at most
    ``max_video_bytes``, frames of at most ``max_pixels``) and answers the video's logits, in ``video_instances``
    python-backend instances."""
    from vivit_deploy.video.opening import DEFAULT_MAX_PIXELS, ReadOptions

    progress = progress or (lambda message: None)
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    ReadOptions(max_pixels=max_pixels)  # the reader's own check of the limit
    if isinstance(max_video_bytes, bool) or not isinstance(max_video_bytes, int) or max_video_bytes < 1:
        raise ConfigError(f"max_video_bytes= must be a positive whole number of bytes, got {max_video_bytes!r}")
    if video_instances < 1:
        raise ConfigError(f"video_instances= must be at least 1, got {video_instances}")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"name= must be letters, digits, '-' and '_', got {name!r}")
    if instances < 1 or max_queue_delay_us < 0:
        raise ConfigError(f"instances= must be >= 1 and max_queue_delay_us= >= 0, got {instances}, {max_queue_delay_us}")
    repository = Path(repository)
    if repository.exists() and not repository.is_dir():
        raise ConfigError(f"{repository} exists and is not a directory")
    names = [name] + ([f"{name}_preprocess", f"{name}_frames"] if ensemble else []) + ([f"{name}_video"] if video else [])
    taken = [n for n in names if (repository / n).exists()]
    if taken:
        raise ConfigError(f"{repository} already has model(s) {', '.join(taken)}; remove them or choose another name=")

    with tempfile.TemporaryDirectory(prefix="vivit-triton-") as work:
        work = Path(work)
        from vivit_deploy.runtimes import BACKENDS

        serves_checkpoint = python_backend in BACKENDS and BACKENDS[python_backend].artifact == "checkpoint"
        src = _read_source(Path(source), work, progress, keep_checkpoint=platform == "python" and serves_checkpoint)
        platform = platform or ("tensorrt" if src.kind == "engine" else "onnxruntime")
        if platform not in PLATFORMS:
            raise ConfigError(f"platform= must be one of {', '.join(PLATFORMS)}, got {platform!r}")
        if platform == "tensorrt" and src.kind != "engine":
            raise ConfigError("platform=tensorrt serves a TensorRT engine: build one with `vivit-deploy build-engine`")
        built_by = edition(src.sidecar["edition"]) if src.sidecar is not None else None
        if platform == "tensorrt" and not built_by.triton_backend:
            raise ConfigError(f"{src.path} is a {built_by.title} engine, which Triton's tensorrt_plan backend cannot load "
                              "(it runs TensorRT 10/11 engines): serve it with platform=python, vivit_deploy's "
                              f"{built_by.title} runtime inside Triton's python backend, on a GPU the engine targets")
        if platform == "onnxruntime" and src.kind != "onnx":
            raise ConfigError("platform=onnxruntime serves an .onnx file; an engine is served with platform=tensorrt")
        python_device = python_device or ("cuda" if src.kind == "engine" else "cpu")
        if platform == "python" and src.kind == "engine" and python_device == "cpu":
            raise ConfigError("an engine runs on a GPU: python_device=cuda")
        kind = kind or ("cpu" if platform == "python" and python_device == "cpu" else "gpu")
        if kind not in KINDS:
            raise ConfigError(f"kind= must be gpu or cpu, got {kind!r}")
        if platform == "tensorrt" and kind != "gpu":
            raise ConfigError("a TensorRT engine runs on a GPU: kind=gpu")
        if ort_tensorrt and (platform != "onnxruntime" or kind != "gpu"):
            raise ConfigError("ort_tensorrt= is ONNX Runtime's TensorRT accelerator: platform=onnxruntime kind=gpu")

        spec = src.metadata.input
        max_batch = spec.max_batch
        if max_batch is None or spec.min_batch > 1:
            raise ConfigError(f"{src.path} takes batches {spec.batch_range}; Triton needs 1..N (re-export with a dynamic batch)")
        preferred = sorted(set(preferred_batch or _default_preferred(src)))
        notes: list[str] = []
        stage = work / "repository"
        model_dir = stage / name
        (model_dir / "1").mkdir(parents=True)
        labels = "\n".join(src.metadata.config.id2label.get(i, f"LABEL_{i}") for i in range(src.metadata.config.num_labels))
        (model_dir / "labels.txt").write_text(labels + "\n", encoding="utf-8")
        from vivit_deploy.files import sha256_of

        props = src.metadata.to_props()  # the file's metadata, which every model of the repository carries
        parameters = dict(props)
        weights = sorted(src.path.iterdir()) if src.path.is_dir() else [src.path]
        parameters["vivit_deploy.model_sha256"] = sha256_of(*weights)  # the model's identity for resumed corpus jobs
        if ensemble:
            parameters["vivit_deploy.frames_model"] = f"{name}_frames"
        if video:
            parameters["vivit_deploy.video_model"] = f"{name}_video"
        comments = [f"written by vivit-deploy triton-repo from {src.path.name}"]
        model_file = {"onnx": "model.onnx", "engine": "model.plan", "checkpoint": "checkpoint"}[src.kind]
        if platform == "python":
            from vivit_deploy.runtimes import expected_precision

            runs = {name: cls.artifact for name, cls in BACKENDS.items() if cls.artifact in _Source.ARTIFACTS}
            backend = python_backend or next(name for name, kind in runs.items() if kind == src.kind)
            if backend not in runs:
                raise ConfigError(f"python_backend= must be one of {', '.join(runs)}, got {backend!r}")
            if runs[backend] != src.kind:
                raise ConfigError(f"python_backend={backend} runs a{'n' if runs[backend][0] in 'eo' else ''} "
                                  f"{runs[backend]}, not a{'n' if src.kind[0] in 'eo' else ''} {src.kind}")

            model_file = src.path.name
            parameters.update({"vivit_deploy.runtime.file": model_file, "vivit_deploy.runtime.backend": backend,
                               "vivit_deploy.runtime.device": python_device,
                               "vivit_deploy.runtime.precision": python_precision or "",
                               "vivit_deploy.served_precision": expected_precision(backend, src.metadata.precision,
                                                                                 python_precision)})
            (model_dir / "1" / "model.py").write_text(_shim("ClassifierModel"), encoding="utf-8")
            if src.sidecar is not None:
                from vivit_deploy.artifacts.engines import sidecar_path

                shutil.copy2(sidecar_path(src.path), model_dir / "1" / sidecar_path(Path(model_file)).name)
        elif src.kind == "checkpoint":
            raise ConfigError("a checkpoint is served by platform=python python_backend=torch (or export it first)")
        if src.sidecar is not None and built_by.triton_backend and platform == "tensorrt":
            version = src.sidecar["tensorrt"]
            gpu = (src.sidecar.get("gpu") or {}).get("name", "its GPU")
            comments.append(f"TensorRT {version} built this engine for {gpu}: serve it with a Triton container that "
                            f"ships TensorRT {version}")
            notes.append(f"the engine runs only on TensorRT {version} (and its GPU): pick the Triton container release "
                         "whose TensorRT is that version (Triton's release notes list it per container)")
        elif src.sidecar is not None:
            comments.append(f"built by {describe_build(src.sidecar)}; vivit_deploy's runtime runs it in the "
                            f"python backend, which needs {built_by.module} {src.sidecar['tensorrt']} in its Python")
            notes.append(f"the python backend's Python needs {built_by.module} {src.sidecar['tensorrt']} and a GPU of "
                         f"compute capability {', '.join(src.sidecar.get('targets') or ['?'])}")
        if src.kind == "checkpoint":
            shutil.copytree(src.path, model_dir / "1" / model_file)
        else:
            shutil.copy2(src.path, model_dir / "1" / model_file)

        main = ModelConfigSpec(
            name=name, platform={"tensorrt": "tensorrt_plan", "onnxruntime": "onnxruntime_onnx"}.get(platform),
            backend="python" if platform == "python" else None, max_batch_size=max_batch,
            inputs=[TensorSpec(spec.name, "float32", list(spec.frame_shape))],
            outputs=[TensorSpec(src.metadata.output_name, "float32", [src.metadata.config.num_labels], "labels.txt")],
            kind=KINDS[kind], instances=instances, preferred_batch_sizes=preferred, max_queue_delay_us=max_queue_delay_us,
            parameters=parameters, comments=comments,
            ort_tensorrt=_ort_tensorrt(src) if ort_tensorrt else None,
        )
        configs = {name: (main, src.metadata)}
        served = parameters.get("vivit_deploy.served_precision") or src.metadata.precision
        models = {name: f"{platform} ({src.kind}, {served}, batch 1..{max_batch}, {kind})"}
        if ensemble:
            frames = [src.metadata.config.num_frames, -1, -1, 3]
            pre_dir = stage / f"{name}_preprocess"
            (pre_dir / "1").mkdir(parents=True)
            (pre_dir / "1" / "model.py").write_text(_shim("PreprocessModel"), encoding="utf-8")
            configs[f"{name}_preprocess"] = (ModelConfigSpec(
                name=f"{name}_preprocess", platform=None, backend="python", max_batch_size=max_batch,
                inputs=[TensorSpec(FRAMES_INPUT, "uint8", frames)],
                outputs=[TensorSpec(spec.name, "float32", list(spec.frame_shape))],
                kind="KIND_CPU", instances=instances, max_queue_delay_us=max_queue_delay_us,
                parameters=dict(props),
                comments=["uint8 RGB frames -> the model's input, with vivit_deploy's shared preprocessor"],
            ), None)
            ens_dir = stage / f"{name}_frames"
            (ens_dir / "1").mkdir(parents=True)
            (ens_dir / "labels.txt").write_text(labels + "\n", encoding="utf-8")
            configs[f"{name}_frames"] = (ModelConfigSpec(
                name=f"{name}_frames", platform="ensemble", backend=None, max_batch_size=max_batch,
                inputs=[TensorSpec(FRAMES_INPUT, "uint8", frames)],
                outputs=[TensorSpec(src.metadata.output_name, "float32", [src.metadata.config.num_labels], "labels.txt")],
                ensemble_steps=[
                    {"model": f"{name}_preprocess", "inputs": {FRAMES_INPUT: FRAMES_INPUT}, "outputs": {spec.name: "pixel_values"}},
                    {"model": name, "inputs": {spec.name: "pixel_values"},
                     "outputs": {src.metadata.output_name: src.metadata.output_name}},
                ],
                parameters=dict(props),
                comments=[f"uint8 frames ({src.metadata.config.num_frames}, H, W, 3) -> {name}_preprocess -> {name} -> logits"],
            ), None)
            models[f"{name}_preprocess"] = "python backend: uint8 frames -> pixel_values (vivit_deploy's preprocessor)"
            models[f"{name}_frames"] = f"ensemble: frames -> {name}_preprocess -> {name}"
        if video:
            configs[f"{name}_video"] = (_video_model(stage, name, src, labels, props, max_batch, max_video_bytes,
                                                     max_pixels, video_instances), None)
            models[f"{name}_video"] = (f"python backend: an encoded video file (TYPE_BYTES, up to {max_video_bytes:,} "
                                       f"bytes) -> the video's logits through {name}; {video_instances} instances")
            if max_video_bytes > DEFAULT_MAX_VIDEO_BYTES:
                notes.append(f"files over 64 MiB: Triton releases since mid-2025 refuse larger HTTP bodies unless started "
                             f"with --http-max-input-size={max_video_bytes}")
        if ensemble or video or platform == "python":
            notes.append(f"the python models need vivit_deploy (and numpy, numba, PyAV; {python_backend or 'the runtime'}"
                         " for --platform python) in the Python of Triton's python backend")

        for model_name, (config_spec, metadata) in configs.items():
            text = config_spec.text()
            where = f"{model_name}/config.pbtxt"
            parsed = parse_config(text, where)
            if metadata is not None:
                check_against_metadata(parsed, metadata, where, batch_max=max_batch)
            _check_ensemble(parsed, configs, where)
            if model_name == f"{name}_video":
                check_video_model(parsed, {n: spec for n, (spec, _) in configs.items()}, where)
            (stage / model_name / "config.pbtxt").write_text(text, encoding="utf-8")

        # every model is whole and checked: copy them beside their places (one file system), then move them in at once,
        # the model first and the ensemble that calls it last; a failure leaves the repository as it was
        repository.mkdir(parents=True, exist_ok=True)
        beside = Path(tempfile.mkdtemp(prefix=".vivit-triton-", dir=repository))
        try:
            for model_name in configs:
                shutil.copytree(stage / model_name, beside / model_name)
            publish([(beside / model_name, repository / model_name) for model_name in configs])
        finally:
            shutil.rmtree(beside, ignore_errors=True)
    return RepositoryReport(repository, models, notes)


def _read_source(path: Path, work: Path, progress: Progress, keep_checkpoint: bool = False) -> _Source:
    suffix = path.suffix.lower()
    if suffix in (".engine", ".plan"):
        from vivit_deploy.artifacts.engines import engine_metadata

        sidecar, metadata = engine_metadata(path)
        return _Source(path, "engine", metadata, sidecar)
    if suffix == ".onnx":
        from vivit_deploy.artifacts.metadata import read_onnx_metadata

        return _Source(path, "onnx", read_onnx_metadata(path))
    if keep_checkpoint:  # served by PyTorch inside Triton's python backend: no export
        from vivit_deploy.model.checkpoint import load_config
        from vivit_deploy.model.hf_layout import resolve_source
        from vivit_deploy.model.io_spec import DEFAULT_MAX_BATCH, OUTPUT_NAME, input_spec
        from vivit_deploy.video.preprocessing import PreprocessorConfig, preprocessor_config_in

        directory = resolve_source(path)
        config = load_config(directory)
        preprocessor = preprocessor_config_in(directory) or PreprocessorConfig.for_input_size(
            config.image_height, config.image_width)
        metadata = DeployMetadata(config, preprocessor, input_spec(config, 1, DEFAULT_MAX_BATCH), "fp32", OUTPUT_NAME,
                                  {"source": str(path)})
        return _Source(Path(directory), "checkpoint", metadata)
    from vivit_deploy.export import export_onnx

    exported = work / "model.onnx"
    progress(f"exporting {path} to ONNX first ...")
    export_onnx(path, exported, progress=progress)
    from vivit_deploy.artifacts.metadata import read_onnx_metadata

    return _Source(exported, "onnx", read_onnx_metadata(exported))


def _default_preferred(src: _Source) -> list[int]:
    """The engine's opt batch, where TensorRT tuned it; none for ONNX (Triton then batches what is queued)."""
    if src.sidecar is not None:
        return [int(src.sidecar["profile"]["opt"])]
    return []


def _ort_tensorrt(src: _Source) -> dict[str, str]:
    return {"precision_mode": "FP16" if src.metadata.precision == "fp16" else "FP32",
            "max_workspace_size_bytes": str(4 << 30), "trt_engine_cache_enable": "true"}


def _shim(cls: str) -> str:
    from vivit_deploy import __version__

    return f'''"""Triton python backend model, written by `vivit-deploy triton-repo` (vivit_deploy {__version__}).

The code lives in vivit_deploy.serving.python_backend: vivit_deploy (with numpy, numba, Pillow and the
model's runtime library) must be importable by the Python of Triton's python backend stub.
"""

import os
import sys

# The stub runs Python isolated, so PYTHONPATH is not applied: apply it here, so that vivit_deploy and
# its dependencies can live in an environment of their own (tritonserver started with PYTHONPATH=...).
for _entry in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    if _entry and _entry not in sys.path:
        sys.path.insert(0, _entry)

from vivit_deploy.serving.python_backend import {cls} as TritonPythonModel  # noqa: E402,F401
'''


def _check_ensemble(parsed, configs: dict, where: str) -> None:
    """Every step of an ensemble names a model of this repository and one of its tensors."""
    for step in parsed.ensemble_scheduling.step:
        if step.model_name not in configs:
            raise ServingConfigError(f"{where}: step model {step.model_name!r} is not in the repository")
        step_spec = configs[step.model_name][0]
        known = {t.name for t in step_spec.inputs} | {t.name for t in step_spec.outputs}
        for key in list(step.input_map) + list(step.output_map):
            if key not in known:
                raise ServingConfigError(f"{where}: {step.model_name} has no tensor {key!r}")


def _video_model(stage: Path, name: str, src: _Source, labels: str, props: dict[str, str], max_batch: int,
                 max_video_bytes: int, max_pixels: int, instances: int) -> ModelConfigSpec:
    """``<name>_video``: its directory (the python model, labels) and its config: one file per request (no batch axis:
    the model step batches the clips of every request), optional settings, the logits with the labels."""
    video_dir = stage / f"{name}_video"
    (video_dir / "1").mkdir(parents=True)
    (video_dir / "1" / "model.py").write_text(_shim("VideoModel"), encoding="utf-8")
    (video_dir / "labels.txt").write_text(labels + "\n", encoding="utf-8")
    parameters = dict(props)
    parameters.update({"vivit_deploy.video.model_step": name, "vivit_deploy.video.max_bytes": str(max_video_bytes),
                       "vivit_deploy.video.max_pixels": str(max_pixels), "vivit_deploy.video.max_clips": str(MAX_CLIPS),
                       "vivit_deploy.video.threads": "0"})
    options = [TensorSpec(option, _TRITON_DTYPES[kind], [1], optional=True) for option, kind in VIDEO_OPTIONS.items()]
    return ModelConfigSpec(
        name=f"{name}_video", platform=None, backend="python", max_batch_size=0,
        inputs=[TensorSpec(VIDEO_INPUT, "bytes", [1])] + options,
        outputs=[TensorSpec(src.metadata.output_name, "float32", [src.metadata.config.num_labels], "labels.txt"),
                 TensorSpec(DAMAGED_OUTPUT, "int32", [1]), TensorSpec(READ_NOTES_OUTPUT, "bytes", [1])],
        kind="KIND_CPU", instances=instances, dynamic_batching=False, parameters=parameters,
        comments=[f"an encoded video file -> vivit_deploy's reader (from memory) and preprocessor -> {name} (up to "
                  f"{max_batch} clips a call) -> the mean logits of its clips; damaged_frames (replaced) and read_notes (in words)"],
    )
