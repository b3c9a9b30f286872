"""How the CPU engine's process returns freed memory to the system (glibc's ``malloc`` on Linux).

A training step allocates and frees the same large arrays every step. By default glibc serves allocations
above a threshold with fresh ``mmap`` pages and gives freed heap memory back to the system: every step then
page-faults its new arrays in again (bench/README.md, "Page faults"). :func:`configure` raises both thresholds
once, so freed blocks are kept and reused: the process keeps its peak heap instead of shrinking between
steps.

``XPVISION_HEAP`` in the environment chooses: ``keep`` (the default) or ``system`` (glibc's own policy).
Elsewhere than Linux with glibc, nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

from xpvision.nn.engine import choice_from_environment

ENV_HEAP = "XPVISION_HEAP"
HEAP_MODES = ("keep", "system")
# mallopt(3) parameters and the values set: allocations up to 32 MiB (glibc's largest mmap threshold on
# 64-bit) come from the heap, and freed heap memory is kept up to 1 GiB above the peak in use.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 1 << 30


@functools.cache
def configure() -> bool:
    """Apply ``XPVISION_HEAP`` once per process; True when glibc's thresholds were raised."""
    return choice_from_environment(ENV_HEAP, HEAP_MODES, "keep") == "keep" and _raise_thresholds()


def _raise_thresholds() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt  # glibc; musl has none
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                              _TRIM_THRESHOLD))
