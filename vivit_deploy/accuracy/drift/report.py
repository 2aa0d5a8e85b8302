"""One candidate's per-layer drift against PyTorch fp32, as data, text and JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from vivit_deploy.accuracy.drift.diagnosis import Diagnosis
from vivit_deploy.accuracy.drift.points import LayerDrift, PointDrift
from vivit_deploy.model.probes import PART_TITLES


@dataclass(frozen=True)
class LayerDriftReport:
    """Per-layer drift of one candidate against the reference; truthy when no layer fails."""

    candidate: str
    backend: str
    precision: str
    min_cosine: float
    num_inputs: int
    embeddings: PointDrift
    layers: tuple[LayerDrift, ...]
    final_norm: PointDrift
    logits: PointDrift | None = None
    outside: dict[str, Any] = field(default_factory=dict)  # the reference's largest values in the embeddings and head
    diagnosis: Diagnosis | None = None
    spatial_norm: PointDrift | None = None  # Model 2: after its spatial layers
    spatial_layers: int = 0  # Model 2: how many layers come before the spatial norm
    attentive_pooler: bool = False  # V-JEPA 2: an attentive probe runs between the final norm and the classifier

    @property
    def first_failing_layer(self) -> int | None:
        """The first encoder layer out of tolerance (0-based), None when none is."""
        return next((layer.layer for layer in self.layers if not layer.passed), None)

    @property
    def first_failing(self) -> str | None:
        """The first point out of tolerance, in the order the data reaches them: "embeddings", "layer N",
        "final_norm", "logits"; None when none is."""
        if not self.embeddings.passes(self.min_cosine):
            return "embeddings"
        first = self.first_failing_layer
        if self.spatial_norm is not None and not self.spatial_norm.passes(self.min_cosine) and \
                (first is None or first >= self.spatial_layers):
            return "spatial_norm"
        if first is not None:
            return f"layer {first}"
        if not self.final_norm.passes(self.min_cosine):
            return "final_norm"
        if self.logits is not None and not self.logits.passes(self.min_cosine):
            return "logits"
        return None

    @property
    def passed(self) -> bool:
        return self.first_failing is None

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "backend": self.backend, "precision": self.precision,
                "min_cosine": self.min_cosine, "num_inputs": self.num_inputs, "passed": self.passed,
                "first_failing_layer": self.first_failing_layer, "first_failing": self.first_failing,
                "diagnosis": None if self.diagnosis is None else self.diagnosis.to_dict(),
                "embeddings": self.embeddings.to_dict(), "layers": [layer.to_dict() for layer in self.layers],
                "final_norm": self.final_norm.to_dict(), "logits": None if self.logits is None else self.logits.to_dict(),
                "spatial_norm": None if self.spatial_norm is None else self.spatial_norm.to_dict(), "outside": self.outside}

    def format_table(self) -> str:
        header = ("layer", "cosine", "max abs", "max |x|", "fp16 room", "NaN", "inf", "verdict")
        rows = [header]

        def row(name: str, drift: PointDrift, ok: bool):
            headroom = drift.fp16_headroom
            rows.append((name, "-" if drift.cosine is None else f"{drift.cosine:.6f}",
                         "-" if drift.max_abs is None else f"{drift.max_abs:.2e}", f"{drift.max_magnitude:.3g}",
                         "inf" if math.isinf(headroom) else f"{headroom:.3g}x", str(drift.nan), str(drift.inf),
                         "ok" if ok else "FAIL"))

        row("embeddings", self.embeddings, self.embeddings.passes(self.min_cosine))
        for layer in self.layers:
            named = layer.title and layer.title != f"layer {layer.layer}"
            row(f"{layer.layer} ({layer.title})" if named else str(layer.layer), layer.block, layer.passed)
            for part in layer.failing_branches:  # the branch judged against fp32's own output there
                row(f"  {PART_TITLES[part]}", layer.parts[part], False)
            if self.spatial_norm is not None and layer.layer == self.spatial_layers - 1:
                row("spatial norm", self.spatial_norm, self.spatial_norm.passes(self.min_cosine))
        row("final norm", self.final_norm, self.final_norm.passes(self.min_cosine))
        if self.logits is not None:
            row("logits", self.logits, self.logits.passes(self.min_cosine))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = [f"per-layer drift of {self.candidate} ({self.backend} {self.precision}) against pytorch fp32, "
                 f"{self.num_inputs} clips; a point fails below cosine {self.min_cosine:g} or on NaN/inf, a layer also "
                 "when its attention or MLP does against fp32's own output there"]
        lines += ["  " + "  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
        first = self.first_failing
        if first is None:
            lines.append("  no point out of tolerance")
        else:
            lines.append(f"  first failing: {first}")
            if self.diagnosis is not None:
                lines.append(f"  where: {self.diagnosis.sentence()}")
                lines.append(f"  fix: {self.diagnosis.fix_advice()}")
        return "\n".join(lines)
