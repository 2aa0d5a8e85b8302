"""int8 (and fp8): a static, calibrated, explicit Q/DQ graph from the fp32 export, for ONNX Runtime, OpenVINO
and TensorRT.

The form is the one all three consume: QuantizeLinear/DequantizeLinear pairs in the graph (QDQ format),
symmetric int8 everywhere (zero points 0, which TensorRT requires), weights per output channel,
activations per tensor from MinMax calibration on real clips, Q/DQ on the inputs of the weighted
operations only (where TensorRT's docs place them; their outputs stay float).

What is quantized, and why. Measured by ``python scripts/bench_quantization.py`` (2 Intel Xeon cores
with VNNI/AMX, ONNX Runtime 1.31.1 CPU, 2026-11-26; docs/benchmarks/quantization-cpu-intel.md):
ViViT-B/16x2 geometry at 8 frames, batch 2, for speed; the demo model on 1000 held-out synthetic clips
for accuracy (fp32: 99.8%):
- The weight MatMuls (Q, K, V, attention output, MLP in and out): 2.90x fp32 on ONNX Runtime, accuracy
  99.8% (unchanged), logits' worst cosine to fp32 0.99929.
- The attention products by default not, Q @ K^T on request (``attention_products=("qk",)``, ``vivit-export
  --attention-products qk``). Measured by ``python scripts/bench_int8_levers.py`` (2 AMD EPYC cores with
  VNNI and avx512_bf16, 2026-12-01; docs/benchmarks/int8-levers-cpu-amd.md): ViViT-B/16x2 at 32 frames,
  batch 2, two runs. Q @ K^T in int8 makes OpenVINO's int8 file 2.31-2.37x OpenVINO fp32 instead of
  1.73-1.90x, with the logits' worst cosine 0.99953 (0.99958 without); ONNX Runtime gains nothing from it
  (4.69 s against 4.67 s in the second run, 5.05 against 4.96 in the first), and TensorRT for RTX builds it (TensorRT 10/11: not run). ONNX Runtime is the
  default backend, so the default stays off. P @ V in int8 collapses the logits (cosine 0.13): with 3137
  tokens most probabilities lie below one int8 step of [0, 1] (1/127) and become 0; it exists for the
  measurement only. Not LayerNorm or Softmax (no int8 kernels on ONNX Runtime's CPU, and the
  distributions post-training ViT quantization struggles with). Not the classifier (it writes the logits).
- SmoothQuant (``smooth_quant``, alpha 0.5, the default): on ViViT-B's random weights it changes neither
  speed (beyond the runs' noise) nor cosine (0.99960 against 0.99959 without); on a model with an outlier channel it is the
  difference between refusing the file and keeping it (``tests/accuracy/test_layers.py``: cosine 0.96 without, above
  0.999 with, every MatMul still int8).
- Our calibrator against NNCF 3.4 (``nncf.quantize(..., model_type=TRANSFORMER)``: its SmoothQuant and
  fast bias correction) on the same clips: NNCF's file ran 1.39x ONNX Runtime fp32 and 2.06x OpenVINO
  fp32 at cosine 0.99961; ours 1.57-1.84x and 1.73-1.90x (2.31-2.37x with Q @ K^T) at 0.99953-0.99960.
  NNCF does not win on both numbers and needs about 2.5 GB a ViViT-B clip for its statistics, so the
  calibrator stays ours. Percentile or entropy ranges were not built: min/max keeps every usable lever
  above 0.9995, and the one that fails (P @ V) fails at the bottom of the range, not at its outliers.
- Not the tubelet projection (``FLOAT_MODULES``), measured when it was the patch Conv3d: with it, 2.48x
  instead of 2.90x (ONNX Runtime's int8 Conv needs a quantized output, so it runs DequantizeLinear + fp32
  Conv) and twice the drift (cosine 0.99862). It is exported as a MatMul now and stays float, as before.
- Q, K and V fused into one MatMul (``fuse_shared_input_matmuls``) before quantizing: unfused, ONNX
  Runtime's x86 rewrite of int8 activations to the uint8 its kernels take does not apply to the three
  MatMuls reading one LayerNorm output, and those 36 ran as DequantizeLinear + fp32 MatMul: 1.86x.
  Fused, every weight MatMul becomes MatMulIntegerToFloat.
- Activations int8 and symmetric, not ONNX Runtime's preferred uint8: uint8 is not a TensorRT Q/DQ
  type, and it was not faster here (2.57x).
- ONNX Runtime's dynamic quantization of the same MatMuls ran at the same speed (2.95x) and accuracy,
  but only on ONNX Runtime (activation ranges computed at run time, no Q/DQ for TensorRT), so the one
  int8 file is the static one.
``optimized_leftovers`` reports where a session still runs DequantizeLinear -> MatMul in fp32.

fp8 (``--precision fp8``) puts float8 e4m3fn Q/DQ on the same MatMuls, for TensorRT on Ada and Hopper
GPUs. Nothing here runs fp8 arithmetic; ONNX Runtime's CPU provider runs the graph as fp8-rounded
Q/DQ around fp32 products (at its basic optimization level, see ``ort_runtime``), which is how its
numerics are checked: on the demo model's 1000 held-out clips every top-1 is kept, with larger drift
than int8 (worst cosine 0.9715 against 0.9983: 3 mantissa bits against int8's 127 steps near the
range's top).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vivit_deploy.errors import ConfigError, InputShapeError
from vivit_deploy.export.graph_checks import count_reading_dequantized
from vivit_deploy.export.graph_scopes import in_module
from vivit_deploy.model.probes import EMBEDDING_MODULES, POOLER

# Op types whose weights (and inputs) are quantized; the tubelet projection is left out (see the module docstring).
QUANTIZED_OPS = ("MatMul",)
# the tubelet projection (a MatMul in the export) stays float, as the Conv3d did; so does an attentive probe (V-JEPA 2's
# pooler), part of the head as the classifier is
FLOAT_MODULES = EMBEDDING_MODULES + (POOLER,)
DEFAULT_CALIBRATION_CLIPS = 32
CALIBRATION_BATCH = 2  # clips per calibration run: ViViT-B at batch 2 needs about 3 GB in ONNX Runtime

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CalibrationSummary:
    """What an int8 file was calibrated on and how; recorded in its metadata."""

    source: str
    clips: int
    method: str
    activations: str
    weights: str
    quantized: dict[str, int]  # op type -> nodes with Q/DQ inputs
    excluded: dict[str, int]  # why -> nodes left in float
    fused_qkv: int
    input_range: tuple[float, float] | None = None  # of the calibration clips: runtimes warn outside it
    kept_fp32_modules: tuple[str, ...] = ()  # whose MatMuls stayed fp32 (--keep-fp32)
    attention_products: tuple[str, ...] = ()  # activation x activation MatMuls quantized too (off by default)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- calibration data ----------------------------------------------------------------------------

def calibration_clips(source: str | os.PathLike, config, preprocessor, limit: int = DEFAULT_CALIBRATION_CLIPS,
                      progress: Progress | None = None) -> tuple[np.ndarray, str]:
    """Preprocessed clips (N, T, C, H, W) to calibrate on, from a directory of videos or a saved ``.npz``.

    Videos go through the shared reader and preprocessor (uniform sampling, one clip each, the first
    ``limit`` in name order, searched recursively); an ``.npz`` is one saved by ``compare --save-inputs``
    and must match the model's input. Returns the clips and a description for the metadata.
    """
    from vivit_deploy.accuracy.inputs import CompareInputs

    if limit < 1:
        raise ConfigError(f"calibration clips must be at least 1, got {limit}")
    path = Path(source)
    want = tuple(config.input_shape)
    if path.is_file() and path.suffix == ".npz":
        inputs = CompareInputs.load(path)
        clips = inputs.pixel_values[:limit]
        if tuple(clips.shape[1:]) != want:
            raise InputShapeError(f"{path}: clips of shape {tuple(clips.shape[1:])}, the model takes {want}")
        return np.ascontiguousarray(clips, dtype=np.float32), f"{len(clips)} clips from {path.name} ({inputs.source})"
    if path.is_dir():
        from vivit_deploy.errors import VideoReadError
        from vivit_deploy.video.reading import VIDEO_SUFFIXES, read_video

        videos = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        clips, skipped = [], []
        for video in videos:
            if len(clips) == limit:
                break
            try:
                clip = read_video(video, config.num_frames)
            except VideoReadError as exc:
                skipped.append(str(exc))
                continue
            clips.append(preprocessor(clip)[0])
            if progress and len(clips) % 8 == 0:
                progress(f"calibration clips: {len(clips)}/{min(limit, len(videos))}")
        if not clips:
            raise ConfigError(f"{path}: no readable videos to calibrate on" + (f" ({skipped[0]})" if skipped else ""))
        note = f", {len(skipped)} unreadable skipped" if skipped else ""
        return np.stack(clips), f"{len(clips)} videos from {path}{note}"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such calibration directory or .npz file")
    raise ConfigError(f"{path}: calibration data is a directory of videos or an .npz saved by `compare --save-inputs`")


# ---- graph rewrites ------------------------------------------------------------------------------

def fuse_shared_input_matmuls(model) -> int:
    """Merge MatMuls that read the same activation with constant weights (Q, K, V) into one MatMul + Split.

    The outputs keep their names, so everything downstream (bias Adds, reshapes) is untouched; the
    arithmetic is the same products, concatenated. Returns how many groups were fused.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    groups: dict[str, list] = defaultdict(list)
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in initializers and node.input[0] not in initializers:
            groups[node.input[0]].append(node)
    fused = 0
    for activation, nodes in groups.items():
        weights = [numpy_helper.to_array(initializers[n.input[1]]) for n in nodes]
        if len(nodes) < 2 or any(w.ndim != 2 for w in weights) or len({w.shape[0] for w in weights}) != 1:
            continue
        name = f"{nodes[0].name}_fused{len(nodes)}"
        graph.initializer.append(numpy_helper.from_array(np.concatenate(weights, axis=1), f"{name}.weight"))
        graph.initializer.append(numpy_helper.from_array(np.array([w.shape[1] for w in weights], np.int64), f"{name}.split"))
        matmul = helper.make_node("MatMul", [activation, f"{name}.weight"], [f"{name}.out"], name=name)
        matmul.metadata_props.extend(nodes[0].metadata_props)  # its module path, for the float fallback
        split = helper.make_node("Split", [f"{name}.out", f"{name}.split"], [n.output[0] for n in nodes],
                                 name=f"{name}.split", axis=-1)
        position = min(list(graph.node).index(n) for n in nodes)
        for node in nodes:
            graph.node.remove(node)
        graph.node.insert(position, split)
        graph.node.insert(position, matmul)
        fused += 1
    _drop_unused_initializers(graph)
    return fused


def activation_matmuls(model) -> list[str]:
    """Names of the MatMuls with no constant operand: the attention products Q @ K^T and P @ V."""
    constants = {init.name for init in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not any(i in constants for i in n.input)]


# ---- quantization --------------------------------------------------------------------------------

# What each quantized type is: the largest magnitude it holds, and how a Q/DQ zero point is stored.
FP8_MAX = 448.0  # float8 e4m3fn
QUANTIZED_TYPES = {
    "int8": "int8, symmetric (zero point 0), per tensor",
    "uint8": "uint8, per tensor",  # for the measurements only: not a TensorRT Q/DQ type
    "fp8": "float8 e4m3fn, symmetric (zero point 0), per tensor",
}


def quantize(fp32_model, clips: np.ndarray, calibration_source: str, input_name: str,
             progress: Progress | None = None, *, precision: str = "int8", ops: tuple[str, ...] = QUANTIZED_OPS,
             fuse_qkv: bool = True, float_modules: tuple[str, ...] = (), ranges: dict | None = None,
             attention_products: tuple[str, ...] = (), smoothed: float = 0.0):
    """The Q/DQ ``ModelProto`` of an fp32 ``ModelProto`` (ours), calibrated on ``clips``, with its summary.

    ``precision``: "int8" (the default; ONNX Runtime, OpenVINO, TensorRT), "fp8" (float8 e4m3fn, for
    TensorRT on Hopper/Ada GPUs; needs opset 19; ONNX Runtime's CPU provider runs it as Q/DQ around
    fp32 products, which checks its numerics, not its speed), or "uint8" (measurements only).

    Calibration runs the fp32 graph with ONNX Runtime, fully optimized, with a ReduceMin and a ReduceMax
    added on each tensor that gets quantized, so its memory is that of plain inference. ONNX Runtime's
    own ``quantize_static`` was the first choice; its calibration session (graph optimizations off, a
    range taken for every MatMul tensor, the attention products' 3137 x 3137 scores included) went past
    24 GB on one 32-frame ViViT-B clip and was killed on this project's 24 GiB machines. The quantization
    is the textbook one, written out here: symmetric per tensor for activations (scale = max |x| / 127,
    or / 448 for fp8; zero point 0), per output channel for weights (scale = max |w| / 127, values in
    [-127, 127]; / 448 for fp8), Q -> DQ in front of each quantized input, the form ONNX Runtime's own
    tool writes.

    ``smoothed`` records the SmoothQuant alpha ``fp32_model`` was smoothed with (``smooth_quant``) in the summary.
    ``attention_products`` ("qk", "pv") also quantizes those activation x activation products, both inputs per
    tensor (measured in ``scripts/bench_int8_levers.py``; off by default, see the module docstring).
    ``float_modules`` (module paths, ``export/fp32_fallback.py``) keep their MatMuls in fp32. ``ranges`` are
    activation ranges an earlier call measured on the same clips (``calibration_ranges``): only the missing ones
    are measured. ``ops`` and ``fuse_qkv`` exist for the measurements that chose the defaults
    (``scripts/bench_quantization.py``).
    """
    import onnx

    if precision not in QUANTIZED_TYPES:
        raise ConfigError(f"quantized precision must be one of {sorted(QUANTIZED_TYPES)}, got {precision!r}")
    model = onnx.ModelProto()
    model.CopyFrom(fp32_model)
    fused = fuse_shared_input_matmuls(model) if fuse_qkv else 0
    weighted = _weighted_ops(model, ops)
    targets = [n for n in weighted if not any(in_module(n, m) for m in float_modules)]
    attention = activation_matmuls(model)
    classifier = [n.name for n in model.graph.node if n.op_type == "Gemm"]
    products = [n for n in _attention_products(model, attention_products)
                if not any(in_module(n, m) for m in float_modules)]
    activations = list(dict.fromkeys([n.input[0] for n in targets] + [i for n in products for i in n.input[:2]]))
    ranges = dict(ranges or {})
    producers = {out: node for node in model.graph.node for out in node.output}
    for tensor in activations:  # a Softmax's output lies in [0, 1]: its 3137 x 3137 probabilities need no probe
        if tensor not in ranges and producers.get(tensor) is not None and producers[tensor].op_type == "Softmax":
            ranges[tensor] = (0.0, 1.0)
    missing = [a for a in activations if a not in ranges]
    if missing:
        if progress:
            progress(f"calibrating {len(missing)} activations on {len(clips)} clips (min/max) ...")
        ranges.update(activation_ranges(model, missing, clips, input_name, progress))
    if progress:
        progress(f"writing {precision} Q/DQ for {len(targets)} weighted ops ...")
    _insert_qdq(model, targets, ranges, precision)
    if products:
        _insert_activation_qdq(model, products, ranges, precision)
    _drop_unused_domains(model)
    summary = CalibrationSummary(
        source=calibration_source, clips=len(clips),
        method="minmax" + (f", SmoothQuant alpha {smoothed:g}" if smoothed else ""), activations=QUANTIZED_TYPES[precision],
        weights=f"{'float8 e4m3fn' if precision == 'fp8' else 'int8'}, symmetric, per output channel",
        quantized=dict(count_reading_dequantized(model.graph, ops)),
        excluded={"attention products": len(attention), "classifier": len(classifier),
                  **({"kept in fp32": len(weighted) - len(targets)} if float_modules else {})},
        fused_qkv=fused, input_range=(float(clips.min()), float(clips.max())),
        kept_fp32_modules=tuple(float_modules), attention_products=tuple(n.name for n in products),
    )
    return model, summary


def _weighted_ops(model, ops: tuple[str, ...]) -> list:
    """The nodes of ``ops`` that multiply an activation by a weight (an initializer), outside ``FLOAT_MODULES``:
    what quantize gives Q/DQ, and whose activation inputs calibration measures."""
    constants = {init.name for init in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type in ops and len(n.input) > 1 and n.input[1] in constants
            and n.input[0] not in constants and not any(in_module(n, m) for m in FLOAT_MODULES)]


def channel_maxima(model, tensors: list[str], clips: np.ndarray, input_name: str) -> dict[str, np.ndarray]:
    """max |x| per channel (the last axis) of each tensor over ``clips``: one optimized session with a
    ReduceMax(Abs) per tensor as extra outputs (vectors: memory stays that of inference)."""
    from onnx import helper, numpy_helper

    extra: dict[str, list] = {}
    for i, name in enumerate(tensors):
        out = f"vivit_calibration_channels_{i}"
        extra[name] = [helper.make_node("Abs", [name], [out + "_abs"], name=out + "_abs"),
                       helper.make_node("ReduceMax", [out + "_abs", "vivit_calibration_axes"], [out], keepdims=0, name=out)]
    axes = numpy_helper.from_array(np.array([0, 1], np.int64), "vivit_calibration_axes")
    outputs = [f"vivit_calibration_channels_{i}" for i in range(len(tensors))]
    top: dict[str, np.ndarray] = {}
    for _, values in _probe_batches(model, extra, outputs, clips, input_name, initializers=[axes]):
        for name, value in zip(tensors, values):
            top[name] = value if name not in top else np.maximum(top[name], value)
    return top


def smooth_quant(fp32_model, clips: np.ndarray, input_name: str, alpha: float = 0.5,
                 progress: Progress | None = None) -> tuple[Any, int]:
    """SmoothQuant (Xiao et al., 2023) on a copy of ``fp32_model``: where a LayerNorm's output is read only by weight
    MatMuls, divide it per channel by s_j = max|x_j|^alpha / max|w_j|^(1 - alpha) (a Mul after the LayerNorm) and
    multiply row j of those MatMuls' weights by s_j: the same function in fp32, with an outlier channel's range moved
    into the weights (quantized per output channel) so that one per-tensor activation scale fits every channel.

    The LayerNorm's own output (a probe point) is left as it is. Returns the model and how many were smoothed."""
    import onnx
    from onnx import helper, numpy_helper

    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"the SmoothQuant alpha must be in (0, 1), got {alpha}")
    model = onnx.ModelProto()
    model.CopyFrom(fp32_model)
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    readers: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    outputs = {o.name for o in graph.output}
    sites = []
    for node in graph.node:
        if node.op_type != "LayerNormalization" or node.output[0] in outputs:
            continue
        users = readers.get(node.output[0], [])
        if users and all(u.op_type == "MatMul" and u.input[0] == node.output[0] and u.input[1] in initializers
                         and not any(in_module(u, m) for m in FLOAT_MODULES) for u in users):
            sites.append((node, users))
    if not sites:
        return model, 0
    if progress:
        progress(f"SmoothQuant (alpha {alpha}): per-channel ranges of {len(sites)} LayerNorm outputs on {len(clips)} clips ...")
    acts = channel_maxima(model, [n.output[0] for n, _ in sites], clips, input_name)
    for norm, users in sites:
        tensor = norm.output[0]
        weights = [numpy_helper.to_array(initializers[u.input[1]]).astype(np.float32) for u in users]
        w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)  # per input channel, over every reader
        scale = np.clip(np.maximum(acts[tensor], 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha), 1e-4, 1e4)
        scale = scale.astype(np.float32)
        smoothed, inverse = f"{tensor}.smoothed", f"{tensor}.smooth_inverse"
        graph.initializer.append(numpy_helper.from_array(1.0 / scale, inverse))
        mul = helper.make_node("Mul", [tensor, inverse], [smoothed], name=f"{norm.name}.smooth")
        mul.metadata_props.extend(users[0].metadata_props)  # the module it feeds, for the fp32 fallback
        graph.node.insert(list(graph.node).index(norm) + 1, mul)
        for user, weight in zip(users, weights):
            name = f"{user.input[1]}.smoothed"
            graph.initializer.append(numpy_helper.from_array(weight * scale[:, None], name))
            user.input[0], user.input[1] = smoothed, name
    _drop_unused_initializers(graph)
    return model, len(sites)


def calibration_ranges(fp32_model, clips: np.ndarray, input_name: str, progress: Progress | None = None,
                       *, ops: tuple[str, ...] = QUANTIZED_OPS, fuse_qkv: bool = True) -> dict[str, tuple[float, float]]:
    """The range of every activation ``quantize`` may quantize, measured once, for several quantize calls with
    different ``float_modules`` (the fp32 fallback's search)."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(fp32_model)
    if fuse_qkv:
        fuse_shared_input_matmuls(model)
    activations = list(dict.fromkeys(n.input[0] for n in _weighted_ops(model, ops)))
    if progress:
        progress(f"calibrating {len(activations)} activations on {len(clips)} clips (min/max) ...")
    return activation_ranges(model, activations, clips, input_name, progress)


def activation_ranges(model, tensors: list[str], clips: np.ndarray, input_name: str,
                      progress: Progress | None = None) -> dict[str, tuple[float, float]]:
    """(min, max) of each tensor over ``clips``, from one optimized ONNX Runtime session of ``model`` with a
    ReduceMin and a ReduceMax per tensor as extra outputs (scalars: memory stays that of inference)."""
    from onnx import helper

    extra: dict[str, list] = {}
    for i, name in enumerate(tensors):
        extra[name] = [helper.make_node(op, [name], [f"vivit_calibration_{op}_{i}"], keepdims=0,
                                        name=f"vivit_calibration_{op}_{i}") for op in ("ReduceMin", "ReduceMax")]
    outputs = [node.output[0] for probes in extra.values() for node in probes]  # min, max of each tensor in turn
    low = np.full(len(tensors), np.inf)
    high = np.full(len(tensors), -np.inf)
    started = reported = time.perf_counter()
    for done, values in _probe_batches(model, extra, outputs, clips, input_name):
        low = np.minimum(low, np.array(values[0::2], dtype=np.float64))
        high = np.maximum(high, np.array(values[1::2], dtype=np.float64))
        if progress and done < len(clips) and time.perf_counter() - reported > 10:
            reported = time.perf_counter()
            progress(f"calibrating: {done}/{len(clips)} clips ({reported - started:.0f} s)")
    return {name: (float(lo), float(hi)) for name, lo, hi in zip(tensors, low, high)}


def _probe_batches(model, extra: dict[str, list], outputs: list[str], clips: np.ndarray, input_name: str,
                   initializers=()):
    """Run ``model`` over ``clips`` with ``extra`` (tensor -> its probe nodes) inserted and ``outputs`` (tensors
    those nodes make) as its only outputs; yield (clips done, the values of ``outputs``) per batch.

    One optimized ONNX Runtime session; a file exported with --static-batch takes exactly that many clips, so a
    short last batch is padded with its last clip (repeated clips change no minimum or maximum)."""
    import onnx
    from vivit_deploy.runtimes.ort_runtime import cpu_session
    from onnx import TensorProto, helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.initializer.extend(initializers)
    for out in outputs:
        probe.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
    _insert_after_producers(probe.graph, extra)
    session = cpu_session(probe)
    fixed = session.get_inputs()[0].shape[0]
    batch = fixed if isinstance(fixed, int) else CALIBRATION_BATCH
    for start in range(0, len(clips), batch):
        chunk = clips[start:start + batch]
        if isinstance(fixed, int) and len(chunk) < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - len(chunk), axis=0)])
        yield min(start + batch, len(clips)), session.run(outputs, {input_name: np.ascontiguousarray(chunk)})


def _insert_after_producers(graph, extra: dict[str, list]) -> None:
    """Put each tensor's probe nodes right after the node that makes it (or first, for the graph's input).

    ONNX Runtime runs the nodes in the order given where the graph allows: probes appended at the end would keep
    every probed tensor alive to the end of the graph (the 3137 x 3137 attention probabilities of every layer at
    once: more than 20 GB for a ViViT-B clip pair); next to their producer they free it as soon as it is used."""
    nodes = list(graph.node)
    produced_at = {out: i for i, node in enumerate(nodes) for out in node.output}
    after: dict[int, list] = {}
    for tensor, probes in extra.items():
        after.setdefault(produced_at.get(tensor, -1), []).extend(probes)
    ordered = list(after.get(-1, []))
    for i, node in enumerate(nodes):
        ordered.append(node)
        ordered.extend(after.get(i, []))
    del graph.node[:]
    graph.node.extend(ordered)


def _zero_point(precision: str, shape: list[int], value: int = 0):
    """A Q/DQ zero point of the quantized type (ONNX: its type is what Q quantizes to)."""
    from onnx import TensorProto, helper, numpy_helper

    if precision == "fp8":  # zero is the all-zero byte in e4m3fn
        return lambda name: helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, shape, bytes(int(np.prod(shape))), raw=True)
    dtype = np.uint8 if precision == "uint8" else np.int8
    return lambda name: numpy_helper.from_array(np.full(shape, value, dtype), name)


def _insert_qdq(model, targets: list, ranges: dict[str, tuple[float, float]], precision: str) -> None:
    """Q -> DQ on each target's activation input; its weight stored quantized per output channel behind a DQ."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    top = FP8_MAX if precision == "fp8" else 127.0
    dequantized: dict[str, str] = {}  # activation -> its dequantized name (shared by every target reading it)
    for target in targets:
        position = list(graph.node).index(target)
        new_nodes = []
        activation = target.input[0]
        if activation not in dequantized:
            low, high = ranges[activation]
            if precision == "uint8":
                low, high = min(low, 0.0), max(high, 0.0)
                scale = max(high - low, 1e-12) / 255.0
                zero = _zero_point(precision, [], int(round(-low / scale)))
            else:
                scale = max(abs(low), abs(high), 1e-12) / top
                zero = _zero_point(precision, [])
            base = f"{activation}.{precision}"
            graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), f"{base}.scale"),
                                      zero(f"{base}.zero_point")])
            new_nodes += [
                helper.make_node("QuantizeLinear", [activation, f"{base}.scale", f"{base}.zero_point"], [f"{base}.q"],
                                 name=f"{base}.QuantizeLinear"),
                helper.make_node("DequantizeLinear", [f"{base}.q", f"{base}.scale", f"{base}.zero_point"],
                                 [f"{base}.dq"], name=f"{base}.DequantizeLinear"),
            ]
            dequantized[activation] = f"{base}.dq"
        weight = numpy_helper.to_array(initializers[target.input[1]]).astype(np.float32)
        axis = 1 if target.op_type == "MatMul" else 0  # the output channel: MatMul [in, out], Conv [out, in, ...]
        reduce = tuple(i for i in range(weight.ndim) if i != axis)
        scale = (np.maximum(np.abs(weight).max(axis=reduce), 1e-12) / top).astype(np.float32)
        shape = [1] * weight.ndim
        shape[axis] = -1
        base = f"{target.input[1]}.{precision}"
        scaled = weight / scale.reshape(shape)
        if precision == "fp8":
            import ml_dtypes  # onnx's own dependency for its float8 types

            raw = scaled.astype(ml_dtypes.float8_e4m3fn).view(np.uint8).tobytes()
            stored = helper.make_tensor(f"{base}.quantized", TensorProto.FLOAT8E4M3FN, list(weight.shape), raw, raw=True)
        else:
            stored = numpy_helper.from_array(np.clip(np.round(scaled), -127, 127).astype(np.int8), f"{base}.quantized")
        graph.initializer.extend([stored, numpy_helper.from_array(scale, f"{base}.scale"),
                                  _zero_point("int8" if precision == "uint8" else precision, list(scale.shape))(f"{base}.zero_point")])
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{base}.quantized", f"{base}.scale", f"{base}.zero_point"],
                                          [f"{base}.dq"], name=f"{base}.DequantizeLinear", axis=axis))
        target.input[0] = dequantized[activation]
        target.input[1] = f"{base}.dq"
        for offset, node in enumerate(new_nodes):
            graph.node.insert(position + offset, node)
    _drop_unused_initializers(graph)


def _attention_products(model, which: tuple[str, ...]) -> list:
    """The attention MatMuls named in ``which``: "qk" (Q @ K^T, read by the Softmax) and "pv" (P @ V, reading it)."""
    if not which:
        return []
    if set(which) - {"qk", "pv"}:
        raise ConfigError(f"attention_products are 'qk' and 'pv', got {which}")
    producers = {out: node for node in model.graph.node for out in node.output}
    readers: dict[str, list] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            readers[name].append(node)
    names = set(activation_matmuls(model))
    out = []
    for node in model.graph.node:
        if node.name not in names:
            continue
        feeds_softmax = any(r.op_type == "Softmax" for r in readers.get(node.output[0], []))
        reads_softmax = producers.get(node.input[0]) is not None and producers[node.input[0]].op_type == "Softmax"
        if ("qk" in which and feeds_softmax) or ("pv" in which and reads_softmax):
            out.append(node)
    return out


def _insert_activation_qdq(model, matmuls: list, ranges: dict[str, tuple[float, float]], precision: str) -> None:
    """Q -> DQ on both inputs of each activation x activation MatMul, symmetric per tensor."""
    from onnx import helper, numpy_helper

    graph = model.graph
    top = FP8_MAX if precision == "fp8" else 127.0
    done: dict[str, str] = {}
    for matmul in matmuls:
        position = list(graph.node).index(matmul)
        for slot in (0, 1):
            tensor = matmul.input[slot]
            if tensor not in done:
                low, high = ranges[tensor]
                base = f"{tensor}.{precision}"
                graph.initializer.extend([
                    numpy_helper.from_array(np.array(max(abs(low), abs(high), 1e-12) / top, np.float32), f"{base}.scale"),
                    _zero_point(precision, [])(f"{base}.zero_point")])
                nodes = [helper.make_node("QuantizeLinear", [tensor, f"{base}.scale", f"{base}.zero_point"], [f"{base}.q"],
                                          name=f"{base}.QuantizeLinear"),
                         helper.make_node("DequantizeLinear", [f"{base}.q", f"{base}.scale", f"{base}.zero_point"],
                                          [f"{base}.dq"], name=f"{base}.DequantizeLinear")]
                for offset, node in enumerate(nodes):
                    graph.node.insert(position + offset, node)
                position += len(nodes)
                done[tensor] = f"{base}.dq"
            matmul.input[slot] = done[tensor]


def _drop_unused_initializers(graph) -> None:
    """Remove the initializers no node reads any more (the weights a rewrite replaced)."""
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _drop_unused_domains(model) -> None:
    """The quantizer imports a dozen operator domains (com.microsoft, ai.onnx.ml, ...) whatever it uses;
    keep the ones the graph's nodes use, so no reader thinks it needs plugins for them."""
    used = {node.domain or "" for node in model.graph.node}
    kept = [o for o in model.opset_import if (o.domain or "") in used or o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def optimized_leftovers(path: str | os.PathLike) -> dict[str, int]:
    """What ONNX Runtime's CPU session makes of an int8 file: fused int8 ops, and DequantizeLinear -> MatMul
    pairs it still runs in fp32 (each one a weight MatMul that int8 did not speed up)."""
    import onnx
    from vivit_deploy.runtimes.ort_runtime import cpu_session

    with tempfile.TemporaryDirectory(prefix="vivit-ort-opt-") as work:
        optimized = Path(work) / "optimized.onnx"
        cpu_session(path, optimized_path=optimized)
        model = onnx.load(str(optimized), load_external_data=False)
    ops = Counter(node.op_type for node in model.graph.node)
    leftover = sum(count_reading_dequantized(model.graph, ("MatMul", "Gemm")).values())
    return {"dequantize_then_fp32_matmul": leftover,
            **{op: ops[op] for op in ("MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul")
               if ops.get(op)}}
