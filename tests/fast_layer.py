"""The fast layer's guard (`make test-fast`: the tests not marked slow): while such a test sets up or runs, a fit,
a Python subprocess or opening the real SmolLM2 fails it with "mark it @pytest.mark.slow". conftest.py installs
it and exposes its two hooks."""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import os
import shlex
import sys
from pathlib import Path

import pytest

SLOW_HINT = "mark it @pytest.mark.slow (the fast layer runs no fit, no Python subprocess, no real SmolLM2)"
SMOLLM2_FILES = "SmolLM2-135M"  # in the packaged GGUF's name and in the converted model folder's
_unmarked: list[str] = []  # the node id of the test not marked slow that is being set up or run now


def slow_reason(event: str, args: tuple) -> str | None:
    """What a `sys.audit` event does that only a slow test may do, or None: start a Python interpreter
    (directly or through `sh -c`), or open the real SmolLM2 (its GGUF, its converted folder)."""
    if event == "subprocess.Popen":
        executable, argv = os.fsdecode(args[0]), [os.fsdecode(a) for a in args[1]]
        program = executable
        if Path(executable).name in ("sh", "bash") and argv[1:2] == ["-c"] and argv[2:3] and argv[2].split():
            program = argv[2].split()[0]  # shell=True: the command's own program
        if program == sys.executable or Path(program).name.startswith(("python", "specialight")):
            return f"starts a Python interpreter ({shlex.join(argv)[:120]})"
        if any(SMOLLM2_FILES in a for a in argv):
            return "starts a server on the real SmolLM2"
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and SMOLLM2_FILES in os.fsdecode(args[0]):
        return f"loads the real SmolLM2 ({os.fsdecode(args[0])})"
    return None


def _refuse(what: str) -> None:
    pytest.fail(f"{_unmarked[0]} {what}: {SLOW_HINT}")


def _audit(event: str, args: tuple) -> None:
    if _unmarked and event in ("subprocess.Popen", "open") and (reason := slow_reason(event, args)):
        _refuse(reason)


def _guard_fit(module) -> None:
    """Wrap `Trainer.fit` in Lightning's trainer module: it fails an unmarked test."""
    fit = module.Trainer.fit

    @functools.wraps(fit)
    def guarded(*args, **kwargs):
        if _unmarked:
            _refuse("calls Trainer.fit")
        return fit(*args, **kwargs)

    module.Trainer.fit = guarded


class _GuardFitOnImport(importlib.abc.MetaPathFinder):
    """Wraps `Trainer.fit` as Lightning's trainer module is imported, whichever test or fixture imports it."""

    NAME = "lightning.pytorch.trainer.trainer"

    def find_spec(self, name, path, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path) if name == self.NAME else None
        if spec is not None:
            exec_module = spec.loader.exec_module
            spec.loader.exec_module = lambda module: (exec_module(module), _guard_fit(module))
        return spec


def install() -> None:
    """Hook the audit events (process-wide and permanent: inert while no unmarked test runs) and `Trainer.fit`."""
    sys.addaudithook(_audit)
    if _GuardFitOnImport.NAME in sys.modules:
        _guard_fit(sys.modules[_GuardFitOnImport.NAME])
    else:
        sys.meta_path.insert(0, _GuardFitOnImport())


@contextlib.contextmanager
def _fast_layer(item: pytest.Item):
    """While an unmarked test sets up (session fixtures included) and runs, slow work fails it."""
    if item.get_closest_marker("slow") is None:
        _unmarked.append(item.nodeid)
    try:
        yield
    finally:
        _unmarked.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _fast_layer(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _fast_layer(item):
        return (yield)
