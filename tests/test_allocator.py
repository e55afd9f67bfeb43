"""onnxinit.allocator: the command line keeps freed numpy temporaries for reuse (glibc)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# minor page faults of a rule's pattern, with or without keep_freed_memory(): three 2 MB
# temporaries alive at once, freed together, 100 times
_FAULTS = """
import json, resource, sys
import numpy as np
from onnxinit.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
kept = []
for _ in range(100):
    a = np.ones(1 << 18)
    b = a * 2.0
    c = b + a
    kept.append(c.sum(keepdims=True))
    del a, b, c
print(json.dumps([applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before]))
"""


def _faults(mode: str, **env) -> tuple[bool, int]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True,
                         check=True, env=environ)
    applied, faults = json.loads(out.stdout)
    return applied, faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_temporaries_are_reused_instead_of_mapped_afresh():
    """Measured by the kernel: with glibc's default thresholds the freed temporaries go back
    to the system and the next ones fault their pages in again (about 150,000 faults here);
    kept, the first iteration's pages serve every later one."""
    applied, kept = _faults("keep")
    if not applied:
        pytest.skip("not glibc")
    _, fresh = _faults("default")
    assert fresh > 50_000  # 100 x 3 x 512 pages
    assert kept < fresh / 20


def test_the_users_own_malloc_settings_are_left_alone():
    applied, _ = _faults("keep", MALLOC_ARENA_MAX="2")
    assert applied is False


# whether numpy still advises huge pages once the command line has loaded a command
_ADVICE = """
import json
import numpy as np
from onnxinit.cli import _load
_load("analyze")
print(json.dumps(np._core.multiarray._set_madvise_hugepage(True)))
"""


def _advice_after_load(**env) -> bool:
    environ = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    out = subprocess.run([sys.executable, "-c", _ADVICE], env={**environ, **env},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_command_turns_numpys_huge_page_advice_off():
    """numpy's madvise(MADV_HUGEPAGE) on every array of 4 MB or more: where the kernel
    compacts memory for it on a page fault, seconds of system time (allocator.py)."""
    import numpy as np

    if not hasattr(np._core.multiarray, "_set_madvise_hugepage"):
        pytest.skip("this numpy has no switch")
    assert _advice_after_load() is False


def test_the_users_own_huge_page_setting_is_left_alone():
    assert _advice_after_load(NUMPY_MADVISE_HUGEPAGE="1") is True


# a fresh interpreter loads `analyze` and then `rescale` through the command line's own loader:
# the imports' objects frozen once, the collector on
_COLLECTIONS = """
import gc, json
import onnxinit.cli as cli
cli._load("analyze")
frozen = gc.get_freeze_count()
enabled = gc.isenabled()
cli._load("rescale")  # a second command: not frozen again
gc.collect()
print(json.dumps([frozen, enabled, gc.isenabled(), gc.get_freeze_count() == frozen]))
"""


def test_the_commands_imports_are_frozen_once_and_collection_goes_on():
    out = subprocess.run([sys.executable, "-c", _COLLECTIONS], capture_output=True, text=True,
                         check=True)
    frozen, enabled, still_enabled, once = json.loads(out.stdout)
    assert frozen > 10_000  # the imported modules' objects (about 67,000 for analyze)
    assert enabled and still_enabled and once
