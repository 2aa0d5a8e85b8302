"""Probe points: the hidden states inside the model that per-layer drift compares, and their stable names.

Every file ``vivit-export`` writes names the output tensor of these modules ``<module path>:output``,
the module path being the checkpoint's own parameter prefix, so any tool finds them without knowing
how the graph was traced (Netron, Polygraphy ``--onnx-outputs``, ONNX Runtime, OpenVINO):

    vivit.embeddings:output                                tokens + CLS + positions
    vivit.encoder.layer.L.layernorm_before:output          attention's input, normalised
    vivit.encoder.layer.L.attention:output                 the attention branch (before the residual add)
    vivit.encoder.layer.L.layernorm_after:output           the MLP's input, normalised
    vivit.encoder.layer.L.output:output                    the MLP branch (before the residual add)
    vivit.encoder.layer.L:output                           the block's output, the residual stream
    vivit.encoder.spatial_norm:output                      Model 2: the spatial encoder's final LayerNorm
    vivit.layernorm:output                                 the final LayerNorm

``L`` counts the layers in the order the data flows through them, from 0 as in the parameter names
(``VivitConfig.num_layers``: Model 2's spatial layers then its temporal ones; Model 3's blocks as a layer
attending over space, which has no MLP and so no ``layernorm_after`` and ``output``, then one attending over
time with the MLP). The runtimes that can expose them (ONNX Runtime, OpenVINO) add them as extra outputs when
asked (``probes=True``); PyTorch hooks read the same modules. Numpy-free data, shared by export, runtimes and
accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

SUFFIX = ":output"
# the parts of one encoder layer, in the order the data flows through them
LAYER_PARTS = ("layernorm_before", "attention", "layernorm_after", "output", "block")
PART_TITLES = {"layernorm_before": "LayerNorm before attention", "attention": "attention",
               "layernorm_after": "LayerNorm before the MLP", "output": "MLP", "block": "residual stream",
               "embeddings": "the embeddings (tubelet projection, CLS token, positions)",
               "final_norm": "the final LayerNorm", "classifier": "the classifier (the logits)",
               "spatial_norm": "the spatial encoder's final LayerNorm"}
# a layer that attends over space in Model 3 has no MLP
SPACE_LAYER_PARTS = ("layernorm_before", "attention", "block")
SPATIAL_NORM = "vivit.encoder.spatial_norm"
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


def layer_parts(config, layer: int) -> tuple[str, ...]:
    """The parts layer ``layer`` of ``config``'s model has, in the order the data flows through them."""
    return SPACE_LAYER_PARTS if config.layer_kind(layer) == "space" else LAYER_PARTS


def probe_points(config) -> list[ProbePoint]:
    """Every probe point of ``config``'s model (a ``VivitConfig``), in the order the data reaches them."""
    points = [ProbePoint("vivit.embeddings", None, "embeddings")]
    for layer in range(config.num_layers):
        points += [ProbePoint(layer_module(layer, part), layer, part) for part in layer_parts(config, layer)]
        if config.variant == "factorised_encoder" and layer == config.num_hidden_layers - 1:
            points.append(ProbePoint(SPATIAL_NORM, None, "spatial_norm"))
    points.append(ProbePoint("vivit.layernorm", None, "final_norm"))
    return points


def is_probe_name(name: str) -> bool:
    return name.endswith(SUFFIX) and name.startswith("vivit.")
