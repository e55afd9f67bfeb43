"""Keep the memory of freed numpy temporaries for the next ones (glibc's malloc).

A rule computes on arrays of 0.1-30 MB (statistics per position class, quadrature nodes x
cells) and frees them at once. glibc's malloc serves such blocks with ``mmap`` of fresh pages
and returns them on ``free``, so every temporary pays a page fault per 4 KB: 0.1-0.6 s of
system time in an ``analyze`` of GPT-2, ResNet-164 or EfficientNet-B0 (a temporary written
into fresh pages costs 3x one written into reused memory: 15 against 5 ns a value for a
sigmoid of 32 K values). Serving blocks up to 32 MB from the heap and keeping up to 256 MB
of freed heap reuses the pages instead. The memory held is what was in use moments before,
so the peak is unchanged; weights stay memory-mapped files, untouched by this.

Process-wide: only the command line calls it (a library must not change its host's
allocator), and not when the user set glibc's own ``MALLOC_*`` variables.

numpy asks the kernel for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on every array of
4 MB or more. Where the kernel's ``transparent_hugepage/defrag`` is ``madvise`` (the common
default), a page fault in such an array compacts memory on the spot to find a 2 MB page: on a
machine whose memory is fragmented (a long-running process, a busy host) that is seconds of
system time, and more with every model analysed in one process. EfficientNet-B0's ``analyze``
spent 2.9-5.0 s of system CPU against 0.5 s with numpy's madvise off (user time the same);
:func:`no_huge_page_advice` turns it off, as ``NUMPY_MADVISE_HUGEPAGE=0`` would at numpy's
import, unless the user set that variable. A library call (``onnxinit.analyze``, ``rescale``)
leaves the process's allocator alone but computes within :func:`huge_pages_unadvised`: numpy's
advice off while it computes, as it was after (Swin-T's ``analyze`` in a fresh process,
alternating: 0.30-1.59 s of system CPU with the advice, 0.48-0.75 s without; user time the
same).

The rule modules compute their quadrature nodes when imported (numpy's ``hermgauss``,
``hermegauss`` and ``leggauss``: 14 symmetric eigenvalue problems of order 3-96). With
OpenBLAS's default threads those cost more CPU waking and waiting for each other than
computing: ``hermgauss(96)`` 17 ms against 0.8 ms on one thread (the same bits), and a
command's imports 0.24-0.28 s against 0.15-0.18 s on this shared 2-core machine at load 12;
:func:`blas_single_threaded` runs the imports with BLAS on one thread, as the propagation
already runs (``propagate.single_threaded_blas``).

Python's cyclic garbage collector is paused while a command imports its modules, and the
objects they made (some 67,000: functions, classes, module dictionaries, which live as long
as the process) are then moved out of its reach (``gc.freeze``), once per process: a
ResNet-164 ``analyze`` spent 50 ms of CPU in 140 collections, one of them a full one that
walked every imported object again, for about 400 objects freed; 9 ms in 61 after
(:func:`imports_frozen`).
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (above); True when they were set."""
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # the mmap threshold first: setting the trim threshold alone freezes the mmap threshold
    # at its 128 KB default, where every temporary is mapped afresh
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def no_huge_page_advice() -> bool:
    """Stop numpy from advising transparent huge pages for its arrays (above); True when it
    was turned off now, False when the user chose (``NUMPY_MADVISE_HUGEPAGE``), numpy is not
    imported (nothing to compute) or has no such switch."""
    switch = _advice_switch()
    if switch is None:
        return False
    switch(False)
    return True


def _advice_switch():
    """numpy's switch of its huge-page advice (returns the setting it replaces), or None where
    numpy is not imported, the user chose (``NUMPY_MADVISE_HUGEPAGE``) or numpy has none."""
    np = sys.modules.get("numpy")
    if np is None or "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return None
    return getattr(getattr(getattr(np, "_core", None), "multiarray", None),
                   "_set_madvise_hugepage", None)


@contextlib.contextmanager
def huge_pages_unadvised():
    """Within the block numpy advises no transparent huge pages for its new arrays (as
    :func:`no_huge_page_advice`); after it, the advice as it was. Nothing where the user set
    ``NUMPY_MADVISE_HUGEPAGE``. Blocks nest (each restores what it found)."""
    switch = _advice_switch()
    if switch is None:
        yield
        return
    previous = switch(False)
    try:
        yield
    finally:
        switch(previous)


_FROZEN = False


@contextlib.contextmanager
def imports_frozen():
    """Within the block (a command's imports) no garbage collection; after it, the objects
    made so far frozen (:func:`gc.freeze`: never collected, never walked again) and the
    collector as it was. Once per process: a later block (tests calling the command line
    again) only pauses the collector, so garbage of its own never joins the frozen set."""
    global _FROZEN
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if not _FROZEN:
            _FROZEN = True
            gc.freeze()
        if enabled:
            gc.enable()


@contextlib.contextmanager
def blas_single_threaded():
    """Within the block (a command's imports) BLAS on one thread (above), numpy imported
    first so that its BLAS is loaded and found; after it, the threads as they were."""
    import numpy  # noqa: F401 - loaded before the limit, which applies to loaded libraries
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield

