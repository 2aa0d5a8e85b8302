"""The picture of per-layer drift: drift against depth and the reference's range against fp16's (matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vivit_deploy.accuracy.drift.points import FP16_MAX
from vivit_deploy.accuracy.drift.report import LayerDriftReport
from vivit_deploy.errors import ConfigError


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
