"""glibc's malloc told to return large buffers to the system when they are freed, for the CLI's own processes.

glibc raises its mmap threshold each time a large mmapped block is freed (up to 32 MiB); from then on the encoder's
per-batch arrays come from the heap arenas of the threads that made them, which a long ``twostage index`` fragments:
its memory grew in steps long after the encoder had met its input shapes. A fixed threshold (setting it also turns
the adjustment off) keeps every block from 128 KiB up in its own mapping, returned when freed; the measurement is on
the Indexing benchmark page. A Python program that embeds twostage keeps its allocator as it is: this is process-wide.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: mallopt's parameter number for the mmap threshold (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
#: glibc's own initial threshold, fixed instead of left to grow
MMAP_THRESHOLD = 128 * 1024
#: the environment variable through which a user sets the threshold themselves (then left alone)
USER_SETTING = "MALLOC_MMAP_THRESHOLD_"


def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD`; True if set. Nothing happens off Linux, with another C
    library, or when the user set ``MALLOC_MMAP_THRESHOLD_``."""
    if not sys.platform.startswith("linux") or USER_SETTING in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):  # no glibc (musl has no mallopt)
        return False
