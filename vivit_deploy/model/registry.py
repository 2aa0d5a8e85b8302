"""Which model file builds a checkpoint: ``config.json``'s ``model_type`` -> the classes that compute it.

A model family joins with one line in ``MODELS`` (as transformers' auto classes map a ``model_type`` to class names):
its module, its classifier class, and its bare encoder where it has one. The classes are named, not imported: they
are imported when a checkpoint asks for them, so the loader (``checkpoint.py``) and the model files, whose
``from_pretrained`` calls the loader, never import each other in a circle.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from vivit_deploy.errors import ConfigError


@dataclass(frozen=True)
class ModelFamily:
    module: str  # the model file, e.g. "vivit_deploy.model.modeling"
    classifier: str  # its video classifier class
    base: str | None = None  # its bare encoder class (``head="base"``), where it has one
    title: str = ""  # how messages name it
    config: str = "VivitConfig"  # its config class, in model/config.py (torch-free: any process reads a config)

    def model_class(self, head: str = "classification") -> type:
        """The class that builds ``head`` ("classification" or "base") of this family."""
        name = self.classifier if head == "classification" else self.base
        if name is None:
            raise ConfigError(f"a {self.title} checkpoint loads with its classifier (head='auto' or 'classification')")
        return getattr(importlib.import_module(self.module), name)

    def config_class(self) -> type:
        """The class that reads this family's ``config.json``."""
        return getattr(importlib.import_module("vivit_deploy.model.config"), self.config)

    def renamed_keys(self) -> tuple:
        """(pattern, replacement) pairs that bring the family's older checkpoint keys to its own names: the model
        file's ``RENAMED_KEYS``, where it has any."""
        return getattr(importlib.import_module(self.module), "RENAMED_KEYS", ())

    def ignored_keys(self) -> tuple:
        """Patterns of checkpoint keys the family does not build and leaves out when it reads one (V-JEPA 2's
        pre-training predictor): the model file's ``IGNORED_KEYS``, where it has any."""
        return getattr(importlib.import_module(self.module), "IGNORED_KEYS", ())

    @property
    def architectures(self) -> dict[str, str]:
        """config.json's ``architectures`` names of this family -> the head each loads."""
        return {self.classifier: "classification", **({self.base: "base"} if self.base else {})}


MODELS: dict[str, ModelFamily] = {
    "vivit": ModelFamily("vivit_deploy.model.modeling", "VivitForVideoClassification", "VivitModel",
                         "ViViT (Model 1)"),
    "vivit_factorised": ModelFamily("vivit_deploy.model.factorised", "FactorisedVivitForVideoClassification",
                                    title="factorised ViViT (Models 2 and 3)"),
    "videomae": ModelFamily("vivit_deploy.model.videomae", "VideoMAEForVideoClassification", "VideoMAEModel",
                            "VideoMAE", "VideoMAEConfig"),
    "timesformer": ModelFamily("vivit_deploy.model.timesformer", "TimesformerForVideoClassification", "TimesformerModel",
                               "TimeSformer", "TimesformerConfig"),
    "vjepa2": ModelFamily("vivit_deploy.model.vjepa2", "VJEPA2ForVideoClassification", "VJEPA2Model", "V-JEPA 2",
                          "VJEPA2Config"),
}


def family(model_type: str) -> ModelFamily:
    """The family of ``config.json``'s ``model_type``; an unknown one is a :class:`ConfigError` naming those known."""
    if model_type not in MODELS:
        raise ConfigError(f"config.json's model_type {model_type!r} is not a model vivit_deploy computes (known: "
                          f"{', '.join(MODELS)})")
    return MODELS[model_type]


def config_from_dict(data: dict):
    """A ``config.json`` object read by its own family's config class (``model_type``; ViViT's when absent)."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
    return family(data.get("model_type", "vivit")).config_class().from_dict(data)


__all__ = ["MODELS", "ModelFamily", "config_from_dict", "family"]
