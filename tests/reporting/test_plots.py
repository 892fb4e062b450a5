import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from specialight.cli import cli_main
from specialight.reporting.plots import load_runs
from tests.conftest import ROOT


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


@pytest.mark.slow
def test_plot_command_draws_the_curves(logged_run, tmp_path, capsys):
    trainer, evaluation, _ = logged_run
    out = tmp_path / "curves.png"
    assert cli_main(["plot", "--logdir", trainer.log_dir, "--out", str(out)]) == 0
    assert is_png(out) and f"wrote {out}" in capsys.readouterr().out
    run = load_runs([trainer.log_dir])[0]
    assert [r["step"] for r in run.records] == [r["step"] for r in evaluation.history]
    assert run.selected_step is not None
    assert run.series("mas_dev")[0] == [0, 8, 16, 24]


@pytest.mark.slow
def test_runs_of_two_sizes_add_the_scaling_plot(logged_run, tmp_path):
    trainer, _, _ = logged_run
    small, large = tmp_path / "small", tmp_path / "large"
    shutil.copytree(trainer.log_dir, small)
    shutil.copytree(trainer.log_dir, large)
    # the same run presented as a second model size (a hand-made record: only num_parameters differs)
    lines = [json.loads(line) for line in (large / "evaluations.jsonl").read_text().splitlines()]
    (large / "evaluations.jsonl").write_text("".join(json.dumps(r | {"num_parameters": 10**9}) + "\n" for r in lines))
    assert cli_main(["plot", "--logdir", str(small), "--logdir+", str(large), "--out", str(tmp_path / "c.png")]) == 0
    assert is_png(tmp_path / "c.png") and is_png(tmp_path / "c_scaling.png")


@pytest.mark.slow
def test_curves_draw_interval_bands_and_read_records_without_intervals(logged_run, tmp_path):
    from matplotlib.collections import PolyCollection

    from specialight.reporting.plots import curves_figure

    trainer, evaluation, _ = logged_run
    runs = load_runs([trainer.log_dir])
    xs, low, high = runs[0].band("mas_dev")
    assert xs == [0, 8, 16, 24]
    assert all(lo <= r["scores"]["mas_dev"] <= hi for lo, hi, r in zip(low, high, evaluation.history, strict=True))
    figure = curves_figure(runs)
    banded = [axis for axis in figure.axes if any(isinstance(c, PolyCollection) for c in axis.collections)]
    assert len(banded) == 3  # gsm8k_dev, mas_dev, bbh_cot; the run did not evaluate bbh_ao
    assert "traded away" not in figure.texts[0].get_text() and "95% intervals" in figure.texts[0].get_text()
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    old_records = [{"step": r["step"], "examples": r["examples"], "scores": r["scores"]} for r in evaluation.history]
    (legacy / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old_records))
    assert cli_main(["plot", "--logdir", str(legacy), "--out", str(tmp_path / "old.png")]) == 0
    assert is_png(tmp_path / "old.png")


@pytest.mark.slow
def test_likelihood_suites_get_their_own_panels_with_bands(logged_run, tmp_path):
    from matplotlib.collections import PolyCollection

    from specialight.reporting.plots import likelihood_figure

    trainer, evaluation, _ = logged_run
    assert cli_main(["plot", "--logdir", trainer.log_dir, "--out", str(tmp_path / "c.png")]) == 0
    assert is_png(tmp_path / "c_likelihood.png")
    figure = likelihood_figure(load_runs([trainer.log_dir]))
    assert [axis.get_title() for axis in figure.axes] == ["nll_bbh_ao"]
    assert any(isinstance(c, PolyCollection) for c in figure.axes[0].collections)
    means = [line.get_ydata().tolist() for line in figure.axes[0].get_lines()][0]
    assert means == pytest.approx([r["nll"]["nll_bbh_ao"]["mean"] for r in evaluation.history])


def test_plot_without_runs_fails_clearly(tmp_path, capsys):
    assert cli_main(["plot", "--logdir", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "no evaluations.jsonl" in capsys.readouterr().err


@pytest.mark.slow
def test_notebook_runs_headless_on_a_logged_run(logged_run, monkeypatch):
    trainer, _, _ = logged_run
    monkeypatch.setenv("SPECIALIGHT_LOGDIRS", str(trainer.log_dir))
    notebook = nbformat.read(ROOT / "notebooks" / "specialization_curves.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    text = "".join(o.get("text", "") for o in outputs)
    assert "selected by mas_dev" in text and "one model size" in text
    assert " n=3" in text and "] n=" in text  # every score printed with its interval and count
    assert os.environ["SPECIALIGHT_LOGDIRS"] == str(trainer.log_dir)


def synthetic_run(folder: Path) -> list[dict]:
    """Three evaluations of a run whose batches filled a token budget (examples seen not a multiple of steps)."""
    records = []
    for step, examples, gsm, mas, nll in [
        (0, 0, 2.0, 1.5, 1.10),
        (40, 530, 5.5, 4.0, 0.90),
        (80, 1075, 8.0, 6.5, 0.82),
    ]:
        records.append(
            {
                "step": step,
                "examples": examples,
                "scores": {"gsm8k_dev": gsm, "mas_dev": mas, "bbh_ao": 20.0},
                "n": {"gsm8k_dev": 200, "mas_dev": 600, "bbh_ao": 81},
                "ci95": {
                    "gsm8k_dev": [gsm - 1.5, gsm + 2.0],
                    "mas_dev": [mas - 1.0, mas + 1.2],
                    "bbh_ao": [12.0, 30.0],
                },
                "nll": {"nll_gsm8k_dev_zero_shot": {"mean": nll, "n": 200, "low": nll - 0.03, "high": nll + 0.03}},
            }
        )
    folder.mkdir(parents=True)
    (folder / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def test_dose_response_draws_accuracy_and_likelihood_against_examples_seen_with_bands(tmp_path):
    from matplotlib.collections import PolyCollection

    from specialight.reporting.plots import dose_response_figure

    records = synthetic_run(tmp_path / "run")
    figure = dose_response_figure(load_runs([tmp_path / "run"]))
    gsm_accuracy, mas_accuracy, gsm_nll, mas_nll = figure.axes
    examples = [r["examples"] for r in records]
    for axis, values in (
        (gsm_accuracy, [r["scores"]["gsm8k_dev"] for r in records]),
        (mas_accuracy, [r["scores"]["mas_dev"] for r in records]),
        (gsm_nll, [r["nll"]["nll_gsm8k_dev_zero_shot"]["mean"] for r in records]),
    ):
        (line,) = axis.get_lines()
        assert line.get_xdata().tolist() == examples and line.get_ydata().tolist() == pytest.approx(values)
        (band,) = [c for c in axis.collections if isinstance(c, PolyCollection)]
        assert band.get_paths()[0].vertices[:, 1].min() == pytest.approx(
            min(values) - (1.5 if axis is gsm_accuracy else 1.0 if axis is mas_accuracy else 0.03)
        )
    assert "nll_gsm8k_dev_zero_shot" in gsm_nll.get_title() and "training examples seen" in gsm_nll.get_xlabel()
    assert "no likelihood suite evaluated" in mas_nll.get_title() and not mas_nll.get_lines()


@pytest.mark.slow
def test_plot_writes_the_dose_response_figure_for_any_run(tmp_path, capsys):
    synthetic_run(tmp_path / "run")
    assert cli_main(["plot", "--logdir", str(tmp_path / "run"), "--out", str(tmp_path / "c.png")]) == 0
    written = capsys.readouterr().out
    for name in ("c.png", "c_dose_response.png", "c_likelihood.png"):
        assert is_png(tmp_path / name) and f"wrote {tmp_path / name}" in written
