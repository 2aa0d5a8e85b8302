"""How far each candidate's logits drift from PyTorch fp32 on the same inputs, and the verdict.

The numbers (Polygraphy's per-output error statistics, plus top-k agreement and accuracy against labels)
live in result objects with a verdict; the CLI prints them as a table or JSON. Numpy only: the runtimes
bring their own libraries.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from vivit_deploy.accuracy.inputs import UNLABELLED, CompareInputs
from vivit_deploy.accuracy.tolerances import Tolerance
from vivit_deploy.errors import InputShapeError, ModelFileError

if TYPE_CHECKING:
    from vivit_deploy.runtimes.base import Runtime


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


def row_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row (clip) of two (clips, values) arrays; 1 where either row is all zeros."""
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    return np.where(norms > 0, (reference * candidate).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)


def logit_stats(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> LogitStats:
    if reference.shape != candidate.shape:
        raise InputShapeError(f"logits shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    diff = np.abs(cand - ref)
    nonzero = np.abs(ref) > 0
    rel = diff[nonzero] / np.abs(ref[nonzero])
    cosine = row_cosines(ref, cand)
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
    geometry: str | None = None  # "T x H x W" when it runs at another geometry than the reference: the same videos
    #                              sampled and sized for it; its logits are the accuracy cost, not a numerical drift

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
    layer_drift: dict[str, Any] = field(default_factory=dict)  # candidate -> accuracy.layers.LayerDriftReport (--layers)
    layers_skipped: dict[str, str] = field(default_factory=dict)  # candidate -> why it has no per-layer drift

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.candidates)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        out = asdict(dataclasses.replace(self, layer_drift={}))
        out["passed"] = self.passed
        del out["layer_drift"]
        for entry, candidate in zip(out["candidates"], self.candidates):
            entry["passed"] = candidate.passed
            drift = self.layer_drift.get(candidate.name)
            if drift is not None:
                layers = drift.to_dict()
                entry.update(layers=layers["layers"], first_failing_layer=layers["first_failing_layer"],
                             layer_diagnosis=layers["diagnosis"], embeddings=layers["embeddings"],
                             final_norm=layers["final_norm"], layers_min_cosine=layers["min_cosine"])
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
                "geometry" if c.geometry else "PASS" if c.passed else "FAIL",
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for r in rows:
            lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
        lines.append("")
        for c in self.candidates:
            t = c.tolerance
            if c.geometry:
                cost = "" if c.stats.accuracy is None or self.reference_accuracy is None else (
                    f"; accuracy {c.stats.accuracy:.1%} against the reference's {self.reference_accuracy:.1%} "
                    f"({(c.stats.accuracy - self.reference_accuracy) * 100:+.1f} points)")
                lines.append(f"{c.name}: runs at {c.geometry} (frames x height x width) on the same videos, sampled and "
                             f"sized for it: logit tolerances do not apply{cost}")
                continue
            lines.append(
                f"{c.name}: tolerance atol={t.atol:g} rtol={t.rtol:g} cos>={t.min_cosine:g} top-1>={t.min_top1:.0%}; "
                f"minimum that passes: atol={c.stats.required_atol:.3g} (rtol=0) or rtol={c.stats.required_rtol:.3g} (atol=0)"
            )
            for reason in c.failures:
                lines.append(f"  FAIL: {reason}")
        for name, why in self.not_compared.items():
            lines.append(f"not compared: {name} ({why})")
        for drift in self.layer_drift.values():
            lines += ["", drift.format_table()]
        for name, why in self.layers_skipped.items():
            lines.append(f"no per-layer drift: {name} ({why})")
        lines.append("")
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


def check_compatible(reference: "Runtime", candidate: "Runtime", name: str, own_inputs: bool = False) -> None:
    """A candidate must take the reference's input and produce its labels, else the numbers mean nothing; one with
    ``own_inputs`` (another geometry, the same videos) must produce the labels."""
    ref_shape, cand_shape = reference.input_spec.frame_shape, candidate.input_spec.frame_shape
    if (ref_shape != cand_shape and not own_inputs) or reference.num_labels != candidate.num_labels:
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
    candidate_inputs: dict[str, CompareInputs] | None = None,
) -> ComparisonReport:
    """Run ``inputs`` through the reference and every candidate and judge each against its tolerance.

    ``candidate_inputs``: a candidate at another geometry gets the same videos made for it (same clips, labels and
    order); its logit tolerances do not apply (it computes another function), its accuracy is what it costs."""
    import time

    own = candidate_inputs or {}
    for name, runtime in candidates.items():
        check_compatible(reference, runtime, name, own_inputs=name in own)
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
        out = runtime.run_batches(own[name].pixel_values if name in own else inputs.pixel_values, batch_size)
        seconds = time.perf_counter() - started
        stats = logit_stats(ref, out, labels)
        tolerance = tolerances[name]
        geometry = "x".join(map(str, (runtime.config.num_frames, runtime.config.image_height,
                                      runtime.config.image_width))) if name in own else None
        results.append(CandidateResult(
            name=name, backend=runtime.backend, precision=runtime.precision, device=runtime.device,
            stats=stats, tolerance=tolerance, seconds=seconds, geometry=geometry,
            failures=() if geometry else tuple(failures(ref, out, stats, tolerance)),
        ))
    return ComparisonReport(reference_name, ref_accuracy, inputs.source, len(inputs.pixel_values), tuple(results))
