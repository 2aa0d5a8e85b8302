"""Accuracy on labelled clips with its uncertainty, and whether a candidate classifies differently from the reference.

What a release decision reads from ``compare`` on labelled videos:

- top-1 and top-k accuracy of the reference and of every candidate, each with a 95% Wilson score interval (scipy's
  ``binomtest(...).proportion_ci(method="wilson")``): at the sizes of a release set (hundreds of clips, accuracy near
  100%) it keeps its coverage where the normal approximation's interval runs past 100%, and it is narrower than the
  exact Clopper-Pearson interval, which over-covers;
- the paired difference candidate minus reference with Newcombe's square-and-add interval for paired proportions
  (Newcombe 1998, Statistics in Medicine 17:2635, method 10: the two Wilson intervals combined with the correlation
  of the paired outcomes), and McNemar's exact test on the discordant clips (scipy's two-sided binomial test of
  b against b + c at 1/2): a candidate is *different* only when that test rejects at ``ALPHA``; a few clips that
  changed on a small set are not evidence;
- accuracy per class, and the flips: every clip whose top-1 changed, with the true label, both predictions and
  the probabilities each side gave.

scipy serves every piece (its exact binomial test and Wilson interval); statsmodels would add the same tests with a
larger install and no paired-difference interval either. Newcombe's combination is the one formula written here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from vivit_deploy.errors import ConfigError

CONFIDENCE = 0.95
ALPHA = 0.05  # McNemar's test: "different" below this p-value


def _binomtest():
    try:
        from scipy.stats import binomtest
    except ImportError:
        raise ConfigError("accuracy intervals and McNemar's test need scipy: pip install scipy") from None
    return binomtest


@dataclass(frozen=True)
class Proportion:
    """k of n, with its Wilson score interval."""

    k: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def format(self) -> str:
        return f"{self.value:.1%} [{self.low:.1%}, {self.high:.1%}]" if self.n else "-"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "value": self.value}


def proportion(k: int, n: int, confidence: float = CONFIDENCE) -> Proportion:
    """``k`` successes of ``n`` with the Wilson score interval at ``confidence``."""
    if n == 0:
        return Proportion(0, 0, float("nan"), float("nan"))
    ci = _binomtest()(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return Proportion(int(k), int(n), float(ci.low), float(ci.high))


def mcnemar_exact(only_reference: int, only_candidate: int) -> float:
    """McNemar's exact two-sided p-value: of the b + c clips exactly one side got right, is b against c a fair coin's
    split? 1.0 when no clip is discordant."""
    discordant = only_reference + only_candidate
    if discordant == 0:
        return 1.0
    return float(_binomtest()(int(only_candidate), int(discordant), 0.5, alternative="two-sided").pvalue)


@dataclass(frozen=True)
class PairedDifference:
    """Candidate accuracy minus reference accuracy on the same clips, with its interval and McNemar's test."""

    both_right: int
    only_reference: int  # b: the reference right, the candidate wrong
    only_candidate: int  # c: the candidate right, the reference wrong
    both_wrong: int
    difference: float
    low: float
    high: float
    p_value: float

    @property
    def n(self) -> int:
        return self.both_right + self.only_reference + self.only_candidate + self.both_wrong

    @property
    def different(self) -> bool:
        return self.p_value < ALPHA

    def format(self) -> str:
        verdict = "different" if self.different else "not different"
        return (f"{self.difference * 100:+.2f} points [{self.low * 100:+.2f}, {self.high * 100:+.2f}], McNemar p = "
                f"{self.p_value:.3g} ({self.only_reference} clips only the reference got right, {self.only_candidate} "
                f"only the candidate): {verdict}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n": self.n, "different": self.different}


def paired_difference(reference_right: np.ndarray, candidate_right: np.ndarray,
                      confidence: float = CONFIDENCE) -> PairedDifference:
    """Newcombe's square-and-add interval for p_candidate - p_reference on paired outcomes, and McNemar's exact test."""
    ref = np.asarray(reference_right, dtype=bool)
    cand = np.asarray(candidate_right, dtype=bool)
    a, b = int((ref & cand).sum()), int((ref & ~cand).sum())
    c, d = int((~ref & cand).sum()), int((~ref & ~cand).sum())
    n = a + b + c + d
    p_value = mcnemar_exact(b, c)
    if n == 0:
        return PairedDifference(a, b, c, d, float("nan"), float("nan"), float("nan"), p_value)
    p_ref, p_cand = (a + b) / n, (a + c) / n
    ref_ci, cand_ci = proportion(a + b, n, confidence), proportion(a + c, n, confidence)
    # phi: the correlation of the paired outcomes, as Newcombe corrects it (0 for a small positive association)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = 0.0
    if margins > 0:
        cross = a * d - b * c
        phi = (cross - n / 2) / math.sqrt(margins) if cross > n / 2 else cross / math.sqrt(margins) if cross < 0 else 0.0
    difference = p_cand - p_ref
    # the lower limit combines how far the candidate may be lower and the reference higher, the upper the reverse
    down_cand, up_ref = p_cand - cand_ci.low, ref_ci.high - p_ref
    up_cand, down_ref = cand_ci.high - p_cand, p_ref - ref_ci.low
    low = difference - math.sqrt(max(down_cand ** 2 + up_ref ** 2 - 2 * phi * down_cand * up_ref, 0.0))
    high = difference + math.sqrt(max(up_cand ** 2 + down_ref ** 2 - 2 * phi * up_cand * down_ref, 0.0))
    return PairedDifference(a, b, c, d, difference, max(low, -1.0), min(high, 1.0), p_value)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Probabilities along ``axis`` (the labels), computed in float64: the one softmax of every report and ranking."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def top_k_right(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Whether each clip's label is among its ``k`` highest logits (ties broken by class order, as argsort does)."""
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return (top == labels[:, None]).any(axis=1)


@dataclass(frozen=True)
class Flip:
    """A clip whose top-1 class changed between the reference and the candidate."""

    index: int
    name: str
    label: str | None  # the true label, when known
    reference: str
    reference_probability: float
    candidate: str
    candidate_probability: float

    @property
    def change(self) -> str:
        """"fixed" (the candidate is right, the reference was not), "broke" (the reverse), or "changed"."""
        if self.label is None or self.label not in (self.reference, self.candidate):
            return "changed"
        return "fixed" if self.candidate == self.label else "broke"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "change": self.change}


def flips(reference_logits: np.ndarray, candidate_logits: np.ndarray, names: Sequence[str], id2label: Mapping[int, str],
          labels: np.ndarray | None = None) -> list[Flip]:
    ref_p, cand_p = softmax(reference_logits), softmax(candidate_logits)
    ref_top, cand_top = ref_p.argmax(axis=1), cand_p.argmax(axis=1)
    out = []
    for i in np.flatnonzero(ref_top != cand_top):
        truth = None if labels is None or labels[i] < 0 else id2label.get(int(labels[i]), str(labels[i]))
        out.append(Flip(int(i), names[i], truth, id2label.get(int(ref_top[i]), str(ref_top[i])),
                        float(ref_p[i, ref_top[i]]), id2label.get(int(cand_top[i]), str(cand_top[i])),
                        float(cand_p[i, cand_top[i]])))
    return out


@dataclass(frozen=True)
class Accuracy:
    """One model's accuracy on the labelled clips: top-1, top-k, and per class (top-1)."""

    top1: Proportion
    topk: Proportion
    k: int
    per_class: dict[str, Proportion]

    def to_dict(self) -> dict[str, Any]:
        return {"top1": self.top1.to_dict(), f"top{self.k}": self.topk.to_dict(), "k": self.k,
                "per_class": {name: p.to_dict() for name, p in self.per_class.items()}}


def accuracy(logits: np.ndarray, labels: np.ndarray, id2label: Mapping[int, str],
             confidence: float = CONFIDENCE) -> Accuracy:
    n = len(labels)
    k = min(5, logits.shape[1])
    right = logits.argmax(axis=1) == labels
    per_class = {}
    for cls in sorted(set(int(v) for v in labels)):
        mine = labels == cls
        per_class[id2label.get(cls, str(cls))] = proportion(int(right[mine].sum()), int(mine.sum()), confidence)
    return Accuracy(proportion(int(right.sum()), n, confidence),
                    proportion(int(top_k_right(logits, labels, k).sum()), n, confidence), k, per_class)


@dataclass(frozen=True)
class CandidateAccuracy:
    """A candidate against the reference on the same labelled clips."""

    accuracy: Accuracy
    difference: PairedDifference  # top-1, candidate minus reference

    def to_dict(self) -> dict[str, Any]:
        return {**self.accuracy.to_dict(), "difference": self.difference.to_dict()}


def compare_accuracy(reference_logits: np.ndarray, candidate_logits: np.ndarray, labels: np.ndarray,
                     id2label: Mapping[int, str], confidence: float = CONFIDENCE) -> CandidateAccuracy:
    right_ref = reference_logits.argmax(axis=1) == labels
    right_cand = candidate_logits.argmax(axis=1) == labels
    return CandidateAccuracy(accuracy(candidate_logits, labels, id2label, confidence),
                             paired_difference(right_ref, right_cand, confidence))


__all__ = ["ALPHA", "CONFIDENCE", "Accuracy", "CandidateAccuracy", "Flip", "PairedDifference", "Proportion", "accuracy",
           "compare_accuracy", "flips", "mcnemar_exact", "paired_difference", "proportion", "softmax", "top_k_right"]
