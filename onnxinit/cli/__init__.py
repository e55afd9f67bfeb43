"""The ``onnxinit`` command line: one module per subcommand, shared options in ``_common``.

Subcommand modules are imported when their command runs (or its help is shown), not before:
``onnxinit --version`` and ``onnxinit --help`` import click and nothing else of weight.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

import click

from .._version import __version__
from ..allocator import (blas_single_threaded, imports_frozen, keep_freed_memory,
                         no_huge_page_advice)
from ._common import run_command

# command name -> (module, function, the one-line help `onnxinit --help` lists; a test checks
# that it is the command's own)
COMMANDS = {
    "analyze": ("analyze", "analyze",
                "Predict the mean and variance of every float tensor of MODEL at initialization."),
    "check": ("check", "check",
              "Fail when the predicted variance of MODEL explodes or vanishes at initialization."),
    "export-weights": ("export_weights", "export_weights",
                       ("Write every float initializer of MODEL to safetensors (or .npz), keyed "
                        "by name.")),
    "report": ("report", "report",
               ("Write an HTML report on MODEL at initialization (and on RESCALED, its rescaled "
                "copy).")),
    "rescale": ("rescale", "rescale", "Rescale the weights of MODEL and write a new ONNX file."),
    "rules": ("rules", "rules_command",
              ("List the op rules known, with their source (built-in or plugin); with OP, show "
               "the rule of each OP named and its formula.")),
}


def _load(name: str) -> click.Command:
    module, function, _ = COMMANDS[name]
    keep_freed_memory()  # a command that computes runs in this process (allocator.py)
    # no collection walks the imported modules, and their quadrature nodes are computed on
    # one BLAS thread (allocator.py)
    with imports_frozen(), blas_single_threaded():
        command = getattr(importlib.import_module(f".{module}", __name__), function)
    no_huge_page_advice()  # once the command has imported numpy (allocator.py)
    return command


class _LazyCommands(Mapping):
    """``group.commands`` for Python callers: name -> command, each imported when looked up."""

    def __getitem__(self, name: str) -> click.Command:
        if name not in COMMANDS:
            raise KeyError(name)
        return _load(name)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(COMMANDS))

    def __len__(self) -> int:
        return len(COMMANDS)


class LazyGroup(click.Group):
    """A group whose subcommands are imported by name on first use."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.commands = _LazyCommands()

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return _load(name) if name in COMMANDS else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help`` from :data:`COMMANDS`, without importing them."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, click.utils.make_default_short_help(COMMANDS[name][2], limit))
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="onnxinit")
def cli():
    """Analyze and rescale the initialization of any ONNX model.

    \b
      onnxinit analyze model.onnx            predicted mean/variance of every tensor
      onnxinit analyze model.onnx --measure  ... next to values measured in onnxruntime
      onnxinit check model.onnx              CI gate: exit 1 if variance explodes/vanishes
      onnxinit rescale model.onnx            write model.autoinit.onnx with rescaled weights
      onnxinit report model.onnx -o r.html   the same as an HTML page with plots
      onnxinit rules                         the op rules known, and where they come from
    """


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    run_command(cli, argv)
