"""Forward hooks on the fp32 PyTorch model that keep its products' largest values and its quantized inputs'
per-channel ranges: what the diagnosis and the fp16 range check read."""

from __future__ import annotations

from typing import Any

import numpy as np

from vivit_deploy.accuracy.drift.diagnosis import OUTSIDE_PRODUCTS, PRODUCT, PRODUCTS, RESIDUAL, Overflow
from vivit_deploy.accuracy.drift.points import FP16_MAX
from vivit_deploy.model.probes import (
    ATTENTION_PROJECTION, BLOCK, CLASSIFIER, EMBEDDINGS, FC1, FC2, FINAL_NORM, KEY, MLP, MLP_HIDDEN, NORM_AFTER,
    NORM_BEFORE, PROJECTION, QKV, QUERY, SELF_ATTENTION, SPATIAL_NORM_PART, VALUE, has_part, part_path,
)


class RangeWatch:
    """Forward hooks on an fp32 PyTorch model that keep, per layer, the largest |value| of its products (Q/K/V, the
    Q·Kᵀ scores, attention output, MLP in and out, the residual stream) and the per-channel range of every quantized
    MatMul's input, over every forward while it is attached (``with RangeWatch(model): ...``).

    Kept as maxima, so memory is that of one batch. The fp16 range check of the exporter reads it (a product that
    exceeds 65504 in fp32 overflows in an fp16 engine, even where ONNX Runtime's CPU runs that product in fp32 and
    cannot show it), and so does the diagnosis of a failing layer.
    """

    def __init__(self, model):
        self.model = model
        self.num_layers = model.config.num_layers
        self.stats: dict[int, dict[str, Any]] = {i: {} for i in range(self.num_layers)}
        self.outside: dict[str, float] = {}  # the embeddings' and the head's peaks (OUTSIDE_PRODUCTS)
        self._handles: list = []

    def _peak(self, layer: int, key: str, value) -> None:
        self.stats[layer][key] = max(self.stats[layer].get(key, 0.0), float(value.detach().abs().max()))

    def _outside_hook(self, key: str):
        def hook(module, args, output) -> None:
            value = output.logits if hasattr(output, "logits") else output
            self.outside[key] = max(self.outside.get(key, 0.0), float(value.detach().abs().max()))
        return hook

    def _channels(self, layer: int, key: str, value) -> None:
        per_channel = value.detach().abs().reshape(-1, value.shape[-1]).amax(dim=0).double().cpu().numpy()
        old = self.stats[layer].get(key)
        self.stats[layer][key] = per_channel if old is None else np.maximum(old, per_channel)

    # forward hooks return None: anything else would replace the module's output
    def _peak_hook(self, layer: int, key: str):
        def hook(module, args, output) -> None:
            self._peak(layer, key, output)
        return hook

    def _channels_hook(self, layer: int, key: str):
        def hook(module, args, output) -> None:
            self._channels(layer, key, output)
        return hook

    def _norm_hook(self, layer: int, key: str):
        """A LayerNorm: the range of its output per channel (a quantized MatMul's input) and of its input."""
        def hook(module, args, output) -> None:
            self._channels(layer, key, output)
            self._peak(layer, "residual_max", args[0])
        return hook

    def __enter__(self) -> "RangeWatch":
        import torch

        model, config = self.model, self.model.config
        for i in range(config.num_layers):
            def module(part: str, i=i):
                return model.get_submodule(part_path(part, i, config))

            attention = module(SELF_ATTENTION)
            seen: dict[str, torch.Tensor] = {}

            def projection(name, i=i, seen=seen, attention=attention):
                def hook(module, args, output):
                    self._peak(i, "qkv_max", output)
                    seen[name] = output
                    if name == "key":  # query and key known: the largest Q·Kᵀ score, head by head
                        q, k = seen["query"], output
                        b, n, d = q.shape
                        heads = attention.num_heads
                        q = (q * attention.scale).reshape(b, n, heads, d // heads).transpose(1, 2)
                        k = k.reshape(b, n, heads, d // heads).transpose(1, 2)
                        top = max(float(torch.matmul(q[:, h], k[:, h].transpose(-2, -1)).abs().max()) for h in range(heads))
                        self.stats[i]["scores_max"] = max(self.stats[i].get("scores_max", 0.0), top)
                return hook

            if has_part(config, i, QKV):  # one projection for all three: its output split as the model splits it
                def fused(module, args, output, hook_query=projection("query"), hook_key=projection("key"),
                          hook_value=projection("value")):
                    q, k, v = output.chunk(3, dim=-1)
                    hook_query(module, args, q)
                    hook_key(module, args, k)
                    hook_value(module, args, v)

                hooks = [(module(QKV), fused)]
            else:
                hooks = [(module(QUERY), projection("query")), (module(KEY), projection("key")),
                         (module(VALUE), projection("value"))]
            hooks += [
                (module(NORM_BEFORE), self._norm_hook(i, "attention_input")),
                (module(ATTENTION_PROJECTION), self._peak_hook(i, "attention_output_max")),
                (module(BLOCK), self._peak_hook(i, "residual_max")),
            ]
            if has_part(config, i, MLP):  # Model 3's layers over space have no MLP
                hooks += [
                    (module(NORM_AFTER), self._norm_hook(i, "mlp_input")),
                    (module(FC1), self._peak_hook(i, "fc1_max")),
                    (module(MLP_HIDDEN), self._channels_hook(i, "fc2_input")),
                    (module(FC2), self._peak_hook(i, "fc2_max")),
                ]
            self._handles += [m.register_forward_hook(hook) for m, hook in hooks]
        outside = [(part_path(PROJECTION, config=config), "projection_max"),
                   (part_path(EMBEDDINGS, config=config), "embeddings_max"),
                   (part_path(FINAL_NORM, config=config), "final_norm_max")]
        if config.variant == "factorised_encoder":
            outside.append((part_path(SPATIAL_NORM_PART), "spatial_norm_max"))
        names = dict(model.named_modules())
        if part_path(CLASSIFIER) in names:  # a bare encoder has no classifier
            outside.append((part_path(CLASSIFIER), "logits_max"))
            weight = names[part_path(CLASSIFIER)].weight
            self.outside["classifier_weight_median"] = float(weight.detach().abs().median())
        self._handles += [names[path].register_forward_hook(self._outside_hook(key)) for path, key in outside]
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def summary(self, layer: int) -> dict[str, Any]:
        """Plain numbers for one layer: the peaks, and each quantized input's outlier channel."""
        seen = self.stats[layer]
        out = {k: v for k, v in seen.items() if not isinstance(v, np.ndarray)}
        for key in ("attention_input", "mlp_input", "fc2_input"):
            if key in seen:
                out[key] = _channel_summary(seen[key])
        return out

    def overflows(self, limit: float = FP16_MAX, kept: frozenset[str] = frozenset()) -> list["Overflow"]:
        """(layer, part, what, value) for every product that exceeds ``limit`` where it would be stored in fp16:
        what an fp32 unit (``kept``: "L", "L.attention", "L.mlp", "L.norms", "embeddings", "head") computes inside stays
        in fp32, its output is stored in fp16 again (the head's logits leave in fp32). Layer -1: outside the layers."""
        found = [Overflow(-1, part, what, self.outside[key], PRODUCT) for part, what, key, unit in OUTSIDE_PRODUCTS
                 if self.outside.get(key, 0.0) > limit and not (unit is not None and unit in kept)]
        for i in range(self.num_layers):
            seen = self.stats[i]
            whole = str(i) in kept
            for part, what, key, inside in (*PRODUCTS, ("block", "the residual stream", "residual_max", None)):
                if (whole and part != "block") or (inside is not None and f"{i}.{inside}" in kept):
                    continue
                if seen.get(key, 0.0) > limit:
                    found.append(Overflow(i, part, what, seen[key], RESIDUAL if part == BLOCK else PRODUCT))
        return found


def _channel_summary(per_channel: np.ndarray) -> dict[str, Any]:
    median = float(np.median(per_channel))
    top = int(per_channel.argmax())
    return {"max": float(per_channel[top]), "median_channel": median, "outlier_channel": top,
            "outlier_ratio": float(per_channel[top] / median) if median > 0 else None}
