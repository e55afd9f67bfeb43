"""Options and error handling shared by every subcommand (like Polygraphy's logging flags)."""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from pathlib import Path

import click

from .. import escape
from ..errors import InvalidOptionError, OnnxInitError, WriteError

log = logging.getLogger("onnxinit")

EXIT_USAGE = 2


class _Formatter(logging.Formatter):
    """``onnxinit: warning: message``, the message made safe to print (:mod:`onnxinit.escape`:
    it names nodes and tensors of the model)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return escape.lines(f"onnxinit: {record.levelname.lower()}: {message}")


def echo(text: str = "", *, err: bool = False) -> None:
    """Print human-readable output, every line made safe to print (model strings in it)."""
    click.echo(escape.lines(text), err=err)


def error_line(message: object) -> str:
    """The one line a user error prints on stderr."""
    return escape.text(f"onnxinit: error: {message}")


def _configure_logging(verbose: int, quiet: bool, debug: bool) -> None:
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose >= 2 or debug:
        level = logging.DEBUG
    if quiet:
        level = logging.ERROR
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def logging_options(fn):
    """-v/--verbose, -q/--quiet and --debug (tracebacks instead of one-line errors)."""

    @click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
    @click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr; no progress bars.")
    @click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
    @functools.wraps(fn)
    def wrapper(*args, verbose: int, quiet: bool, debug: bool, **kwargs):
        _configure_logging(verbose, quiet, debug)
        ctx = click.get_current_context()
        ctx.meta["onnxinit.debug"] = debug
        ctx.meta["onnxinit.quiet"] = quiet
        return fn(*args, **kwargs)

    return wrapper


def batch_size_option(help: str):
    """--batch-size, with the command's own words for what it sizes."""
    return click.option("--batch-size", type=click.IntRange(min=1), default=32,
                        show_default=True, help=help)


def model_options(batch_help: str, many: bool = False):
    """MODEL (``many``: MODEL..., as ``models``), --input-shape and --batch-size
    (``batch_help``: what the batch size is for)."""

    def decorate(fn):
        fn = batch_size_option(batch_help)(fn)
        fn = click.option(
            "--input-shape", "input_shapes", multiple=True, metavar="NAME:DIMS",
            help="Concrete shape of an input, e.g. x:1x3x224x224 (repeatable).",
        )(fn)
        if many:
            return click.argument("models", nargs=-1, required=True, metavar="MODEL...",
                                  type=click.Path(dir_okay=True, path_type=str))(fn)
        return click.argument("model", type=click.Path(dir_okay=True, path_type=str))(fn)

    return decorate


def stats_option(fn):
    return click.option(
        "--stats", "stats", multiple=True, metavar="NAME:MEAN,VAR",
        help="Mean and variance of an input (default 0,1), e.g. x:0.5,0.25 (repeatable).",
    )(fn)


def measure_options(fn):
    """--measure and --device (where --measure runs; refused without it)."""

    @click.option("--measure", is_flag=True,
                  help="Also run the model in onnxruntime on seeded Gaussian inputs and show the "
                       "measured moments next to the predicted ones.")
    @click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
                  help="Where --measure runs (default: auto, the GPU when onnxruntime-gpu can "
                       "use one).")
    @functools.wraps(fn)
    def wrapper(*args, measure: bool, device: str | None, **kwargs):
        if device is not None and not measure:
            raise InvalidOptionError("--device says where --measure runs; add --measure or "
                                     "drop it")
        return fn(*args, measure=measure, device=device, **kwargs)

    return wrapper


def writable_target(path: Path, role: str) -> None:
    """Refuse, before any work, an output file whose folder does not exist or cannot be
    written."""
    folder = Path(path).resolve().parent
    if not (folder.is_dir() and os.access(folder, os.W_OK)):
        raise WriteError(f"{path}: {role} cannot be written: no writable folder {folder}")


def seed_option(fn):
    return click.option(
        "--seed", type=click.IntRange(min=0), default=0, show_default=True,
        help="Seed for every random draw (Monte Carlo rules, synthetic data).",
    )(fn)


def run_command(group: click.Group, argv: list[str] | None) -> None:
    """Run the click group; OnnxInitError -> one line on stderr and exit 2 (traceback with
    --debug). Click's own usage errors also exit 2."""
    try:
        # numpy's floating-point RuntimeWarnings (an overflow or a NaN in a user's weights) are
        # not the user's messages: what they concern is reported in the command's own words
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            group.main(args=argv, prog_name="onnxinit", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("onnxinit: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        # usage errors too: one line (click's own form has a usage block and a blank line)
        message = exc.format_message()
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            message += f" (see '{exc.ctx.command_path} --help')"
        click.echo(error_line(message), err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except OnnxInitError as exc:
        if "--debug" in (argv if argv is not None else sys.argv):
            raise
        click.echo(error_line(exc), err=True)
        sys.exit(EXIT_USAGE)
