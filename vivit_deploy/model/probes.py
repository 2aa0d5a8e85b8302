"""Probe points: the hidden states inside the model that per-layer drift compares, and their stable names.

Every file ``vivit-export`` writes names the output tensor of these modules ``<module path>:output``,
the module path being the checkpoint's own parameter prefix, so any tool finds them without knowing
how the graph was traced (Netron, Polygraphy ``--onnx-outputs``, ONNX Runtime, OpenVINO):

    vivit.embeddings:output                                tokens + CLS + positions (B, N+1, D)
    vivit.encoder.layer.L.layernorm_before:output          attention's input, normalised
    vivit.encoder.layer.L.attention:output                 the attention branch (before the residual add)
    vivit.encoder.layer.L.layernorm_after:output           the MLP's input, normalised
    vivit.encoder.layer.L.output:output                    the MLP branch (before the residual add)
    vivit.encoder.layer.L:output                           the block's output, the residual stream
    vivit.layernorm:output                                 the final LayerNorm

``L`` counts from 0, as in the parameter names. The runtimes that can expose them (ONNX Runtime,
OpenVINO) add them as extra outputs when asked (``probes=True``); PyTorch hooks read the same
modules. Numpy-free data, shared by export, runtimes and accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

SUFFIX = ":output"
# the parts of one encoder layer, in the order the data flows through them
LAYER_PARTS = ("layernorm_before", "attention", "layernorm_after", "output", "block")
PART_TITLES = {"layernorm_before": "LayerNorm before attention", "attention": "attention",
               "layernorm_after": "LayerNorm before the MLP", "output": "MLP", "block": "residual stream",
               "embeddings": "the embeddings (tubelet projection, CLS token, positions)",
               "final_norm": "the final LayerNorm", "classifier": "the classifier (the logits)"}
# the parts of a layer judged by their own output too: a branch whose error is large against what it computes may be
# small against the residual stream it is added to, and still reach the logits through the final LayerNorm
BRANCHES = ("attention", "output")


@dataclass(frozen=True)
class ProbePoint:
    module: str  # the module path, e.g. "vivit.encoder.layer.2.attention"
    layer: int | None  # the encoder layer, None for the embeddings and the final norm
    part: str  # "embeddings", one of LAYER_PARTS, or "final_norm"

    @property
    def tensor(self) -> str:
        """The stable tensor name in an exported graph."""
        return self.module + SUFFIX


def layer_module(layer: int, part: str) -> str:
    base = f"vivit.encoder.layer.{layer}"
    return base if part == "block" else f"{base}.{part}"


def probe_points(num_layers: int) -> list[ProbePoint]:
    """Every probe point of a model with ``num_layers`` encoder layers, in the order the data reaches them."""
    points = [ProbePoint("vivit.embeddings", None, "embeddings")]
    for layer in range(num_layers):
        points += [ProbePoint(layer_module(layer, part), layer, part) for part in LAYER_PARTS]
    points.append(ProbePoint("vivit.layernorm", None, "final_norm"))
    return points


def is_probe_name(name: str) -> bool:
    return name.endswith(SUFFIX) and name.startswith("vivit.")
