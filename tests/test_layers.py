"""The package's layering (docs/development.md): imports only point down, read from the source (lazy imports
inside functions included), and the light entry points load no heavy library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "specialight"
# top to bottom; a module may import its own layer and the layers below it
LAYERS = ("face", "reporting", "training", "evaluation", "teacher", "align", "data", "core")
FACE = {"cli", "commands", "demo"}
# modules held to less than their layer allows
ONLY = {
    "training.losses": ("core.constants", "training.chunked", "training.divergences"),
    "training.chunked": ("training.divergences",),
    "training.divergences": (),
}


def layer_of(module: str) -> str:
    """The layer of ``specialight.<module>`` (``training.losses`` -> ``training``)."""
    head = module.split(".", 1)[0]
    if head in FACE:
        return "face"
    if head not in LAYERS:
        raise ValueError(f"specialight.{module} is in no layer; add it to LAYERS or FACE")
    return head


def imported(source: str) -> list[str]:
    """Every ``specialight.*`` module a source imports, at any depth (``from specialight.x import y``)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("specialight."):
            names.append(node.module.removeprefix("specialight."))
        elif isinstance(node, ast.Import):
            names += [a.name.removeprefix("specialight.") for a in node.names if a.name.startswith("specialight.")]
    return names


def violations(module: str, source: str) -> list[str]:
    """The imports of ``specialight.<module>`` that point up a layer or outside what `ONLY` allows."""
    here = LAYERS.index(layer_of(module))
    found = []
    for name in imported(source):
        if LAYERS.index(layer_of(name)) < here:
            found.append(f"specialight.{module} ({layer_of(module)}) imports specialight.{name} ({layer_of(name)})")
        allowed = ONLY.get(module)
        if allowed is not None and name not in allowed:
            found.append(f"specialight.{module} may import only {', '.join(allowed)}, not specialight.{name}")
    return found


def modules() -> dict[str, str]:
    """``{dotted name below specialight: source}`` for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            found[".".join(parts)] = path.read_text()
    return found


def test_imports_only_point_down():
    found = [line for module, source in modules().items() for line in violations(module, source)]
    assert found == []


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("evaluation.evaluator", "from specialight.training.module import SpecializationModule"),
        ("data.datamodule", "    from specialight.align.run import run_align"),
        ("reporting.plots", "import specialight.cli"),
        ("training.losses", "from specialight.data.formats import FORMATS"),
    ],
)
def test_a_forbidden_import_is_caught(module, line):
    source = modules()[module]
    assert violations(module, source) == []
    added = source + "\n\ndef _late():\n" + ("    " + line.strip()) + "\n"
    assert len(violations(module, added)) == 1


def loaded_after(statement: str) -> set[str]:
    """Which heavy libraries a fresh interpreter has loaded after running ``statement``."""
    probe = (
        f"import sys\n{statement}\n"
        "heavy = ('torch', 'numba', 'pyarrow', 'lightning', 'transformers')\n"
        "print('LOADED:', *(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.rsplit("LOADED:", 1)[1].split())


@pytest.mark.slow
def test_help_loads_no_torch_numba_or_pyarrow():
    statement = "from specialight.cli import cli_main\ntry:\n    cli_main(['--help'])\nexcept SystemExit:\n    pass"
    assert loaded_after(statement) == set()


@pytest.mark.slow
def test_reporting_loads_no_lightning():
    assert "lightning" not in loaded_after("import specialight.reporting.plots, specialight.reporting.claims")


def long_parts(source: str, max_module: int = 300, max_function: int = 40) -> list[str]:
    """The module itself if over ``max_module`` lines, and each function over ``max_function`` lines not
    counting its docstring (a CLI stage's docstring is its help text)."""
    found = [f"module: {len(source.splitlines())} lines"] if len(source.splitlines()) > max_module else []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0]
            docstring = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)
            lines = node.end_lineno - node.lineno + 1 - ((first.end_lineno - first.lineno + 1) if docstring else 0)
            if lines > max_function:
                found.append(f"{node.name}: {lines} lines")
    return found


def test_modules_and_functions_stay_short():
    found = {module: parts for module, source in modules().items() if (parts := long_parts(source))}
    assert found == {}


def test_a_long_function_is_caught():
    body = "\n".join(f"    x{i} = {i}" for i in range(40))
    assert long_parts(f'def f():\n    """Doc."""\n{body}\n') == ["f: 41 lines"]
    assert long_parts(f'def f():\n    """Doc\n\n    more."""\n{body[: body.rindex(chr(10))]}\n') == []
