"""The package's seams hold: runners and the job service meet only through gateway.lifecycle, and
the API-only parts load without a model."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from harness import ROOT


def _modules_loaded_by(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


@pytest.mark.parametrize(("module", "must_not_load"), [
    ("gateway.work", "gateway.service"),
    ("gateway.service", "gateway.work"),
    ("gateway.lifecycle", "gateway.service"),
    ("gateway.server", "gateway_client"),  # the generated code is its own distribution (protos/python)
])
def test_a_module_does_not_load_what_it_must_not(module: str, must_not_load: str) -> None:
    loaded = _modules_loaded_by(module)
    assert not any(m == must_not_load or m.startswith(must_not_load + ".") for m in loaded)


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_test_module_imports_another_and_the_harness_imports_no_test() -> None:
    """Tests share code through harness/ (processes, fakes) and tests/helpers/ (builders), never by
    importing one another; the benchmarks and the harness import nothing of tests/."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        for name in _imported_modules(path):
            if name.split(".")[-1].startswith("test_") and name.startswith("tests"):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
            if name.startswith("bench"):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    for folder in ("bench", "harness"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            offenders += [f"{path.relative_to(ROOT)} imports {name}" for name in _imported_modules(path)
                          if name == "tests" or name.startswith("tests.")]
    assert not offenders, offenders
