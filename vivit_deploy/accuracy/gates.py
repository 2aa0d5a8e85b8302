"""What a candidate must meet to pass ``compare``: its release gates (``--gate``), as data.

- ``logits``: the per-precision logit tolerances (``accuracy/tolerances.py``, or the ``--atol``/``--rtol``/
  ``--min-cosine``/``--min-top1`` overrides). The default.
- ``accuracy:99%`` (or ``accuracy:99.9%``, ``accuracy:0.99``): the candidate's top-1 accuracy on the labelled clips is
  at least that share of the reference's, MLPerf Inference's rule for a quantized submission (99% of the fp32
  reference's accuracy, 99.9% for its high-accuracy category). Needs labelled inputs.

Gates combine (``--gate logits --gate accuracy:99%`` or ``--gate logits,accuracy:99%``): a candidate passes when it
passes every one, and ``compare`` exits 0 only when every candidate does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

from vivit_deploy.errors import ConfigError

DEFAULT_GATES = ("logits",)


@dataclass(frozen=True)
class Gate:
    kind: str  # "logits" or "accuracy"
    share: float | None = None  # accuracy: the share of the reference's top-1 accuracy the candidate must reach

    @property
    def name(self) -> str:
        return self.kind if self.share is None else f"accuracy:{self.share * 100:g}%"

    def describe(self) -> str:
        if self.kind == "logits":
            return "logits: within the precision's logit tolerances"
        return f"{self.name}: top-1 accuracy at least {self.share * 100:g}% of the reference's (MLPerf's rule)"


@dataclass(frozen=True)
class GateResult:
    gate: str
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_gates(specs: Iterable[str]) -> tuple[Gate, ...]:
    """``--gate`` values (each may hold several, comma-separated) to gates, each once, in the order given."""
    gates: list[Gate] = []
    for spec in specs:
        for text in (part.strip() for part in spec.split(",")):
            if not text:
                continue
            gate = _parse_one(text)
            if gate not in gates:
                gates.append(gate)
    return tuple(gates) or tuple(_parse_one(g) for g in DEFAULT_GATES)


def _parse_one(text: str) -> Gate:
    if text == "logits":
        return Gate("logits")
    kind, _, value = text.partition(":")
    if kind != "accuracy" or not value:
        raise ConfigError(f"gates= {text!r}: give logits, or accuracy:SHARE such as accuracy:99% or accuracy:99.9%")
    try:
        share = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise ConfigError(f"gates= {text!r}: {value!r} is not a share (99%, 99.9% or 0.99)") from None
    if not 0 < share <= 1:
        raise ConfigError(f"gates= {text!r}: the share of the reference's accuracy must be above 0 and at most 100%")
    return Gate("accuracy", share)


def judge(gate: Gate, *, logit_failures: tuple[str, ...], other_function: str | None, candidate_top1: float | None,
          reference_top1: float | None) -> GateResult:
    """One gate on one candidate: its logit failures (empty when within tolerance), its and the reference's top-1
    accuracy. ``other_function``: why the candidate computes another function than the reference (another geometry,
    token merging), so that logit tolerances do not apply to it and its accuracy is what it costs; None when not."""
    if gate.kind == "logits":
        if other_function:
            return GateResult(gate.name, True, f"not applicable: {other_function} computes other logits")
        if logit_failures:
            return GateResult(gate.name, False, "; ".join(logit_failures))
        return GateResult(gate.name, True, "within tolerance")
    if candidate_top1 is None or reference_top1 is None:
        raise ConfigError(f"gates= {gate.name} needs labelled clips: synthetic=N, videos_dir= a directory with labels.json, "
                          "manifest= a file with a label column, or demo=True")
    required = gate.share * reference_top1
    passed = candidate_top1 >= required - 1e-12
    return GateResult(gate.name, passed, f"top-1 {candidate_top1:.2%} {'>=' if passed else '<'} {required:.2%} "
                                         f"({gate.share * 100:g}% of the reference's {reference_top1:.2%})")


__all__ = ["DEFAULT_GATES", "Gate", "GateResult", "judge", "parse_gates"]
