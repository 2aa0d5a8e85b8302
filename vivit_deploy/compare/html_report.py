"""``compare --html``: the comparison as one page a release engineer can send, with nothing to fetch.

One self-contained HTML file: inline CSS, every chart and picture a ``data:`` URI (the charts matplotlib's SVG, the
thumbnail strips PNG), no script, no link out of the file. Sections, top to bottom:

1. the verdict and the summary table (per candidate: drift, agreement, accuracy with its interval, the gates);
2. accuracy on the labelled clips with 95% intervals, the paired difference and McNemar's test, per class, and a chart
   of the intervals;
3. the flips: each clip whose top-1 changed, its labels and probabilities, and a strip of the frames the model saw;
4. per-layer drift and range charts per candidate with their tables and diagnoses (``--layers``);
5. the settings: the model, the inputs, each candidate's file (with its SHA-256), the precisions and tolerances, the
   CPU, the library versions, the command and the date.
"""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime, timezone
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vivit_deploy.accuracy.evaluation import ALPHA, Proportion
from vivit_deploy.accuracy.inputs import CompareInputs
from vivit_deploy.accuracy.layers import LayerDriftReport, drift_figure, pyplot
from vivit_deploy.accuracy.statistics import ComparisonReport
from vivit_deploy.files import atomic_write

THUMBNAIL_HEIGHT = 64  # pixels per frame in a flip's strip
MAX_STRIPS = 60  # flips shown with their frames (every flip is listed)
MAX_FLIPS_LISTED = 500  # per candidate; the JSON holds every one
VERSIONED = ("vivit-deploy", "torch", "onnxruntime-gpu", "onnxruntime", "openvino", "numpy", "scipy", "av", "onnx",
             "tensorrt-rtx", "transformers")

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1200px;
       color: #1b1f24; padding: 0 16px; background: #fff; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 34px; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 15px; margin-top: 22px; }
table { border-collapse: collapse; margin: 8px 0; } th, td { padding: 4px 9px; border-bottom: 1px solid #e5e8eb;
       text-align: right; vertical-align: middle; white-space: nowrap; }
th { background: #f4f6f8; } td:first-child, th:first-child { text-align: left; }
.pass { color: #116329; font-weight: 600; } .fail { color: #b3261e; font-weight: 600; } .muted { color: #57606a; }
.verdict { display: inline-block; padding: 3px 12px; border-radius: 6px; color: #fff; font-weight: 700; }
.verdict.pass { background: #1a7f37; color: #fff; } .verdict.fail { background: #cf222e; color: #fff; }
img.chart { max-width: 100%; border: 1px solid #e5e8eb; } img.strip { image-rendering: pixelated; }
.wide { overflow-x: auto; max-width: 100%; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 12px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 3px 16px; } dt { font-weight: 600; } dd { margin: 0; }
"""


def write_html(report: ComparisonReport, path: str | Path, *, inputs: CompareInputs, id2label: dict[int, str],
               preprocessor=None, settings: dict[str, Any] | None = None,
               merge_sources: dict[str, MergeSources] | None = None) -> Path:
    """Write ``report`` as one self-contained page to ``path`` (atomically). ``inputs`` are the clips it ran on (their
    frames make the flips' strips, through ``preprocessor``, a ``PreprocessorConfig``, when given); ``settings`` adds
    what the command knew (the model, the candidates' files) to the settings section; ``merge_sources``: for a
    candidate that merges tokens, the source maps of its flipped clips, drawn over their frames."""
    pyplot("--html")  # a one-line error before any work when matplotlib is missing
    body = [_header(report), _summary(report), _accuracy(report),
            _flips(report, inputs, preprocessor, merge_sources or {}),
            _layers(report), _settings(report, settings or {})]
    verdict = "PASSED" if report.passed else "FAILED"
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            # nothing may load from outside the file: a browser refuses (and says so) anything the page would fetch
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>vivit-deploy compare: {verdict}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(part for part in body if part) + "\n</body></html>\n")
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return path


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (cells already HTML)."""
    cell = (lambda v: v) if raw else _e
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<div class=\"wide\"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _mark(passed: bool, text: str | None = None) -> str:
    return f"<span class=\"{'pass' if passed else 'fail'}\">{_e(text or ('PASS' if passed else 'FAIL'))}</span>"


def _figure_uri(fig) -> str:
    plt = pyplot("--html")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _png_uri(rgb: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _header(report: ComparisonReport) -> str:
    verdict = "PASSED" if report.passed else "FAILED"
    gates = ", ".join(g.describe() for g in report.gates) or "logits: within the precision's logit tolerances"
    views = f", {report.views} temporal views per clip (logits averaged)" if report.views > 1 else ""
    return (f"<h1>vivit-deploy compare <span class=\"verdict {'pass' if report.passed else 'fail'}\">{verdict}</span></h1>"
            f"<p>Reference: {_e(report.reference)}<br>Inputs: {_e(report.inputs)} ({report.num_inputs} clips{_e(views)})"
            f"<br>Gates: {_e(gates)}</p>")


def _summary(report: ComparisonReport) -> str:
    rows = []
    for c in report.candidates:
        s = c.stats
        accuracy = difference = "-"
        if c.accuracy is not None:
            accuracy = _e(c.accuracy.accuracy.top1.format())
            d = c.accuracy.difference
            difference = _e(f"{d.difference * 100:+.2f} pts, p = {d.p_value:.3g}") + (
                " " + _mark(False, "different") if d.different else " " + _mark(True, "not different"))
        gates = "; ".join(f"{_e(g.gate)}: {_mark(g.passed)}" for g in c.gates) or _mark(c.passed)
        rows.append([_e(c.name), _e(c.precision), _e(f"{s.max_abs:.2e}"), _e(f"{s.min_cosine:.6f}"),
                     _e(f"{s.top1_agreement:.1%}"), accuracy, difference, str(len(c.flips)), gates])
    table = _table(["candidate", "precision", "max abs", "min cosine", "top-1 agreement", "top-1 accuracy [95%]",
                    "difference to the reference", "flips", "verdict"], rows, raw=True)
    notes = []
    for c in report.candidates:
        for g in c.gates:
            notes.append(f"<li>{_e(c.name)}, gate {_e(g.gate)}: {_mark(g.passed)}: {_e(g.detail)}</li>")
        if not c.gates:
            notes += [f"<li>{_e(c.name)}: {_mark(False)}: {_e(reason)}</li>" for reason in c.failures]
    for name, why in report.not_compared.items():
        notes.append(f"<li class=\"muted\">not compared: {_e(name)} ({_e(why)})</li>")
    return "<h2>Summary</h2>" + table + (f"<ul>{''.join(notes)}</ul>" if notes else "")


def _accuracy(report: ComparisonReport) -> str:
    ref = report.reference_detail
    if ref is None:
        return ("<h2>Accuracy</h2><p class=\"muted\">The inputs are not labelled: no accuracy. Compare on labelled clips "
                "with --synthetic N, --videos DIR (labels.json), --manifest FILE (a label column) or --demo.</p>")
    labelled = [c for c in report.candidates if c.accuracy is not None]
    rows = [["reference (pytorch fp32)", ref.top1.format(), ref.topk.format(), "", "", ""]]
    for c in labelled:
        a, d = c.accuracy.accuracy, c.accuracy.difference
        rows.append([c.name, a.top1.format(), a.topk.format(),
                     f"{d.difference * 100:+.2f} [{d.low * 100:+.2f}, {d.high * 100:+.2f}]",
                     f"{d.only_reference} / {d.only_candidate}, p = {d.p_value:.3g}",
                     "different" if d.different else "not different"])
    table = _table(["model", "top-1 [95%]", f"top-{ref.k} [95%]", "difference in points [95%]",
                    "only reference / only candidate right, McNemar", f"verdict (p < {ALPHA:g})"], rows)
    per_class = _table(["class (top-1)", "reference", *[c.name for c in labelled]],
                       [[name, ref.per_class[name].format(), *[c.accuracy.accuracy.per_class[name].format()
                                                                for c in labelled]] for name in ref.per_class])
    chart = _interval_chart([("reference", ref.top1), *[(c.name, c.accuracy.accuracy.top1) for c in labelled]])
    return ("<h2>Accuracy</h2><p>On the same labelled clips. Intervals: 95% Wilson score; the difference: Newcombe's "
            "interval for paired proportions; a candidate is <em>different</em> only when McNemar's exact test on the "
            f"clips exactly one side got right rejects at p &lt; {ALPHA:g}.</p>" + table
            + f"<img class=\"chart\" alt=\"top-1 accuracy with 95% intervals\" src=\"{chart}\">"
            + "<h3>Per class</h3>" + per_class)


def _interval_chart(rows: list[tuple[str, Proportion]]) -> str:
    plt = pyplot("--html")
    fig, ax = plt.subplots(figsize=(9, 0.5 + 0.45 * len(rows)))
    y = np.arange(len(rows))[::-1]
    values = np.array([p.value for _, p in rows]) * 100
    low = values - np.array([p.low for _, p in rows]) * 100
    high = np.array([p.high for _, p in rows]) * 100 - values
    ax.errorbar(values, y, xerr=[low, high], fmt="o", capsize=4)
    ax.set_yticks(y, [name for name, _ in rows], fontsize=8)
    ax.set_xlabel("top-1 accuracy, % (95% Wilson interval)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _figure_uri(fig)


@dataclass(frozen=True)
class MergeSources:
    """ToMe's source maps of a merged candidate's flipped clips: ``maps[clip index]`` is (N', N) bool, which input
    tokens (the class token first, then the tubelets in (time, row, column) order over ``grid``) each final token
    holds, as PyTorch merges with the candidate's ``merge_tokens``."""

    grid: tuple[int, int, int]  # tubelets along time, rows, columns
    merge_tokens: tuple[int, ...]
    maps: dict[int, np.ndarray]


def _flips(report: ComparisonReport, inputs: CompareInputs, preprocessor, merge_sources: dict[str, MergeSources]) -> str:
    flipped = [c for c in report.candidates if c.flips]
    if not flipped:
        return "<h2>Flips</h2><p>No clip's top-1 changed in any candidate.</p>"
    parts = ["<h2>Flips</h2><p>Each clip whose top-1 class changed against the reference, with the probability each "
             "side gave its class, and the clip's frames as the reference saw them (its first view).</p>"]
    if any(c.name in merge_sources for c in flipped):
        parts.append("<p>For a candidate that merges tokens, a second strip shows which patches it merged (ToMe's source "
                     "map after the last layer, as PyTorch merges with the candidate's r): each group of merged "
                     "tubelets is painted in its mean colour and outlined; a tubelet left alone keeps its pixels. A "
                     "tubelet spans several frames, so frames of one tubelet show the same grouping.</p>")
    strips = 0
    for c in flipped:
        rows = []
        sources = merge_sources.get(c.name)
        for f in c.flips[:MAX_FLIPS_LISTED]:
            picture = ""
            if preprocessor is not None and strips < MAX_STRIPS:
                picture = f"<img class=\"strip\" alt=\"frames of {_e(f.name)}\" src=\"{_strip(inputs, f.index, preprocessor)}\">"
                if sources is not None and f.index in sources.maps:
                    merged = _merged_strip(inputs, f.index, preprocessor, sources.maps[f.index], sources.grid)
                    picture += (f"<br><img class=\"strip\" alt=\"tubelets merged in {_e(f.name)}\" src=\"{merged}\">")
                strips += 1
            rows.append([_e(f.name), _e(f.label or "-"), _e(f"{f.reference} ({f.reference_probability:.3f})"),
                         _e(f"{f.candidate} ({f.candidate_probability:.3f})"), _e(f.change), picture])
        more = (f"<p class=\"muted\">... and {len(c.flips) - MAX_FLIPS_LISTED} more (every flip is in --json)</p>"
                if len(c.flips) > MAX_FLIPS_LISTED else "")
        parts.append(f"<h3>{_e(c.name)}: {len(c.flips)} flip(s)</h3>"
                     + _table(["clip", "label", "reference (p)", "candidate (p)", "change", "frames"], rows, raw=True)
                     + more)
    if strips >= MAX_STRIPS:
        parts.append(f"<p class=\"muted\">Frames are shown for the first {MAX_STRIPS} flips.</p>")
    return "".join(parts)


def _strip(inputs: CompareInputs, index: int, preprocessor) -> str:
    """The frames of clip ``index`` (its first view) side by side, each THUMBNAIL_HEIGHT pixels high."""
    return _strip_of(preprocessor.to_pixels(inputs.pixel_values[index * inputs.views]))  # (T, H, W, 3)


def _strip_of(frames: np.ndarray) -> str:
    """(T, H, W, 3) frames side by side, each THUMBNAIL_HEIGHT pixels high, as a PNG data URI."""
    from PIL import Image

    t, h, w = frames.shape[:3]
    width = max(1, round(w * THUMBNAIL_HEIGHT / h))
    strip = np.concatenate([np.asarray(Image.fromarray(frame).resize((width, THUMBNAIL_HEIGHT), Image.Resampling.NEAREST
                                                                       if h < THUMBNAIL_HEIGHT else Image.Resampling.BILINEAR))
                            for frame in frames], axis=1)
    return _png_uri(strip)


def paint_merged(frames: np.ndarray, source: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """``frames`` (T, H, W, 3) uint8 with ToMe's grouping drawn on them: every tubelet that merged with others painted
    in its group's mean colour, outlined in black where its neighbour in the frame belongs to another group; a tubelet
    alone keeps its pixels. ``source`` (N', N) bool: token n' holds input token n (n = 0 the class token)."""
    gt, gh, gw = grid
    t, h, w = frames.shape[:3]
    kt, ph, pw = t // gt, h // gh, w // gw
    group = source[:, 1:].argmax(axis=0).reshape(gt, gh, gw)  # each tubelet's final token
    sizes = source[:, 1:].sum(axis=1)  # tubelets per final token
    tubelets = frames[: gt * kt, : gh * ph, : gw * pw].astype(np.float64)
    tubelets = tubelets.reshape(gt, kt, gh, ph, gw, pw, 3).transpose(0, 2, 4, 1, 3, 5, 6)  # (gt, gh, gw, kt, ph, pw, 3)
    means = tubelets.mean(axis=(3, 4, 5))  # (gt, gh, gw, 3)
    colours = np.zeros((source.shape[0], 3))
    np.add.at(colours, group.ravel(), means.reshape(-1, 3))
    colours /= np.maximum(sizes, 1)[:, None]
    merged = sizes[group] > 1  # (gt, gh, gw)
    painted = np.where(merged[..., None, None, None, None], colours[group][:, :, :, None, None, None, :], tubelets)
    out = frames.copy()
    out[: gt * kt, : gh * ph, : gw * pw] = np.rint(painted).transpose(0, 3, 1, 4, 2, 5, 6).reshape(gt * kt, gh * ph, gw * pw, 3)
    for i in range(gh):  # outlines between tubelets of different groups
        for j in range(gw):
            for ti in range(gt):
                frames_of = slice(ti * kt, (ti + 1) * kt)
                if j + 1 < gw and group[ti, i, j] != group[ti, i, j + 1]:
                    out[frames_of, i * ph : (i + 1) * ph, (j + 1) * pw - 1] = 0
                if i + 1 < gh and group[ti, i, j] != group[ti, i + 1, j]:
                    out[frames_of, (i + 1) * ph - 1, j * pw : (j + 1) * pw] = 0
    return out


def _merged_strip(inputs: CompareInputs, index: int, preprocessor, source: np.ndarray, grid) -> str:
    """The frames of clip ``index`` with its merged tubelets drawn (``paint_merged``), as ``_strip`` shows them."""
    frames = preprocessor.to_pixels(inputs.pixel_values[index * inputs.views])
    return _strip_of(paint_merged(frames, source, grid))


def _layers(report: ComparisonReport) -> str:
    if not report.layer_drift and not report.layers_skipped:
        return ""
    parts = ["<h2>Per-layer drift</h2><p>Every probe point against PyTorch fp32's forward hooks on the same clips: the "
             "embeddings, each layer's residual stream (and its attention or MLP branch where that fails against fp32's "
             "own output), the final norm and the logits; the right chart is the reference's largest magnitude against "
             "fp16's range.</p>"]
    for name, drift in report.layer_drift.items():
        parts.append(f"<h3>{_e(name)}</h3>" + _drift_section(drift))
    for name, why in report.layers_skipped.items():
        parts.append(f"<p class=\"muted\">No per-layer drift for {_e(name)}: {_e(why)}</p>")
    return "".join(parts)


def _drift_section(drift: LayerDriftReport) -> str:
    chart = _figure_uri(drift_figure([drift], "--html"))
    rows = []

    def row(label: str, point, passed: bool) -> None:
        rows.append([_e(label), _e("nan" if point.cosine is None else f"{point.cosine:.6f}"), _e(f"{point.max_abs:.2e}"),
                     _e(f"{point.max_magnitude:.3g}"), _e(point.nan), _e(point.inf), _mark(passed, "ok" if passed else "FAIL")])

    row("embeddings", drift.embeddings, drift.embeddings.passes(drift.min_cosine))
    for layer in drift.layers:
        row(f"layer {layer.layer}", layer.block, layer.passed)
        for part in layer.failing_branches:
            row(f"layer {layer.layer} {'attention' if part == 'attention' else 'MLP'} (own output)", layer.parts[part],
                False)
    row("final norm", drift.final_norm, drift.final_norm.passes(drift.min_cosine))
    if drift.logits is not None:
        row("logits", drift.logits, drift.logits.passes(drift.min_cosine))
    table = _table(["point", "cosine", "max abs", "max |x| (fp32)", "NaN", "inf", "verdict"], rows, raw=True)
    verdict = "<p>No point out of tolerance.</p>"
    if drift.first_failing is not None:
        verdict = f"<p>First failing: <b>{_e(drift.first_failing)}</b>"
        if drift.diagnosis is not None:
            verdict += f"<br>Where: {_e(drift.diagnosis.sentence())}<br>Fix: {_e(drift.diagnosis.fix_advice())}"
        verdict += "</p>"
    return f"<img class=\"chart\" alt=\"per-layer drift of {_e(drift.candidate)}\" src=\"{chart}\">" + table + verdict


def _settings(report: ComparisonReport, settings: dict[str, Any]) -> str:
    import platform
    import shlex
    import sys
    from importlib import metadata

    from vivit_deploy.runtimes.cpu import describe_cpu

    versions = []
    for package in VERSIONED:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    items = [("model", report.reference), ("inputs", f"{report.inputs} ({report.num_inputs} clips)")]
    for entry in settings.get("candidates", []):
        file = f", file {entry['file']}" if entry.get("file") else ""
        digest = f", sha256 {entry['sha256']}" if entry.get("sha256") else ""
        items.append(("candidate", f"{entry['name']}: {entry['backend']} {entry['precision']} on {entry['device']}"
                                   f"{file}{digest}"))
    for c in report.candidates:
        t = c.tolerance
        items.append(("tolerance", f"{c.name}: atol {t.atol:g}, rtol {t.rtol:g}, cosine >= {t.min_cosine:g}, "
                                   f"top-1 agreement >= {t.min_top1:.0%}"))
    items += [("gates", ", ".join(g.name for g in report.gates) or "logits"),
              ("CPU", describe_cpu()), ("machine", f"{platform.system()} {platform.machine()}, Python "
                                                  f"{platform.python_version()}"),
              ("versions", ", ".join(versions)),
              ("command", settings.get("command") or shlex.join(["vivit-deploy", *sys.argv[1:]])),
              ("date", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))]
    listed = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    return f"<h2>Settings</h2><dl>{listed}</dl>"


__all__ = ["write_html"]
