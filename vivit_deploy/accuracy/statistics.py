"""How far each candidate's logits drift from PyTorch fp32 on the same inputs, and the verdict.

The numbers (Polygraphy's per-output error statistics, plus top-k agreement and accuracy against labels)
live in result objects with a verdict; the CLI prints them as a table or JSON. Numpy only: the runtimes
bring their own libraries.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from vivit_deploy.accuracy import evaluation
from vivit_deploy.accuracy.evaluation import ALPHA, Accuracy, CandidateAccuracy, Flip
from vivit_deploy.accuracy.gates import Gate, GateResult, judge
from vivit_deploy.accuracy.inputs import UNLABELLED, CompareInputs
from vivit_deploy.accuracy.tolerances import Tolerance
from vivit_deploy.files import json_text
from vivit_deploy.errors import InputShapeError, ModelFileError
from vivit_deploy.model.config import schedule_text

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
    """Cosine similarity of each row (clip) of two (clips, values) arrays; 1 where either row is all zeros, NaN where
    either holds a NaN or an infinity (no similarity to speak of)."""
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
        cosine = np.where(norms > 0, (reference * candidate).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)
    finite = np.isfinite(reference).all(axis=1) & np.isfinite(candidate).all(axis=1)
    return np.where(finite, cosine, np.nan)


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
    nonfinite = int((~np.isfinite(candidate)).sum())
    if nonfinite:
        out.append(f"{nonfinite} of {candidate.size} logits are NaN or infinite")
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
    failures: tuple[str, ...]  # why the logits fall outside the tolerance (empty when within)
    seconds: float  # time spent running the inputs (not a benchmark: includes first-run warm-up)
    geometry: str | None = None  # "T x H x W" when it runs at another geometry than the reference: the same videos
    #                              sampled and sized for it; its logits are the accuracy cost, not a numerical drift
    accuracy: CandidateAccuracy | None = None  # on labelled clips: intervals, the paired difference, McNemar
    flips: tuple[Flip, ...] = ()  # the clips whose top-1 changed
    gates: tuple[GateResult, ...] = ()  # each --gate's verdict; empty: the logit tolerances decide
    merges_otherwise: bool = False  # its token merging differs from the reference's: like another geometry, its
    #                                 accuracy is the cost
    merge_tokens: tuple[int, ...] = ()  # then its r per layer (empty: it does not merge, the reference does)
    token_counts: tuple[int, ...] = ()  # ... and the tokens each of its layers hands on

    @property
    def passed(self) -> bool:
        if self.gates:
            return all(g.passed for g in self.gates)
        return not self.failures

    @property
    def failed_gates(self) -> list[str]:
        return [g.gate for g in self.gates if not g.passed]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(dataclasses.replace(self, accuracy=None, flips=(), gates=()))
        out.update(passed=self.passed, accuracy=None if self.accuracy is None else self.accuracy.to_dict(),
                   flips=[f.to_dict() for f in self.flips], gates=[g.to_dict() for g in self.gates],
                   failed_gates=self.failed_gates)
        return out


@dataclass(frozen=True)
class ComparisonReport:
    """All candidates against one reference; truthy when every candidate passes every gate."""

    reference: str
    reference_accuracy: float | None  # top-1 on the labelled clips
    inputs: str
    num_inputs: int  # clips (each seen through ``views`` temporal views)
    candidates: tuple[CandidateResult, ...] = field(default_factory=tuple)
    not_compared: dict[str, str] = field(default_factory=dict)  # candidate -> why it could not run here
    layer_drift: dict[str, Any] = field(default_factory=dict)  # candidate -> accuracy.layers.LayerDriftReport (--layers)
    layers_skipped: dict[str, str] = field(default_factory=dict)  # candidate -> why it has no per-layer drift
    reference_detail: Accuracy | None = None  # the reference's top-1/top-k/per-class accuracy with intervals
    views: int = 1
    gates: tuple[Gate, ...] = ()

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.candidates)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        out = asdict(dataclasses.replace(self, layer_drift={}, candidates=(), reference_detail=None, gates=()))
        out["passed"] = self.passed
        del out["layer_drift"]
        out["gates"] = [g.name for g in self.gates]
        out["reference_detail"] = None if self.reference_detail is None else self.reference_detail.to_dict()
        out["candidates"] = []
        for candidate in self.candidates:
            entry = candidate.to_dict()
            drift = self.layer_drift.get(candidate.name)
            if drift is not None:
                layers = drift.to_dict()
                entry.update(layers=layers["layers"], first_failing_layer=layers["first_failing_layer"],
                             first_failing=layers["first_failing"], layer_diagnosis=layers["diagnosis"],
                             embeddings=layers["embeddings"], final_norm=layers["final_norm"],
                             logits_drift=layers["logits"], layers_min_cosine=layers["min_cosine"])
            out["candidates"].append(entry)
        return out

    def to_json(self) -> str:
        return json_text(self.to_dict())

    def format_table(self, max_flips: int = 20) -> str:
        acc = "" if self.reference_accuracy is None else f", accuracy {self.reference_accuracy:.1%}"
        views = f", {self.views} temporal views each, logits averaged" if self.views > 1 else ""
        lines = [f"reference: {self.reference}{acc}", f"inputs: {self.inputs} ({self.num_inputs} clips{views})", ""]
        header = ("candidate", "prec", "max abs", "mean abs", "max rel", "min cos", "top-1", "top-5", "accuracy", "verdict")
        rows = [header]
        for c in self.candidates:
            s = c.stats
            rows.append((
                c.name, c.precision, f"{s.max_abs:.2e}", f"{s.mean_abs:.2e}", f"{s.max_rel:.2e}", f"{s.min_cosine:.6f}",
                f"{s.top1_agreement:.1%}", f"{s.top5_agreement:.1%}", "-" if s.accuracy is None else f"{s.accuracy:.1%}",
                "PASS" if c.passed else "FAIL",
            ))
        lines += _columns(rows)
        lines.append("")
        for c in self.candidates:
            lines += _candidate_notes(c, self.reference_accuracy)
        for name, why in self.not_compared.items():
            lines.append(f"not compared: {name} ({why})")
        if self.reference_detail is not None:
            lines += ["", *self._accuracy_lines()]
        flipped = [c for c in self.candidates if c.flips]
        for c in flipped:
            lines += ["", f"flips of {c.name}: {len(c.flips)} clip(s) whose top-1 changed"]
            rows = [("clip", "label", "reference (p)", "candidate (p)", "")]
            rows += [(f.name, f.label or "-", f"{f.reference} ({f.reference_probability:.3f})",
                      f"{f.candidate} ({f.candidate_probability:.3f})", f.change) for f in c.flips[:max_flips]]
            lines += _columns(rows, indent="  ")
            if len(c.flips) > max_flips:
                lines.append(f"  ... and {len(c.flips) - max_flips} more (every flip is in --json and --html)")
        for drift in self.layer_drift.values():
            lines += ["", drift.format_table()]
        for name, why in self.layers_skipped.items():
            lines.append(f"no per-layer drift: {name} ({why})")
        lines.append("")
        lines.append(f"gates: {', '.join(g.name for g in self.gates) or 'logits'}")
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)

    def _accuracy_lines(self) -> list[str]:
        ref = self.reference_detail
        k = ref.k
        lines = [f"accuracy on {ref.top1.n} labelled clips: 95% Wilson intervals; the difference to the reference with "
                 "Newcombe's paired interval; b / c: clips only the reference / only the candidate got right; McNemar's "
                 f"exact test on them, different below p = {ALPHA:g}"]
        rows = [("model", "top-1", f"top-{k}", "top-1 difference (points)", "b / c", "McNemar p", "")]
        rows.append(("reference", ref.top1.format(), ref.topk.format(), "", "", "", ""))
        for c in self.candidates:
            if c.accuracy is not None:
                a, d = c.accuracy.accuracy, c.accuracy.difference
                rows.append((c.name, a.top1.format(), a.topk.format(),
                             f"{d.difference * 100:+.2f} [{d.low * 100:+.2f}, {d.high * 100:+.2f}]",
                             f"{d.only_reference} / {d.only_candidate}", f"{d.p_value:.3g}",
                             "different" if d.different else "not different"))
        lines += _columns(rows, indent="  ")
        classes = list(ref.per_class)
        header = ("class (top-1)", "reference", *[c.name for c in self.candidates if c.accuracy is not None])
        rows = [header]
        for cls in classes:
            rows.append((cls, ref.per_class[cls].format(),
                         *[c.accuracy.accuracy.per_class[cls].format() for c in self.candidates if c.accuracy is not None]))
        lines += ["", *_columns(rows, indent="  ")]
        return lines


def _columns(rows: list[tuple[str, ...]], indent: str = "") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def merging_note(merge_tokens: tuple[int, ...], token_counts: tuple[int, ...]) -> str:
    """"merges tokens (r 8, 8, 8, 8; 65 -> 57, 49, 41, 33 tokens)": what a merged candidate does, in words."""
    return f"merges tokens (ToMe, r {schedule_text(merge_tokens)} per layer; tokens after each layer {', '.join(map(str, token_counts))})"


def _candidate_notes(c: CandidateResult, reference_accuracy: float | None) -> list[str]:
    t = c.tolerance
    if c.geometry or c.merges_otherwise:
        cost = "" if c.stats.accuracy is None or reference_accuracy is None else (
            f"; accuracy {c.stats.accuracy:.1%} against the reference's {reference_accuracy:.1%} "
            f"({(c.stats.accuracy - reference_accuracy) * 100:+.1f} points)")
        what = [f"runs at {c.geometry} (frames x height x width) on the same videos, sampled and sized for it"] \
            if c.geometry else []
        if c.merges_otherwise:
            what.append(merging_note(c.merge_tokens, c.token_counts) + " unlike the reference"
                        if c.merge_tokens else "does not merge tokens unlike the reference")
        lines = [f"{c.name}: {' and '.join(what)}: logit tolerances do not apply{cost} "
                 f"(the logits' drift: cosine {c.stats.min_cosine:.4f} at worst, top-1 agreement "
                 f"{c.stats.top1_agreement:.1%})"]
    else:
        lines = [f"{c.name}: tolerance atol={t.atol:g} rtol={t.rtol:g} cos>={t.min_cosine:g} top-1>={t.min_top1:.0%}; "
                 f"minimum that passes: atol={c.stats.required_atol:.3g} (rtol=0) or rtol={c.stats.required_rtol:.3g} (atol=0)"]
        if not c.gates:
            lines += [f"  FAIL: {reason}" for reason in c.failures]
    for gate in c.gates:
        lines.append(f"  gate {gate.gate}: {'pass' if gate.passed else 'FAIL'}: {gate.detail}")
    return lines


def _merging(runtime: "Runtime") -> tuple[int, ...]:
    """A runtime's token merging, r per layer, or () when it merges none."""
    schedule = tuple(getattr(runtime, "merge_tokens", ()) or ())
    return schedule if any(schedule) else ()


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
    gates: tuple[Gate, ...] | None = None,
) -> ComparisonReport:
    """Run ``inputs`` through the reference and every candidate and judge each against its tolerance.

    ``candidate_inputs``: a candidate at another geometry gets the same videos made for it (same clips, labels and
    order); its logit tolerances do not apply (it computes another function), its accuracy is what it costs.
    Clips seen through several views (``inputs.views``) are judged on their logits averaged over the views, on both
    sides. ``gates`` (``accuracy.gates``) decide each candidate's verdict; without them, its logit tolerances do."""
    import time

    own = candidate_inputs or {}
    for name, runtime in candidates.items():
        check_compatible(reference, runtime, name, own_inputs=name in own)
    labels = inputs.labels if inputs.labelled else None
    if progress:
        progress(f"running the reference ({reference_name}) on {len(inputs.pixel_values)} clips")
    ref = reference.run_batches(inputs.pixel_values, batch_size)
    ref = inputs.per_clip(ref)
    ref_accuracy = float((ref.argmax(axis=1) == labels).mean()) if labels is not None else None
    id2label = reference.id2label
    detail = evaluation.accuracy(ref, labels, id2label) if labels is not None else None
    gates = tuple(gates or ())
    results = []
    for name, runtime in candidates.items():
        if progress:
            progress(f"running {name}")
        mine = own.get(name, inputs)
        started = time.perf_counter()
        out = mine.per_clip(runtime.run_batches(mine.pixel_values, batch_size))
        seconds = time.perf_counter() - started
        stats = logit_stats(ref, out, labels)
        tolerance = tolerances[name]
        geometry = "x".join(map(str, (runtime.config.num_frames, runtime.config.image_height,
                                      runtime.config.image_width))) if name in own else None
        mine, theirs = _merging(runtime), _merging(reference)
        merges_otherwise = mine != theirs
        other = " and ".join(([f"another geometry ({geometry})"] if geometry else [])
                             + (["token merging"] if merges_otherwise else [])) or None
        logit_failures = () if other else tuple(failures(ref, out, stats, tolerance))
        accuracy = evaluation.compare_accuracy(ref, out, labels, id2label) if labels is not None else None
        verdicts = tuple(judge(gate, logit_failures=logit_failures, other_function=other,
                               candidate_top1=stats.accuracy, reference_top1=ref_accuracy) for gate in gates)
        results.append(CandidateResult(
            name=name, backend=runtime.backend, precision=runtime.precision, device=runtime.device,
            stats=stats, tolerance=tolerance, seconds=seconds, geometry=geometry, failures=logit_failures,
            accuracy=accuracy, flips=tuple(evaluation.flips(ref, out, inputs.names, id2label, inputs.labels)),
            gates=verdicts, merges_otherwise=merges_otherwise, merge_tokens=mine if merges_otherwise else (),
            token_counts=runtime.config.token_counts(mine) if merges_otherwise and mine else (),
        ))
    return ComparisonReport(reference_name, ref_accuracy, inputs.source, len(inputs), tuple(results),
                            reference_detail=detail, views=inputs.views, gates=gates)
