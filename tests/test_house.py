"""The house's rules that import-linter cannot state, read from the source as a newcomer would grep it: a model's
layout is spelled only in model/, no job branches on a backend's name, and library errors name the Python
argument, not the command line's flag (the CLI maps one to the other, ``cli.common.as_flags``)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vivit_deploy"
LAYOUT = re.compile(r"encoder\.layer|\bintermediate\b|layernorm_before|layernorm_after|attention\.attention")
BACKEND_BRANCH = re.compile(r"""backend\s*(==|!=|in)\s*[("']|["'](onnxruntime|openvino|tensorrt|torch|triton)["']\s*(==|!=)""")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")
JOBS = ("accuracy", "bench", "compare", "pipeline", "streaming", "serving", "artifacts")


def sources(*rooms: str, outside: tuple[str, ...] = ()):
    for path in sorted(PACKAGE.rglob("*.py")):
        room = path.relative_to(PACKAGE).parts[0]
        if (not rooms or room in rooms) and room not in outside:
            yield path, path.read_text(encoding="utf-8")


def test_a_models_layout_is_spelled_only_in_model():
    found = [f"{p.relative_to(PACKAGE)}:{n}" for p, text in sources(outside=("model",))
             for n, line in enumerate(text.splitlines(), 1) if LAYOUT.search(line)]
    assert not found, f"model layout named outside model/ (ask model.probes): {found}"


def test_no_job_branches_on_a_backends_name():
    found = [f"{p.relative_to(PACKAGE)}:{n}: {line.strip()}" for p, text in sources(*JOBS)
             for n, line in enumerate(text.splitlines(), 1) if BACKEND_BRANCH.search(line)]
    assert not found, f"ask the Runtime class (vivit_deploy.runtimes.BACKENDS) instead: {found}"


def test_library_errors_name_arguments_not_flags():
    """A raise outside cli/ names the argument as the caller wrote it (``window=``); a few point the user to another
    command in backticks (`vivit-export --precision int8`), which is a command line, not an argument."""
    flagged = []
    for path, text in sources(outside=("cli",)):
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Raise) and node.exc is not None:
                segment = ast.get_source_segment(text, node)
                bare = re.sub(r"`[^`]*`", "", segment)  # a command named in backticks
                if FLAG.search(bare):
                    flagged.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not flagged, f"library errors that name a flag: {flagged}"


@pytest.mark.parametrize("message, expected", [
    ("window= must be positive seconds, got 0", "--window must be positive seconds, got 0"),
    ("give num_clips=2 or window=, not both", "give --clips 2 or --window, not both"),
    ("pass resume=False to replace them", "pass --no-resume to replace them"),
    ("needs labelled clips, or demo=True)", "needs labelled clips, or --demo)"),
    ("source= is not a checkpoint; num_classes=5 stays", "SOURCE is not a checkpoint; num_classes=5 stays"),
    ("got 'window=3' in the file", "got 'window=3' in the file"),
])
def test_the_cli_names_its_flags_for_the_arguments_a_library_error_names(message, expected):
    from vivit_deploy.cli.common import as_flags

    @click.command()
    @click.argument("source")
    @click.option("--window", type=float)
    @click.option("--clips", "num_clips", type=int)
    @click.option("--resume/--no-resume", default=True)
    @click.option("--demo", is_flag=True)
    def command(**_):
        pass

    assert as_flags(message, command) == expected
