"""PyTorch checkpoint -> validated ONNX file.

Exporter settings (ViViT-B/16x2, ONNX Runtime 1.31 CPU, 2 cores, 2026-11-24). The exporter and fp16
comparisons below were one-off checks with throwaway scripts, not kept; ``python
scripts/bench_onnx_cpu.py`` measures the chosen graph against PyTorch.

- ``torch.onnx.export(dynamo=True)`` on our *eager* attention path. Our eager path scales Q before
  Q @ K^T, so the graph holds MatMul -> Softmax -> MatMul with Q pre-scaled, the pattern TensorRT
  fuses; exporting SDPA instead leaves the safe-softmax IsNaN/Where residue between the MatMuls (and
  ran 0.88x torch on ORT CPU in FIELD-NOTES). With eager attention the legacy TorchScript graph was no
  faster on ORT CPU; the dynamo graph is the clean one (a single Shape op instead of Shape/Gather/
  Unsqueeze chains per reshape, no Cast/Equal/Where), exports several times faster, and is the exporter
  torch keeps (the TorchScript one is deprecated).
- opset 18 (the dynamo exporter's native opset; LayerNormalization is a single op from 17 on).
- weights inline (``external_data=False``): one file, which the 2 GB protobuf limit allows for ViViT-B.
- fp16: the half-precision model is exported inside a wrapper that casts the float32 input to fp16 and
  the logits back, so the file is an fp16 graph with float32 I/O (what TensorRT 11's strongly typed
  networks need). On the demo model and a 4-frame ViViT-B it matched onnxconverter-common's
  ``convert_float_to_float16(keep_io_types=True)`` in accuracy (top-1 identical, max logit drift of
  the same order) with far fewer Cast nodes, and needs no extra package. ``vivit-deploy compare``
  reports the fp16 graph's drift (README).

Every export is checked (``onnx.checker`` full check, graph hygiene) and validated (ONNX Runtime at two
batch sizes against PyTorch fp32) before the file appears at its path; a failure leaves nothing there.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vivit_deploy.files import atomic_write
from vivit_deploy.errors import ConfigError, ExportError
from vivit_deploy.export.graph_checks import Finding, GraphSummary, check_graph, summarize
from vivit_deploy.export.graph_scopes import name_probe_points
from vivit_deploy.io_spec import BATCH_AXIS, DEFAULT_MAX_BATCH, INPUT_NAME, OUTPUT_NAME, input_spec
from vivit_deploy.metadata import PRECISIONS, QUANTIZED_PRECISIONS, DeployMetadata
from vivit_deploy.preprocessing import PreprocessorConfig, preprocessor_config_in
from vivit_deploy.probes import probe_points
from vivit_deploy.accuracy.tolerances import tolerance_for

DEFAULT_OPSET = 18
FP8_MIN_OPSET = 19  # QuantizeLinear / DequantizeLinear take float8 from opset 19
OPSETS = range(18, 24)  # what the dynamo exporter writes natively (it refuses to convert below 18)
MAX_FILE_BYTES = 2 * 1024**3  # protobuf's limit for a single-file model
TUBELET_EMBEDDINGS = ("matmul", "conv")  # how the tubelet projection is written (see the module docstring)
DEFAULT_TUBELET = "matmul"
FOLD_LIMIT = 1 << 26  # elements: larger than any ViViT weight

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ValidationRow:
    batch: int
    max_abs: float
    max_rel: float
    min_cosine: float
    passed: bool


@dataclass
class ExportReport:
    path: Path
    precision: str
    opset: int
    batch_range: str
    size_bytes: int
    summary: GraphSummary
    findings: list[Finding]
    validation: list[ValidationRow] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(f.level != "blocker" for f in self.findings) and all(r.passed for r in self.validation)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        out["passed"] = self.passed
        return out

    def format(self) -> str:
        s = self.summary
        ops = ", ".join(f"{k} {v}" for k, v in list(s.op_counts.items())[:8])
        lines = [
            f"{self.path}: {self.size_bytes / 1e6:.1f} MB, {self.precision}, opset {self.opset}, IR {s.ir_version}, "
            f"batch {self.batch_range}",
            f"  nodes: {sum(s.op_counts.values())} ({ops}, ...)",
        ]
        lines += [f.format() for f in self.findings]
        for r in self.validation:
            mark = "ok  " if r.passed else "FAIL"
            lines.append(
                f"  [{mark}] onnxruntime vs pytorch fp32, batch {r.batch}: max abs {r.max_abs:.2e}, "
                f"max rel {r.max_rel:.2e}, min cosine {r.min_cosine:.6f}"
            )
        timing = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        lines.append(f"  time: {timing}")
        return "\n".join(lines)


def _silent_progress(message: str) -> None:
    pass


def _float_io_wrapper(model):
    """The half model behind a float32 boundary: cast in, run in fp16, cast the logits out."""
    import torch

    class FloatIO(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return self.inner(pixel_values.to(torch.float16)).to(torch.float32)

    return FloatIO(model)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("vivit-deploy", "torch", "onnx", "onnxscript", "onnxruntime-gpu", "onnxruntime"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def export_onnx(
    source,
    output: str | os.PathLike,
    *,
    opset: int | None = None,
    precision: str = "fp32",
    max_batch: int | None = None,
    static_batch: bool = False,
    preprocessor: PreprocessorConfig | None = None,
    calibration: str | os.PathLike | None = None,
    calibration_clips: int | None = None,
    validate: bool = True,
    tubelet: str = DEFAULT_TUBELET,
    progress: Progress | None = None,
    **load_kwargs: Any,
) -> ExportReport:
    """Export ``source`` (anything ``load_model`` takes, or a ``VivitForVideoClassification``) to ``output``.

    The batch axis is dynamic over 1..``max_batch`` (default 32), or fixed to ``max_batch`` (default 1)
    with ``static_batch``. ``precision="int8"`` (or ``"fp8"``, for TensorRT on Hopper/Ada) quantizes the
    fp32 graph (``export/quantize.py``), calibrated on ``calibration``: a directory of videos or an
    ``.npz`` saved by ``compare --save-inputs`` (its first ``calibration_clips``, default 32). ``opset``
    defaults to 18, 19 for fp8 (float8 Q/DQ). Raises :class:`ExportError` when the graph fails a check
    or its validation; then nothing is written at ``output``.
    """
    from vivit_deploy.export.quantize import DEFAULT_CALIBRATION_CLIPS

    progress = progress or _silent_progress
    quantized = precision in QUANTIZED_PRECISIONS
    if opset is None:
        opset = FP8_MIN_OPSET if precision == "fp8" else DEFAULT_OPSET
    if precision == "fp8" and opset < FP8_MIN_OPSET:
        raise ConfigError(f"fp8 Q/DQ needs opset {FP8_MIN_OPSET} or newer, got --opset {opset}")
    if opset not in OPSETS:
        raise ConfigError(f"opset must be in {OPSETS.start}..{OPSETS.stop - 1} (the dynamo exporter's range), got {opset}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if quantized and calibration is None:
        raise ConfigError(
            f"{precision} needs calibration data: --calibration DIR (videos like the ones it will see) or FILE.npz "
            "(from `vivit-deploy compare --save-inputs`); calibrating on random noise would set wrong ranges silently"
        )
    if not quantized and (calibration is not None or calibration_clips is not None):
        raise ConfigError("--calibration and --calibration-clips apply to --precision int8 and fp8 only")
    if tubelet not in TUBELET_EMBEDDINGS:
        raise ConfigError(f"tubelet must be one of {TUBELET_EMBEDDINGS}, got {tubelet!r}")
    calibration_clips = calibration_clips or DEFAULT_CALIBRATION_CLIPS
    if max_batch is not None and max_batch < 1:
        raise ConfigError(f"max_batch must be at least 1, got {max_batch}")
    max_batch = max_batch or (1 if static_batch else DEFAULT_MAX_BATCH)
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise ConfigError(f"{output}: the output file name must end in .onnx")
    if output.is_dir():
        raise ConfigError(f"{output} is a directory; give a file name ending in .onnx")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"{output.parent}: the output directory does not exist")

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    model, preprocessor, source_name = _load(source, preprocessor, progress, load_kwargs)
    model.vivit.embeddings.patch_embeddings.as_matmul = tubelet == "matmul"
    seconds["load"] = time.perf_counter() - started
    spec = input_spec(model.config, max_batch if static_batch else 1, max_batch)

    clips = calibration_note = None
    if quantized:  # read the calibration data first: a bad directory fails before the long steps
        from vivit_deploy.export.quantize import calibration_clips as read_calibration
        from vivit_deploy.preprocessing import VideoPreprocessor

        progress(f"reading calibration data from {calibration} ...")
        clips, calibration_note = read_calibration(calibration, model.config, VideoPreprocessor(preprocessor),
                                                   calibration_clips, progress)

    started = time.perf_counter()
    progress(f"exporting with torch.onnx (dynamo, opset {opset}, {precision}, batch {spec.batch_range}) ...")
    proto = _trace(model, "fp32" if quantized else precision, opset, spec)
    points = probe_points(model.config.num_hidden_layers)
    unnamed = name_probe_points(proto, points)
    seconds["export"] = time.perf_counter() - started
    calibration_summary = None
    if quantized:
        from vivit_deploy.export.quantize import quantize

        started = time.perf_counter()
        proto, calibration_summary = quantize(proto, clips, calibration_note, INPUT_NAME, progress, precision=precision)
        seconds["quantize"] = time.perf_counter() - started

    metadata = DeployMetadata(
        config=model.config, preprocessor=preprocessor, input=spec, precision=precision, output_name=OUTPUT_NAME,
        provenance={
            "exporter": "torch.onnx.export(dynamo=True)", "opset": opset, "attention": "eager, Q pre-scaled",
            "tubelet_embedding": tubelet,
            "source": source_name, "versions": _versions(),
        },
        calibration=None if calibration_summary is None else calibration_summary.to_dict(),
    )
    for key, value in metadata.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"ViViT exported by vivit_deploy from {source_name}"
    size = proto.ByteSize()
    if size >= MAX_FILE_BYTES:
        raise ExportError(f"the graph is {size / 1e9:.2f} GB, over protobuf's 2 GB single-file limit")
    summary = summarize(proto)
    findings = check_graph(summary, precision=precision, num_layers=model.config.num_hidden_layers)
    findings.append(Finding("blocker", "probe points", f"no output tensor found for {', '.join(unnamed)}") if unnamed else
                    Finding("ok", "probe points", f"{len(points)} hidden states named <module>:output (vivit_deploy/probes.py)"))
    report = ExportReport(output, precision, opset, spec.batch_range, size, summary, findings, seconds=seconds)

    def write_checked(tmp: str) -> None:
        """Write the graph next to ``output``, check and validate it there; raising leaves nothing behind."""
        nonlocal proto
        import onnx

        started = time.perf_counter()
        progress("checking the graph (onnx.checker full check, graph hygiene) ...")
        onnx.save_model(proto, tmp)
        proto = None  # the file holds it now; validation needs the memory more
        try:
            onnx.checker.check_model(tmp, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"onnx.checker rejected the exported graph: {str(exc).splitlines()[0]}") from exc
        seconds["check"] = time.perf_counter() - started
        if validate:
            started = time.perf_counter()
            report.validation = _validate(model, Path(tmp), spec, precision, progress, clips)
            seconds["validate"] = time.perf_counter() - started
        if not report.passed:
            raise ExportError("the exported graph failed its checks; nothing was written:\n" + report.format())

    atomic_write(output, write_checked)
    return report


def _load(source, preprocessor, progress: Progress, load_kwargs):
    """The fp32 CPU model with eager attention, its preprocessor config and a printable source name."""
    from vivit_deploy.modeling import VivitForVideoClassification

    if isinstance(source, VivitForVideoClassification):
        model = copy.deepcopy(source).float().cpu().eval()
        source_name = getattr(source, "source", "in-memory model")
    else:
        from vivit_deploy.checkpoint import load_model
        progress(f"loading {source} ...")
        model = load_model(source, head="classification", attn_implementation="eager", **load_kwargs)
        source_name = str(source)
        if preprocessor is None:
            preprocessor = preprocessor_config_in(model.checkpoint_dir)
    model.set_attn_implementation("eager")
    if preprocessor is None:
        preprocessor = PreprocessorConfig.for_input_size(model.config.image_height, model.config.image_width)
        progress(f"no preprocessor_config.json: recording transformers' defaults with a {preprocessor.crop_size} crop")
    return model, preprocessor, source_name


def _trace(model, precision: str, opset: int, spec):
    import torch

    module = model if precision == "fp32" else _float_io_wrapper(copy.deepcopy(model).half())
    # batch 2 as the example: torch.export specialises a dimension traced at size 1
    example = torch.zeros(spec.static_batch or 2, *spec.frame_shape)
    dynamic = None if spec.static_batch else ({0: torch.export.Dim(BATCH_AXIS, min=1, max=spec.max_batch)},)
    quiet = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=dynamic, external_data=False, optimize=True, verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean the same to the user
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    # The exporter's own folding stops at 8192-element inputs; the tubelet projection's weight is reshaped and
    # transposed for its MatMul (1.2M elements in ViViT-B): fold that into one initializer, as every Linear's is.
    import onnxscript.optimizer

    onnxscript.optimizer.fold_constants(program.model, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT)
    return _without_initializer_value_info(program.model_proto)


def _without_initializer_value_info(proto):
    """Drop ``value_info`` entries that annotate initializers.

    The exporter writes them; they say nothing a reader cannot get from the initializer itself, and
    ONNX Runtime's quantization tools rewrite initializers (transposed or quantized weights) under the
    same names, after which shape inference fails on the stale entries ("Inferred shape and existing
    shape differ in dimension 0: (768) vs (400)").
    """
    initializers = {init.name for init in proto.graph.initializer}
    kept = [v for v in proto.graph.value_info if v.name not in initializers]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(kept)
    return proto


def _validate(model, path: Path, spec, precision: str, progress: Progress,
              clips: np.ndarray | None = None) -> list[ValidationRow]:
    """ONNX Runtime (CPU) against PyTorch fp32 at two batch sizes, one file: on random clips, or for int8
    on its calibration clips (an int8 graph is only meant for inputs in the ranges it was calibrated on)."""
    from vivit_deploy.accuracy.statistics import failures, logit_stats
    from vivit_deploy.runtimes.ort_runtime import OnnxRuntimeRuntime
    from vivit_deploy.runtimes.torch_runtime import TorchRuntime

    tolerance = tolerance_for(precision).override(min_top1=0.0)  # random clips have near ties; top-1 is for compare
    batches = [spec.static_batch] if spec.static_batch else sorted({1, min(3, spec.max_batch)})
    reference = TorchRuntime.from_model(model)
    rows = []
    with OnnxRuntimeRuntime(path, device="cpu") as candidate:
        rng = np.random.default_rng(0)
        for batch in batches:
            progress(f"validating with onnxruntime at batch {batch} ...")
            if clips is not None:
                x = np.ascontiguousarray(np.resize(clips, (batch, *clips.shape[1:])))  # repeats clips if too few
            else:
                x = rng.standard_normal(spec.shape(batch), dtype=np.float32)
            ref, out = reference.run(x), candidate.run(x)
            stats = logit_stats(ref, out)
            rows.append(ValidationRow(batch, stats.max_abs, stats.max_rel, stats.min_cosine,
                                      not failures(ref, out, stats, tolerance)))
    return rows
