"""The ``vivit-deploy`` and ``vivit-export`` commands: a module per command, each parsing its options, making one
call into the package and printing the result (``common``: what they share).

Every expected failure ends with one readable line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import click

from vivit_deploy.cli import bench, classify, compare, convert, export, predict, stream, tensorrt, triton

export_command = export.export_command  # the `vivit-export` entry point


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vivit-deploy")
def main() -> None:
    """ViViT from a PyTorch checkpoint to production: predict, classify, stream, export, build-engine, check-trt,
    compare, bench, triton-repo, convert."""


for command in (predict.predict, classify.classify, stream.stream, compare.compare, tensorrt.build_engine_command,
                tensorrt.check_trt_command, triton.triton_repo_command, bench.bench, convert.convert):
    main.add_command(command)
main.add_command(export_command, name="export")

__all__ = ["export_command", "main"]
