"""Process memory settings for training: freed tensor memory goes back to the system.

glibc's malloc serves a request from its heap below a threshold and with ``mmap`` above it, and raises
that threshold (up to 32 MB) each time an mmapped block is freed. Training frees and re-allocates blocks
of every size each step, so after a few steps most tensors live in the heap, and freed heap memory is
kept, not returned: resident memory grows well past what the step holds. A fixed threshold
(``M_MMAP_THRESHOLD``, which also turns the adjustment off) sends every tensor of 64 KB or more to
``mmap``, returned on free. Measured in ``benchmarks/train_step.py`` (README, Benchmarks).

The price is a page fault for every page of every such tensor. Generation allocates many short-lived
tensors per token, and there the faults cost about a tenth of the wall time (README, Benchmarks), so
`heap_allocation` serves an evaluation from the heap and hands the freed heap back afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Iterator

logger = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3  # <malloc.h>
MMAP_THRESHOLD_BYTES = 64 * 1024
HEAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's ceiling for its own adjustment (64-bit DEFAULT_MMAP_THRESHOLD_MAX)
_fixed_by: ctypes.CDLL | None = None  # the C library, where `return_freed_memory` fixed its threshold


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        libc = None
    if libc is None or not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        logger.debug("no glibc mallopt here: the allocator keeps its defaults")
        return None
    return libc


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold at 64 KB for this process; False (and nothing done) where the C library
    is not glibc or the user set ``MALLOC_MMAP_THRESHOLD_`` themselves."""
    global _fixed_by
    libc = None if "MALLOC_MMAP_THRESHOLD_" in os.environ else _libc()
    if libc is None or not libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        return False
    _fixed_by = libc
    return True


@contextlib.contextmanager
def heap_allocation() -> Iterator[None]:
    """Inside: blocks up to 32 MB come from the heap (no page fault per use). On exit the freed heap goes
    back to the system (``malloc_trim``) and the 64 KB threshold returns. Does nothing unless
    `return_freed_memory` fixed the threshold in this process."""
    libc = _fixed_by
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, HEAP_THRESHOLD_BYTES)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        libc.malloc_trim(0)
