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

import copy
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vivit_deploy.errors import ConfigError, ExportError, first_line
from vivit_deploy.export.graph_checks import Finding, GraphSummary, check_graph, summarize
from vivit_deploy.export.graph_scopes import name_probe_points
from vivit_deploy.export.tracing import float_io, trace_module
from vivit_deploy.model.io_spec import BATCH_AXIS, DEFAULT_MAX_BATCH, INPUT_NAME, OUTPUT_NAME, InputSpec, input_spec
from vivit_deploy.artifacts.metadata import PRECISIONS, QUANTIZED_PRECISIONS, DeployMetadata
from vivit_deploy.video.preprocessing import PreprocessorConfig, preprocessor_config_in
from vivit_deploy.model.probes import probe_points
from vivit_deploy.accuracy.layers import Overflow, where
from vivit_deploy.accuracy.tolerances import Tolerance, tolerance_for

DEFAULT_OPSET = 18
FP8_MIN_OPSET = 19  # QuantizeLinear / DequantizeLinear take float8 from opset 19
OPSETS = range(18, 24)  # what the dynamo exporter writes natively (it refuses to convert below 18)
MAX_FILE_BYTES = 2 * 1024**3  # protobuf's limit for a single-file model
TUBELET_EMBEDDINGS = ("matmul", "conv")  # how the tubelet projection is written (see the module docstring)
DEFAULT_TUBELET = "matmul"
DEFAULT_SMOOTH_QUANT = 0.5  # SmoothQuant's alpha for int8/fp8 (measured in export/quantize.py's docstring)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ValidationRow:
    batch: int
    max_abs: float
    max_rel: float
    min_cosine: float
    passed: bool
    nonfinite: int = 0  # NaN or infinite logits

    def failure(self) -> str:
        if self.nonfinite:
            return f"onnxruntime vs pytorch fp32 at batch {self.batch}: {self.nonfinite} logits are NaN or infinite"
        return f"onnxruntime vs pytorch fp32 at batch {self.batch}: cosine {self.min_cosine:.4f}, max abs {self.max_abs:.3g}"


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
    kept_fp32: tuple[str, ...] = ()  # units kept in fp32 (export/fp32_fallback.py)
    overflows: list[Overflow] = field(default_factory=list)  # fp16 range check: products and weights over 65504
    layer_drift: Any = None  # accuracy.layers.LayerDriftReport, when the file failed
    diagnosis: Any = None  # accuracy.layers.Diagnosis: where it broke and what fixes it
    search: list[dict[str, Any]] = field(default_factory=list)  # --keep-fp32 auto: every export tried
    step_parts: list[str] = field(default_factory=list)  # Model 2: the step encoder's and window classifier's files
    min_cosine: float | None = None  # the logits' tolerance it was validated with
    merge_tokens: tuple[int, ...] = ()  # token merging: r per layer (empty: none)
    token_counts: tuple[int, ...] = ()  # ... and the tokens each layer hands on
    merge_search: Any = None  # merge_tokens="auto": export.merge_search.MergeSearch, the curve it chose r from

    @property
    def passed(self) -> bool:
        return (all(f.level != "blocker" for f in self.findings) and all(r.passed for r in self.validation)
                and not self.overflows)

    @property
    def first_failing_layer(self) -> int | None:
        """The first encoder layer out of tolerance; None when none is (the break may be outside the layers)."""
        if self.diagnosis is not None:
            return self.diagnosis.layer if self.diagnosis.layer >= 0 else None
        return None if self.layer_drift is None else self.layer_drift.first_failing_layer

    @property
    def first_failing(self) -> str | None:
        """Where it breaks first: "embeddings", "layer N", "final_norm" or "logits"; None when it passed."""
        if self.diagnosis is not None:
            d = self.diagnosis
            return f"layer {d.layer}" if d.layer >= 0 else {"classifier": "logits"}.get(d.part, d.part)
        return None if self.layer_drift is None else self.layer_drift.first_failing

    def to_dict(self) -> dict[str, Any]:
        out = asdict(replace(self, layer_drift=None, diagnosis=None, merge_search=None))
        out["merge_search"] = None if self.merge_search is None else self.merge_search.to_dict()
        out["path"] = str(self.path)
        out["passed"] = self.passed
        out["kept_fp32"] = list(self.kept_fp32)
        out["overflows"] = [o.to_dict() for o in self.overflows]
        out["first_failing_layer"] = self.first_failing_layer
        out["first_failing"] = self.first_failing
        out["diagnosis"] = None if self.diagnosis is None else self.diagnosis.to_dict()
        drift = None if self.layer_drift is None else self.layer_drift.to_dict()
        out["layers"] = None if drift is None else drift["layers"]
        out["layer_drift"] = drift
        return out

    def failure(self) -> str:
        """Why the file was refused, in one line: the failed checks, where it broke, and the option that fixes it."""
        reasons = [f"{f.check}: {f.detail}" for f in self.findings if f.level == "blocker"]
        reasons += [r.failure() for r in self.validation if not r.passed]
        reasons += [f"fp16 range: {where(o.layer, o.part)}: {o.what} reaches {o.value:.3g} (fp16 holds 65504)"
                    for o in self.overflows[:1]]
        line = f"the {self.precision} graph failed its checks ({'; '.join(reasons)})"
        if self.diagnosis is not None:
            line += f"; it breaks first in {self.diagnosis.sentence()}; {self.diagnosis.fix_advice()}"
        elif self.layer_drift is not None:
            line += ("; no point of the model falls out of tolerance on its own: the drift accumulates over layers "
                     "(--keep-fp32 auto searches)")
        return line + "; nothing was written"

    def format(self) -> str:
        s = self.summary
        ops = ", ".join(f"{k} {v}" for k, v in list(s.op_counts.items())[:8])
        kept = f", kept in fp32: {', '.join(self.kept_fp32)}" if self.kept_fp32 else ""
        lines = [
            f"{self.path}: {self.size_bytes / 1e6:.1f} MB, {self.precision}{kept}, opset {self.opset}, IR {s.ir_version}, "
            f"batch {self.batch_range}",
            f"  nodes: {sum(s.op_counts.values())} ({ops}, ...)",
        ]
        if self.merge_tokens:
            lines.append(f"  token merging (ToMe): r per layer {', '.join(map(str, self.merge_tokens))}; tokens after each "
                         f"layer {', '.join(map(str, self.token_counts))} (static shapes)")
        lines += [f.format() for f in self.findings]
        for r in self.validation:
            mark = "ok  " if r.passed else "FAIL"
            lines.append(
                f"  [{mark}] onnxruntime vs pytorch fp32, batch {r.batch}: max abs {r.max_abs:.2e}, "
                f"max rel {r.max_rel:.2e}, min cosine {r.min_cosine:.6f}"
            )
        if self.precision == "fp16" and self.validation:
            mark = "FAIL" if self.overflows else "ok  "
            detail = "; ".join(f"{where(o.layer, o.part)}: {o.what} reaches {o.value:.3g}"
                               for o in self.overflows) or \
                "no product of the fp32 model exceeds 65504 on the validation clips where the graph stores fp16"
            lines.append(f"  [{mark}] fp16 range: {detail}")
        if self.merge_search is not None:
            lines.append("  " + self.merge_search.format().replace("\n", "\n  "))
        for attempt in self.search:
            lines.append(f"  --keep-fp32 auto: {', '.join(attempt['kept']) or 'nothing'} kept: {attempt['reason']}")
        if self.layer_drift is not None:
            lines.append(self.layer_drift.format_table())
        if self.step_parts:
            lines.append(f"  Model 2's parts for streams that reuse time steps: {', '.join(self.step_parts)}")
        timing = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        lines.append(f"  time: {timing}")
        return "\n".join(lines)


def _silent_progress(message: str) -> None:
    pass


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("vivit-deploy", "torch", "onnx", "onnxscript", "onnxruntime-gpu", "onnxruntime"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


@dataclass(frozen=True)
class ExportOptions:
    """How ``export_onnx`` exports, checked when made (a bad value is a :class:`ConfigError` naming the argument).

    ``precision``: "fp32", "fp16", "int8" or "fp8" (for TensorRT on Hopper/Ada); int8/fp8 quantize the fp32 graph
    (``export/quantize.py``), calibrated on ``calibration``: a directory of videos or an ``.npz`` saved by
    ``compare --save-inputs`` (its first ``calibration_clips``, default 32); an fp16 export takes them too, as the
    clips it is validated on. ``opset`` defaults to 18, 19 for fp8. The batch axis is dynamic over 1..``max_batch``
    (default 32), or fixed to ``max_batch`` (default 1) with ``static_batch``.

    ``keep_fp32`` ("auto", "none", or units like "2,5" / "2.mlp", ``export/fp32_fallback.py``) keeps those layers or
    parts in fp32; "auto" searches for the fewest that make the file pass. ``min_cosine`` overrides the precision's
    tolerance on the logits' cosine. ``smooth_quant`` (int8/fp8): SmoothQuant's alpha, 0 for none;
    ``attention_products`` ("qk", "pv"): quantize those too (``export/quantize.py`` says what each measured).
    ``num_frames`` / ``image_size``: export at another frame count or resolution than the checkpoint was trained at
    (positions resized once, ``at_geometry``; the preprocessor config follows the size). ``validate=False`` skips
    the comparison with PyTorch (the graph checks still run).
    """

    precision: str = "fp32"
    opset: int | None = None  # None: 18, or 19 for fp8
    max_batch: int | None = None  # None: 32, or 1 with static_batch
    static_batch: bool = False
    calibration: str | os.PathLike | None = None
    calibration_clips: int | None = None  # None: 32
    keep_fp32: str | None = None
    min_cosine: float | None = None
    smooth_quant: float = DEFAULT_SMOOTH_QUANT
    attention_products: tuple[str, ...] = ()
    validate: bool = True
    tubelet: str = DEFAULT_TUBELET
    num_frames: int | None = None
    image_size: int | tuple[int, int] | None = None
    merge_tokens: int | tuple[int, ...] | str | None = None  # ToMe's r, for every layer or one per layer, or "auto"
    merge_search: Any = None  # merge_tokens="auto": export.merge_search.MergeSearchOptions (clips, gate, tries, plot)

    def __post_init__(self) -> None:
        from vivit_deploy.export.quantize import DEFAULT_CALIBRATION_CLIPS

        precision = self.precision
        if precision not in PRECISIONS:
            raise ConfigError(f"precision= must be one of {PRECISIONS}, got {precision!r}")
        quantized = precision in QUANTIZED_PRECISIONS
        opset = self.opset if self.opset is not None else (FP8_MIN_OPSET if precision == "fp8" else DEFAULT_OPSET)
        if precision == "fp8" and opset < FP8_MIN_OPSET:
            raise ConfigError(f"fp8 Q/DQ needs opset= {FP8_MIN_OPSET} or newer, got {opset}")
        if opset not in OPSETS:
            raise ConfigError(f"opset= must be in {OPSETS.start}..{OPSETS.stop - 1} (the dynamo exporter's range), "
                              f"got {opset}")
        if quantized and self.calibration is None:
            raise ConfigError(
                f"{precision} needs calibration data: calibration= a directory of videos like the ones it will see, "
                "or an .npz from `vivit-deploy compare --save-inputs`; calibrating on random noise would set wrong "
                "ranges silently")
        if precision == "fp32" and (self.calibration is not None or self.calibration_clips is not None):
            raise ConfigError("calibration= and calibration_clips= apply to precision= int8 and fp8 (calibration) and "
                              "fp16 (the clips it is validated on)")
        if self.calibration_clips is not None and self.calibration_clips < 1:
            raise ConfigError(f"calibration_clips= must be at least 1, got {self.calibration_clips}")
        if self.tubelet not in TUBELET_EMBEDDINGS:
            raise ConfigError(f"tubelet= must be one of {TUBELET_EMBEDDINGS}, got {self.tubelet!r}")
        if not 0.0 <= self.smooth_quant < 1.0:
            raise ConfigError(f"smooth_quant= must be in [0, 1) (0: off), got {self.smooth_quant}")
        products = tuple(self.attention_products)
        if set(products) - {"qk", "pv"}:
            raise ConfigError(f"attention_products= takes 'qk' (and, for measurements, 'pv'), got {products}")
        if products and not quantized:
            raise ConfigError(f"attention_products= applies to precision= int8 and fp8, not {precision}")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise ConfigError(f"min_cosine= must be in [-1, 1], got {self.min_cosine}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ConfigError(f"max_batch= must be at least 1, got {self.max_batch}")
        if self.num_frames is not None and self.num_frames < 1:
            raise ConfigError(f"num_frames= must be at least 1, got {self.num_frames}")
        if isinstance(self.merge_tokens, list):  # frozen: a schedule is kept as a tuple
            object.__setattr__(self, "merge_tokens", tuple(self.merge_tokens))
        if isinstance(self.merge_tokens, str) and self.merge_tokens != "auto":
            raise ConfigError(f"merge_tokens= takes r (a whole number), one per layer, or 'auto'; got {self.merge_tokens!r}")
        if (self.merge_tokens == "auto") != (self.merge_search is not None):
            raise ConfigError("merge_tokens='auto' and merge_search= (export.merge_search.MergeSearchOptions: the labelled "
                              "clips and the gate) go together")
        resolved = {"opset": opset, "attention_products": products,
                    "calibration_clips": self.calibration_clips or DEFAULT_CALIBRATION_CLIPS,
                    "max_batch": self.max_batch or (1 if self.static_batch else DEFAULT_MAX_BATCH),
                    "smooth_quant": self.smooth_quant if quantized else 0.0}  # SmoothQuant serves quantization only
        for name, value in resolved.items():
            object.__setattr__(self, name, value)

    @property
    def quantized(self) -> bool:
        return self.precision in QUANTIZED_PRECISIONS


EXPORT_OPTIONS = frozenset(f.name for f in fields(ExportOptions))


def export_onnx(
    source,
    output: str | os.PathLike,
    options: ExportOptions | None = None,
    *,
    preprocessor: PreprocessorConfig | None = None,
    progress: Progress | None = None,
    **kwargs: Any,
) -> ExportReport:
    """Export ``source`` (anything ``load_model`` takes, or a ``VivitForVideoClassification``) to ``output`` as
    ``options`` say (:class:`ExportOptions`; or give its fields as keyword arguments). Other keyword arguments go to
    ``load_model`` (``revision``, ``local_files_only``, ...). The file records the geometry it runs at and the one
    the checkpoint was trained at.

    Raises :class:`ExportError` (with the report as ``.report``) when the graph fails a check or its validation; then
    nothing is written at ``output``. Its message names the first failing layer, what broke there and the
    ``keep_fp32`` units that fix it. Model 2's step parts are staged and validated with the whole model's file and
    appear with it, or none of them does.
    """
    from vivit_deploy.export.fp32_fallback import AUTO, parse_keep_fp32

    given = {k: kwargs.pop(k) for k in list(kwargs) if k in EXPORT_OPTIONS}
    if options is None:
        options = ExportOptions(**given)
    elif given:
        raise ConfigError(f"give options= or its fields ({', '.join(sorted(given))}=), not both")
    load_kwargs = kwargs
    progress = progress or _silent_progress
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise ConfigError(f"output= {output}: the file name must end in .onnx")
    if output.is_dir():
        raise ConfigError(f"output= {output} is a directory; give a file name ending in .onnx")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"{output.parent}: the output directory does not exist")

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    model, preprocessor, source_name = _load(source, preprocessor, progress, load_kwargs)
    if options.num_frames or options.image_size:
        trained = model.config
        model = model.at_geometry(options.num_frames, options.image_size)
        preprocessor = preprocessor.at_size(model.config.image_height, model.config.image_width)
        progress(f"at {model.config.num_frames} frames of {model.config.image_height}x{model.config.image_width} "
                 f"(trained at {trained.num_frames} of {trained.image_height}x{trained.image_width}): positions resized")
    model.set_tubelet_embedding(options.tubelet)
    merge_search, merge_tokens = None, options.merge_tokens  # the model merges from here on: the options stay as given
    if merge_tokens == "auto":
        merge_search = _search_merging(model, preprocessor, options, output, progress)
        merge_tokens = merge_search.chosen
    if merge_tokens is not None:
        model.set_token_merging(merge_tokens)
        merging = _merging(model)
        if merging:
            unmerged = model.config.token_counts((0,))[0]  # what the first layer receives (Model 2: per time step)
            per = " per time step" if model.config.factorised else ""
            progress(f"merging tokens (ToMe, r per layer {list(merging['merge_tokens'])}): "
                     f"{' -> '.join(map(str, (unmerged, *merging['token_counts'])))} tokens{per}")
    keep = parse_keep_fp32(options.keep_fp32, model.config, options.precision)
    seconds["load"] = time.perf_counter() - started
    spec = input_spec(model.config, options.max_batch if options.static_batch else 1, options.max_batch)

    clips = calibration_note = None
    if options.calibration is not None:  # read the clips first: a bad directory fails before the long steps
        from vivit_deploy.export.quantize import calibration_clips as read_calibration
        from vivit_deploy.video.preprocessing import VideoPreprocessor

        progress(f"reading {'calibration' if options.quantized else 'validation'} clips from {options.calibration} ...")
        clips, calibration_note = read_calibration(options.calibration, model.config, VideoPreprocessor(preprocessor),
                                                   options.calibration_clips, progress)
    job = _Job(model=model, preprocessor=preprocessor, source_name=source_name, spec=spec, options=options,
               output=output, clips=clips, calibration_note=calibration_note,
               tolerance=tolerance_for(options.precision).override(min_cosine=options.min_cosine, min_top1=0.0),
               seconds=seconds, progress=progress)
    if keep == AUTO:
        if not options.validate:
            raise ConfigError("keep_fp32= auto searches by validating each export; it cannot run with validate=False")
        report = _export_searching(job)
    else:
        report, staged = _export_once(job, keep)
        report = _publish(job, report, staged)
    return report if merge_search is None else _with_merge_curve(report, merge_search, progress)


def _search_merging(model, preprocessor, options: ExportOptions, output: Path, progress: Progress):
    """merge_tokens='auto': measure the r values on the labelled clips and keep the largest that passes the gate
    (``export/merge_search.py``); when none does, an ExportError carrying the curve, and nothing is written."""
    from vivit_deploy.accuracy.drift.plots import pyplot
    from vivit_deploy.export import merge_search as ms
    from vivit_deploy.runtimes.cpu import describe_cpu

    if model.merging_refusal:  # a model that cannot merge (Model 3, VideoMAE...) says why before any clip is read
        raise ConfigError(model.merging_refusal)
    search_options = options.merge_search
    plot = search_options.plot
    if plot is not None:
        pyplot("merge_search.plot=")  # a missing matplotlib is a one-line error before the long steps
        if not Path(plot).parent.is_dir():
            raise FileNotFoundError(f"{Path(plot).parent}: the directory for merge_search.plot= does not exist")
    tries = search_options.tries or ms.default_tries(model.config)
    progress(f"reading labelled clips for token merging from {search_options.videos or search_options.manifest} ...")
    inputs = ms.labelled_clips(search_options, model.config, preprocessor, progress)
    attention = model.attn_implementation
    model.set_attn_implementation("sdpa")  # measured as PyTorch runs it; exported through the traced path below
    try:
        result = ms.search(ms.torch_runner(model, inputs.pixel_values), inputs, model.config,
                           search_options.parsed_gate, tries, describe_cpu(), progress)
    finally:
        model.set_attn_implementation(attention)
    if plot is None:
        plot = output.with_name(output.stem + ".merge-curve.png")
        try:
            pyplot("the merge curve's plot")
        except ConfigError as exc:
            plot = None
            result = replace(result, notes=(*result.notes, f"no plot: {exc}"))
    result = replace(result, plot=None if plot is None else str(plot))
    if result.chosen is None:
        error = ExportError(f"token merging: no r above 0 passes {result.gate.name} on {result.num_clips} clips "
                            f"(tried {', '.join(str(p.r) for p in result.points)}); nothing written. Lower the gate, "
                            f"try smaller r (tries=), or export without merging")
        error.report = result
        raise error
    return result


def _with_merge_curve(report: ExportReport, result, progress: Progress) -> ExportReport:
    """The exported file's report with the merge search's curve, and its plot drawn (after the file is in place)."""
    if result.plot is not None:
        from vivit_deploy.export.merge_search import plot_curve

        plot_curve(result, result.plot)
        progress(f"wrote the merge curve to {result.plot}")
    return replace(report, merge_search=result)


def _publish(job: "_Job", report: ExportReport, staged: Path) -> ExportReport:
    """Put the checked, validated file ``staged`` at ``job.output``, with Model 2's step parts where the model has
    them (``export/step_parts.py``): the parts are staged and validated first, then every file is moved into place
    at once (``files.publish``), the whole model last; on any failure nothing appears."""
    from vivit_deploy.export.step_parts import export_step_parts, reuses_steps
    from vivit_deploy.files import publish

    parts: list[tuple[Path, Path]] = []
    try:
        if reuses_steps(job.model.config):
            import onnx

            props = {p.key: p.value for p in onnx.load(str(staged), load_external_data=False).metadata_props}
            validation = job.clips[:4] if job.clips is not None else _random_clips(job, 3, np.random.default_rng(1))
            parts = export_step_parts(job.model, staged, job.output, precision=job.precision, kept=report.kept_fp32,
                                      opset=job.options.opset, max_batch=job.spec.max_batch or DEFAULT_MAX_BATCH,
                                      clips=job.clips, validation=validation, tolerance=job.tolerance,
                                      smooth_quant=job.options.smooth_quant, progress=job.progress,
                                      metadata_props=props)
        publish(parts + [(staged, job.output)])
    except BaseException:
        for path in [staged] + [p for p, _ in parts]:
            path.unlink(missing_ok=True)
        raise
    report.step_parts = [str(target) for _, target in parts]
    return report


@dataclass
class _Job:
    """One ``export_onnx`` call: its options, the model and clips every attempt shares, and what the first attempt
    measured for the others (the traced fp32 graph and its ranges, for each int8/fp8 attempt of ``keep_fp32`` auto)."""

    model: Any  # a VivitForVideoClassification or FactorisedVivitForVideoClassification, fp32, eager attention
    preprocessor: PreprocessorConfig
    source_name: str
    spec: InputSpec
    options: ExportOptions
    output: Path
    clips: np.ndarray | None  # calibration (int8/fp8) or validation (fp16) clips
    calibration_note: str | None
    tolerance: Tolerance  # for the logits (top-1 left to compare: random clips tie)
    seconds: dict[str, float]
    progress: Progress
    fp32_proto: Any = None  # the traced fp32 onnx.ModelProto, reused by every int8/fp8 attempt
    ranges: dict[str, tuple[float, float]] | None = None  # its activation ranges, measured once
    unnamed: list[str] = field(default_factory=list)  # probe points the fp32 graph lacks

    @property
    def precision(self) -> str:
        return self.options.precision

    @property
    def quantized(self) -> bool:
        return self.options.quantized


def _build(job: _Job, kept: tuple[str, ...]):
    """The graph of ``job`` with ``kept`` in fp32, its metadata written into it: (proto, calibration summary)."""
    from vivit_deploy.export.fp32_fallback import modules_of

    started = time.perf_counter()
    points = probe_points(job.model.config)
    if job.quantized:
        from vivit_deploy.export.quantize import calibration_ranges, quantize

        if job.fp32_proto is None:
            job.progress(f"exporting with torch.onnx (dynamo, opset {job.options.opset}, fp32 for {job.precision}, batch "
                         f"{job.spec.batch_range}) ...")
            job.fp32_proto = _trace(job.model, "fp32", job.options.opset, job.spec)
            job.unnamed = name_probe_points(job.fp32_proto, points)
            job.seconds["export"] = time.perf_counter() - started
            started = time.perf_counter()
            if job.options.smooth_quant:
                from vivit_deploy.export.quantize import smooth_quant

                job.fp32_proto, _ = smooth_quant(job.fp32_proto, job.clips, INPUT_NAME, job.options.smooth_quant, job.progress)
            job.ranges = calibration_ranges(job.fp32_proto, job.clips, INPUT_NAME, job.progress)
        proto, calibration_summary = quantize(job.fp32_proto, job.clips, job.calibration_note, INPUT_NAME, job.progress,
                                              precision=job.precision, float_modules=tuple(modules_of(kept, job.model.config)),
                                              ranges=job.ranges, attention_products=job.options.attention_products,
                                              smoothed=job.options.smooth_quant)
        job.seconds["quantize"] = job.seconds.get("quantize", 0.0) + time.perf_counter() - started
        unnamed = job.unnamed
    else:
        kept_note = f", {', '.join(kept)} in fp32" if kept else ""
        job.progress(f"exporting with torch.onnx (dynamo, opset {job.options.opset}, {job.precision}{kept_note}, batch "
                     f"{job.spec.batch_range}) ...")
        proto = _trace(job.model, job.precision, job.options.opset, job.spec, kept)
        unnamed = name_probe_points(proto, points)
        calibration_summary = None
        job.seconds["export"] = job.seconds.get("export", 0.0) + time.perf_counter() - started
    metadata = DeployMetadata(
        config=job.model.config, preprocessor=job.preprocessor, input=job.spec, precision=job.precision,
        output_name=OUTPUT_NAME,
        provenance={
            "exporter": "torch.onnx.export(dynamo=True)", "opset": job.options.opset, "attention": "eager, Q pre-scaled",
            "tubelet_embedding": job.options.tubelet, "source": job.source_name, "versions": _versions(),
        },
        calibration=None if calibration_summary is None else calibration_summary.to_dict(),
        kept_fp32=kept,
        **_merging(job.model),
    )
    for key, value in metadata.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"ViViT exported by vivit_deploy from {job.source_name}"
    findings_extra = [Finding("blocker", "probe points", f"no output tensor found for {', '.join(unnamed)}") if unnamed
                      else Finding("ok", "probe points", f"{len(points)} hidden states named <module>:output "
                                                          "(vivit_deploy/model/probes.py)")]
    return proto, findings_extra, calibration_summary


def _merging(model) -> dict[str, tuple[int, ...]]:
    """What the metadata records of the model's token merging: r per layer and the tokens each layer hands on."""
    if not any(model.merge_tokens):
        return {}
    return {"merge_tokens": model.merge_tokens, "token_counts": model.config.token_counts(model.merge_tokens)}


def _export_once(job: _Job, kept: tuple[str, ...]) -> tuple[ExportReport, Path]:
    """Build, check and validate one graph with ``kept`` in fp32, staged in a hidden file beside ``job.output``;
    raise when it fails (leaving nothing). Returns the report and the passing staged file (``_publish`` moves it)."""
    output = job.output
    proto, extra, calibration = _build(job, kept)
    size = proto.ByteSize()
    if size >= MAX_FILE_BYTES:
        raise ExportError(f"the graph is {size / 1e9:.2f} GB, over protobuf's 2 GB single-file limit")
    summary = summarize(proto)
    findings = check_graph(summary, precision=job.precision, config=job.model.config,
                           kept_fp32=kept, attention_products=len(calibration.attention_products) if calibration else 0)
    findings += extra
    report = ExportReport(output, job.precision, job.options.opset, job.spec.batch_range, size, summary, findings,
                          seconds=job.seconds, kept_fp32=kept, min_cosine=job.tolerance.min_cosine, **_merging(job.model))

    def write_checked(tmp: str) -> None:
        """Write the graph next to ``output``, check and validate it there; raising leaves nothing behind."""
        nonlocal proto
        import onnx

        started = time.perf_counter()
        job.progress("checking the graph (onnx.checker full check, graph hygiene) ...")
        onnx.save_model(proto, tmp)
        proto = None  # the file holds it now; validation needs the memory more
        try:
            onnx.checker.check_model(tmp, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"onnx.checker rejected the exported graph: {first_line(exc)}") from exc
        job.seconds["check"] = job.seconds.get("check", 0.0) + time.perf_counter() - started
        if job.options.validate:
            started = time.perf_counter()
            _validate(job, Path(tmp), report, kept)
            job.seconds["validate"] = job.seconds.get("validate", 0.0) + time.perf_counter() - started
        if not report.passed:
            error = ExportError(report.failure())
            error.report = report
            raise error

    from vivit_deploy.files import staged_path

    tmp = str(staged_path(output, "try"))
    try:
        write_checked(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return report, Path(tmp)


def _export_searching(job: _Job) -> ExportReport:
    """``--keep-fp32 auto``: export, validate, keep what the diagnosis names in fp32, until it passes; then prune."""
    from vivit_deploy.export.fp32_fallback import Attempt, search

    passing: dict[tuple[str, ...], tuple[ExportReport, Path]] = {}
    tried: dict[tuple[str, ...], Attempt] = {}

    def try_export(kept: tuple[str, ...]) -> Attempt:
        if kept in tried:
            return tried[kept]
        try:
            report, path = _export_once(job, kept)
        except ExportError as exc:
            report = getattr(exc, "report", None)
            if report is None:
                raise
            diagnosis = report.diagnosis
            reason = diagnosis.sentence() if diagnosis is not None else report.failure()
            attempt = Attempt(kept, False, reason, None if diagnosis is None else diagnosis.unit)
        else:
            passing[kept] = (report, path)
            attempt = Attempt(kept, True, "passed", None)
        tried[kept] = attempt
        return attempt

    try:
        kept, attempts = search(try_export, job.progress, job.model.config)
        report, path = passing[kept]
        report.search = [{"kept": list(a.kept), "passed": a.passed, "reason": a.reason} for a in attempts]
        del passing[kept]
        return _publish(job, report, path)
    finally:
        for _, path in passing.values():
            path.unlink(missing_ok=True)


def _load(source, preprocessor, progress: Progress, load_kwargs):
    """The fp32 CPU model with eager attention, its preprocessor config and a printable source name."""
    from vivit_deploy.model.factorised import FactorisedVivitForVideoClassification
    from vivit_deploy.model.modeling import VivitForVideoClassification

    if isinstance(source, (VivitForVideoClassification, FactorisedVivitForVideoClassification)):
        model = copy.deepcopy(source).float().cpu().eval()
        source_name = getattr(source, "source", "in-memory model")
    else:
        from vivit_deploy.model.checkpoint import load_model
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


def _trace(model, precision: str, opset: int, spec, kept: tuple[str, ...] = ()):
    import torch

    from vivit_deploy.model.modeling import LogitsOnly

    if precision == "fp32":
        module = LogitsOnly(model)
    else:
        from vivit_deploy.export.fp32_fallback import half_with_fp32_units

        module = float_io(LogitsOnly(half_with_fp32_units(model, kept)))
    # batch 2 as the example: torch.export specialises a dimension traced at size 1
    example = torch.zeros(spec.static_batch or 2, *spec.frame_shape)
    dynamic = None if spec.static_batch else ({0: torch.export.Dim(BATCH_AXIS, min=1, max=spec.max_batch)},)
    return trace_module(module, example, dynamic, INPUT_NAME, OUTPUT_NAME, opset)


def _validate(job: _Job, path: Path, report: ExportReport, kept: tuple[str, ...]) -> None:
    """ONNX Runtime (CPU) against PyTorch fp32 at two batch sizes, one file: on random clips (random frames through
    the preprocessor), or on the calibration (validation) clips, which an int8 graph is meant for. An fp16 graph is
    also range-checked: a product of the fp32 model that exceeds 65504 where the graph stores fp16 overflows in an
    fp16 engine, even where ONNX Runtime's CPU computes that product in fp32 and cannot show it. A failing file gets
    its per-layer drift and diagnosis."""
    from vivit_deploy.accuracy.layers import FP16_MAX, RangeWatch, flow_position, layer_drift, overflow_diagnosis
    from vivit_deploy.accuracy.statistics import failures, logit_stats
    from vivit_deploy.runtimes.ort_runtime import OnnxRuntimeRuntime
    from vivit_deploy.runtimes.torch_runtime import TorchRuntime

    spec, clips, tolerance = job.spec, job.clips, job.tolerance
    batches = [spec.static_batch] if spec.static_batch else sorted({1, min(3, spec.max_batch)})
    reference = TorchRuntime.from_model(job.model, probes=True)
    rng = np.random.default_rng(0)
    inputs = []
    with OnnxRuntimeRuntime(path, device="cpu") as candidate, RangeWatch(job.model) as watch:
        for batch in batches:
            job.progress(f"validating with onnxruntime at batch {batch} ...")
            if clips is not None:
                x = np.ascontiguousarray(np.resize(clips, (batch, *clips.shape[1:])))  # repeats clips if too few
            else:
                x = _random_clips(job, batch, rng)
            inputs.append(x)
            ref, out = reference.run(x), candidate.run(x)
            stats = logit_stats(ref, out)
            report.validation.append(ValidationRow(batch, stats.max_abs, stats.max_rel, stats.min_cosine,
                                                   not failures(ref, out, stats, tolerance),
                                                   int((~np.isfinite(out)).sum())))
    if job.precision == "fp16":
        from vivit_deploy.export.fp32_fallback import fp16_weight_overflows

        found = fp16_weight_overflows(job.model, kept) + watch.overflows(FP16_MAX, frozenset(kept))
        config = job.model.config
        report.overflows = sorted(found, key=lambda o: flow_position(o.layer, o.part, config))
    if report.passed or any(f.level == "blocker" for f in report.findings):
        return
    if report.overflows:
        report.diagnosis = overflow_diagnosis(report.overflows[0])
        return
    job.progress("locating the drift layer by layer ...")
    with OnnxRuntimeRuntime(path, device="cpu", probes=True) as candidate:
        report.layer_drift = layer_drift(reference, candidate, np.concatenate(inputs), tolerance, name=str(job.output),
                                         batch_size=max(batches))
    report.diagnosis = report.layer_drift.diagnosis


def _random_clips(job: _Job, batch: int, rng) -> np.ndarray:
    """Clips of random uint8 frames through the model's own preprocessor: random, and in the range a real video's
    clips take (a Gaussian's tails reach past it and would range-check products no video drives that far)."""
    from vivit_deploy.video.preprocessing import VideoPreprocessor

    config = job.model.config
    frames = rng.integers(0, 256, (batch, config.num_frames, config.image_height, config.image_width, 3), dtype=np.uint8)
    return VideoPreprocessor(job.preprocessor)(frames)
