"""Per-layer drift: where in the model a candidate starts to differ from PyTorch fp32, and what broke there.

A candidate runtime loaded with ``probes=True`` (ONNX Runtime, OpenVINO or PyTorch) returns the hidden
states at the probe points (``vivit_deploy/model/probes.py``: the embeddings, each layer's two LayerNorms,
attention branch, MLP branch and block output, the final norm); the fp32 PyTorch reference returns the
same points from forward hooks, on the same clips. Per point: the worst clip's cosine similarity, the
largest absolute difference, the reference's largest magnitude (its headroom to fp16's 65504) and the
candidate's NaN/inf counts; then the logits. A layer fails when its block output (the residual stream) drops below
the tolerance's cosine, holds a non-finite value, or when its attention or MLP branch does against fp32's own
branch output at the same point: a branch's error can be small against the residual stream it is added to and
still reach the logits through the final LayerNorm. The first point that fails (the embeddings, a layer, the final
norm, the logits) is where the diagnosis looks; ``first_failing_layer`` is the encoder layer's number.

The diagnosis looks inside that layer: which part first went non-finite, or injected the most error
into the residual stream, and, from the reference's own internals (the largest Q/K/V, Q·Kᵀ score and
MLP activations, and the per-channel range of every quantized MatMul's input), what kind of op broke:
a MatMul overflowing fp16, a LayerNorm on a residual stream too large for fp16, Softmax, or an int8
input range one outlier channel dominates. Outside the layers it looks at the embeddings (their tubelet projection)
and the head (the final LayerNorm and the classifier). It names the ``--keep-fp32`` unit that repairs it: a layer
or its part, ``embeddings`` or ``head``.

Memory stays that of a batch: statistics accumulate per batch, no hidden state is kept.
"""

from __future__ import annotations

from vivit_deploy.files import json_text
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from vivit_deploy.accuracy.statistics import row_cosines
from vivit_deploy.accuracy.tolerances import Tolerance
from vivit_deploy.errors import ConfigError
from vivit_deploy.artifacts.metadata import QUANTIZED_PRECISIONS
from vivit_deploy.model.probes import BRANCHES, LAYER_PARTS, PART_TITLES, ProbePoint, probe_points

if TYPE_CHECKING:
    from vivit_deploy.runtimes.base import Runtime

Progress = Callable[[str], None]

FP16_MAX = 65504.0
FP16_SQUARE_LIMIT = math.sqrt(FP16_MAX)  # |x| above this overflows x**2 in fp16 (a LayerNorm's variance)
OUTLIER_RATIO = 8.0  # a channel this many times the median channel's range dominates a per-tensor int8 scale
FIX_UNITS = {"layernorm_before": "norms", "attention": "attention", "layernorm_after": "norms", "output": "mlp",
             "block": None}
# The products of a layer whose largest |value| RangeWatch keeps: (part, what, key in its stats, the --keep-fp32 unit
# that computes it in fp32 inside, or None where its output is stored between units and so stays fp16 regardless)
# Outside the layers, what RangeWatch keeps of the embeddings and the head: (part, what, key, the unit computing it)
OUTSIDE_PRODUCTS = (("embeddings", "the tubelet projection", "projection_max", "embeddings"),
                    ("embeddings", "the embeddings' output (tokens + positions)", "embeddings_max", None),
                    ("spatial_norm", "the spatial encoder's final LayerNorm's output", "spatial_norm_max", "spatial_norm"),
                    ("final_norm", "the final LayerNorm's output", "final_norm_max", "head"),
                    ("classifier", "the logits", "logits_max", "head"))
OUTSIDE_UNITS = {"embeddings": "embeddings", "spatial_norm": "spatial_norm", "final_norm": "head", "classifier": "head"}
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
PRODUCTS = (("attention", "the Q/K/V projections", "qkv_max", "attention"),
            ("attention", "Q·Kᵀ (the attention scores)", "scores_max", "attention"),
            ("attention", "the attention output projection", "attention_output_max", None),
            ("output", "the MLP's first product (intermediate.dense)", "fc1_max", "mlp"),
            ("output", "the MLP's second product (output.dense)", "fc2_max", None))


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


@dataclass(frozen=True)
class Diagnosis:
    """Where the first failing layer broke and what fixes it."""

    layer: int
    part: str  # a probe part: "attention", "output" (the MLP), "layernorm_before", ...
    op_kind: str  # "MatMul overflow", "LayerNorm", "Softmax", "int8 input range", "rounding", ...
    detail: str
    unit: str | None  # the --keep-fp32 unit that keeps it in fp32 ("2", "2.mlp", "embeddings", "head"); None: none can
    advice: str | None = None  # what repairs it, where that is more than keeping ``unit`` in fp32

    @property
    def fix(self) -> str | None:
        """The option that repairs it, e.g. ``--keep-fp32 2.mlp``; None where keeping layers in fp32 cannot."""
        return None if self.unit is None else f"--keep-fp32 {self.unit}"

    def fix_advice(self) -> str:
        if self.advice is not None:
            return self.advice
        if self.unit is None:
            return "no --keep-fp32 set repairs it (what overflows is stored between layers): export it in fp32"
        return f"re-export with {self.fix} (or --keep-fp32 auto)"

    def sentence(self) -> str:
        where = f"layer {self.layer}, {PART_TITLES[self.part]}" if self.layer >= 0 else PART_TITLES[self.part]
        return f"{where}: {self.op_kind}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fix": self.fix}


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


# ---- running both sides ----------------------------------------------------------------------------

class RangeWatch:
    """Forward hooks on an fp32 PyTorch model that keep, per layer, the largest |value| of its products (Q/K/V, the
    Q·Kᵀ scores, attention output, MLP in and out, the residual stream) and the per-channel range of every quantized
    MatMul's input, over every forward while it is attached (``with RangeWatch(model): ...``).

    Kept as maxima, so memory is that of one batch. The fp16 range check of the exporter reads it (a product that
    exceeds 65504 in fp32 overflows in an fp16 engine, even where ONNX Runtime's CPU runs that product in fp32 and
    cannot show it), and so does the diagnosis of a failing layer.
    """

    def __init__(self, model):
        self.model = model
        self.num_layers = model.config.num_layers
        self.stats: dict[int, dict[str, Any]] = {i: {} for i in range(self.num_layers)}
        self.outside: dict[str, float] = {}  # the embeddings' and the head's peaks (OUTSIDE_PRODUCTS)
        self._handles: list = []

    def _peak(self, layer: int, key: str, value) -> None:
        self.stats[layer][key] = max(self.stats[layer].get(key, 0.0), float(value.detach().abs().max()))

    def _outside_hook(self, key: str):
        def hook(module, args, output) -> None:
            value = output.logits if hasattr(output, "logits") else output
            self.outside[key] = max(self.outside.get(key, 0.0), float(value.detach().abs().max()))
        return hook

    def _channels(self, layer: int, key: str, value) -> None:
        per_channel = value.detach().abs().reshape(-1, value.shape[-1]).amax(dim=0).double().cpu().numpy()
        old = self.stats[layer].get(key)
        self.stats[layer][key] = per_channel if old is None else np.maximum(old, per_channel)

    # forward hooks return None: anything else would replace the module's output
    def _peak_hook(self, layer: int, key: str):
        def hook(module, args, output) -> None:
            self._peak(layer, key, output)
        return hook

    def _channels_hook(self, layer: int, key: str):
        def hook(module, args, output) -> None:
            self._channels(layer, key, output)
        return hook

    def _norm_hook(self, layer: int, key: str):
        """A LayerNorm: the range of its output per channel (a quantized MatMul's input) and of its input."""
        def hook(module, args, output) -> None:
            self._channels(layer, key, output)
            self._peak(layer, "residual_max", args[0])
        return hook

    def __enter__(self) -> "RangeWatch":
        import torch

        for i, layer in enumerate(self.model.vivit.encoder.layer):
            attention = layer.attention.attention
            seen: dict[str, torch.Tensor] = {}

            def projection(name, i=i, seen=seen, attention=attention):
                def hook(module, args, output):
                    self._peak(i, "qkv_max", output)
                    seen[name] = output
                    if name == "key":  # query and key known: the largest Q·Kᵀ score, head by head
                        q, k = seen["query"], output
                        b, n, d = q.shape
                        heads = attention.num_heads
                        q = (q * attention.scale).reshape(b, n, heads, d // heads).transpose(1, 2)
                        k = k.reshape(b, n, heads, d // heads).transpose(1, 2)
                        top = max(float(torch.matmul(q[:, h], k[:, h].transpose(-2, -1)).abs().max()) for h in range(heads))
                        self.stats[i]["scores_max"] = max(self.stats[i].get("scores_max", 0.0), top)
                return hook

            hooks = [
                (attention.query, projection("query")), (attention.key, projection("key")),
                (attention.value, projection("value")),
                (layer.layernorm_before, self._norm_hook(i, "attention_input")),
                (layer.attention.output.dense, self._peak_hook(i, "attention_output_max")),
                (layer, self._peak_hook(i, "residual_max")),
            ]
            if hasattr(layer, "intermediate"):  # Model 3's layers over space have no MLP
                hooks += [
                    (layer.layernorm_after, self._norm_hook(i, "mlp_input")),
                    (layer.intermediate.dense, self._peak_hook(i, "fc1_max")),
                    (layer.intermediate, self._channels_hook(i, "fc2_input")),
                    (layer.output.dense, self._peak_hook(i, "fc2_max")),
                ]
            self._handles += [module.register_forward_hook(hook) for module, hook in hooks]
        embeddings = self.model.vivit.embeddings
        projection = getattr(embeddings, "patch_embeddings", None) or embeddings.projection
        outside = [(projection, "projection_max"), (embeddings, "embeddings_max"),
                   (self.model.vivit.layernorm, "final_norm_max")]
        spatial_norm = getattr(self.model.vivit.encoder, "spatial_norm", None)
        if spatial_norm is not None:
            outside.append((spatial_norm, "spatial_norm_max"))
        classifier = getattr(self.model, "classifier", None)
        if classifier is not None:
            outside.append((classifier, "logits_max"))
            self.outside["classifier_weight_median"] = float(classifier.weight.detach().abs().median())
        self._handles += [module.register_forward_hook(self._outside_hook(key)) for module, key in outside]
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def summary(self, layer: int) -> dict[str, Any]:
        """Plain numbers for one layer: the peaks, and each quantized input's outlier channel."""
        seen = self.stats[layer]
        out = {k: v for k, v in seen.items() if not isinstance(v, np.ndarray)}
        for key in ("attention_input", "mlp_input", "fc2_input"):
            if key in seen:
                out[key] = _channel_summary(seen[key])
        return out

    def overflows(self, limit: float = FP16_MAX, kept: frozenset[str] = frozenset()) -> list[tuple[int, str, str, float]]:
        """(layer, part, what, value) for every product that exceeds ``limit`` where it would be stored in fp16:
        what an fp32 unit (``kept``: "L", "L.attention", "L.mlp", "L.norms", "embeddings", "head") computes inside stays
        in fp32, its output is stored in fp16 again (the head's logits leave in fp32). Layer -1: outside the layers."""
        found = [(-1, part, what, self.outside[key]) for part, what, key, unit in OUTSIDE_PRODUCTS
                 if self.outside.get(key, 0.0) > limit and not (unit is not None and unit in kept)]
        for i in range(self.num_layers):
            seen = self.stats[i]
            whole = str(i) in kept
            for part, what, key, inside in (*PRODUCTS, ("block", "the residual stream", "residual_max", None)):
                if (whole and part != "block") or (inside is not None and f"{i}.{inside}" in kept):
                    continue
                if seen.get(key, 0.0) > limit:
                    found.append((i, part, what, seen[key]))
        return found


def _channel_summary(per_channel: np.ndarray) -> dict[str, Any]:
    median = float(np.median(per_channel))
    top = int(per_channel.argmax())
    return {"max": float(per_channel[top]), "median_channel": median, "outlier_channel": top,
            "outlier_ratio": float(per_channel[top] / median) if median > 0 else None}


def layer_drift(
    reference: "Runtime",
    candidate: "Runtime",
    pixel_values: np.ndarray,
    tolerance: Tolerance,
    *,
    name: str | None = None,
    batch_size: int = 2,
    progress: Progress | None = None,
) -> LayerDriftReport:
    """Run ``pixel_values`` through both runtimes with their probe points exposed and compare them point by point.

    ``reference`` is a PyTorch runtime in fp32 (loaded with ``probes=True``); ``candidate`` any runtime loaded with
    ``probes=True`` (ONNX Runtime, OpenVINO, PyTorch in another precision or on another device).
    """
    if reference.backend != "torch" or reference.precision != "fp32":
        raise ConfigError("per-layer drift is measured against PyTorch fp32")
    for runtime in (reference, candidate):
        if not runtime.probe_names:
            raise ConfigError(f"{runtime.source}: load it with probes=True to compare it layer by layer")
    config = reference.config
    points = probe_points(config)
    missing = [p.tensor for p in points if p.tensor not in candidate.probe_names]
    if missing:
        raise ConfigError(f"{candidate.source} exposes no {missing[0]} (and {len(missing) - 1} more): re-export it with "
                          "this vivit-export, which names every probe point")
    running = {p.tensor: _Running() for p in points}
    logits = _Running()
    with RangeWatch(reference.model) as watch:
        for start in range(0, len(pixel_values), batch_size):
            chunk = np.ascontiguousarray(pixel_values[start:start + batch_size])
            if progress:
                progress(f"per-layer drift of {name or candidate.source}: clips {start + 1}-{start + len(chunk)} "
                         f"of {len(pixel_values)}")
            ref_logits, ref = reference.run_probes(chunk)
            cand_logits, cand = candidate.run_probes(chunk)
            for p in points:
                running[p.tensor].add(ref[p.tensor], cand[p.tensor])
            logits.add(ref_logits, cand_logits)

    drift = {p.tensor: PointDrift.of(p, running[p.tensor]) for p in points}
    layers = []
    for i in range(config.num_layers):
        parts = {p.part: drift[p.tensor] for p in points if p.layer == i}
        layers.append(LayerDrift(i, parts["block"], parts, watch.summary(i), tolerance.min_cosine, config.layer_title(i)))
    spatial_norm = next((drift[p.tensor] for p in points if p.part == "spatial_norm"), None)
    report = LayerDriftReport(
        candidate=name or candidate.source, backend=candidate.backend, precision=candidate.precision,
        min_cosine=tolerance.min_cosine, num_inputs=len(pixel_values), embeddings=drift[points[0].tensor],
        layers=tuple(layers), final_norm=drift[points[-1].tensor],  # the first point and the last
        logits=PointDrift.of(ProbePoint("logits", None, "classifier"), logits), outside=dict(watch.outside),
        spatial_norm=spatial_norm, spatial_layers=config.num_hidden_layers if spatial_norm is not None else 0,
    )
    first = report.first_failing
    if first is None:
        return report
    if first.startswith("layer"):
        i = report.first_failing_layer
        diagnosis = diagnose(layers[i], layers[i - 1].block if i else report.embeddings, candidate.precision,
                             tolerance.min_cosine)
    else:
        diagnosis = diagnose_outside({"embeddings": "embeddings", "spatial_norm": "spatial_norm", "final_norm": "final_norm",
                                      "logits": "classifier"}[first], report, candidate.precision)
    return replace(report, diagnosis=diagnosis)


# ---- what broke --------------------------------------------------------------------------------------

def _failing_part(layer: LayerDrift, upstream: PointDrift, min_cosine: float) -> str:
    """The part of ``layer`` where it went wrong: the first to hold NaN/inf, else the branch (attention or MLP)
    that put the most error into the residual stream, or a LayerNorm whose output is far worse than its input."""
    for part in LAYER_PARTS:
        if part in layer.parts and not layer.parts[part].finite:
            return part
    if layer.block.passes(min_cosine) and layer.failing_branches:
        # the residual stream held, a branch did not against its own fp32 output: that branch (the worse one)
        return min(layer.failing_branches, key=lambda part: layer.parts[part].cosine if layer.parts[part].cosine
                   is not None else -1.0)

    def injected(part: str) -> float:
        """The branch's error, in the units of the residual stream it is added to."""
        drift = layer.parts[part]
        return (drift.relative_error or 0.0) * (drift.max_magnitude + 1e-30)

    for norm in ("layernorm_before", "layernorm_after"):
        drift = layer.parts.get(norm)
        if drift is None:  # Model 3's layers over space have no MLP
            continue
        before = upstream.relative_error or 0.0
        if drift.relative_error is not None and drift.relative_error > 10 * max(before, 1e-6) and not drift.passes(min_cosine):
            return norm
    return max((b for b in BRANCHES if b in layer.parts), key=injected)


def _unit(layer: int, part: str, precision: str) -> str:
    kind = FIX_UNITS[part]
    if kind is None:
        return str(layer)
    if kind == "norms" and precision in QUANTIZED_PRECISIONS:  # LayerNorm already runs in float there
        kind = "attention" if part == "layernorm_before" else "mlp"
    return f"{layer}.{kind}"


def diagnose(layer: LayerDrift, upstream: PointDrift, precision: str, min_cosine: float) -> Diagnosis:
    """What broke ``layer`` (the first failing one) for a candidate of ``precision``, from its parts' drift and the
    fp32 reference's internals."""
    part = _failing_part(layer, upstream, min_cosine)
    seen = layer.internals
    i = layer.layer
    unit = _unit(i, part, precision)
    quantized = precision.split("-")[0] in QUANTIZED_PRECISIONS
    if quantized:
        key, tensor = {"attention": ("attention_input", "layernorm_before"), "layernorm_before": ("attention_input", "layernorm_before"),
                       "output": ("mlp_input", "layernorm_after"), "layernorm_after": ("mlp_input", "layernorm_after"),
                       "block": ("mlp_input", "layernorm_after")}[part]
        candidates = [(key, tensor)] + ([("fc2_input", "intermediate (GELU)")] if key == "mlp_input" else [])
        for key, tensor in candidates:
            summary = seen.get(key)
            if summary and (summary["outlier_ratio"] or 0.0) >= OUTLIER_RATIO:
                return Diagnosis(i, part, f"{precision.split('-')[0]} input range",
                                 f"channel {summary['outlier_channel']} of {tensor}'s output reaches "
                                 f"{summary['max']:.3g}, {summary['outlier_ratio']:.0f}x the median channel "
                                 f"({summary['median_channel']:.3g}), so one per-tensor scale rounds the other channels "
                                 "away", unit)
        return Diagnosis(i, part, f"{precision.split('-')[0]} rounding",
                         f"the {PART_TITLES[part]}'s quantized MatMuls drift (relative error "
                         f"{layer.parts[part].relative_error or float('nan'):.3g}) with no outlier channel", unit)

    limit = FP16_MAX if precision.startswith("fp16") else float(np.finfo(np.float32).max)
    for product_part, name, key, _ in PRODUCTS:
        if seen.get(key, 0.0) > limit and part in (product_part, "block"):
            return Diagnosis(i, part, "MatMul overflow", f"{name} reaches {seen[key]:.3g} in fp32; fp16 holds 65504", unit)
    residual = seen.get("residual_max", 0.0)
    if part in ("layernorm_before", "layernorm_after", "block"):
        if residual > limit:
            return Diagnosis(i, part, "residual stream overflow", f"the residual stream reaches {residual:.3g}; fp16 "
                             "holds 65504", None)
        if residual > FP16_SQUARE_LIMIT and precision.startswith("fp16"):
            return Diagnosis(i, part, "LayerNorm", f"its input reaches {residual:.3g}: squared for the variance it "
                             "exceeds fp16's 65504 where LayerNorm is computed in fp16", unit)
        return Diagnosis(i, part, "LayerNorm", "its output drifts far more than its input", unit)
    if part == "attention" and seen.get("scores_max", 0.0) > 1e3:
        return Diagnosis(i, part, "Softmax", f"the attention scores reach {seen['scores_max']:.3g}: their exponentials "
                         f"lose everything but the largest in {precision}", unit)
    return Diagnosis(i, part, "rounding", f"the {PART_TITLES[part]} drifts (relative error "
                     f"{layer.parts[part].relative_error or float('nan'):.3g}) without overflowing", unit)


def diagnose_outside(part: str, report: LayerDriftReport, precision: str) -> Diagnosis:
    """What broke the embeddings or the head (``part``: "embeddings", "final_norm" or "classifier") when every encoder
    layer before it held, from the fp32 reference's largest values there."""
    seen = report.outside
    unit = OUTSIDE_UNITS[part]
    quantized = precision.split("-")[0] in QUANTIZED_PRECISIONS
    limit = FP16_MAX if precision.startswith("fp16") else float(np.finfo(np.float32).max)
    if quantized:  # the embeddings and the head stay float in a quantized graph: what reaches them drifted, per layer
        return _accumulated(report, part, precision)
    for product_part, what, key, product_unit in OUTSIDE_PRODUCTS:
        if product_part == part and seen.get(key, 0.0) > limit:
            return Diagnosis(-1, part, "overflow", f"{what} reaches {seen[key]:.3g} in fp32; fp16 holds 65504",
                             product_unit)
    if part in ("final_norm", "spatial_norm"):
        before = report.layers[report.spatial_layers - 1 if part == "spatial_norm" else -1] if report.layers else None
        last = before.internals.get("residual_max", 0.0) if before is not None else 0.0
        if last > FP16_SQUARE_LIMIT and precision.startswith("fp16"):
            return Diagnosis(-1, part, "LayerNorm", f"its input reaches {last:.3g}: squared for the variance it exceeds "
                             "fp16's 65504", unit)
        return Diagnosis(-1, part, "LayerNorm", "its output drifts far more than its input", unit)
    if part == "classifier":
        logits, norm = report.logits, report.final_norm
        detail = (f"the logits drift (cosine {_cos(logits)}) while the final LayerNorm's output holds (cosine "
                  f"{_cos(norm)} over every token)")
        weights = seen.get("classifier_weight_median", 1.0)
        if precision.startswith("fp16") and weights < FP16_SMALLEST_NORMAL:
            detail += (f": the classifier's weights (median |w| {weights:.2g}) lie below fp16's normal range "
                       f"({FP16_SMALLEST_NORMAL:.2g}), where it keeps few significant bits")
        elif precision.startswith("fp16") and seen.get("final_norm_max", 0.0) > 1024:
            detail += (f": the final LayerNorm's output reaches {seen['final_norm_max']:.3g}, where fp16's step is "
                       f"{fp16_step(seen['final_norm_max']):g}")
        return Diagnosis(-1, part, "rounding", detail, unit)
    detail = f"the embeddings drift (cosine {_cos(report.embeddings)}) before any layer"
    projection, output = seen.get("projection_max", 0.0), seen.get("embeddings_max", 0.0)
    if precision.startswith("fp16") and projection > 16 * max(output, 1e-30):
        detail += (f": the tubelet projection reaches {projection:.3g} (fp16's step there is {fp16_step(projection):g}) "
                   f"and the positions cancel it to at most {output:.3g}")
    return Diagnosis(-1, part, "rounding", detail, unit)


def _accumulated(report: LayerDriftReport, part: str, precision: str) -> Diagnosis:
    """Every layer within tolerance, the final norm or the logits not: the error the layers add accumulates and the
    final LayerNorm carries it on. The unit to keep is the branch that adds the most error to the residual stream
    (its own relative error times its magnitude), so ``--keep-fp32 auto`` keeps the worst first until it passes."""
    candidates = [(layer.parts[b].relative_error * layer.parts[b].max_magnitude, layer.layer, b)
                  for layer in report.layers for b in BRANCHES if b in layer.parts and layer.parts[b].relative_error is not None]
    where = "the logits" if part == "classifier" else "the final LayerNorm's output"
    detail = (f"every layer holds its tolerance and {where} do{'es' if part != 'classifier' else ''} not: the error each "
              "layer adds accumulates, and the final LayerNorm carries it on")
    if not candidates:
        return Diagnosis(-1, part, "accumulated drift", detail, None,
                         "export it in fp32, or calibrate on more clips like the ones it will see")
    _, layer, branch = max(candidates)
    unit = f"{layer}.{'attention' if branch == 'attention' else 'mlp'}"
    drift = report.layers[layer].parts[branch]
    detail += (f"; layer {layer}'s {PART_TITLES[branch]} adds the most (its own output's relative error "
               f"{drift.relative_error:.3g})")
    return Diagnosis(-1, part, "accumulated drift", detail, unit,
                     f"re-export with --keep-fp32 auto (it keeps the layers adding the most, {unit} first)"
                     + (", or calibrate on more clips like the ones it will see" if precision.split("-")[0] in
                        QUANTIZED_PRECISIONS else ""))


def _cos(point: PointDrift | None) -> str:
    return "n/a" if point is None or point.cosine is None else f"{point.cosine:.6f}"


def overflow_diagnosis(layer: int, part: str, what: str, value: float) -> Diagnosis:
    """The diagnosis of an fp16 range check's first overflow (``RangeWatch.overflows``, or a weight beyond fp16's range;
    ``layer`` -1 for one outside the encoder layers)."""
    if layer < 0:
        unit = next((u for p, w, _, u in OUTSIDE_PRODUCTS if p == part and w == what), OUTSIDE_UNITS.get(part))
        kind = "weight overflow" if what.startswith("the weights of") else "overflow"
        return Diagnosis(layer, part, kind, f"{what} reach{'' if kind == 'weight overflow' else 'es'} {value:.3g}; fp16 "
                         "holds 65504", unit)
    if what.startswith("the weights of"):
        return Diagnosis(layer, part, "weight overflow", f"{what} reach {value:.3g}; fp16 holds 65504",
                         _unit(layer, part, "fp16"))
    if part == "block":
        return Diagnosis(layer, part, "residual stream overflow", f"{what} reaches {value:.3g} on the validation clips; "
                         "fp16 holds 65504", None)
    return Diagnosis(layer, part, "MatMul overflow",
                     f"{what} reaches {value:.3g} on the validation clips; fp16 holds 65504 (ONNX Runtime's CPU computes "
                     "it in fp32 and cannot show it; an fp16 engine overflows)", _unit(layer, part, "fp16"))


# ---- the plot ----------------------------------------------------------------------------------------

def pyplot(why: str):
    """matplotlib's pyplot on the Agg backend, or a one-line error naming the extra that brings it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(f"{why} needs matplotlib: pip install 'vivit-deploy[bench]'") from None
    return plt


def drift_figure(reports: list[LayerDriftReport], why: str = "--plot"):
    """A matplotlib figure of drift against depth (1 - cosine, log scale, from the embeddings to the logits) and the
    reference's largest magnitude against fp16's range, one line per candidate."""
    plt = pyplot(why)
    fig, (drift_ax, range_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for report in reports:
        depth, points = ["emb"], [report.embeddings]
        for layer in report.layers:
            depth.append(str(layer.layer))
            points.append(layer.block)
            if report.spatial_norm is not None and layer.layer == report.spatial_layers - 1:
                depth.append("s-norm")
                points.append(report.spatial_norm)
        depth.append("norm")
        points.append(report.final_norm)
        if report.logits is not None:
            depth.append("logits")
            points.append(report.logits)
        gap = [1 - p.cosine if p.cosine is not None else np.nan for p in points]
        drift_ax.plot(depth, np.maximum(gap, 1e-9), marker="o", label=f"{report.candidate}")
        branches = [(str(layer.layer), layer.parts[part]) for layer in report.layers for part in layer.failing_branches]
        if branches:  # a branch out of tolerance against fp32's own output there
            drift_ax.scatter([d for d, _ in branches], [max(1 - (p.cosine or 0.0), 1e-9) for _, p in branches],
                             marker="^", color="orange", zorder=3, label="a branch (attention/MLP) out of tolerance")
        bad = [d for d, p in zip(depth, points) if not p.finite]
        if bad:
            drift_ax.scatter(bad, [1.0] * len(bad), marker="x", color="red", zorder=3)
        range_ax.plot(depth, [p.max_magnitude for p in points], marker="o", label=report.candidate)
    if reports:
        drift_ax.axhline(1 - reports[0].min_cosine, color="grey", linestyle="--", label="tolerance")
    range_ax.axhline(FP16_MAX, color="red", linestyle="--", label="fp16 max")
    drift_ax.set(yscale="log", xlabel="point", ylabel="1 - cosine (x: NaN/inf)", title="drift against depth")
    range_ax.set(yscale="log", xlabel="point", ylabel="max |hidden state| (fp32)", title="range against fp16")
    drift_ax.legend(fontsize=7)
    range_ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_layer_drift(reports: list[LayerDriftReport], path: str | Path) -> Path:
    """A PNG of ``drift_figure`` (needs matplotlib: pip install 'vivit-deploy[bench]')."""
    fig = drift_figure(reports)
    path = Path(path)
    fig.savefig(path, dpi=110)
    pyplot("--plot").close(fig)
    return path


def reports_json(reports: list[LayerDriftReport]) -> str:
    return json_text([r.to_dict() for r in reports], default=_finite_or_none)


__all__ = ["Diagnosis", "LayerDrift", "LayerDriftReport", "PointDrift", "RangeWatch", "diagnose", "diagnose_outside",
           "drift_figure", "layer_drift", "overflow_diagnosis", "plot_layer_drift", "pyplot"]
