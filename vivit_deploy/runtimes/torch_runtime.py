"""PyTorch backend: our own ViViT model on CPU or CUDA, sdpa or eager attention, fp32 / fp16 / bf16.

It is also the reference every other backend is compared against (in fp32).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from vivit_deploy.errors import ConfigError
from vivit_deploy.model.io_spec import input_spec
from vivit_deploy.video.preprocessing import PreprocessorConfig, preprocessor_config_in
from vivit_deploy.model.probes import probe_points
from vivit_deploy.runtimes.base import Runtime, StepParts, distribution_versions, register_backend, resolve_device

TORCH_PRECISIONS = ("fp32", "fp16", "bf16")


def torch_dtype(precision: str):
    import torch

    if precision not in TORCH_PRECISIONS:
        raise ConfigError(f"precision must be one of {TORCH_PRECISIONS} for the PyTorch backend, got {precision!r}")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


@register_backend("torch")
class TorchRuntime(Runtime):
    """``VivitForVideoClassification`` loaded from a checkpoint directory or Hub id."""

    thread_safe = True  # forward under inference_mode touches no shared mutable state
    title = "pytorch"
    artifact = "checkpoint"
    precisions = TORCH_PRECISIONS

    @classmethod
    def unavailable(cls, device: str = "cpu", precision: str | None = None) -> str | None:
        why = super().unavailable(device, precision)
        if why is None and device.startswith("cuda"):
            import torch  # the toolkit's own dependency

            if not torch.cuda.is_available():
                why = "PyTorch sees no CUDA GPU here"
        return why

    @classmethod
    def compare_variants(cls, device: str) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
        # fp32 is the reference, not a variant
        if device.startswith("cuda"):
            return [(f"{cls.title} {p} cuda", p, device) for p in ("fp16", "bf16")], {}
        return [(f"{cls.title} bf16", "bf16", device)], {}

    @classmethod
    def library_versions(cls) -> dict[str, str]:
        return distribution_versions("torch")

    def with_probes(self) -> "TorchRuntime":
        """The same model in memory, with the probe points' hooks (no second load)."""
        self._ensure_open()
        return TorchRuntime.from_model(self.model, self.preprocessor, source=self.source,
                                       max_batch=self.input_spec.max_batch, probes=True)

    def __init__(
        self,
        source: str | os.PathLike,
        *,
        device: str = "auto",
        precision: str | None = None,
        attn_implementation: str = "sdpa",
        max_batch: int | None = None,
        revision: str | None = None,
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        probes: bool = False,
        frames: int | None = None,
        image_size: int | tuple[int, int] | None = None,
        merge_tokens: int | tuple[int, ...] | None = None,
    ):
        """``frames`` / ``image_size``: run the checkpoint at another frame count or resolution than it was trained
        for (its positions resized once, ``VivitForVideoClassification.at_geometry``; the preprocessor follows).
        ``merge_tokens``: token merging (ToMe, Model 1), r for every layer or one per layer (``set_token_merging``)."""
        from vivit_deploy.model.checkpoint import load_model

        precision = precision or "fp32"
        device = resolve_device(device)
        model = load_model(
            source, attn_implementation=attn_implementation, head="classification", dtype=torch_dtype(precision),
            device=device, revision=revision, local_files_only=local_files_only, cache_dir=cache_dir, token=token,
        )
        preprocessor = preprocessor_config_in(model.checkpoint_dir)
        if frames or image_size:
            model = model.at_geometry(frames, image_size)
            if preprocessor is not None:
                preprocessor = preprocessor.at_size(model.config.image_height, model.config.image_width)
        if merge_tokens is not None:
            model.set_token_merging(merge_tokens)  # before _init_from_model, which records it
        self._init_from_model(model, preprocessor, precision, device, str(source), max_batch)
        if probes:
            self.probe_names = tuple(point.tensor for point in probe_points(model.config))

    @classmethod
    def from_model(
        cls, model, preprocessor: PreprocessorConfig | None = None, *, source: str = "in-memory model",
        max_batch: int | None = None, probes: bool = False,
    ) -> "TorchRuntime":
        """Wrap a model already in memory (its dtype and device are kept)."""
        import torch

        precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(model.dtype)
        if precision is None:
            raise ConfigError(f"the model's dtype {model.dtype} is not one of {TORCH_PRECISIONS}")
        self = cls.__new__(cls)
        self._init_from_model(model, preprocessor, precision, str(model.device), source, max_batch)
        if probes:
            self.probe_names = tuple(point.tensor for point in probe_points(model.config))
        return self

    def _init_from_model(self, model, preprocessor, precision: str, device: str, source: str, max_batch: int | None) -> None:
        self.model = model.eval()
        super().__init__(
            config=model.config, preprocessor=preprocessor, input_spec=input_spec(model.config, 1, max_batch),
            precision=precision, device=device, source=source,
        )
        self.merge_tokens = model.merge_tokens if any(model.merge_tokens) else ()

    def _run(self, pixel_values: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(pixel_values).to(self.model.device)
        with torch.inference_mode():
            return self.model.clip_logits(x).float().cpu().numpy()

    def token_merging_sources(self, pixel_values: np.ndarray, merge_tokens) -> np.ndarray:
        """ToMe's source map of each clip with ``merge_tokens`` (r per layer): (B, N', N) bool, which input tokens
        each final token holds (``VivitForVideoClassification.token_merging_sources``); the model's own merging
        is restored after."""
        import torch

        before = self.model.merge_tokens
        self.model.set_token_merging(list(merge_tokens))
        try:
            x = torch.from_numpy(np.ascontiguousarray(pixel_values)).to(self.model.device, self.model.dtype)
            return self.model.token_merging_sources(x).cpu().numpy()
        finally:
            self.model.set_token_merging(list(before))

    def step_parts(self):
        from vivit_deploy.artifacts.step_parts import reuses_steps

        return _TorchStepParts(self.model, self.input_spec.max_batch) if reuses_steps(self.config) else None

    def _run_probes(self, pixel_values: np.ndarray):
        """Logits and the outputs of the probe points' modules, read by forward hooks on this run."""
        import torch

        modules = dict(self.model.named_modules())
        hidden: dict[str, np.ndarray] = {}

        def keep(name):
            def hook(module, args, output):
                value = output.last_hidden_state if hasattr(output, "last_hidden_state") else output
                hidden[name] = value.float().cpu().numpy()
            return hook

        handles = [modules[point.module].register_forward_hook(keep(point.tensor))
                   for point in probe_points(self.config) if point.tensor in self.probe_names]
        try:
            x = torch.from_numpy(pixel_values).to(self.model.device)
            with torch.inference_mode():
                logits = self.model(x, return_dict=True).logits.float().cpu().numpy()
        finally:
            for handle in handles:
                handle.remove()
        return logits, hidden

    def set_threads(self, threads: int) -> int | None:
        """torch's intra-op threads (process-wide, as torch has them) when running on the CPU."""
        import torch

        if self.device != "cpu":
            return None
        previous = torch.get_num_threads()
        torch.set_num_threads(max(1, threads))
        return previous

    def _close(self) -> None:
        self.model = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "attn_implementation": self.model.attn_implementation if self.model else None}



class _TorchStepParts(StepParts):
    """Model 2's step encoder and window classifier: the model's own ``step_tokens`` and ``window_logits``."""

    def __init__(self, model, max_windows: int | None):
        super().__init__(model.config, max_windows)
        self.model = model

    def _encode(self, steps: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(steps).to(self.model.device, self.model.dtype)
            return self.model.step_tokens(x).float().cpu().numpy()

    def _classify(self, tokens: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(tokens).to(self.model.device, self.model.dtype)
            return self.model.window_logits(x).float().cpu().numpy()
