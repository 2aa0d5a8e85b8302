"""The numbers of per-layer drift: per probe point (``PointDrift``) and per layer (``LayerDrift``), accumulated over
batches, and where a point sits in the order the data reaches it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vivit_deploy.accuracy.statistics import row_cosines
from vivit_deploy.model.probes import BRANCHES, PART_TITLES, ProbePoint

FP16_MAX = 65504.0
FP16_SQUARE_LIMIT = math.sqrt(FP16_MAX)  # |x| above this overflows x**2 in fp16 (a LayerNorm's variance)
FP16_SMALLEST_NORMAL = 2.0 ** -14  # below it fp16 keeps fewer significant bits (subnormals), below 2**-24 none


def flow_position(layer: int, part: str, config) -> float:
    """Where a point sits in the order the data reaches it: the embeddings, the layers (Model 2's spatial norm after
    its spatial layers), the final norm and the logits."""
    if layer >= 0:
        return layer
    if part == "spatial_norm":
        return config.num_hidden_layers - 0.5
    return -1 if part == "embeddings" else config.num_layers


def where(layer: int, part: str) -> str:
    """"layer 2" or the outside part's title (the embeddings, the final LayerNorm, the classifier)."""
    return f"layer {layer}" if layer >= 0 else PART_TITLES.get(part, part)


def fp16_step(value: float) -> float:
    """The distance between neighbouring fp16 values at ``value`` (normal range)."""
    return 2.0 ** (math.floor(math.log2(max(abs(value), FP16_SMALLEST_NORMAL))) - 10)


# ---- numbers per point ---------------------------------------------------------------------------

@dataclass
class _Running:
    """Statistics of one probe point, accumulated over batches."""

    cosine: float = 1.0
    max_abs: float = 0.0
    max_magnitude: float = 0.0
    candidate_max_magnitude: float = 0.0
    nan: int = 0
    inf: int = 0
    error_sq: float = 0.0
    reference_sq: float = 0.0

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        ref = reference.reshape(len(reference), -1).astype(np.float64)
        cand = candidate.reshape(len(candidate), -1).astype(np.float64)
        finite = np.isfinite(cand)
        self.nan += int(np.isnan(cand).sum())
        self.inf += int(np.isinf(cand).sum())
        self.max_magnitude = max(self.max_magnitude, float(np.abs(ref).max()))
        if finite.any():
            self.candidate_max_magnitude = max(self.candidate_max_magnitude, float(np.abs(cand[finite]).max()))
        if not finite.all():
            self.cosine = float("nan")
            self.max_abs = float("inf")
            self.error_sq = float("inf")
            return
        diff = cand - ref
        self.max_abs = max(self.max_abs, float(np.abs(diff).max()))
        cosine = row_cosines(ref, cand)
        if not math.isnan(self.cosine):
            self.cosine = min(self.cosine, float(cosine.min()))
        self.error_sq += float((diff ** 2).sum())
        self.reference_sq += float((ref ** 2).sum())


@dataclass(frozen=True)
class PointDrift:
    """One probe point's drift over every clip."""

    tensor: str
    part: str
    cosine: float | None  # worst clip; None when the candidate has NaN/inf there
    max_abs: float | None
    max_magnitude: float  # the reference's largest |value|
    candidate_max_magnitude: float  # the candidate's largest finite |value|
    nan: int
    inf: int
    relative_error: float | None  # ||candidate - reference|| / ||reference|| over every clip

    @property
    def finite(self) -> bool:
        return self.nan == 0 and self.inf == 0

    @property
    def fp16_headroom(self) -> float:
        """fp16's largest value over this point's largest |value| (below 1: it does not fit in fp16)."""
        return FP16_MAX / self.max_magnitude if self.max_magnitude > 0 else float("inf")

    def passes(self, min_cosine: float) -> bool:
        return self.finite and self.cosine is not None and self.cosine >= min_cosine

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["fp16_headroom"] = _finite_or_none(self.fp16_headroom)
        return out

    @classmethod
    def of(cls, point: ProbePoint, running: _Running) -> "PointDrift":
        finite = running.nan == 0 and running.inf == 0
        relative = math.sqrt(running.error_sq / running.reference_sq) if finite and running.reference_sq > 0 else None
        return cls(point.tensor, point.part, running.cosine if finite else None, running.max_abs if finite else None,
                   running.max_magnitude, running.candidate_max_magnitude, running.nan, running.inf, relative)


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


@dataclass(frozen=True)
class LayerDrift:
    """One encoder layer: its block output's drift (the row of the table), its parts, and the reference's internals.

    It fails when its residual stream does, or when a branch (attention, MLP) does against fp32's own branch output."""

    layer: int
    block: PointDrift
    parts: dict[str, PointDrift]
    internals: dict[str, Any]  # the fp32 reference's largest activations and quantized inputs' channel ranges
    min_cosine: float
    title: str = ""  # "layer 3", "spatial layer 3", "block 1, time" (VivitConfig.layer_title)

    @property
    def failing_branches(self) -> tuple[str, ...]:
        return tuple(part for part in BRANCHES if part in self.parts and not self.parts[part].passes(self.min_cosine))

    @property
    def passed(self) -> bool:
        return self.block.passes(self.min_cosine) and not self.failing_branches

    def to_dict(self) -> dict[str, Any]:
        b = self.block
        return {"layer": self.layer, "title": self.title, "cosine": b.cosine, "max_abs": b.max_abs,
                "max_magnitude": b.max_magnitude,
                "fp16_headroom": _finite_or_none(b.fp16_headroom), "nan": b.nan, "inf": b.inf, "passed": self.passed,
                "failing_branches": list(self.failing_branches),
                "parts": {part: drift.to_dict() for part, drift in self.parts.items()}, "internals": self.internals}
