"""A benchmark run's results, and the ratios that mean something on a shared machine.

Absolute timings drift from run to run on shared hardware; ratios between backends taken in one run
do not drift with them, so the tables lead with ratios: sdpa over eager in the layout of the
transformers ViViT doc (Speedup % = eager time / sdpa time - 1; Mem saved % = eager memory / sdpa
memory - 1, as that doc computes it), and every backend's speedup over ``torch-sdpa``. Ratios use the
median latency: one slow call (a clock ramping up, a neighbour's burst) moves a mean, not a median. The same report
renders as markdown (terminal and docs), JSON, and a PNG plot of throughput against batch size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vivit_deploy.model.config import schedule_text
from vivit_deploy.bench.plan import PEERS, REFERENCE_BACKEND

PEER_REFERENCE = "transformers-sdpa"  # the peer our backends must beat
PAIRS = (("vivit_deploy", "torch-eager", "torch-sdpa"), ("transformers", "transformers-eager", "transformers-sdpa"))


@dataclass
class BenchReport:
    environment: dict[str, Any]  # date, device, library versions, threads
    model: dict[str, Any]  # label, geometry, GFLOP per clip
    settings: dict[str, Any]  # batch sizes, precision, warm-up and timed iterations
    results: dict[str, dict[str, Any]]  # backend -> what its child process returned (+ "drift")
    skipped: dict[str, str] = field(default_factory=dict)  # backend -> why it did not run
    ceiling: dict[str, float] = field(default_factory=dict)  # library -> GFLOP/s, same run
    stages: dict[str, Any] | None = None
    preprocessing: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    # ---- derived figures -------------------------------------------------------------------------

    @property
    def failed(self) -> dict[str, str]:
        return {name: r["error"] for name, r in self.results.items() if "error" in r}

    def row(self, backend: str, batch: int) -> dict[str, Any] | None:
        for row in self.results.get(backend, {}).get("rows", []):
            if row["batch"] == batch and "error" not in row:
                return row
        return None

    def tflops(self, row: dict[str, Any], name: str = "") -> float:
        """The rate a result computed at: its model's work (a peer, transformers' model, does not merge tokens) per
        second; GFLOP per ms = TFLOP/s."""
        gflop = self.model["gflop_per_clip"]
        if name.split("@")[0] in PEERS:
            gflop = self.model.get("gflop_per_clip_unmerged", gflop)
        return gflop * row["batch"] / row["mean_ms"]

    @property
    def best_ceiling(self) -> float | None:
        return max(self.ceiling.values()) if self.ceiling else None

    def ceiling_for(self, precision: str) -> float | None:
        """The ceiling a result in ``precision`` is held against: the best fp32 product for fp32, torch's
        product in that type for fp16 / bf16, none for int8 (no int8 ceiling is measured)."""
        if precision == "fp32":
            rates = [rate for name, rate in self.ceiling.items() if not name.endswith(("fp16", "bf16"))]
            return max(rates) if rates else None
        return next((rate for name, rate in self.ceiling.items() if name.endswith(precision)), None)

    @property
    def reference(self) -> str:
        return self.settings.get("reference", REFERENCE_BACKEND)

    @property
    def peer_reference(self) -> str:
        return PEER_REFERENCE + "@fp32" if self.settings.get("matrix") else PEER_REFERENCE

    def sdpa_vs_eager(self) -> list[dict[str, Any]]:
        """Per implementation and batch: speedup % and memory saved % of sdpa over eager (seed layout)."""
        out = []
        for implementation, eager_name, sdpa_name in PAIRS:
            for batch in self.settings["batch_sizes"]:
                eager, sdpa = self.row(eager_name, batch), self.row(sdpa_name, batch)
                if eager is None or sdpa is None:
                    continue
                out.append({
                    "implementation": implementation, "batch_size": batch,
                    "is_cuda": self.environment["device"].startswith("cuda"),
                    "is_half": self.settings["precision"] != "fp32",
                    "speedup_pct": 100 * (eager["p50_ms"] / sdpa["p50_ms"] - 1),
                    "mem_eager_mb": eager["peak_mb"], "mem_sdpa_mb": sdpa["peak_mb"],
                    "mem_saved_pct": 100 * (eager["peak_mb"] / sdpa["peak_mb"] - 1) if sdpa["peak_mb"] > 0 else None,
                })
        return out

    def speedups(self, reference_backend: str = REFERENCE_BACKEND) -> dict[int, dict[str, float]]:
        """batch -> backend -> the reference's median latency / the backend's (>1: faster than the reference)."""
        out: dict[int, dict[str, float]] = {}
        for batch in self.settings["batch_sizes"]:
            reference = self.row(reference_backend, batch)
            if reference is None:
                continue
            out[batch] = {name: reference["p50_ms"] / row["p50_ms"]
                          for name in self.results if (row := self.row(name, batch)) is not None}
        return out

    # ---- renderings --------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sdpa_vs_eager"] = self.sdpa_vs_eager()
        for reference in (self.reference, self.peer_reference):
            key = "speedup_over_" + reference.replace("-", "_").replace("@", "_")
            data[key] = {str(b): s for b, s in self.speedups(reference).items()}
        return data

    def to_markdown(self) -> str:
        env, model, settings = self.environment, self.model, self.settings
        lines = [
            f"## vivit-deploy bench: {model['label']}",
            "",
            f"{env['date']} · {env['device_name']} ({env['device']}) · {settings['precision']} · "
            f"{model['gflop_per_clip']:.3g} GFLOP per clip · warm-up {settings['warmup']}, timed {settings['iters']} "
            f"per batch size · torch {env['torch']}" + (f" · {env['threads']} CPU threads" if env.get("threads") else "")
            + (f" · CPU flags: {', '.join(env['cpu_flags']) or 'none of ' + 'avx2/avx512/vnni/bf16/amx'}"
               if "cpu_flags" in env else "")
            + (f" · token merging r {schedule_text(model['merge_tokens'])}"
               f" per layer ({model['tokens']} -> {model['token_counts'][-1]} tokens, "
               f"{model['gflop_per_clip_unmerged']:.3g} GFLOP unmerged, which the transformers peers run)"
               if model.get("merge_tokens") else ""),
            "",
            "### Latency, throughput, memory",
            "",
        ]
        ceiling = self.best_ceiling
        header = ["backend", "batch", "mean ms", "p50 ms", "p90 ms", "p99 ms", "clips/s", "TFLOP/s"]
        header += ["% of ceiling"] if ceiling else []
        header += ["peak MB"]
        table = []
        for name, result in self.results.items():
            if "error" in result:
                table.append([name, "-", f"failed: {result['error']}"] + [""] * (len(header) - 3))
                continue
            for row in result["rows"]:
                if "error" in row:
                    table.append([name, str(row["batch"]), row["error"]] + [""] * (len(header) - 3))
                    continue
                rate = self.tflops(row, name)
                own = self.ceiling_for(result.get("precision", settings["precision"]))
                cells = [name, str(row["batch"])] + [f"{row[k]:.1f}" for k in ("mean_ms", "p50_ms", "p90_ms", "p99_ms")]
                cells += [f"{row['clips_per_s']:.2f}", f"{rate:.3g}"]
                cells += [f"{rate * 1e3 / own:.0%}" if own else "-"] if ceiling else []
                cells += [f"{row['peak_mb']:.0f}"]
                table.append(cells)
        lines += _table(header, table)

        pairs = self.sdpa_vs_eager()
        if pairs:
            lines += ["", "### sdpa vs eager (layout of the transformers ViViT doc; speedup from median latencies)", ""]
            lines += _table(
                ["implementation", "batch_size", "is cuda", "is half", "Speedup (%)", "Mem eager (MB)", "Mem sdpa (MB)", "Mem saved (%)"],
                [[p["implementation"], str(p["batch_size"]), str(p["is_cuda"]), str(p["is_half"]), f"{p['speedup_pct']:.1f}",
                  f"{p['mem_eager_mb']:.0f}", f"{p['mem_sdpa_mb']:.0f}",
                  "-" if p["mem_saved_pct"] is None else f"{p['mem_saved_pct']:.1f}"] for p in pairs],
            )
        if self.settings.get("matrix"):
            lines += self._matrix_markdown()
        for reference in (self.reference, self.peer_reference):
            speedups = self.speedups(reference)
            if speedups:
                names = [n for n in self.results if n != reference and "error" not in self.results[n]]
                lines += ["", f"### Speedup over {reference} (its median latency / the backend's, same run)", ""]
                lines += _table(["batch"] + names, [[str(b)] + [f"{s[n]:.2f}x" if n in s else "-" for n in names]
                                                     for b, s in speedups.items()])
        drift = [(n, r["drift"]) for n, r in self.results.items() if r.get("drift")]
        if drift:
            lines += ["", f"### Drift from {self.reference} (logits of the first batch, identical input)", ""]
            lines += _table(["backend", "max abs diff", "min cosine", "top-1 agreement"],
                            [[n, f"{d['max_abs_diff']:.2e}", f"{d['min_cosine']:.5f}" if "min_cosine" in d else "-",
                              f"{d['top1_agreement']:.0%}"] for n, d in drift])
        if self.ceiling:
            lines += ["", "### Ceiling (matrix product, same run)", "",
                      "; ".join(f"{lib} {rate / 1e3:.3g} TFLOP/s" for lib, rate in self.ceiling.items())
                      + ". '% of ceiling' above is against the best product in the row's precision (fp32: the best "
                        "library; fp16/bf16: torch in that type; int8: none measured)."]
        if self.stages:
            stages = self.stages
            lines += ["", f"### Stages of `predict` ({stages['backend']}, {stages['videos']} videos of "
                          f"{', '.join(stages['frame_sizes'])}, {stages['frames_per_clip']} frames per clip)", ""]
            lines += _table(["stage", "ms per clip", "clips/s", "share of end to end"],
                            [[s, f"{v['ms_per_clip']:.1f}", f"{v['clips_per_s']:.1f}", f"{v['share']:.0%}"]
                             for s, v in stages["stages"].items()])
        if self.preprocessing:
            p = self.preprocessing
            lines += ["", "### Preprocessing: VideoPreprocessor vs transformers' VivitImageProcessor", "",
                      f"One {p['clip']} uint8 clip -> {'x'.join(map(str, p['output']))}: ours {p['ours_ms']:.1f} ms, "
                      f"transformers {p['transformers']} {p['transformers_ms']:.1f} ms: **{p['speedup']:.1f}x**, "
                      f"max abs difference {p['max_abs_diff']:.3g}."]
        notes = list(self.notes)
        notes += [f"{name}: {result['timed']}; memory: {result['memory_kind']}."
                  for name, result in self.results.items() if "timed" in result]
        notes += [f"{name} not measured: {reason}." for name, reason in self.skipped.items()]
        if notes:
            lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
        return "\n".join(lines) + "\n"

    def _matrix_markdown(self) -> list[str]:
        """Per backend x precision: median latency, speedup over transformers' fp32 sdpa, drift from our fp32."""
        peer = self.peer_reference
        lines = ["", f"### Backend x precision ({self.environment['device_name']}; speedup over {peer}, drift from "
                     f"{self.reference} on identical input)", ""]
        rows = []
        for name, result in self.results.items():
            if "error" in result:
                continue
            drift = result.get("drift", {})
            for row in result["rows"]:
                if "error" in row:
                    continue
                reference = self.row(peer, row["batch"])
                rows.append([
                    name.split("@")[0], result.get("precision", ""), str(row["batch"]), f"{row['p50_ms']:.1f}",
                    f"{reference['p50_ms'] / row['p50_ms']:.2f}x" if reference else "-",
                    f"{drift['min_cosine']:.5f}" if "min_cosine" in drift else ("reference" if name == self.reference else "-"),
                    f"{drift['top1_agreement']:.0%}" if "top1_agreement" in drift else "-",
                ])
        return lines + _table(["backend", "precision", "batch", "p50 ms", f"over {peer}", "min cosine", "top-1 agreement"], rows)

    def plot(self, path: str | Path) -> Path:
        """PNG of throughput (clips/s) against batch size, one line per backend."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
        try:
            for name, result in self.results.items():
                rows = [r for r in result.get("rows", []) if "error" not in r]
                if rows:
                    axes.plot([r["batch"] for r in rows], [r["clips_per_s"] for r in rows], marker="o",
                              linestyle="--" if name.startswith("transformers") else "-", label=name)
            axes.set_xscale("log", base=2)
            axes.set_xticks(self.settings["batch_sizes"], [str(b) for b in self.settings["batch_sizes"]])
            axes.set_xlabel("batch size")
            axes.set_ylabel("clips / s")
            axes.set_title(f"{self.model['label']}\n{self.environment['device_name']}, {self.settings['precision'].replace(',', ', ')}",
                           fontsize=9)
            axes.grid(True, alpha=0.3)
            axes.legend(fontsize=8)
            figure.tight_layout()
            path = Path(path)
            figure.savefig(path, format="png")
        finally:
            plt.close(figure)
        return path


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in rows]
    return out
