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

    def model_class(self, head: str = "classification") -> type:
        """The class that builds ``head`` ("classification" or "base") of this family."""
        name = self.classifier if head == "classification" else self.base
        if name is None:
            raise ConfigError(f"a {self.title} checkpoint loads with its classifier (head='auto' or 'classification')")
        return getattr(importlib.import_module(self.module), name)


MODELS: dict[str, ModelFamily] = {
    "vivit": ModelFamily("vivit_deploy.model.modeling", "VivitForVideoClassification", "VivitModel",
                         "ViViT (Model 1)"),
    "vivit_factorised": ModelFamily("vivit_deploy.model.factorised", "FactorisedVivitForVideoClassification",
                                    title="factorised ViViT (Models 2 and 3)"),
}


def family(model_type: str) -> ModelFamily:
    """The family of ``config.json``'s ``model_type``; an unknown one is a :class:`ConfigError` naming those known."""
    if model_type not in MODELS:
        raise ConfigError(f"config.json's model_type {model_type!r} is not a model vivit_deploy computes (known: "
                          f"{', '.join(MODELS)})")
    return MODELS[model_type]


__all__ = ["MODELS", "ModelFamily", "family"]
