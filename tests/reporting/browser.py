"""Headless Chromium (Debian's ``chromium`` package) for the report's browser tests: a
screenshot of a page and the console messages it logged. Without chromium the tests skip, unless
``ONNXINIT_REQUIRE_BROWSER=1`` (CI), where they fail."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--enable-logging=stderr", "--v=0"]
CONSOLE = re.compile(r":CONSOLE[(:]")  # how chromium's log writes a page's console message


def chromium() -> str:
    """The chromium executable, or skip (fail with ONNXINIT_REQUIRE_BROWSER=1)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("ONNXINIT_REQUIRE_BROWSER") == "1":
            pytest.fail("ONNXINIT_REQUIRE_BROWSER=1 but chromium is not installed "
                        "(apt-get install -y chromium)")
        pytest.skip("chromium is not installed")
    return found


def screenshot(page: Path, shot: Path, profile: Path, size=(1280, 1600)) -> list[str]:
    """Render ``page`` into the PNG ``shot`` with a fresh profile folder; the page's console
    messages (any level), as chromium logged them."""
    done = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
         f"--window-size={size[0]},{size[1]}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.exists(), done.stderr[-2000:]
    return [line for line in done.stderr.splitlines() if CONSOLE.search(line)]
