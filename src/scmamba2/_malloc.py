"""Keep freed memory in the process on Linux/glibc, so large CPU tensors reuse pages.

PyTorch's CPU allocator has no cache: every large tensor is a fresh ``mmap`` whose pages the kernel faults
in and zeroes on first touch, and frees with ``munmap``. For long sequences (activations of 100+ MB per
op) that page-fault traffic dominates: measured 2.6x on a forward+backward at 8k tokens (see
``benchmarks/results/backbone.md``). Raising glibc's mmap and trim thresholds makes ``malloc`` serve
those tensors from the heap it keeps. The cost: freed memory is not returned to the OS until exit.

Opt out with ``SCMAMBA2_MALLOC_TUNING=0``. Does nothing off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_done = False


def tune_cpu_allocator() -> bool:
    """Apply the glibc settings once per process; returns whether they are in force."""
    global _done
    if _done:
        return True
    if os.environ.get("SCMAMBA2_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # No mmap'd blocks (M_MMAP_MAX = 0): every tensor comes from the heap, which the trim threshold and
    # top pad keep from shrinking between steps, so pages are reused instead of faulted in again.
    ok = all((mallopt(_M_MMAP_MAX, 0), mallopt(_M_TRIM_THRESHOLD, 1 << 30), mallopt(_M_TOP_PAD, 256 << 20)))
    _done = bool(ok)
    log.debug("glibc malloc tuning %s", "applied" if ok else "refused")
    return _done
