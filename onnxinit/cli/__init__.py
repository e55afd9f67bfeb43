"""The ``onnxinit`` command line: one module per subcommand, shared options in ``_common``."""

from __future__ import annotations

import click

from .._version import __version__
from ._common import run_command
from .analyze import analyze
from .check import check
from .export_weights import export_weights
from .rescale import rescale
from .rules import rules_command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="onnxinit")
def cli():
    """Analyze and rescale the initialization of any ONNX model.

    \b
      onnxinit analyze model.onnx            predicted mean/variance of every tensor
      onnxinit analyze model.onnx --measure  ... next to values measured in onnxruntime
      onnxinit check model.onnx              CI gate: exit 1 if variance explodes/vanishes
      onnxinit rescale model.onnx            write model.autoinit.onnx with rescaled weights
      onnxinit rules                         the op rules known, and where they come from
    """


cli.add_command(analyze)
cli.add_command(check)
cli.add_command(export_weights)
cli.add_command(rescale)
cli.add_command(rules_command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    run_command(cli, argv)
