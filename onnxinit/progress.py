"""Progress bars for long runs (data-driven methods, many models): shown on a terminal, quiet
otherwise.

A bar is drawn on stderr only when all of these hold: stderr is a terminal, the environment
does not say it is CI (``CI`` set to anything but ``0``/``false``), and the ``onnxinit`` logger
is not silenced (``--quiet`` sets it to ERROR). Everything else about the run is unchanged:
a quiet bar counts iterations without printing.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def enabled() -> bool:
    """Whether a progress bar should be drawn now (terminal, not CI, not --quiet)."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    if logging.getLogger("onnxinit").getEffectiveLevel() >= logging.ERROR:
        return False
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


@contextmanager
def bar(total: int, description: str, *, show: bool | None = None,
        unit: str = "it") -> Iterator:
    """A tqdm bar over ``total`` steps on stderr, drawn when ``show`` (default: :func:`enabled`).
    Use ``b.update()`` per step and ``b.set_postfix(objective=...)`` for the current value."""
    from tqdm import tqdm  # only the data-driven methods draw bars

    show = enabled() if show is None else show
    progress = tqdm(total=total, desc=description, file=sys.stderr, disable=not show,
                    leave=False, dynamic_ncols=True, unit=unit)
    try:
        yield progress
    finally:
        progress.close()


def write_around_bars():
    """A context in which writing to stderr does not garble the bars drawn there (tqdm's
    ``external_write_mode``; tqdm is imported here, when a bar is drawn, not with the CLI)."""
    from tqdm import tqdm

    return tqdm.external_write_mode(file=sys.stderr)

