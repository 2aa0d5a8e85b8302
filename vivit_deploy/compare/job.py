"""`vivit-deploy compare` from its options to a report: the reference, the candidates, the inputs.

Candidates are the files, servers and precisions named (``--onnx``, ``--openvino``, ``--engine``,
``--triton``, ``--torch``),
or, when none is named, every backend x precision that can run here (``compare.matrix``), exported
into a temporary directory first. Inputs are the bundled samples, a directory of videos, synthetic
labelled clips of the demo task, random clips, or clips saved by an earlier run.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vivit_deploy.accuracy import inputs as clips
from vivit_deploy.accuracy import statistics as cmp
from vivit_deploy.errors import ConfigError
from vivit_deploy.model.config import schedule_text

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CompareOptions:
    source: str | None = None  # reference checkpoint; None: the demo model
    onnx: tuple[Path, ...] = ()
    openvino: tuple[Path, ...] = ()
    openvino_precisions: tuple[str, ...] = ("fp32",)
    engines: tuple[Path, ...] = ()
    triton: tuple[str, ...] = ()  # triton://host:port/model URLs
    torch_precisions: tuple[str, ...] = ()
    device: str = "auto"
    demo: bool = False
    videos_dir: Path | None = None
    manifest: Path | None = None  # .csv/.parquet with path and label columns (or .txt: paths)
    synthetic: int | None = None
    samples: int | None = None
    inputs_file: Path | None = None
    save_inputs: Path | None = None
    calibration: Path | None = None  # int8 candidates when none is named
    tolerance_overrides: dict[str, float | None] = field(default_factory=dict)
    batch_size: int = 8
    offline: bool = False
    layers: bool = False  # also per-layer drift of every candidate that can expose its hidden states
    plot: Path | None = None  # with layers: a PNG of drift against depth
    num_frames: int | None = None  # also the checkpoint at this many frames (the accuracy it costs)
    image_size: int | tuple[int, int] | None = None  # and at this frame size
    views: int = 1  # temporal views per clip, logits averaged (--clips)
    gates: tuple[str, ...] = ()  # --gate values (accuracy.gates); empty: the logit tolerances
    html: Path | None = None  # a self-contained report page
    merge_tokens: int | tuple[int, ...] | None = None  # also the checkpoint in PyTorch fp32 with token merging (ToMe)

    @property
    def named(self) -> bool:
        return bool(self.onnx or self.openvino or self.engines or self.triton or self.torch_precisions or self.geometry
                    or self.merge_tokens is not None)

    @property
    def geometry(self) -> bool:
        return self.num_frames is not None or self.image_size is not None


def run_compare(options: CompareOptions, progress: Progress) -> cmp.ComparisonReport:
    from vivit_deploy.demo import demo_model_dir
    from vivit_deploy.runtimes import load_runtime
    from vivit_deploy.accuracy.tolerances import tolerance_for

    from vivit_deploy.accuracy.gates import parse_gates

    chosen = [f"{name}=" for name, on in (("videos_dir", options.videos_dir), ("samples", options.samples),
                                          ("demo", options.demo), ("inputs_file", options.inputs_file),
                                          ("synthetic", options.synthetic), ("manifest", options.manifest)) if on]
    if len(chosen) > 1:
        raise ConfigError(f"choose one source of inputs, got {' and '.join(chosen)}")
    if options.views > 1 and options.inputs_file is not None:
        raise ConfigError("views= applies to videos and synthetic clips; saved inputs keep the views they were saved with")
    gates = parse_gates(options.gates)
    if options.geometry and (options.samples or options.inputs_file):
        raise ConfigError("num_frames= / image_size= compare the checkpoint at two geometries on the same videos: give "
                          "videos_dir=, demo= or synthetic= (random or saved clips have the reference's shape only)")
    if options.calibration is not None and options.named:
        raise ConfigError("calibration= is for the int8 candidates made when none is named; "
                          "export an int8 file (`vivit-export --precision int8`) to compare it")
    demo_model = options.source is None
    source = options.source or str(demo_model_dir())
    demo = options.demo or (demo_model and not chosen)
    samples = 8 if not demo_model and not chosen else options.samples
    runtimes = {}
    with tempfile.TemporaryDirectory(prefix="vivit-compare-") as work:
        try:
            progress(f"loading the reference {source} (PyTorch fp32) ...")
            reference = load_runtime(source, "torch", device=options.device, precision="fp32",
                                     local_files_only=options.offline or None)
            runtimes["reference"] = reference
            inputs = _inputs(options, reference, demo, samples, progress)
            if any(g.kind == "accuracy" for g in gates) and not inputs.labelled:
                raise ConfigError(f"gates= {next(g.name for g in gates if g.kind == 'accuracy')} needs labelled clips "
                                  f"and {inputs.source} {'are' if len(inputs) > 1 else 'is'} not (all) labelled: give "
                                  "synthetic=N, videos_dir= a directory with labels.json, manifest= a file with a label "
                                  "column, or demo=True")
            not_compared: dict[str, str] = {}
            if options.named:
                candidates = _named(options, source, progress)
            else:
                candidates = _every_variant(options, source, reference, demo_model, Path(work), not_compared, progress)
            runtimes.update(candidates)
            tolerances = {name: tolerance_for(runtime.precision).override(**options.tolerance_overrides)
                          for name, runtime in candidates.items()}
            if options.save_inputs is not None:
                inputs.save(options.save_inputs)
                progress(f"saved the inputs to {options.save_inputs}")
            # a candidate at another geometry gets the same videos sampled and sized for it (once it has the
            # reference's labels: a file of another model is refused before any video is read for it)
            own = {}
            for name, runtime in candidates.items():
                if runtime.input_spec.frame_shape != reference.input_spec.frame_shape:
                    cmp.check_compatible(reference, runtime, name, own_inputs=True)
                    own[name] = _inputs(options, runtime, demo, samples, progress)
            report = cmp.compare_runtimes(reference, candidates, inputs, tolerances,
                                          reference_name=f"pytorch fp32 on {reference.device} ({source})",
                                          batch_size=options.batch_size, progress=progress, candidate_inputs=own,
                                          gates=gates)
            report = dataclasses.replace(report, not_compared=not_compared)
            if options.layers:
                report = _layers(options, report, reference, candidates, runtimes, inputs, tolerances, progress)
            if options.html is not None:
                _write_html(options, report, reference, candidates, inputs, progress)
            return report
        finally:
            for runtime in runtimes.values():
                runtime.close()


def _layers(options: CompareOptions, report, reference, candidates: dict, runtimes: dict, inputs, tolerances,
            progress: Progress):
    """Per-layer drift of each candidate that can expose its hidden states, each loaded again with its probe points
    (one at a time, so memory holds one extra runtime), against the reference's forward hooks."""
    from vivit_deploy.accuracy.layers import layer_drift, plot_layer_drift
    from vivit_deploy.runtimes.torch_runtime import TorchRuntime

    probed_reference = TorchRuntime.from_model(reference.model, reference.preprocessor, source=reference.source,
                                               probes=True)
    drifts, skipped = {}, {}
    for name, runtime in candidates.items():
        if runtime.input_spec.frame_shape != reference.input_spec.frame_shape:
            skipped[name] = "it runs at another geometry: its hidden states have other shapes than the reference's"
            continue
        if runtime.merge_tokens != reference.merge_tokens:
            skipped[name] = ("it merges tokens (r per layer " + ", ".join(map(str, runtime.merge_tokens or (0,))) + ") "
                             "and the reference does not: its hidden states hold other tokens; its logits are compared")
            continue
        probed = runtime.with_probes()
        if probed is None:
            skipped[name] = f"the {runtime.backend} runtime exposes no hidden states (per-layer drift runs on ONNX files " \
                            "with ONNX Runtime or OpenVINO, and on PyTorch)"
            continue
        runtime.close()  # its numbers are taken; the probed one replaces it
        runtimes[name] = probed
        drifts[name] = layer_drift(probed_reference, probed, inputs.pixel_values, tolerances[name], name=name,
                                   batch_size=min(options.batch_size, 4), progress=progress)
    if options.plot is not None and drifts:
        plot_layer_drift(list(drifts.values()), options.plot)
        progress(f"wrote {options.plot}")
    return dataclasses.replace(report, layer_drift=drifts, layers_skipped=skipped)


def _merge_sources(report, reference, inputs) -> dict:
    """For each candidate that merges tokens unlike the reference and flipped clips: ToMe's source maps of the
    flipped clips (their first view), as the reference model merges with the candidate's r, for the HTML report."""
    from vivit_deploy.compare.html_report import MAX_STRIPS, MergeSources

    out = {}
    for c in report.candidates:
        if not c.flips or not any(c.merge_tokens) or c.geometry:
            continue
        indices = [f.index for f in c.flips[:MAX_STRIPS]]
        maps = reference.token_merging_sources(inputs.pixel_values[[i * inputs.views for i in indices]], c.merge_tokens)
        out[c.name] = MergeSources(reference.config.grid, tuple(c.merge_tokens), dict(zip(indices, maps)))
    return out


def _write_html(options: CompareOptions, report, reference, candidates: dict, inputs, progress: Progress) -> None:
    from vivit_deploy.compare.html_report import write_html
    from vivit_deploy.files import sha256_of
    from vivit_deploy.video.preprocessing import PreprocessorConfig

    listed = []
    for name, runtime in candidates.items():
        source = Path(str(runtime.source))
        is_file = source.is_file()
        listed.append({"name": name, "backend": runtime.backend, "precision": runtime.precision, "device": runtime.device,
                       "file": str(source) if is_file else None, "sha256": sha256_of(source) if is_file else None})
    config = reference.config
    preprocessor = reference.preprocessor or PreprocessorConfig.for_input_size(config.image_height, config.image_width)
    progress(f"writing {options.html} ...")
    write_html(report, options.html, inputs=inputs, id2label=reference.id2label, preprocessor=preprocessor,
               settings={"candidates": listed}, merge_sources=_merge_sources(report, reference, inputs))
    progress(f"wrote {options.html}")


def _inputs(options: CompareOptions, reference, demo: bool, samples: int | None, progress: Progress) -> clips.CompareInputs:
    from vivit_deploy.video.preprocessing import PreprocessorConfig, VideoPreprocessor

    config = reference.config
    if options.inputs_file is not None:
        return clips.CompareInputs.load(options.inputs_file)
    if samples is not None:
        return clips.random_inputs(config, samples, views=options.views)
    preprocessor = VideoPreprocessor(reference.preprocessor or PreprocessorConfig.for_input_size(
        config.image_height, config.image_width))
    if options.synthetic is not None:
        progress(f"rendering {options.synthetic} labelled clips of the demo task ...")
        return clips.synthetic_inputs(config, preprocessor, options.synthetic, views=options.views)
    from vivit_deploy.demo import sample_videos

    if options.manifest is not None:
        videos, where = clips.manifest_videos(options.manifest), str(options.manifest)
    elif demo:
        videos, where = sample_videos(), "the bundled sample videos"
    else:
        videos, where = clips.videos_in(options.videos_dir), str(options.videos_dir)
    return clips.video_inputs(videos, config, preprocessor, where, progress, views=options.views)


def _named(options: CompareOptions, source: str, progress: Progress) -> dict:
    from vivit_deploy.runtimes import load_runtime

    candidates = {}
    for path in options.onnx:
        progress(f"loading {path} ...")
        candidates[f"{path} (onnxruntime)"] = load_runtime(path, "onnxruntime", device=options.device)
    for path in options.openvino:
        for precision in options.openvino_precisions:
            progress(f"loading {path} with OpenVINO ({precision}) ...")
            runtime = load_runtime(path, "openvino", device="cpu", precision=precision)
            candidates[f"{path} (openvino {runtime.precision})"] = runtime
    for path in options.engines:
        progress(f"loading {path} ...")
        candidates[f"{path} (tensorrt)"] = load_runtime(path, "tensorrt", device="cuda" if options.device == "auto" else options.device)
    for url in options.triton:
        progress(f"connecting to {url} ...")
        candidates[f"{url} (triton)"] = load_runtime(url, "triton")
    for precision in options.torch_precisions:
        candidates[f"pytorch {precision}"] = load_runtime(source, "torch", device=options.device, precision=precision,
                                                          local_files_only=options.offline or None)
    if options.geometry:
        runtime = load_runtime(source, "torch", device=options.device, precision="fp32", frames=options.num_frames,
                               image_size=options.image_size, local_files_only=options.offline or None)
        c = runtime.config
        progress(f"the checkpoint at {c.num_frames} frames of {c.image_height}x{c.image_width} (positions resized)")
        candidates[f"pytorch fp32 at {c.num_frames}x{c.image_height}x{c.image_width}"] = runtime
    if options.merge_tokens is not None:
        runtime = load_runtime(source, "torch", device=options.device, precision="fp32", merge_tokens=options.merge_tokens,
                               local_files_only=options.offline or None)
        candidates[f"pytorch fp32 merging r={schedule_text(runtime.merge_tokens or (0,), ',')}"] = runtime
    return candidates


def _every_variant(options: CompareOptions, source: str, reference, demo_model: bool, work: Path,
                   not_compared: dict[str, str], progress: Progress) -> dict:
    """Every variant that runs here, its files exported into ``work``; int8 calibrated on ``--calibration``,
    or for the demo model on synthetic clips of a seed no evaluation set uses."""
    from vivit_deploy.model.hf_layout import resolve_source
    from vivit_deploy.compare.matrix import available_variants, prepare_files, write_demo_calibration
    from vivit_deploy.runtimes import BACKENDS, load_runtime

    variants, skipped = available_variants(reference.device)
    calibration = options.calibration
    if calibration is None and demo_model:
        from vivit_deploy.video.preprocessing import VideoPreprocessor

        calibration = write_demo_calibration(reference.config, VideoPreprocessor(reference.preprocessor),
                                             work / "calibration.npz")
    checkpoint = resolve_source(source, local_files_only=options.offline or None)
    files, variants, dropped = prepare_files(checkpoint, variants, work, calibration=calibration,
                                             max_batch=options.batch_size, progress=progress)
    not_compared.update(skipped)
    not_compared.update(dropped)
    candidates = {}
    for variant in variants:
        progress(f"loading {variant.label} ...")
        kwargs = {} if BACKENDS[variant.backend].artifact != "checkpoint" else {"local_files_only": options.offline or None}
        candidates[variant.label] = load_runtime(files[variant.artifact], variant.backend, device=variant.device,
                                                 precision=variant.precision, **kwargs)
    return candidates
