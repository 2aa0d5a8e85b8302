"""What every command shares: one-line errors, progress lines, the option groups of several commands, reports.

Every expected failure (bad file, bad checkpoint, bad option) ends with one readable line on stderr
and a non-zero exit code; a traceback means a bug in vivit_deploy.
"""

from __future__ import annotations

import functools
import re
import time
import warnings
from pathlib import Path

import click

from vivit_deploy.errors import VivitDeployError
from vivit_deploy.files import json_text


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line on stderr (``Warning: ...``), not Python's two lines with the source."""
    click.echo(f"Warning: {' '.join(str(message).split())}", err=True)


# ``name=`` as library errors name the argument a caller passed (``window= must be positive``, ``needs device=cuda``,
# ``resume=False``)
_ARGUMENT = re.compile(r"(?<![\w.\-`'\"])([a-z][a-z0-9_]*)=(?!=)(True\b|False\b)?( ?)(?=(.?))")


def as_flags(message: str, command: click.Command | None = None) -> str:
    """``message`` with each argument the library names (``window=``) written as ``command``'s flag for it
    (``--window``), found by the click parameter that passes it (``resume=False``: ``--no-resume``); names the command
    has no flag for stay as they are."""
    command = command or _current_command()
    if command is None:
        return message
    params = {p.name: p for p in command.params}
    for param in command.params:  # a flag whose destination has another name (--ray into ray_address): by its flag
        if isinstance(param, click.Option):
            for opt in param.opts:
                if opt.startswith("--"):
                    params.setdefault(opt[2:].replace("-", "_"), param)

    def flag(match: re.Match) -> str:
        name, boolean, space, following = match.groups()
        param = params.get(name)
        if param is None:
            return match.group(0)
        if isinstance(param, click.Argument):
            written = param.human_readable_name
        else:
            longest = max(param.opts, key=len)
            written = longest if longest.startswith("--") else param.opts[0]
            if boolean is not None and getattr(param, "is_flag", False):
                if boolean == "False" and param.secondary_opts:
                    written = max(param.secondary_opts, key=len)
                return written + space
        if boolean is not None:
            return f"{written} {boolean}{space}"
        return written + (" " if space or (following and following not in ",;:)") else "")

    return _ARGUMENT.sub(flag, message)


def _current_command() -> click.Command | None:
    context = click.get_current_context(silent=True)
    return None if context is None else context.command


def friendly_errors(fn):
    """Turn our errors (and missing files) into click's one-line ``Error: ...`` and exit code 1, naming the command's
    flags where the library names its arguments (``as_flags``), and warnings into one ``Warning: ...`` line each."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _warning_line
                return fn(*args, **kwargs)
        except (VivitDeployError, FileNotFoundError) as exc:
            raise click.ClickException(as_flags(str(exc))) from None

    return wrapper


class Stopwatch:
    """Progress lines on stderr, each with the seconds since the command started."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        click.echo(f"[{time.perf_counter() - self.started:6.1f} s] {message}", err=True)


def runtime_options(source: str, backend: str | None, attn_implementation: str | None, revision, offline,
                    merge_tokens=None) -> dict:
    """Options only the PyTorch backend takes, passed only when it is the one chosen."""
    from vivit_deploy.runtimes import BACKENDS, backend_for

    if BACKENDS[backend or backend_for(source)].artifact != "checkpoint":
        if merge_tokens is not None:
            raise click.UsageError("--merge-tokens applies to a checkpoint (the PyTorch backend); an exported file merges "
                                   "as it was exported: vivit-export --merge-tokens")
        return {}
    options = {"revision": revision, "local_files_only": offline or None}
    if merge_tokens is not None:
        options["merge_tokens"] = merge_tokens
    if attn_implementation:
        options["attn_implementation"] = attn_implementation
    return options


BACKEND = click.option("--backend", type=click.Choice(["torch", "onnxruntime", "openvino", "tensorrt", "triton"]), default=None,
                       help="Default: from --model (.onnx -> onnxruntime, .engine/.plan -> tensorrt, "
                            "checkpoint dir or Hub id -> torch); openvino runs an .onnx file on the CPU.")
DEVICE = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")


def options(*decorators):
    """Several click options as one decorator, for the ones several commands share."""
    def apply(fn):
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn
    return apply


MODEL = click.option("--model", "source", default=None,
                     help="Checkpoint directory, Hub id, exported .onnx, TensorRT .engine, or "
                          "triton://host:port/MODEL. Default: the demo model.")
PRECISION = click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
                         help="Compute precision: PyTorch's, or what OpenVINO computes in (fp32, bf16); ONNX Runtime "
                              "and TensorRT run a file in the precision it was exported in.")
SAMPLING = options(
    click.option("--clips", "num_clips", default=1, show_default=True, type=click.IntRange(min=1),
                 help="Temporal clips per video; their logits are averaged (the paper uses 4)."),
    click.option("--sampling", type=click.Choice(["uniform", "stride"]), default="uniform", show_default=True,
                 help="uniform: frames spread over the video (or each clip's segment); stride: every Nth frame."),
    click.option("--frame-sample-rate", default=4, show_default=True, type=click.IntRange(min=1),
                 help="N for --sampling stride."),
)
def parse_image_size(ctx, param, value):
    """``--image-size 160`` or ``160x128`` (height x width)."""
    if value is None:
        return None
    try:
        parts = [int(v) for v in str(value).lower().split("x")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a size in pixels (160) or HEIGHTxWIDTH (160x128)") from None
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise click.BadParameter(f"{value!r}: give a size in pixels (160) or HEIGHTxWIDTH (160x128)")
    return parts[0] if len(parts) == 1 else tuple(parts)


GEOMETRY = options(
    click.option("--frames", "num_frames", type=click.IntRange(min=1), default=None,
                 help="Run a checkpoint at this many frames instead of the ones it was trained on (its position "
                      "embeddings resized once; an exported file has the geometry it was exported at)."),
    click.option("--image-size", "image_size", default=None, callback=parse_image_size, metavar="S|HxW",
                 help="Run a checkpoint at this frame size instead of its own (positions resized; the preprocessor "
                      "follows)."),
)


def geometry_options(source: str, backend: str | None, num_frames, image_size) -> dict:
    """``frames`` / ``image_size`` for the PyTorch backend; an exported file runs at the geometry it was exported at."""
    from vivit_deploy.runtimes import backend_for

    if num_frames is None and image_size is None:
        return {}
    if (backend or backend_for(source)) != "torch":
        raise click.UsageError("--frames / --image-size apply to a checkpoint (the PyTorch backend); an exported file "
                               "runs at the geometry it was exported at: vivit-export --frames/--image-size")
    return {"frames": num_frames, "image_size": image_size}


def parse_merge_tokens(ctx, param, value, auto: bool = False):
    """``--merge-tokens 8`` or ``8,8,4``: an r for every layer, or one per layer (and, where ``auto``, "auto")."""
    if value is None:
        return None
    if auto and str(value).strip() == "auto":
        return "auto"
    parts = [p.strip() for p in str(value).split(",")]
    if not all(p.lstrip("-").isdigit() for p in parts):
        raise click.BadParameter(f"{value!r}: give a whole number of tokens (8) or one per layer (8,8,4)"
                                 + (", or auto" if auto else ""))
    numbers = [int(p) for p in parts]
    return numbers[0] if len(numbers) == 1 else tuple(numbers)


def merge_tokens_option(auto: bool = False, against: str | None = None):
    """``--merge-tokens``; with ``auto`` it also takes "auto" (vivit-export: chosen by accuracy on labelled clips);
    ``against``: what the option adds where a command compares (compare: a merged candidate)."""
    return click.option(
        "--merge-tokens", "merge_tokens", default=None, metavar="R|R1,R2,...|auto" if auto else "R|R1,R2,...",
        callback=lambda ctx, param, value: parse_merge_tokens(ctx, param, value, auto),
        help="Token merging (ToMe, Model 1): merge R token pairs in every layer, or R1 in the first, R2 in the second, "
             "..." + (f": {against}" if against else " (training-free; an exported graph keeps static shapes)")
             + ("; auto: the largest R that passes --gate on the labelled --videos or --manifest" if auto else "")
             + (" [default: none]." if not against else "."))


MERGE_TOKENS = merge_tokens_option()

READING = options(
    click.option("--autorotate/--no-autorotate", default=True, show_default=True,
                 help="Turn phone videos upright by their display matrix, as ffmpeg does by default."),
    click.option("--max-pixels", default=None, type=click.IntRange(min=1),
                 help="Refuse videos whose frames have more pixels than this [default: 8192x8192]."),
)


def read_options(autorotate: bool, max_pixels: int | None):
    """The ``ReadOptions`` of the READING options."""
    from vivit_deploy.video.opening import DEFAULT_MAX_PIXELS, ReadOptions

    return ReadOptions(autorotate=autorotate, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)


TORCH_SOURCE = options(
    MERGE_TOKENS,
    click.option("--attn", "attn_implementation", type=click.Choice(["sdpa", "eager"]), default=None,
                 help="Attention of the PyTorch backend [default: sdpa]."),
    click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of --model."),
    click.option("--offline", is_flag=True, help="Use only the local Hugging Face cache (like HF_HUB_OFFLINE=1)."),
)


def json_only(json_path: Path | None) -> bool:
    """``--json -``: the JSON goes to stdout instead of the text report."""
    return json_path is not None and str(json_path) == "-"


def emit_json(value, json_path: Path | None) -> None:
    """The one way a command writes its JSON: strict JSON (``files.json_text``: NaN and infinities as null) to
    ``--json FILE``, or to stdout with ``--json -``; nothing without ``--json``."""
    if json_path is None:
        return
    text = json_text(value, default=str)
    if json_only(json_path):
        click.echo(text, nl=False)
    else:
        json_path.write_text(text, encoding="utf-8")


def print_report(text: str, value, json_path: Path | None) -> None:
    """Print a command's report (``text``), or with ``--json -`` its JSON (``value``) instead; ``--json FILE`` also
    writes the JSON there."""
    if not json_only(json_path):
        click.echo(text, nl=False)
    emit_json(value, json_path)


def writable(path: Path | None, option: str) -> None:
    if path is not None and str(path) != "-" and not path.parent.resolve().is_dir():
        raise click.UsageError(f"{option} {path}: the directory {path.parent} does not exist")
