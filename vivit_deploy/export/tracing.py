"""One module through torch.onnx's dynamo exporter to an ONNX ModelProto, the way every graph vivit-export writes is
traced: the exporter's chatter silenced, constants folded, its failures one ``ExportError``. Shared by the whole
model (``onnx_export``) and Model 2's part files (``step_parts``)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

from vivit_deploy.errors import ExportError, first_line

FOLD_LIMIT = 1 << 26  # elements: larger than any ViViT weight


def float_io(module):
    """A half-precision module behind a float32 boundary: its input cast to fp16, its output back to fp32 (what an fp16
    file takes and gives)."""
    import torch

    class FloatIO(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.to(torch.float16)).to(torch.float32)

    return FloatIO(module)


def trace_module(module, example, dynamic, input_name: str, output_name: str, opset: int):
    """``module`` (one float32 input, one output) as an ONNX ModelProto through torch.onnx's dynamo exporter, its
    constants folded: what every graph vivit-export writes goes through."""
    import torch

    quiet = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, (example,), dynamo=True, opset_version=opset, input_names=[input_name],
                output_names=[output_name], dynamic_shapes=dynamic, external_data=False, optimize=True, verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean the same to the user
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {first_line(exc)}") from exc
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    # The exporter's own folding stops at 8192-element inputs; the tubelet projection's weight is reshaped and
    # transposed for its MatMul (1.2M elements in ViViT-B): fold that into one initializer, as every Linear's is.
    import onnxscript.optimizer

    onnxscript.optimizer.fold_constants(program.model, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT)
    return _without_initializer_value_info(program.model_proto)


def _without_initializer_value_info(proto):
    """Drop ``value_info`` entries that annotate initializers.

    The exporter writes them; they say nothing a reader cannot get from the initializer itself, and
    ONNX Runtime's quantization tools rewrite initializers (transposed or quantized weights) under the
    same names, after which shape inference fails on the stale entries ("Inferred shape and existing
    shape differ in dimension 0: (768) vs (400)").
    """
    initializers = {init.name for init in proto.graph.initializer}
    kept = [v for v in proto.graph.value_info if v.name not in initializers]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(kept)
    return proto
