"""Model 2's two parts as ONNX files beside the whole model's, so a stream encodes each time step once.

The factorised encoder (``model/factorised.py``) encodes every time step alone, then the steps' tokens together. With
the paper's separate positions a step's encoding does not depend on where it sits in a clip, so overlapping windows
of a stream can share it: ``vivit-export`` writes, next to ``model.onnx`` (which every other command runs),

    model.steps.onnx     the spatial encoder: the frames of S steps (S, t, C, H, W) -> their tokens (S, D)
    model.windows.onnx   the temporal encoder, final norm and classifier: tokens (B, F, D) -> logits (B, L)

in the same precision, with the same fp32 units, calibrated on the same clips (an int8 part measures the ranges the
whole graph's calibration measured: the steps of the same clips, the tokens the fp32 encoder makes of them), and
validated against PyTorch fp32 with the file's own tolerance. Each part records the SHA-256 of the file it belongs
to, and a runtime takes them only with that file (``runtimes``: ``Runtime.step_parts``). Two graphs rather than
one with a cache input: each runs at its own batch (the new steps of every stream at once, then one window per
stream), with no input that a caller could fill with stale tokens.

With vit-pytorch's per-step positions a step's encoding depends on its index in the clip: no parts are written, and
a stream encodes every window in full.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from vivit_deploy.errors import ExportError

from vivit_deploy.artifacts.step_parts import (OWNER_KEY, PART_KEY, STEPS_INPUT, STEPS_OUTPUT, WINDOWS_INPUT,
                                               WINDOWS_OUTPUT, part_paths, reuses_steps)


def _modules(model):
    """(steps module, windows module) over ``model``'s own submodules (their paths kept under ``vivit.``)."""
    import torch

    class StepEncoder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.vivit = inner.vivit

        def forward(self, steps):
            return self.vivit.encoder.encode_steps(self.vivit.embeddings(steps)[:, 0])

    class WindowClassifier(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.vivit, self.classifier, self.inner_cls = inner.vivit, inner.classifier, inner.cls

        def forward(self, tokens):
            encoded = self.vivit.layernorm(self.vivit.encoder.encode_window(tokens))
            return self.classifier(encoded[:, 0] if self.inner_cls else encoded.mean(dim=1))

    return StepEncoder(model), WindowClassifier(model)


def export_step_parts(model, staged: Path, path: Path, *, precision: str, kept: tuple[str, ...], opset: int,
                      max_batch: int, clips: np.ndarray | None, validation: np.ndarray, tolerance, smooth_quant: float,
                      progress: Callable[[str], None], metadata_props: dict[str, str]) -> list[tuple[Path, Path]]:
    """Stage the two parts that belong beside ``path`` and validate them; ``staged``: the whole model's file, checked
    and validated, not yet at ``path`` (the parts record its SHA-256). Returns (staged part, its path) pairs for the
    caller to publish with the whole model (``files.publish``); on failure nothing is left. ``clips``: the
    calibration clips of an int8/fp8 file; ``validation``: clips to check the parts on against PyTorch fp32."""
    import onnx
    import torch

    from vivit_deploy.accuracy.statistics import failures, logit_stats
    from vivit_deploy.artifacts.metadata import QUANTIZED_PRECISIONS
    from vivit_deploy.export.tracing import float_io, trace_module
    from vivit_deploy.files import sha256_of, staged_path

    config = model.config
    t = config.tubelet_size[0]
    steps_per_clip, width = config.grid[0], config.hidden_size
    step_shape = (t, config.num_channels, config.image_height, config.image_width)
    started = time.perf_counter()
    progress(f"exporting Model 2's parts ({precision}): the step encoder and the window classifier ...")
    if precision == "fp16":
        from vivit_deploy.export.fp32_fallback import half_with_fp32_units

        steps_module, windows_module = (float_io(m) for m in _modules(half_with_fp32_units(model, kept)))
    else:
        steps_module, windows_module = _modules(model)
    dim = torch.export.Dim
    # traced at 2 windows (torch.export specialises a dimension traced at size 1), so the parts take at least 2
    max_batch = max(max_batch, 2)
    steps_proto = trace_module(steps_module, torch.zeros(2 * steps_per_clip, *step_shape),
                               ({0: dim("steps", min=1, max=max_batch * steps_per_clip)},), STEPS_INPUT, STEPS_OUTPUT,
                               opset)
    windows_proto = trace_module(windows_module, torch.zeros(2, steps_per_clip, width),
                                 ({0: dim("batch", min=1, max=max_batch)},), WINDOWS_INPUT, WINDOWS_OUTPUT, opset)
    fp32_steps, fp32_windows = _modules(model)

    def as_steps(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.reshape(-1, *step_shape))

    def tokens_of(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return fp32_steps(torch.from_numpy(as_steps(x))).numpy().reshape(len(x), steps_per_clip, width)

    if precision in QUANTIZED_PRECISIONS:
        from vivit_deploy.export.fp32_fallback import modules_of
        from vivit_deploy.export.quantize import calibration_ranges, quantize
        from vivit_deploy.export.quantize import smooth_quant as smooth

        floats = tuple(modules_of(kept, config))
        protos = []
        for proto, inputs, name in ((steps_proto, as_steps(clips), STEPS_INPUT), (windows_proto, tokens_of(clips),
                                                                                  WINDOWS_INPUT)):
            if smooth_quant:
                proto, _ = smooth(proto, inputs, name, smooth_quant, progress)
            ranges = calibration_ranges(proto, inputs, name, progress)
            proto, _ = quantize(proto, inputs, "the file's calibration clips", name, progress, precision=precision,
                                float_modules=floats, ranges=ranges, smoothed=smooth_quant)
            protos.append(proto)
        steps_proto, windows_proto = protos
    owner = sha256_of(staged)  # the same bytes as the file that will be at path
    written: list[Path] = []
    targets = part_paths(path)
    try:
        for proto, part, target in zip((steps_proto, windows_proto), ("steps", "windows"), targets):
            for key, value in {**metadata_props, PART_KEY: part, OWNER_KEY: owner}.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, value
            written.append(staged_path(target, "staged"))
            onnx.save_model(proto, str(written[-1]))
        # the parts in turn, on the validation clips, against PyTorch fp32's whole model
        from vivit_deploy.runtimes.ort_runtime import cpu_session

        steps_session, windows_session = cpu_session(written[0]), cpu_session(written[1])
        tokens = steps_session.run(None, {STEPS_INPUT: as_steps(validation)})[0]
        logits = windows_session.run(None, {WINDOWS_INPUT: tokens.reshape(len(validation), steps_per_clip, width)})[0]
        with torch.no_grad():
            reference = model(torch.from_numpy(np.ascontiguousarray(validation))).logits.numpy()
        stats = logit_stats(reference, logits)
        reasons = failures(reference, logits, stats, tolerance)
        if reasons:
            raise ExportError(f"Model 2's parts ({precision}) disagree with PyTorch fp32 ({'; '.join(reasons)}); "
                              f"nothing was written: neither {path} nor its parts")
    except BaseException:
        for tmp in written:
            tmp.unlink(missing_ok=True)
        raise
    progress(f"checked {targets[0].name} and {targets[1].name} (cosine {stats.min_cosine:.6f} against PyTorch fp32, "
             f"{time.perf_counter() - started:.1f} s)")
    return list(zip(written, targets))


__all__ = ["export_step_parts", "part_paths", "reuses_steps"]
