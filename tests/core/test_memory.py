import ctypes
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # every test probes a fresh Python interpreter that imports torch

PROBE = (
    "import ctypes, torch; from specialight.core.memory import return_freed_memory; print(return_freed_memory()); "
    "rss = lambda: int(open('/proc/self/statm').read().split()[1]); before = rss(); "
    "warm = torch.ones(1 << 20); del warm; "  # glibc's default: this raises its mmap threshold to 4 MB
    "pairs = [(torch.ones(1 << 20), torch.ones(1000)) for _ in range(64)]; "  # 4 MB blocks between small ones
    "keep = [small for _, small in pairs]; del pairs; "  # the small ones stay, the 4 MB blocks are freed
    "print(rss() - before < 4096)"  # pages: the freed 256 MB went back to the system (under 16 MB kept)
)


def probe(script: str = PROBE, *args: str, **env: str) -> list[str]:
    """What ``script`` prints, run in a fresh process (the allocator's settings are process-wide)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **env}
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=environment, check=True
    )
    return done.stdout.split()


def test_freed_tensor_memory_returns_to_the_system():
    assert probe() == ["True", "True"]


def test_a_threshold_the_user_set_is_left_alone():
    assert probe(MALLOC_MMAP_THRESHOLD_="65536")[0] == "False"


HEAP_PROBE = """
import ctypes, sys, torch
from specialight.core.memory import heap_allocation, return_freed_memory

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(name, ctypes.c_size_t) for name in names.split()]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes, libc.mallinfo2.restype = ctypes.c_void_p, [ctypes.c_void_p], Info

def mapped(megabytes=8):  # whether a block gets a mapping of its own
    base = libc.mallinfo2().hblks
    block = libc.malloc(megabytes << 20)
    count = libc.mallinfo2().hblks - base
    libc.free(block)
    return count

rss = lambda: int(open("/proc/self/statm").read().split()[1])
if sys.argv[1] == "unfixed":  # glibc's own threshold rises to 8 MB once a mapped 8 MB block is freed
    print(mapped())
    with heap_allocation():
        pass
    print(mapped(1))
    sys.exit()
print(return_freed_memory())
print(mapped())
with heap_allocation():
    print(mapped())
print(mapped())
before = rss()
with heap_allocation():
    pairs = [(torch.ones(1 << 20), torch.ones(1000)) for _ in range(64)]  # 4 MB blocks between small ones
    keep = [small for _, small in pairs]
    del pairs
print(rss() - before < 4096)  # pages: the 256 MB freed inside went back to the system
"""


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


needs_glibc_233 = pytest.mark.skipif(not _has_mallinfo2(), reason="the probe reads glibc >= 2.33's mallinfo2")


@needs_glibc_233
def test_evaluation_allocates_from_the_heap_and_returns_it_afterwards():
    """With the threshold fixed, an 8 MB block is mapped on its own, except inside `heap_allocation`; on
    exit the threshold is back and the 256 MB freed inside goes back to the system."""
    assert probe(HEAP_PROBE, "fixed") == ["True", "1", "0", "1", "True"]


@needs_glibc_233
def test_heap_allocation_leaves_an_unfixed_process_alone():
    """`specialight evaluate` never fixes the threshold: glibc's own adjustment survives (a 1 MB block
    comes from the heap after an 8 MB one was freed, as it would not under a fixed 64 KB threshold)."""
    assert probe(HEAP_PROBE, "unfixed") == ["1", "0"]
