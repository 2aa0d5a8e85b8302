"""Backend accuracy: how far each candidate's logits drift from PyTorch fp32 on the same inputs.

The numbers (Polygraphy's per-output error statistics, plus top-k agreement and accuracy against labels)
live in result objects with a verdict; the CLI prints them as a table or JSON. Numpy only: the runtimes
bring their own libraries.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from vivit_deploy.errors import ConfigError, InputShapeError, ModelFileError
from vivit_deploy.tolerances import Tolerance

if TYPE_CHECKING:
    from vivit_deploy.runtimes.base import Runtime

UNLABELLED = -1


@dataclass(frozen=True)
class CompareInputs:
    """Preprocessed clips to compare on, with optional true labels (-1 where unknown) and a name per clip.

    Saved as ``.npz`` so that two machines compare on identical tensors.
    """

    pixel_values: np.ndarray  # (N, T, C, H, W) float32
    labels: np.ndarray  # (N,) int64, UNLABELLED where unknown
    names: tuple[str, ...]
    source: str = ""  # how the inputs were made, for the report

    def __post_init__(self) -> None:
        n = len(self.pixel_values)
        if self.pixel_values.ndim != 5 or n == 0:
            raise InputShapeError(f"compare inputs must be a non-empty (N, T, C, H, W) array, got shape {self.pixel_values.shape}")
        if self.labels.shape != (n,) or len(self.names) != n:
            raise InputShapeError(f"{n} clips but {self.labels.shape} labels and {len(self.names)} names")

    @property
    def labelled(self) -> bool:
        return bool((self.labels != UNLABELLED).all())

    def save(self, path: str | os.PathLike) -> Path:
        from vivit_deploy.files import atomic_write

        path = Path(path)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the temporary name
                np.savez_compressed(
                    f, pixel_values=self.pixel_values, labels=self.labels,
                    names=np.array(self.names, dtype=str), source=np.array(self.source),
                )

        atomic_write(path, write)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CompareInputs":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such inputs file")
        try:
            with np.load(path, allow_pickle=False) as data:
                pixel_values = data["pixel_values"]
                labels = data["labels"] if "labels" in data else np.full(len(pixel_values), UNLABELLED)
                names = tuple(str(s) for s in data["names"]) if "names" in data else tuple(f"clip{i}" for i in range(len(pixel_values)))
                source = str(data["source"]) if "source" in data else str(path)
        except (OSError, ValueError, KeyError) as exc:
            raise InputShapeError(f"{path}: not an inputs file saved by `compare --save-inputs` ({exc})") from exc
        return cls(pixel_values.astype(np.float32, copy=False), labels.astype(np.int64), names, source)


def random_inputs(config, count: int, seed: int = 0) -> CompareInputs:
    """Unlabelled clips drawn from N(0, 1), about the range a normalised video has."""
    if count < 1:
        raise ConfigError(f"the number of random samples must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    pixel_values = rng.standard_normal((count, *config.input_shape), dtype=np.float32)
    return CompareInputs(pixel_values, np.full(count, UNLABELLED, dtype=np.int64),
                         tuple(f"random{i}" for i in range(count)), f"{count} random clips (seed {seed})")


def synthetic_inputs(config, preprocessor, count: int, seed: int | None = None) -> CompareInputs:
    """Labelled clips of the motion task the demo model learned (by default its held-out set's seed), so
    accuracy per backend and precision is measured on hundreds of clips, not 12 videos."""
    from vivit_deploy.synthetic import HELDOUT_SEED, LABELS, labelled_clips

    if count < 1:
        raise ConfigError(f"the number of synthetic clips must be at least 1, got {count}")
    if [config.id2label.get(i) for i in range(len(LABELS))] != list(LABELS) or config.num_labels != len(LABELS):
        raise ConfigError("synthetic clips are labelled with the demo task's classes "
                          f"({', '.join(LABELS)}); this model's labels are others")
    seed = HELDOUT_SEED if seed is None else seed
    pixel_values, labels = labelled_clips(count, seed, config.num_frames, preprocessor)
    return CompareInputs(pixel_values, labels, tuple(f"synthetic{i}" for i in range(count)),
                         f"{count} synthetic motion clips (seed {seed})")


def video_inputs(
    videos: Sequence[tuple[Path, str | None]], config, preprocessor, source: str,
    progress: Callable[[str], None] | None = None,
) -> CompareInputs:
    """Decode and preprocess one clip per video; labels are matched to the model's id2label by name."""
    from vivit_deploy.video import read_video

    if not videos:
        raise ConfigError(f"no videos to compare on in {source}")
    label2id = {label: i for i, label in config.id2label.items()}
    clips, labels = [], []
    for i, (path, label) in enumerate(videos, 1):
        if progress:
            progress(f"preprocessing video {i}/{len(videos)}: {Path(path).name}")
        clips.append(preprocessor(read_video(path, config.num_frames)[None])[0])
        labels.append(label2id.get(label, UNLABELLED) if label is not None else UNLABELLED)
    return CompareInputs(np.stack(clips), np.array(labels, dtype=np.int64), tuple(Path(p).name for p, _ in videos), source)


def videos_in(directory: str | os.PathLike) -> list[tuple[Path, str | None]]:
    """The videos of a directory, with labels from its ``labels.json`` ({file name: label}) when present."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory of videos")
    labels: dict[str, str] = {}
    labels_file = directory / "labels.json"
    if labels_file.is_file():
        try:
            labels = json.loads(labels_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{labels_file}: not a JSON object of file name -> label ({exc})") from exc
        if not isinstance(labels, dict):
            raise ConfigError(f"{labels_file}: expected a JSON object of file name -> label")
    from vivit_deploy.video import VIDEO_SUFFIXES

    return [(p, labels.get(p.name)) for p in sorted(directory.iterdir()) if p.suffix.lower() in VIDEO_SUFFIXES]


@dataclass(frozen=True)
class LogitStats:
    """Per-output error statistics of candidate logits against the reference (Polygraphy's set, and more)."""

    max_abs: float
    mean_abs: float
    max_rel: float  # |c - r| / |r|, over elements with |r| > 0
    min_cosine: float  # worst row's cosine similarity
    mean_cosine: float
    top1_agreement: float  # fraction of inputs with the same top-1 class
    top5_agreement: float  # fraction with the same top-k set, k = min(5, num_labels)
    required_atol: float  # the smallest atol that passes with rtol = 0
    required_rtol: float  # the smallest rtol that passes with atol = 0
    accuracy: float | None = None  # candidate top-1 accuracy against the labels, when labelled


def logit_stats(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> LogitStats:
    if reference.shape != candidate.shape:
        raise InputShapeError(f"logits shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    diff = np.abs(cand - ref)
    nonzero = np.abs(ref) > 0
    rel = diff[nonzero] / np.abs(ref[nonzero])
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = np.where(norms > 0, (ref * cand).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)
    k = min(5, ref.shape[1])
    top_ref = np.sort(np.argsort(-ref, axis=1, kind="stable")[:, :k], axis=1)
    top_cand = np.sort(np.argsort(-cand, axis=1, kind="stable")[:, :k], axis=1)
    accuracy = None
    if labels is not None and (labels != UNLABELLED).all():
        accuracy = float((cand.argmax(axis=1) == labels).mean())
    return LogitStats(
        max_abs=float(diff.max()), mean_abs=float(diff.mean()), max_rel=float(rel.max()) if rel.size else 0.0,
        min_cosine=float(cosine.min()), mean_cosine=float(cosine.mean()),
        top1_agreement=float((ref.argmax(axis=1) == cand.argmax(axis=1)).mean()),
        top5_agreement=float((top_ref == top_cand).all(axis=1).mean()),
        required_atol=float(diff.max()), required_rtol=float(rel.max()) if rel.size else 0.0,
        accuracy=accuracy,
    )


def failures(reference: np.ndarray, candidate: np.ndarray, stats: LogitStats, tolerance: Tolerance) -> list[str]:
    """Why ``candidate`` fails ``tolerance`` (empty when it passes)."""
    out = []
    bound = tolerance.atol + tolerance.rtol * np.abs(reference.astype(np.float64))
    over = np.abs(candidate.astype(np.float64) - reference.astype(np.float64)) > bound
    if over.any():
        out.append(f"{int(over.sum())} of {over.size} logits outside atol={tolerance.atol:g} + rtol={tolerance.rtol:g}*|ref|")
    if stats.min_cosine < tolerance.min_cosine:
        out.append(f"cosine {stats.min_cosine:.6f} < {tolerance.min_cosine:g}")
    if stats.top1_agreement < tolerance.min_top1:
        out.append(f"top-1 agreement {stats.top1_agreement:.1%} < {tolerance.min_top1:.1%}")
    return out


@dataclass(frozen=True)
class CandidateResult:
    name: str  # what the user passed (file, backend)
    backend: str
    precision: str
    device: str
    stats: LogitStats
    tolerance: Tolerance
    failures: tuple[str, ...]
    seconds: float  # time spent running the inputs (not a benchmark: includes first-run warm-up)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class ComparisonReport:
    """All candidates against one reference; truthy when every candidate passes."""

    reference: str
    reference_accuracy: float | None
    inputs: str
    num_inputs: int
    candidates: tuple[CandidateResult, ...] = field(default_factory=tuple)
    not_compared: dict[str, str] = field(default_factory=dict)  # candidate -> why it could not run here

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.candidates)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        for entry, candidate in zip(out["candidates"], self.candidates):
            entry["passed"] = candidate.passed
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def format_table(self) -> str:
        acc = "" if self.reference_accuracy is None else f", accuracy {self.reference_accuracy:.1%}"
        lines = [f"reference: {self.reference}{acc}", f"inputs: {self.inputs} ({self.num_inputs} clips)", ""]
        header = ("candidate", "prec", "max abs", "mean abs", "max rel", "min cos", "top-1", "top-5", "accuracy", "verdict")
        rows = [header]
        for c in self.candidates:
            s = c.stats
            rows.append((
                c.name, c.precision, f"{s.max_abs:.2e}", f"{s.mean_abs:.2e}", f"{s.max_rel:.2e}", f"{s.min_cosine:.6f}",
                f"{s.top1_agreement:.1%}", f"{s.top5_agreement:.1%}", "-" if s.accuracy is None else f"{s.accuracy:.1%}",
                "PASS" if c.passed else "FAIL",
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for r in rows:
            lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
        lines.append("")
        for c in self.candidates:
            t = c.tolerance
            lines.append(
                f"{c.name}: tolerance atol={t.atol:g} rtol={t.rtol:g} cos>={t.min_cosine:g} top-1>={t.min_top1:.0%}; "
                f"minimum that passes: atol={c.stats.required_atol:.3g} (rtol=0) or rtol={c.stats.required_rtol:.3g} (atol=0)"
            )
            for reason in c.failures:
                lines.append(f"  FAIL: {reason}")
        for name, why in self.not_compared.items():
            lines.append(f"not compared: {name} ({why})")
        lines.append("")
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


def check_compatible(reference: "Runtime", candidate: "Runtime", name: str) -> None:
    """A candidate must take the reference's input and produce its labels, else the numbers mean nothing."""
    ref_shape, cand_shape = reference.input_spec.frame_shape, candidate.input_spec.frame_shape
    if ref_shape != cand_shape or reference.num_labels != candidate.num_labels:
        raise ModelFileError(
            f"{name} does not belong to the reference model: it takes clips {cand_shape} with "
            f"{candidate.num_labels} labels, the reference {ref_shape} with {reference.num_labels}"
        )
    if reference.id2label != candidate.id2label:
        raise ModelFileError(f"{name} has other labels than the reference model (exported from another checkpoint?)")


def compare_runtimes(
    reference: "Runtime",
    candidates: dict[str, "Runtime"],
    inputs: CompareInputs,
    tolerances: dict[str, Tolerance],
    *,
    reference_name: str = "pytorch fp32",
    batch_size: int = 8,
    progress: Callable[[str], None] | None = None,
) -> ComparisonReport:
    """Run ``inputs`` through the reference and every candidate and judge each against its tolerance."""
    import time

    for name, runtime in candidates.items():
        check_compatible(reference, runtime, name)
    labels = inputs.labels if inputs.labelled else None
    if progress:
        progress(f"running the reference ({reference_name}) on {len(inputs.pixel_values)} clips")
    ref = reference.run_batches(inputs.pixel_values, batch_size)
    ref_accuracy = float((ref.argmax(axis=1) == labels).mean()) if labels is not None else None
    results = []
    for name, runtime in candidates.items():
        if progress:
            progress(f"running {name}")
        started = time.perf_counter()
        out = runtime.run_batches(inputs.pixel_values, batch_size)
        seconds = time.perf_counter() - started
        stats = logit_stats(ref, out, labels)
        tolerance = tolerances[name]
        results.append(CandidateResult(
            name=name, backend=runtime.backend, precision=runtime.precision, device=runtime.device,
            stats=stats, tolerance=tolerance, failures=tuple(failures(ref, out, stats, tolerance)), seconds=seconds,
        ))
    return ComparisonReport(reference_name, ref_accuracy, inputs.source, len(inputs.pixel_values), tuple(results))
