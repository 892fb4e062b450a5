import os
import subprocess
import sys

from tests.conftest import ROOT

PROBE = (
    "import ctypes, torch; from specialight.memory import return_freed_memory; print(return_freed_memory()); "
    "rss = lambda: int(open('/proc/self/statm').read().split()[1]); before = rss(); "
    "warm = torch.ones(1 << 20); del warm; "  # glibc's default: this raises its mmap threshold to 4 MB
    "pairs = [(torch.ones(1 << 20), torch.ones(1000)) for _ in range(64)]; "  # 4 MB blocks between small ones
    "keep = [small for _, small in pairs]; del pairs; "  # the small ones stay, the 4 MB blocks are freed
    "print(rss() - before < 4096)"  # pages: the freed 256 MB went back to the system (under 16 MB kept)
)


def probe(**env: str) -> list[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **env}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=environment, check=True)
    return done.stdout.split()


def test_freed_tensor_memory_returns_to_the_system():
    assert probe() == ["True", "True"]


def test_a_threshold_the_user_set_is_left_alone():
    assert probe(MALLOC_MMAP_THRESHOLD_="65536")[0] == "False"
