"""fp32 fallback: the parts of a low-precision export kept in fp32, and the search for the fewest that make it pass.

A unit is a whole encoder layer (``"2"``) or one of its parts: ``"2.attention"`` (Q/K/V, the attention
products and Softmax, the output projection), ``"2.mlp"`` (both MLP products and the GELU between them)
or ``"2.norms"`` (its two LayerNorms); layers count from 0 as in the checkpoint's parameter names, in the order the
data flows (``VivitConfig.num_layers``: Model 2's spatial then temporal layers, Model 3's blocks as a layer over
space, which has attention and one LayerNorm, then one over time with the MLP). Outside the layers:
``"embeddings"`` (the tubelet projection, the CLS token and the positions), ``"spatial_norm"`` (Model 2: the
spatial encoder's final LayerNorm) and ``"head"`` (the final LayerNorm and the classifier, whose logits then leave in
fp32), so every part of the model can be repaired.

- fp16: the half model is traced with each kept unit computing in fp32 (its weights fp32, its input cast
  up, its output cast back to fp16), so the graph stays strongly typed: every tensor carries the type
  TensorRT 11 and TensorRT for RTX build.
- int8 / fp8: the kept units' MatMuls get no Q/DQ (LayerNorm is float there already, so ``norms`` means
  nothing and is refused).

``--keep-fp32 auto`` searches: export, validate; while the file fails, the per-layer drift (or, for fp16,
the range check) names the first failing layer and the part that broke it, which joins the kept set;
once it passes, every kept unit is tried without (last added first) and dropped if the file still
passes. What remains is a set where no unit can go, found in a few exports rather than by trying every
subset (it is not guaranteed to be the smallest of all sets).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Callable

from vivit_deploy.accuracy.layers import FP16_MAX, WEIGHTS, Overflow
from vivit_deploy.errors import ConfigError
from vivit_deploy.artifacts.metadata import QUANTIZED_PRECISIONS
from vivit_deploy.model.probes import (
    ATTENTION, BLOCK, CLASSIFIER, EMBEDDINGS, FINAL_NORM, MLP, MLP_HIDDEN, NORM_AFTER, NORM_BEFORE, POOLER,
    SPATIAL_NORM_PART, has_head_part, has_part, locate_parameter, part_path,
)

UNIT_KINDS = ("attention", "mlp", "norms")
# the model's parts each unit computes in fp32, and the dtype each part's output leaves in in the fp16 graph (None:
# fp32, into the next part of the same unit, or the logits)
_HALF = "fp16"
UNIT_PARTS = {"": ((BLOCK, _HALF),), "attention": ((ATTENTION, _HALF),),  # of layer L
              "mlp": ((MLP_HIDDEN, None), (MLP, _HALF)), "norms": ((NORM_BEFORE, _HALF), (NORM_AFTER, _HALF))}
OUTSIDE = {"embeddings": ((EMBEDDINGS, _HALF),), "spatial_norm": ((SPATIAL_NORM_PART, _HALF),),  # outside the layers
           "head": ((FINAL_NORM, None), (POOLER, None), (CLASSIFIER, None))}  # the pooler where the model has one
AUTO = "auto"
MAX_SEARCH_STEPS = 12  # exports an auto search may make before it gives up


def parse_keep_fp32(text: str | None, config, precision: str) -> tuple[str, ...] | str:
    """``AUTO``, or the units of ``--keep-fp32 LAYERS`` checked against the model (its ``VivitConfig``), normalised
    and sorted."""
    num_layers = config.num_layers
    if text is None or text.strip().lower() in ("", "none"):
        return ()
    if precision == "fp32":
        raise ConfigError("keep_fp32= applies to fp16, int8 and fp8 exports; an fp32 export is fp32 throughout")
    if text.strip().lower() == AUTO:
        return AUTO
    units: list[str] = []
    for part in text.split(","):
        unit = part.strip()
        if unit in OUTSIDE:
            if unit == "spatial_norm" and config.variant != "factorised_encoder":
                raise ConfigError("keep_fp32= spatial_norm: only the factorised encoder (Model 2) has a spatial norm")
            if precision in QUANTIZED_PRECISIONS:
                raise ConfigError(f"keep_fp32= {unit}: the {unit} already run in float in an {precision} graph (only the "
                                  "layers' weight MatMuls are quantized); keep a layer or its attention or mlp")
            units.append(unit)
            continue
        layer, _, kind = unit.partition(".")
        if not layer.isdigit() or (kind and kind not in UNIT_KINDS):
            raise ConfigError(f"keep_fp32= {unit!r}: give layers (e.g. 2,5) or parts of them (2.attention, 2.mlp, "
                              "2.norms), embeddings, head, or auto, or none")
        if int(layer) >= num_layers:
            raise ConfigError(f"keep_fp32= {unit}: the model has {num_layers} layers (0..{num_layers - 1})")
        if kind == "mlp" and config.layer_kind(int(layer)) == "space":
            raise ConfigError(f"keep_fp32= {unit}: layer {int(layer)} ({config.layer_title(int(layer))}) attends over "
                              f"space and has no MLP; the block's MLP is in layer {int(layer) + 1}")
        if kind == "norms" and precision in QUANTIZED_PRECISIONS:
            raise ConfigError(f"keep_fp32= {unit}: LayerNorm already runs in float in an {precision} graph; keep "
                              f"{layer}.attention or {layer}.mlp instead")
        units.append(f"{int(layer)}.{kind}" if kind else str(int(layer)))
    return normalise(units, config)


def normalise(units, config=None) -> tuple[str, ...]:
    """Sorted in the order the data flows (embeddings, layers, Model 2's spatial norm after its spatial layers, head),
    each once, parts dropped where their whole layer is kept."""
    whole = {u for u in units if "." not in u}
    kept = {u for u in units if u in whole or u.split(".")[0] not in whole}
    spatial = config.num_hidden_layers - 0.5 if config is not None else 1 << 29

    def key(unit: str):
        if unit in OUTSIDE:
            return {"embeddings": -1, "spatial_norm": spatial}.get(unit, 1 << 30), -1
        layer, _, kind = unit.partition(".")
        return int(layer), UNIT_KINDS.index(kind) if kind else -1

    return tuple(sorted(kept, key=key))


def _unit_parts(unit: str, config) -> list[tuple[str, str | None]]:
    """(module path, the dtype its output leaves in) of each model part ``unit`` keeps in fp32 (a layer over space in
    Model 3 has attention and one LayerNorm only)."""
    if unit in OUTSIDE:
        return [(part_path(part, config=config), dtype) for part, dtype in OUTSIDE[unit]
                if part != POOLER or has_head_part(config, part)]
    layer, _, kind = unit.partition(".")
    return [(part_path(part, int(layer), config), dtype) for part, dtype in UNIT_PARTS[kind]
            if config is None or has_part(config, int(layer), part)]


def modules_of(units, config=None) -> list[str]:
    """The module paths (checkpoint names) the units keep in fp32."""
    return [path for unit in units for path, _ in _unit_parts(unit, config)]


def _island(module, out_dtype) -> None:
    """Make ``module`` compute in fp32 in place: fp32 weights, input cast up, output cast to ``out_dtype`` (None:
    left in fp32, for the next module of the same unit). The module keeps its name, so the graph's scopes and
    probe points stay the checkpoint's."""
    module.float()
    forward = type(module).forward

    def island_forward(self, x, *args, **kwargs):
        y = forward(self, x.float(), *args, **kwargs)
        return y if out_dtype is None else y.to(out_dtype)

    module.forward = types.MethodType(island_forward, module)


def half_with_fp32_units(model, units):
    """A half-precision copy of the fp32 ``model`` whose kept units compute in fp32 (for the fp16 export's trace).

    The kept units' weights come from the fp32 model, not back from fp16: a weight beyond fp16's range is what
    such a unit may be kept for."""
    import copy

    import torch

    half = copy.deepcopy(model).half()
    originals = dict(model.named_modules())
    for name in modules_of(units, model.config):
        module = half.get_submodule(name).float()  # fp32 first: loading into fp16 parameters would round the values
        module.load_state_dict(originals[name].state_dict())
    # the embeddings' input is rounded to fp16 (the graph's input is cast once) and computed in fp32; the head leaves
    # its logits in fp32; the MLP's first product and activation pass fp32 into the second product
    for unit in units:
        for path, dtype in _unit_parts(unit, model.config):
            _island(half.get_submodule(path), None if dtype is None else torch.float16)
    return half


def fp16_weight_overflows(model, units) -> list[Overflow]:
    """(layer, part, what, value) for every weight of the fp32 ``model`` beyond fp16's largest value outside the kept units:
    rounded to fp16 it becomes infinite."""
    kept = modules_of(units, model.config)
    found = []
    for name, parameter in model.named_parameters():
        top = float(parameter.detach().abs().max())
        if top <= FP16_MAX or any(name.startswith(m + ".") for m in kept):
            continue
        layer, part, owner = locate_parameter(name, model.config)
        found.append(Overflow(layer, part, f"the weights of {owner}", top, WEIGHTS))
    return found


@dataclass(frozen=True)
class Attempt:
    """One export tried by the search: what it kept, and whether it passed (and why not)."""

    kept: tuple[str, ...]
    passed: bool
    reason: str  # the failing layer's diagnosis, or "passed"
    next_unit: str | None  # what the diagnosis suggests keeping next


def search(try_export: Callable[[tuple[str, ...]], Attempt], progress: Callable[[str], None],
           config=None) -> tuple[tuple[str, ...], list[Attempt]]:
    """The fp32 units that make the export pass: grow by diagnosis until it passes, then prune what is not needed.

    ``try_export(kept)`` exports and validates with ``kept`` in fp32. Raises ConfigError when no set found in
    ``MAX_SEARCH_STEPS`` exports passes."""
    attempts: list[Attempt] = []
    kept: tuple[str, ...] = ()
    while True:
        attempt = try_export(kept)
        attempts.append(attempt)
        progress(f"--keep-fp32 auto: kept {', '.join(kept) or 'nothing'}: {attempt.reason}")
        if attempt.passed:
            break
        unit = attempt.next_unit
        if unit is None or len(attempts) >= MAX_SEARCH_STEPS:
            tried = "; ".join(f"{', '.join(a.kept) or 'nothing'}: {a.reason}" for a in attempts)
            raise ConfigError(f"keep_fp32= auto found no set of fp32 layers that passes in {len(attempts)} exports ({tried})")
        if unit in kept or unit.split(".")[0] in kept:
            unit = unit.split(".")[0]  # the part did not suffice: keep its whole layer (embeddings and head are whole)
            if unit in kept:
                raise ConfigError(f"keep_fp32= auto: {unit if unit in OUTSIDE else 'layer ' + unit} already runs in fp32 "
                                  f"and the file still fails ({attempt.reason})")
        kept = normalise([*kept, unit], config)
    for unit in reversed(kept):  # prune: the last added first
        if len(kept) == 1 and len(attempts) == 1:
            break
        fewer = tuple(u for u in kept if u != unit)
        attempt = try_export(fewer)
        attempts.append(attempt)
        progress(f"--keep-fp32 auto: without {unit}: {attempt.reason}")
        if attempt.passed:
            kept = fewer
    return kept, attempts
