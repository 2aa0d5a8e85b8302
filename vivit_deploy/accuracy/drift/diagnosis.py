"""What broke: the diagnosis of the first failing point from its parts' drift and the fp32 reference's internals
(the kind of op, the detail, the ``--keep-fp32`` unit that repairs it), and of an fp16 range check's first overflow."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from vivit_deploy.accuracy.drift.points import (
    FP16_MAX, FP16_SMALLEST_NORMAL, FP16_SQUARE_LIMIT, LayerDrift, PointDrift, fp16_step,
)
from vivit_deploy.artifacts.metadata import QUANTIZED_PRECISIONS
from vivit_deploy.model.probes import (
    ATTENTION, BLOCK, BRANCHES, FC1, FC2, LAYER_PARTS, MLP, MLP_HIDDEN, NORM_AFTER, NORM_BEFORE, PART_TITLES, path_in_layer,
)

OUTLIER_RATIO = 8.0  # a channel this many times the median channel's range dominates a per-tensor int8 scale
FIX_UNITS = {NORM_BEFORE: "norms", ATTENTION: "attention", NORM_AFTER: "norms", MLP: "mlp", BLOCK: None}
# The products of a layer whose largest |value| RangeWatch keeps: (part, what, key in its stats, the --keep-fp32 unit
# that computes it in fp32 inside, or None where its output is stored between units and so stays fp16 regardless)
# Outside the layers, what RangeWatch keeps of the embeddings and the head: (part, what, key, the unit computing it)
OUTSIDE_PRODUCTS = (("embeddings", "the tubelet projection", "projection_max", "embeddings"),
                    ("embeddings", "the embeddings' output (tokens + positions)", "embeddings_max", None),
                    ("spatial_norm", "the spatial encoder's final LayerNorm's output", "spatial_norm_max", "spatial_norm"),
                    ("final_norm", "the final LayerNorm's output", "final_norm_max", "head"),
                    ("classifier", "the logits", "logits_max", "head"))
OUTSIDE_UNITS = {"embeddings": "embeddings", "spatial_norm": "spatial_norm", "final_norm": "head", "classifier": "head"}

PRODUCTS = ((ATTENTION, "the Q/K/V projections", "qkv_max", "attention"),
            (ATTENTION, "Q·Kᵀ (the attention scores)", "scores_max", "attention"),
            (ATTENTION, "the attention output projection", "attention_output_max", None),
            (MLP, f"the MLP's first product ({path_in_layer(FC1)})", "fc1_max", "mlp"),
            (MLP, f"the MLP's second product ({path_in_layer(FC2)})", "fc2_max", None))


PRODUCT, RESIDUAL, WEIGHTS = "product", "residual", "weights"  # what an Overflow is


class Overflow(NamedTuple):
    """A value beyond fp16's range where the fp16 graph would store it: a product, the residual stream between layers,
    or a weight (layer -1: outside the encoder layers)."""

    layer: int
    part: str
    what: str  # in words, for the diagnosis
    value: float
    kind: str = PRODUCT  # PRODUCT, RESIDUAL or WEIGHTS

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


@dataclass(frozen=True)
class Diagnosis:
    """Where the first failing layer broke and what fixes it."""

    layer: int
    part: str  # a probe part (``model.probes``: ATTENTION, MLP, NORM_BEFORE, ...)
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

    for norm in (NORM_BEFORE, NORM_AFTER):
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
        kind = "attention" if part == NORM_BEFORE else "mlp"
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
        before, after = ("attention_input", NORM_BEFORE), ("mlp_input", NORM_AFTER)
        key, tensor = {ATTENTION: before, NORM_BEFORE: before, MLP: after, NORM_AFTER: after, BLOCK: after}[part]
        candidates = [(key, tensor)] + ([("fc2_input", f"{path_in_layer(MLP_HIDDEN)} (GELU)")] if key == "mlp_input" else [])
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
    if part in (NORM_BEFORE, NORM_AFTER, BLOCK):
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


def diagnose_outside(part: str, report, precision: str) -> Diagnosis:
    """What broke the embeddings or the head (``part``: "embeddings", "final_norm" or "classifier") when every encoder
    layer before it held, from the fp32 reference's largest values there (``report``: the candidate's
    ``LayerDriftReport``, which holds a ``Diagnosis``: this module does not import it back)."""
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
        if report.attentive_pooler:
            detail += "; between them run the attentive probe (pooler, attention layers of its own) and the classifier"
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


def _accumulated(report, part: str, precision: str) -> Diagnosis:
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


def overflow_diagnosis(overflow: "Overflow") -> Diagnosis:
    """The diagnosis of an fp16 range check's first overflow (``RangeWatch.overflows``, or a weight beyond fp16's range,
    ``export.fp32_fallback.fp16_weight_overflows``; layer -1 for one outside the encoder layers)."""
    layer, part, what, value, kind = overflow
    if layer < 0:
        unit = next((u for p, w, _, u in OUTSIDE_PRODUCTS if p == part and w == what), OUTSIDE_UNITS.get(part))
        op = "weight overflow" if kind == WEIGHTS else "overflow"
        return Diagnosis(layer, part, op, f"{what} reach{'' if kind == WEIGHTS else 'es'} {value:.3g}; fp16 "
                         "holds 65504", unit)
    if kind == WEIGHTS:
        return Diagnosis(layer, part, "weight overflow", f"{what} reach {value:.3g}; fp16 holds 65504",
                         _unit(layer, part, "fp16"))
    if kind == RESIDUAL:
        return Diagnosis(layer, part, "residual stream overflow", f"{what} reaches {value:.3g} on the validation clips; "
                         "fp16 holds 65504", None)
    return Diagnosis(layer, part, "MatMul overflow",
                     f"{what} reaches {value:.3g} on the validation clips; fp16 holds 65504 (ONNX Runtime's CPU computes "
                     "it in fp32 and cannot show it; an fp16 engine overflows)", _unit(layer, part, "fp16"))
