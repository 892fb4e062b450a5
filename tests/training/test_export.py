import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from gguf import GGUFReader
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from specialight.cli import cli_main
from specialight.training.cli import run_lightning_cli
from specialight.training.export import data_sha256, export_checkpoint
from specialight.training.gguf import converter_path
from specialight.training.module import SpecializationModule
from tests.training.test_gguf import require


@pytest.fixture(scope="module")
def t5_run(tiny_t5_dir, data_dir, tmp_path_factory) -> Path:
    """A `specialight fit` of the tiny T5 (4 steps, evaluated every 2 steps, selected on M-A-S dev)."""
    root = tmp_path_factory.mktemp("fit")
    cli = run_lightning_cli(
        [
            "fit",
            f"--model.model_name_or_path={tiny_t5_dir}",
            "--model.learning_rate=0.01",
            f"--data.data_dir={data_dir}",
            "--data.limit=4",
            "--data.batch_size=2",
            "--data.num_demonstrations=1",
            "--trainer.max_steps=4",
            "--trainer.accelerator=cpu",
            "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={root}",
            "--trainer.callbacks+=specialight.training.callbacks.PeriodicEvaluation",
            "--trainer.callbacks.settings.suites=[gsm8k_dev,mas_dev]",
            "--trainer.callbacks.every_n_examples=4",
            "--trainer.callbacks.settings.limit=1",
            "--trainer.callbacks.settings.max_new_tokens=4",
            "--trainer.callbacks.before_training=false",  # so best.ckpt holds tuned weights (step >= 2)
            f"--trainer.callbacks.settings.data_dir={data_dir}",
            "--trainer.callbacks+=specialight.training.callbacks.ModelSelection",
        ]
    )
    return Path(cli.trainer.log_dir)


def batch(tokenizer, encoder_decoder: bool) -> dict:
    inputs = tokenizer(["Q: Tom has 3 apples and buys 4. How many?", "Q: 2 + 2 ="], return_tensors="pt", padding=True)
    if encoder_decoder:
        inputs["decoder_input_ids"] = tokenizer(["The answer is 7.", "4"], return_tensors="pt", padding=True).input_ids
    return dict(inputs)


@pytest.mark.slow
def test_t5_round_trip_gives_identical_logits_and_a_model_card(t5_run, tiny_t5_dir, data_dir, tmp_path):
    ckpt = t5_run / "best.ckpt"
    out = export_checkpoint(ckpt, tmp_path / "model")
    written = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md"} <= written
    exported = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    trained = SpecializationModule.load_from_checkpoint(ckpt).model.eval()
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir).eval()
    inputs = batch(AutoTokenizer.from_pretrained(out), encoder_decoder=True)
    with torch.no_grad():
        logits = exported(**inputs).logits
        assert torch.equal(logits, trained(**inputs).logits)
        assert not torch.allclose(logits, base(**inputs).logits)  # the tuned weights, not the base model's

    card = (out / "README.md").read_text()
    metadata = ModelCard.load(out / "README.md").data
    assert metadata.base_model is None and metadata.license is None  # a local folder: no hub id, no known license
    assert (metadata.library_name, metadata.pipeline_tag) == ("transformers", "text2text-generation")
    assert "specialight" in metadata.tags
    stored = torch.load(ckpt, weights_only=False)
    assert stored["SpecializationDataModule"]["data_sha256"]
    for path, digest in stored["SpecializationDataModule"]["data_sha256"].items():
        assert f"| `{path}` | `{digest}` |" in card
    assert (t5_run / "selection.md").read_text().strip() in card
    assert f"base model: `{tiny_t5_dir}`" in card
    assert "class_path: specialight.training.callbacks.ModelSelection" in card  # the run's config
    assert f"optimizer step {stored['global_step']}" in card

    # the folder is what `specialight evaluate --model DIR` reads
    assert (
        cli_main(
            [
                "evaluate",
                "--model",
                str(out),
                "--suites",
                "[svamp_dev]",
                "--limit",
                "2",
                "--max_new_tokens",
                "4",
                "--out",
                str(tmp_path / "eval"),
                "--data_dir",
                str(data_dir),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())


@pytest.mark.slow
def test_t5_exports_a_gguf_llama_server_cannot_serve_and_says_so(t5_run, tiny_t5_dir, t5_tokenizer, tmp_path, caplog):
    require(converter_path().is_file(), "llama.cpp's converter not fetched (scripts/fetch_llama_converter.sh)")
    # hub T5 folders carry their SentencePiece model; transformers 5 saved the tiny one's tokenizer.json only
    shutil.copy(t5_tokenizer.vocab_file, tiny_t5_dir / "spiece.model")
    out = tmp_path / "t5"
    command = ["export", "--ckpt", str(t5_run / "best.ckpt"), "--out", str(out), "--gguf", "--outtype", "q8_0"]
    with caplog.at_level(logging.WARNING, logger="specialight.training.gguf"):
        assert cli_main(command) == 0
    assert "llama-server cannot serve an encoder-decoder (T5) GGUF" in caplog.text
    assert (out / "spiece.model").is_file()  # the SentencePiece model llama.cpp's T5 vocabulary is read from
    reader = GGUFReader(out / "t5-q8_0.gguf")
    assert reader.fields["general.architecture"].contents() == "t5"
    assert reader.fields["tokenizer.ggml.model"].contents() == "t5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t5"]  # nothing .partial left beside it


def test_data_hashes_come_from_the_data_module_state_or_an_older_checkpoint_record():
    hashes = {"data/gsm8k/train.jsonl": "a" * 64}
    assert data_sha256({"SpecializationDataModule": {"data_sha256": hashes}, "specialight": {}}) == hashes
    assert data_sha256({"specialight": {"data_sha256": hashes}}) == hashes  # saved by the module itself
    assert data_sha256({"specialight": {"config": None}}) == {}


@pytest.mark.slow
def test_causal_round_trip_and_dtype(logged_run, tmp_path):
    trainer, _, selection = logged_run
    ckpt = Path(selection.best["path"])
    out = export_checkpoint(ckpt, tmp_path / "model")
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    trained = SpecializationModule.load_from_checkpoint(ckpt).model.eval()
    inputs = batch(AutoTokenizer.from_pretrained(out), encoder_decoder=False)
    with torch.no_grad():
        assert torch.equal(exported(**inputs).logits, trained(**inputs).logits)
    assert "no config" in (out / "README.md").read_text()  # fit from Python, not the CLI: said, not invented

    half = export_checkpoint(ckpt, tmp_path / "bf16", dtype="bfloat16")
    loaded = AutoModelForCausalLM.from_pretrained(half, dtype="auto")
    assert next(loaded.parameters()).dtype == torch.bfloat16


@pytest.mark.slow
def test_export_refuses_to_overwrite_unless_asked(logged_run, tmp_path, capsys):
    _, _, selection = logged_run
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "keep.txt").write_text("mine")
    args = ["export", "--ckpt", selection.best["path"], "--out", str(tmp_path / "model")]
    assert cli_main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli_main([*args, "--overwrite"]) == 0
    assert not (tmp_path / "model" / "keep.txt").exists() and (tmp_path / "model" / "config.json").is_file()
    assert cli_main(["export", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")]) == 2


@pytest.mark.slow
def test_checkpoints_rebuild_a_loss_plugin_with_all_its_init_args(tiny_gpt2_dir, data_dir, tmp_path):
    from specialight.data.datamodule import SpecializationDataModule
    from tests.helpers import ScaledSampleMatching, quiet_trainer

    loss = ScaledSampleMatching(scale=0.25, note="kept")
    trainer = quiet_trainer(1)
    datamodule = SpecializationDataModule(str(tiny_gpt2_dir), data_dir=str(data_dir), limit=2, batch_size=2)
    trainer.fit(SpecializationModule(str(tiny_gpt2_dir), loss=loss), datamodule)
    trainer.save_checkpoint(tmp_path / "python.ckpt")
    reloaded = SpecializationModule.load_from_checkpoint(tmp_path / "python.ckpt").loss
    assert type(reloaded) is ScaledSampleMatching and (reloaded.scale, reloaded.note) == (0.25, "kept")

    # through the CLI the same, by LightningCLI's own record of the config
    cli = run_lightning_cli(
        [
            "fit",
            f"--model.model_name_or_path={tiny_gpt2_dir}",
            "--model.loss=tests.helpers.ScaledSampleMatching",
            "--model.loss.scale=0.5",
            "--model.loss.note=from the cli",
            f"--data.data_dir={data_dir}",
            "--data.limit=2",
            "--trainer.max_steps=1",
            "--trainer.accelerator=cpu",
            "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path / 'runs'}",
        ]
    )
    last = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    reloaded = SpecializationModule.load_from_checkpoint(last).loss
    assert type(reloaded) is ScaledSampleMatching and (reloaded.scale, reloaded.note) == (0.5, "from the cli")
