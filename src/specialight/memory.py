"""Process memory settings for training: freed tensor memory goes back to the system.

glibc's malloc serves a request from its heap below a threshold and with ``mmap`` above it, and raises
that threshold (up to 32 MB) each time an mmapped block is freed. Training frees and re-allocates blocks
of every size each step, so after a few steps most tensors live in the heap, and freed heap memory is
kept, not returned: resident memory grows well past what the step holds. A fixed threshold
(``M_MMAP_THRESHOLD``, which also turns the adjustment off) sends every tensor of 64 KB or more to
``mmap``, returned on free. Measured in ``benchmarks/train_step.py`` (README, Benchmarks).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3  # <malloc.h>
MMAP_THRESHOLD_BYTES = 64 * 1024


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold at 64 KB for this process; False (and nothing done) where the C library
    is not glibc or the user set ``MALLOC_MMAP_THRESHOLD_`` themselves."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        logger.debug("no glibc mallopt here: the allocator keeps its defaults")
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
