import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# each process waits until all have started, then asks for the same folder; the builder sleeps so the
# others arrive while it works
BUILDER = """
import os, sys, time
from pathlib import Path
from specialight.core.models import build_once

out, log, ready, n = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
(ready / str(os.getpid())).touch()
while len(list(ready.iterdir())) < n:
    time.sleep(0.05)

def build(folder):
    with log.open("a") as handle:
        handle.write(f"{os.getpid()}\\n")
    folder.mkdir()
    time.sleep(2)
    (folder / "weights.txt").write_text(str(os.getpid()))

print(build_once(out, build))
"""


@pytest.mark.slow
def test_concurrent_processes_build_the_model_folder_once(tmp_path):
    out, log, ready = tmp_path / "models" / "m", tmp_path / "builds.log", tmp_path / "ready"
    ready.mkdir()
    (out.parent).mkdir()
    (out.parent / "m.partial-999999").mkdir()  # what a crashed builder leaves behind
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    args = [sys.executable, "-c", BUILDER, str(out), str(log), str(ready), "3"]
    processes = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    printed = [process.communicate(timeout=300)[0].strip() for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0]
    assert printed == [str(out)] * 3
    builders = log.read_text().split()
    assert len(builders) == 1  # one conversion; the others waited and reused it
    assert (out / "weights.txt").read_text() == builders[0]
    assert sorted(p.name for p in out.parent.iterdir()) == ["m", "m.lock"]  # the stale partial folder is gone
