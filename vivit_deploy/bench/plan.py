"""What a benchmark run measures: its settings, the backends it can run here, and the files they need.

Every check that can fail happens here, before the first timing, so a bad option or a missing library
is one clear error and never a half-finished run. Preparing the files (a checkpoint for a preset
geometry, the ONNX export, the TensorRT engine) is building and stays apart from measuring.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vivit_deploy.errors import BackendUnavailableError, ConfigError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchBackend:
    """One name `--backends` takes: which registered runtime runs it (``vivit_deploy.runtimes``), which knows what it
    loads, in which precisions, and whether it can run here."""

    name: str
    runtime: str  # the registered runtime backend
    attn_implementation: str | None = None  # PyTorch backends only
    peer: bool = False  # transformers' model: a reference to beat, not one of ours

    @property
    def runs(self):
        from vivit_deploy.runtimes import BACKENDS

        return BACKENDS[self.runtime]

    @property
    def artifact(self) -> str:
        """"checkpoint", "onnx" or "engine": the file it loads."""
        return self.runs.artifact

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions whose speed it measures."""
        return self.runs.timed_precisions or self.runs.precisions


BENCH_BACKENDS: dict[str, BenchBackend] = {
    b.name: b
    for b in (
        BenchBackend("torch-eager", "torch", attn_implementation="eager"),
        BenchBackend("torch-sdpa", "torch", attn_implementation="sdpa"),
        BenchBackend("onnxruntime", "onnxruntime"),
        BenchBackend("openvino", "openvino"),
        BenchBackend("tensorrt", "tensorrt"),
        BenchBackend("transformers-eager", "torch", attn_implementation="eager", peer=True),
        BenchBackend("transformers-sdpa", "torch", attn_implementation="sdpa", peer=True),
    )
}
DEFAULT_BACKENDS = ("torch-eager", "torch-sdpa", "onnxruntime", "openvino", "tensorrt")
PEERS = ("transformers-eager", "transformers-sdpa")
REFERENCE_BACKEND = "torch-sdpa"  # every ratio and every drift is taken against it
# What a run can measure; "int8-bf16" is OpenVINO running the int8 file with the rest in bf16. fp8 is
# TensorRT's alone here: ONNX Runtime's CPU runs an fp8 graph as Q/DQ around fp32 products (numerics for
# `compare`, no speed to measure).
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8-bf16", "fp8")


def variant_name(backend: str, precision: str, matrix: bool) -> str:
    """How a result is keyed: the backend alone in a one-precision run, ``backend@precision`` in a matrix."""
    return f"{backend}@{precision}" if matrix else backend


@dataclass(frozen=True)
class BenchSettings:
    """Everything `vivit-deploy bench` was asked for (validated on construction)."""

    source: str | None = None  # checkpoint directory or Hub id; None with config=None: the demo model
    config: str | None = None  # a preset name ("vivit-b-16x2") measured with random weights
    num_frames: int | None = None  # the preset's frames, or a checkpoint run at this many (positions resized)
    image_size: int | tuple[int, int] | None = None  # the same for the frame size
    backends: tuple[str, ...] | None = None  # None: DEFAULT_BACKENDS, those that can run here
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    device: str = "cpu"  # cpu, cuda, cuda:N, or auto (cuda when PyTorch sees a GPU)
    precision: str = "fp32"  # one precision, or several separated by commas: a backend x precision matrix
    warmup: int = 2
    iters: int = 10
    peers: bool = True  # add transformers' model (eager and sdpa) when transformers is installed
    stages: bool = True  # decode / preprocess / inference / end to end on the sample videos
    ceiling: bool = True  # measure a matrix-product ceiling in the same run
    seed: int = 0
    offline: bool = False
    onnx: Path | None = None  # measure this exported file instead of exporting one
    engine: Path | None = None  # measure this TensorRT engine instead of building one
    calibration: Path | None = None  # int8: videos (dir) or clips (.npz) to calibrate the export on
    merge_tokens: int | tuple[int, ...] | None = None  # token merging (ToMe, Model 1) in our backends; peers run unmerged

    def __post_init__(self) -> None:
        if self.source is not None and self.config is not None:
            raise ConfigError("give source= or config=, not both")
        from vivit_deploy.runtimes.base import resolve_device

        object.__setattr__(self, "device", resolve_device(self.device))  # checked; "auto" becomes cuda or cpu
        precisions = tuple(dict.fromkeys(p.strip() for p in self.precision.split(",") if p.strip()))
        unknown = [p for p in precisions if p not in PRECISIONS]
        if not precisions or unknown:
            raise ConfigError(f"precision= takes {', '.join(PRECISIONS)} (or several, comma-separated), got {self.precision!r}")
        object.__setattr__(self, "precision", ",".join(precisions))
        if len(precisions) > 1 and (self.onnx is not None or self.engine is not None):
            raise ConfigError("onnx= / engine= measure one file in one precision; give one precision=")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch_sizes= must be positive integers, got {list(self.batch_sizes)}")
        object.__setattr__(self, "batch_sizes", tuple(sorted(set(self.batch_sizes))))
        if self.warmup < 0 or self.iters < 1:
            raise ConfigError(f"warmup= must be >= 0 and iters= >= 1, got {self.warmup} and {self.iters}")
        if self.merge_tokens is not None:  # its length against the model's layers is checked when the model is known
            from vivit_deploy.model.modeling import token_merging_schedule

            if isinstance(self.merge_tokens, list):  # frozen: a schedule is kept as a tuple
                object.__setattr__(self, "merge_tokens", tuple(self.merge_tokens))
            token_merging_schedule(self.merge_tokens, len(self.merge_tokens) if isinstance(self.merge_tokens, tuple) else 1)
            if self.onnx is not None or self.engine is not None:
                raise ConfigError("merge_tokens= applies to the files the bench exports; a given onnx= / engine= is "
                                  "measured as it was exported (`vivit-export --merge-tokens`)")
        if self.backends is not None:
            object.__setattr__(self, "backends", tuple(dict.fromkeys(self.backends)))  # once each, in order
            unknown = [b for b in self.backends if b not in BENCH_BACKENDS]
            if unknown:
                raise ConfigError(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(BENCH_BACKENDS)}")
            if not self.backends:
                raise ConfigError("backends= is empty")

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(self.precision.split(","))

    @property
    def matrix(self) -> bool:
        """Several precisions: every backend runs in each it supports, results keyed backend@precision."""
        return len(self.precisions) > 1


def parse_list(text: str, what: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    if not items:
        raise ConfigError(f"{what} is empty")
    return items


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    out = []
    for part in parse_list(text, "batch_sizes="):
        if not part.isdigit() or int(part) < 1:
            raise ConfigError(f"batch_sizes= takes positive integers separated by commas, got {part!r} in {text!r}")
        out.append(int(part))
    return tuple(out)


def unavailable_reason(backend: BenchBackend, settings: BenchSettings, precision: str | None = None) -> str | None:
    """Why ``backend`` cannot run in ``precision`` (default: the run's) with these settings here, or None."""
    precision = precision or settings.precisions[0]
    if precision not in backend.precisions:
        return f"runs {'/'.join(backend.precisions)}, not {precision}"
    if backend.peer and importlib.util.find_spec("transformers") is None:
        return "transformers is not installed"
    return backend.runs.unavailable(settings.device, precision)


@dataclass(frozen=True)
class BackendChoice:
    run: tuple[str, ...]  # in the order they are measured
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it was left out
    variants: tuple[tuple[str, str], ...] = ()  # (backend, precision) pairs to measure, in order


def choose_backends(settings: BenchSettings) -> BackendChoice:
    """The backends to measure. An explicitly asked-for backend that cannot run is an error; a default
    one is left out with its reason, which the report prints."""
    if settings.cuda:
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError("device=cuda, but PyTorch sees no CUDA GPU here")
    explicit = settings.backends is not None
    wanted = list(settings.backends if explicit else DEFAULT_BACKENDS)
    if settings.peers:
        wanted += [p for p in PEERS if p not in wanted]
    run, skipped, variants = [], {}, []
    for name in wanted:
        reasons = {p: unavailable_reason(BENCH_BACKENDS[name], settings, p) for p in settings.precisions}
        runs_in = [p for p, reason in reasons.items() if reason is None]
        if runs_in:
            run.append(name)
            variants += [(name, p) for p in runs_in]
            if settings.matrix:
                skipped.update({f"{name}@{p}": why for p, why in reasons.items() if why})
        elif explicit and name in settings.backends:
            raise BackendUnavailableError(f"backend {name} cannot run here: {'; '.join(set(reasons.values()))}")
        else:
            supported = [why for p, why in reasons.items() if p in BENCH_BACKENDS[name].precisions]
            skipped[name] = "; ".join(dict.fromkeys(supported or reasons.values()))
    for given, kind in ((settings.onnx, "onnx"), (settings.engine, "engine")):
        if given is not None and not any(BENCH_BACKENDS[b].artifact == kind for b in run):
            why = "; ".join(f"{name} cannot run here: {reason}" for name, reason in skipped.items()
                            if name in BENCH_BACKENDS and BENCH_BACKENDS[name].artifact == kind)
            raise BackendUnavailableError(f"{given} is given, but {why or 'no backend that loads it is measured'}")
    if not run:
        raise BackendUnavailableError("no backend can run here: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return BackendChoice(tuple(run), skipped, tuple(variants))


@dataclass(frozen=True)
class Artifacts:
    checkpoint: Path  # a local directory in the Hugging Face layout (transformers loads it too)
    label: str  # what was measured, for the report
    onnx: dict[str, Path] = field(default_factory=dict)  # graph precision -> exported file
    engine: dict[str, Path] = field(default_factory=dict)  # engine precision -> TensorRT engine
    notes: tuple[str, ...] = ()  # how files were made, where the report must say so

    def target(self, backend: BenchBackend, precision: str) -> Path:
        if backend.artifact == "checkpoint":
            return self.checkpoint
        files = self.onnx if backend.artifact == "onnx" else self.engine
        key = backend.runs.file_precision(precision)
        if key not in files:
            raise ConfigError(f"no {key} {backend.artifact} file was prepared for {backend.name}")
        return files[key]


def prepare_artifacts(settings: BenchSettings, choice: BackendChoice, workdir: Path, progress: Progress) -> Artifacts:
    """The checkpoint (random weights for a preset), and the ONNX files and engines the variants need."""
    from vivit_deploy.model.hf_layout import resolve_source

    if settings.config is not None:
        checkpoint, label = _random_checkpoint(settings, workdir / "checkpoint", progress)
    else:
        from vivit_deploy.demo import demo_model_dir

        source = settings.source or str(demo_model_dir())
        checkpoint = resolve_source(source, local_files_only=settings.offline or None)
        label = "the demo model" if settings.source is None else source
        if settings.num_frames or settings.image_size:
            checkpoint, label = geometry_checkpoint(checkpoint, workdir / "geometry", settings.num_frames,
                                                    settings.image_size, label, progress)
    kinds = {BENCH_BACKENDS[name].artifact for name, _ in choice.variants}
    for given, kind in ((settings.onnx, "onnx"), (settings.engine, "engine")):
        if given is not None and kind not in kinds:
            raise ConfigError(f"{kind}= {given} is given but no backend that loads it is measured (see backends=)")
    given: dict[str, Path] = {}
    notes: list[str] = []
    if settings.engine is not None:
        from vivit_deploy.artifacts.engines import engine_metadata

        _check_given_file(settings.engine, engine_metadata(settings.engine)[1], checkpoint, settings)
        given[f"engine-{settings.precision}"] = settings.engine
    if settings.onnx is not None:
        from vivit_deploy.artifacts.metadata import read_onnx_metadata

        metadata = read_onnx_metadata(settings.onnx)
        _check_given_file(settings.onnx, metadata, checkpoint, settings)
        given[f"onnx-{metadata.precision}"] = settings.onnx

    @functools.cache
    def calibration() -> Path:
        path, note = _calibration(settings, checkpoint, workdir, progress)
        notes.append(note)
        return path

    from vivit_deploy.compare.matrix import export_files

    files = export_files(
        checkpoint, workdir,
        onnx={BENCH_BACKENDS[name].runs.file_precision(p) for name, p in choice.variants
              if BENCH_BACKENDS[name].artifact == "onnx"},
        engines={p for name, p in choice.variants if BENCH_BACKENDS[name].artifact == "engine"},
        calibration=calibration, max_batch=max(settings.batch_sizes), opt_batch=max(settings.batch_sizes),
        given=given, label=label, progress=progress, merge_tokens=settings.merge_tokens,
    )
    onnx = {key.split("-", 1)[1]: path for key, path in files.items() if key.startswith("onnx-")}
    engine = {key.split("-", 1)[1]: path for key, path in files.items() if key.startswith("engine-")}
    return Artifacts(Path(checkpoint), label, onnx, engine, tuple(notes))


def _calibration(settings: BenchSettings, checkpoint: Path, workdir: Path, progress: Progress) -> tuple[Path, str]:
    """What the int8 export is calibrated on: --calibration; for the demo model, synthetic clips of a seed no
    evaluation uses; otherwise random clips, said in the report (a speed figure; its drift is on random input)."""
    if settings.calibration is not None:
        return settings.calibration, f"int8 calibrated on {settings.calibration}"
    from vivit_deploy.model.checkpoint import load_config
    from vivit_deploy.accuracy.inputs import random_inputs
    from vivit_deploy.video.preprocessing import PreprocessorConfig, VideoPreprocessor, preprocessor_config_in

    config = load_config(checkpoint)
    path = workdir / "calibration.npz"
    if settings.source is None and settings.config is None:
        from vivit_deploy.compare.matrix import DEMO_CALIBRATION_CLIPS, write_demo_calibration

        preprocessor = VideoPreprocessor(preprocessor_config_in(checkpoint) or PreprocessorConfig.for_input_size(
            config.image_height, config.image_width))
        write_demo_calibration(config, preprocessor, path)
        return path, (f"int8 calibrated on {DEMO_CALIBRATION_CLIPS} synthetic clips of the demo task "
                      "(a seed no evaluation set uses)")
    progress("no --calibration: calibrating int8 on random clips (its speed is real; its drift is on random input)")
    random_inputs(config, 8, seed=settings.seed + 1).save(path)
    return path, ("int8 calibrated on 8 random clips (no --calibration was given): its speed is what int8 runs at, "
                  "its drift only says the graph computes; `vivit-deploy compare` measures accuracy")


def _check_given_file(path: Path, metadata, checkpoint: Path, settings: BenchSettings) -> None:
    """A file given with --onnx / --engine must be this checkpoint's model, in this run's precision,
    taking every batch size asked for: otherwise its timings and drift would be compared with the wrong thing."""
    from vivit_deploy.model.checkpoint import load_config

    config = load_config(checkpoint)
    if metadata.config.input_shape != config.input_shape or metadata.config.id2label != config.id2label:
        raise ConfigError(f"{path} is not a file of the measured model: it takes clips {metadata.config.input_shape} "
                          f"with {metadata.config.num_labels} labels, the model {config.input_shape} with {config.num_labels}")
    if metadata.precision != settings.precision:
        raise ConfigError(f"{path} is {metadata.precision}; run the bench with precision={metadata.precision}")
    if metadata.precision == "int8" and settings.calibration is not None:
        raise ConfigError(f"{path} is calibrated already; calibration= applies to the int8 export the bench makes")
    spec = metadata.input
    for batch in settings.batch_sizes:
        if batch < spec.min_batch or (spec.max_batch is not None and batch > spec.max_batch):
            raise ConfigError(f"{path} takes batch {spec.batch_range}, not {batch} (see batch_sizes=)")


def _random_checkpoint(settings: BenchSettings, directory: Path, progress: Progress) -> tuple[Path, str]:
    return random_checkpoint(settings.config, directory, num_frames=settings.num_frames, image_size=settings.image_size,
                             seed=settings.seed, progress=progress)


def geometry_checkpoint(checkpoint: Path, directory: Path, num_frames, image_size, label: str,
                        progress: Progress | None = None) -> tuple[Path, str]:
    """``checkpoint`` saved at another frame count or size (its positions resized once, the preprocessor following):
    every backend then measures the model a deployment at that geometry runs."""
    from vivit_deploy.model.checkpoint import load_model
    from vivit_deploy.video.preprocessing import VideoPreprocessor, preprocessor_config_in

    model = load_model(checkpoint, head="classification").at_geometry(num_frames, image_size)
    c = model.config
    label = f"{label} at {c.num_frames}x{c.image_height}x{c.image_width}"
    if progress is not None:
        progress(f"resizing the positions: {label} ...")
    preprocessor = preprocessor_config_in(checkpoint)
    model.save_pretrained(directory, preprocessor=None if preprocessor is None else VideoPreprocessor(
        preprocessor.at_size(c.image_height, c.image_width)))
    return directory, label


def random_checkpoint(name: str, directory: Path, *, num_frames: int | None = None, image_size=None, seed: int = 0,
                      progress: Progress | None = None, **config_overrides) -> tuple[Path, str]:
    """A checkpoint of preset ``name`` (with ``config_overrides``) with random weights (the real cost, nothing
    downloaded) and its label."""
    import torch

    from vivit_deploy.model.checkpoint import new_model
    from vivit_deploy.model.config import preset
    from vivit_deploy.video.preprocessing import PreprocessorConfig, VideoPreprocessor

    overrides = {k: v for k, v in (("num_frames", num_frames), ("image_size", image_size)) if v is not None}
    overrides.update(config_overrides)
    config = preset(name, **overrides)
    label = f"{name} geometry ({config.num_frames}x{config.image_height}x{config.image_width}), random weights"
    if progress is not None:
        progress(f"creating {label} ...")
    torch.manual_seed(seed)
    model = new_model(config)
    preprocessor = VideoPreprocessor(PreprocessorConfig.for_input_size(config.image_height, config.image_width))
    model.save_pretrained(directory, preprocessor=preprocessor)
    return directory, label
