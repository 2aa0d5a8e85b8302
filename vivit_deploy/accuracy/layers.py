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

The pieces live in ``accuracy/drift/``: ``points`` (the numbers), ``report``, ``range_watch`` (the hooks),
``diagnosis`` and ``plots``; this module runs both sides and is where callers import them from.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from vivit_deploy.accuracy.drift.diagnosis import (
    WEIGHTS, Diagnosis, Overflow, diagnose, diagnose_outside, overflow_diagnosis,
)
from vivit_deploy.accuracy.drift.plots import drift_figure, plot_layer_drift, pyplot
from vivit_deploy.accuracy.drift.points import FP16_MAX, LayerDrift, PointDrift, _Running, flow_position, where
from vivit_deploy.accuracy.drift.range_watch import RangeWatch
from vivit_deploy.accuracy.drift.report import LayerDriftReport
from vivit_deploy.accuracy.tolerances import Tolerance
from vivit_deploy.errors import ConfigError
from vivit_deploy.model.probes import ProbePoint, probe_points

if TYPE_CHECKING:
    from vivit_deploy.runtimes.base import Runtime

Progress = Callable[[str], None]


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
    if reference.artifact != "checkpoint" or reference.precision != "fp32":  # PyTorch on the checkpoint
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
                if ref[p.tensor].shape != cand[p.tensor].shape:
                    raise ConfigError(f"{name or candidate.source}: its {p.tensor} is {cand[p.tensor].shape}, the "
                                      f"reference's {ref[p.tensor].shape} (another geometry, or merged tokens): per-layer "
                                      "drift compares the same model's hidden states")
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
        attentive_pooler=config.attentive_pooler,
    )
    first = report.first_failing
    if first is None:
        return report
    outside = {"embeddings": "embeddings", "spatial_norm": "spatial_norm", "final_norm": "final_norm",
               "logits": "classifier"}
    if first not in outside:  # an encoder layer
        i = report.first_failing_layer
        diagnosis = diagnose(layers[i], layers[i - 1].block if i else report.embeddings, candidate.precision,
                             tolerance.min_cosine)
    else:
        diagnosis = diagnose_outside(outside[first], report, candidate.precision)
    return replace(report, diagnosis=diagnosis)


__all__ = ["FP16_MAX", "WEIGHTS", "Diagnosis", "LayerDrift", "LayerDriftReport", "Overflow", "PointDrift", "RangeWatch",
           "diagnose", "diagnose_outside", "drift_figure", "flow_position", "layer_drift", "overflow_diagnosis",
           "plot_layer_drift", "pyplot", "where"]
