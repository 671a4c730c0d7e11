"""Keep the memory a frame's work frees for the next frame (glibc's allocator settings).

Every frame pair makes a dozen full-frame temporaries of 1–5 MB each (the difference, its
blurred and normalised copies, the line maps). glibc hands any block over 128 KiB out as a fresh
`mmap` and returns it to the kernel when freed, so each frame pays the page faults of zeroing
them again: on a 1304 × 976 pair about 6,000 faults and 14 ms of kernel time of ~115 ms
(x86, one core; the normalised difference alone 8.7 → 1.7 ms). Serving large blocks from the
heap and not trimming it keeps them: the process then holds its largest frame's working set
(a few tens of MB), which it would touch again 30 s later anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_LARGEST = 32 * 1024 * 1024  # glibc's ceiling for the mmap threshold on 64-bit
_applied = False


def keep_freed_memory() -> bool:
    """Tell glibc to serve blocks up to 32 MiB from the heap and keep what is freed there.
    Once per process; False (and nothing changed) where the C library is not glibc."""
    global _applied
    if _applied:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # musl, macOS: no mallopt, nothing to do
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    threshold = _LARGEST
    # 32-bit glibc (a Pi running a 32-bit OS) caps it at 4 MiB: fall back to what it takes.
    while threshold >= 1024 * 1024 and not mallopt(_M_MMAP_THRESHOLD, threshold):
        threshold //= 2
    if threshold < 1024 * 1024:
        return False
    mallopt(_M_TRIM_THRESHOLD, 4 * _LARGEST)
    _applied = True
    log.debug("allocator: blocks up to %d MiB from the heap, kept when freed",
              threshold // (1024 * 1024))
    return True
