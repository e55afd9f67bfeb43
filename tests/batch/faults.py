"""Work functions that misbehave on purpose, for the batch tests: they run in worker processes
and Ray tasks, so they live in a module those can import (by reference)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def calls(file: Path) -> list[str]:
    """The names :func:`behave` was called with, in the order of the calls."""
    return file.read_text().split() if file.exists() else []


def _first_attempt(name: str, options: dict) -> bool:
    marker = Path(options["markers"]) / f"{name}.attempted"
    if marker.exists():
        return False
    marker.touch()
    return True


def behave(path: str, options: dict) -> dict:
    """Sleep ``options["sleep"][name]`` seconds; hang (far past any timeout) when the name is in
    ``options["hang"]``; kill its own process with SIGKILL (as the kernel's OOM killer would) on
    the first attempt at a name in ``options["die_once"]`` (a marker file in
    ``options["markers"]`` remembers the attempt), and on every attempt at one in
    ``options["die"]``; ``options["hang_once"]`` hangs on the first attempt only. Each call first appends the name to the file ``options["calls"]``
    (when given), which tells which models really ran. Returns the name and the process id."""
    name = Path(path).name
    if "calls" in options:
        with open(options["calls"], "a") as f:
            f.write(name + "\n")
    if name in options.get("die", ()):
        os.kill(os.getpid(), signal.SIGKILL)
    if name in options.get("die_once", ()) and _first_attempt(name, options):
        os.kill(os.getpid(), signal.SIGKILL)
    if name in options.get("hang", ()) or (name in options.get("hang_once", ())
                                           and _first_attempt(name, options)):
        time.sleep(3600)
    time.sleep(options.get("sleep", {}).get(name, 0))
    return {"name": name, "pid": os.getpid()}
