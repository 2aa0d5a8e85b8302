"""``vivit-export --merge-tokens auto``: the largest token merging that passes an accuracy gate on the user's clips.

Token merging (ToMe) trades accuracy for speed, and how much depends on the clips: the search measures it. It runs
the model in PyTorch fp32 at each r tried (the same r in every layer) on the labelled clips, judges each against
the unmerged model with compare's machinery (top-1 with its Wilson interval, the paired difference with Newcombe's
interval and McNemar's test, the flips) and the gate (``accuracy:99%``: at least that share of the unmerged model's
top-1, MLPerf's rule), and keeps the largest r that passes. The curve (r, tokens, GFLOPs, accuracy with its interval,
milliseconds per clip on this CPU) goes into the export's report and, as a picture, into a PNG.

What it measures is the merge in PyTorch fp32; the exported file then computes that function at its precision and
is validated against it like any export. An r the gate passes at fp32 may lose a little more at int8: ``compare``
on the exported file says how much.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vivit_deploy.accuracy.evaluation import CandidateAccuracy, Proportion, accuracy, compare_accuracy, flips
from vivit_deploy.accuracy.gates import Gate, GateResult, judge, parse_gates
from vivit_deploy.accuracy.inputs import CompareInputs
from vivit_deploy.errors import ConfigError

DEFAULT_GATE = "accuracy:99%"
DEFAULT_TRIES = 8  # r values tried when none are given: 0 and 7 more, evenly spaced up to the largest that changes anything
BATCH = 8  # clips per forward pass while measuring


@dataclass(frozen=True)
class MergeSearchOptions:
    """Where the labelled clips come from (``videos`` with its labels.json, or ``manifest`` with a label column),
    the gate a merged model must pass (``accuracy:SHARE``), the r values to try (None: ``default_tries``), the
    number of temporal views per clip, and where to draw the curve (``plot``; None: beside the exported file, when
    matplotlib is installed)."""

    videos: str | os.PathLike | None = None
    manifest: str | os.PathLike | None = None
    gate: str = DEFAULT_GATE
    tries: tuple[int, ...] | None = None
    views: int = 1
    plot: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        if (self.videos is None) == (self.manifest is None):
            raise ConfigError("merge_tokens='auto' measures accuracy on labelled clips: give videos= (a directory "
                              "with labels.json) or manifest= (a file with a label column), one of them")
        gates = parse_gates([self.gate])
        if any(g.kind != "accuracy" for g in gates) or len(gates) != 1:
            raise ConfigError(f"gate= {self.gate!r}: merging computes other logits than the unmerged model, so only an "
                              "accuracy gate applies: accuracy:99%, accuracy:99.9%, ...")
        if self.tries is not None:
            tries = tuple(self.tries)
            if not tries or any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0 for r in tries):
                raise ConfigError(f"tries= takes whole numbers of tokens, 0 or more; got {list(self.tries)}")
            object.__setattr__(self, "tries", tuple(sorted({int(r) for r in tries})))
        if self.views < 1:
            raise ConfigError(f"views= must be at least 1, got {self.views}")

    @property
    def parsed_gate(self) -> Gate:
        return parse_gates([self.gate])[0]


@dataclass(frozen=True)
class MergePoint:
    """One r tried: what it keeps of the model's work and of its accuracy."""

    r: int
    token_counts: tuple[int, ...]
    gflop: float
    accuracy: Proportion  # top-1 on the clips
    compared: CandidateAccuracy | None  # against the unmerged model (None for r = 0, the reference itself)
    flips: int
    ms_per_clip: float  # PyTorch fp32 on this CPU, batches of BATCH clips
    gate: GateResult

    def to_dict(self) -> dict[str, Any]:
        return {"r": self.r, "token_counts": list(self.token_counts), "gflop": self.gflop,
                "top1": self.accuracy.to_dict(), "ms_per_clip": self.ms_per_clip, "flips": self.flips,
                "difference": None if self.compared is None else self.compared.difference.to_dict(),
                "gate": self.gate.to_dict()}


@dataclass(frozen=True)
class MergeSearch:
    """Every r tried, in order, and the one chosen (None when no r above 0 passes the gate)."""

    gate: Gate
    clips: str  # where the clips came from
    num_clips: int
    device: str
    points: tuple[MergePoint, ...]
    plot: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def chosen(self) -> int | None:
        passing = [p.r for p in self.points if p.r > 0 and p.gate.passed]
        return max(passing) if passing else None

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.gate.name, "clips": self.clips, "num_clips": self.num_clips, "device": self.device,
                "chosen": self.chosen, "plot": self.plot, "notes": list(self.notes),
                "curve": [p.to_dict() for p in self.points]}

    def format(self) -> str:
        lines = [f"token merging, chosen by {self.gate.describe()}",
                 f"  on {self.num_clips} clips ({self.clips}); PyTorch fp32 on {self.device}",
                 f"  {'r':>5}  {'tokens out':>10}  {'GFLOP':>9}  {'top-1 [95% interval]':>24}  {'vs r=0 (points)':>16}  "
                 f"{'flips':>5}  {'ms/clip':>8}  gate"]
        for p in self.points:
            difference = "-" if p.compared is None else f"{p.compared.difference.difference * 100:+.2f}"
            mark = "chosen" if p.r == self.chosen else ("pass" if p.gate.passed else "fail")
            lines.append(f"  {p.r:>5}  {p.token_counts[-1]:>10}  {p.gflop:>9.4g}  {p.accuracy.format():>24}  "
                         f"{difference:>16}  {p.flips:>5}  {p.ms_per_clip:>8.2f}  {mark}")
        if self.chosen is None:
            lines.append("  no r above 0 passes the gate")
        lines += [f"  note: {n}" for n in self.notes]
        if self.plot:
            lines.append(f"  curve: {self.plot}")
        return "\n".join(lines)


def default_tries(config, count: int = DEFAULT_TRIES) -> tuple[int, ...]:
    """``count`` values of r from 0, evenly spaced up to the largest one that still merges more (half of the first
    layer's tokens besides the class token: beyond it every layer merges the same; Model 2's per time step)."""
    largest = max((config.token_counts((0,))[0] - 1) // 2, 1)
    return tuple(sorted({int(round(v)) for v in np.linspace(0, largest, count)}))


def search(run: Callable[[int], tuple[np.ndarray, float]], inputs: CompareInputs, config, gate: Gate,
           tries: Sequence[int], device: str, progress: Callable[[str], None] | None = None) -> MergeSearch:
    """Measure every r of ``tries`` (0 is always measured: the reference): ``run(r)`` returns the logits of every
    clip view (N * views, labels) at that r and the milliseconds per clip it took."""
    if not inputs.labelled:
        raise ConfigError(f"{inputs.source}: every clip needs a label to measure accuracy (merge_tokens='auto')")
    id2label = dict(config.id2label)
    tries = sorted({0, *tries})
    reference_logits = None
    points = []
    for r in tries:
        if progress:
            progress(f"token merging: measuring r = {r} on {len(inputs)} clips ...")
        logits, ms = run(r)
        logits = inputs.per_clip(np.asarray(logits, dtype=np.float64))
        schedule = (r,) * config.num_hidden_layers
        counts = config.token_counts(schedule)
        gflop = config.flops_per_clip(schedule) / 1e9
        if reference_logits is None:
            reference_logits = logits
            top1 = accuracy(logits, inputs.labels, id2label).top1
            point = MergePoint(r, counts, gflop, top1, None, 0, ms, GateResult(gate.name, True, "the reference"))
        else:
            compared = compare_accuracy(reference_logits, logits, inputs.labels, id2label)
            result = judge(gate, logit_failures=(), other_function="token merging", candidate_top1=compared.accuracy.top1.value,
                           reference_top1=points[0].accuracy.value)
            changed = len(flips(reference_logits, logits, inputs.names, id2label, inputs.labels))
            point = MergePoint(r, counts, gflop, compared.accuracy.top1, compared, changed, ms, result)
        points.append(point)
    notes = ()
    if points[0].accuracy.k == 0:
        notes = ("the unmerged model gets no clip right: every r passes a share of 0; check the labels",)
    return MergeSearch(gate, inputs.source, len(inputs), device, tuple(points), notes=notes)


def torch_runner(model, pixel_values: np.ndarray) -> Callable[[int], tuple[np.ndarray, float]]:
    """``run(r)`` for ``search``: ``model`` (Model 1, PyTorch) merging r tokens per layer on ``pixel_values``, in
    batches of BATCH clips, timed. The model's own merging is restored after each r."""
    import torch

    def run(r: int) -> tuple[np.ndarray, float]:
        before = model.merge_tokens
        model.set_token_merging(r)
        try:
            outputs, seconds = [], 0.0
            with torch.inference_mode():
                model(torch.from_numpy(np.ascontiguousarray(pixel_values[:BATCH])))  # warm-up: first calls allocate
                for i in range(0, len(pixel_values), BATCH):
                    batch = torch.from_numpy(np.ascontiguousarray(pixel_values[i : i + BATCH]))
                    started = time.perf_counter()
                    outputs.append(model(batch).logits.float().numpy())
                    seconds += time.perf_counter() - started
        finally:
            model.set_token_merging(list(before))
        return np.concatenate(outputs), seconds * 1000 / len(pixel_values)

    return run


def labelled_clips(options: MergeSearchOptions, config, preprocessor, progress=None) -> CompareInputs:
    """The clips ``options`` name, read and preprocessed at the model's geometry, as compare reads them."""
    from vivit_deploy.accuracy.inputs import manifest_videos, video_inputs, videos_in
    from vivit_deploy.video.preprocessing import VideoPreprocessor

    if options.videos is not None:
        videos, where = videos_in(options.videos), str(options.videos)
    else:
        videos, where = manifest_videos(options.manifest), str(options.manifest)
    unlabelled = [p.name for p, label in videos if label is None]
    if unlabelled:
        raise ConfigError(f"{where}: {len(unlabelled)} video(s) without a label ({unlabelled[0]}"
                          f"{' ...' if len(unlabelled) > 1 else ''}); merge_tokens='auto' needs every clip labelled")
    return video_inputs(videos, config, VideoPreprocessor(preprocessor), where, progress, options.views)


def plot_curve(result: MergeSearch, path: str | os.PathLike, why: str = "plot=") -> Path:
    """A PNG of the curve: top-1 with its interval against r (the gate's line, the chosen r marked) and the
    milliseconds per clip against r."""
    from vivit_deploy.accuracy.drift.plots import pyplot

    plt = pyplot(why)
    rs = [p.r for p in result.points]
    top1 = np.array([p.accuracy.value for p in result.points]) * 100
    low = top1 - np.array([p.accuracy.low for p in result.points]) * 100
    high = np.array([p.accuracy.high for p in result.points]) * 100 - top1
    fig, (acc_ax, ms_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    acc_ax.errorbar(rs, top1, yerr=[low, high], marker="o", capsize=3, label="top-1 (95% Wilson interval)")
    required = result.gate.share * result.points[0].accuracy.value * 100
    acc_ax.axhline(required, color="grey", linestyle="--", label=f"gate: {result.gate.name} of r = 0")
    if result.chosen is not None:
        chosen = next(p for p in result.points if p.r == result.chosen)
        acc_ax.scatter([chosen.r], [chosen.accuracy.value * 100], s=120, facecolors="none", edgecolors="green",
                       zorder=3, label=f"chosen: r = {chosen.r}")
    acc_ax.set(xlabel="r (tokens merged per layer)", ylabel="top-1 accuracy (%)",
               title=f"accuracy on {result.num_clips} clips")
    acc_ax.legend(fontsize=7)
    ms_ax.plot(rs, [p.ms_per_clip for p in result.points], marker="o", label="ms per clip (PyTorch fp32)")
    ms_ax.set(xlabel="r (tokens merged per layer)", ylabel="ms per clip", title=f"latency on {result.device}")
    flop_ax = ms_ax.twinx()
    flop_ax.plot(rs, [p.gflop for p in result.points], color="orange", linestyle=":", marker=".", label="GFLOP per clip")
    flop_ax.set_ylabel("GFLOP per clip")
    ms_ax.legend(loc="upper right", fontsize=7)
    flop_ax.legend(loc="center right", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["DEFAULT_GATE", "MergePoint", "MergeSearch", "MergeSearchOptions", "default_tries", "labelled_clips",
           "plot_curve", "search", "torch_runner"]
