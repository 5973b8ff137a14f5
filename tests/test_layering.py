"""The package's seams hold: runners and the job service meet only through gateway.lifecycle, and
the API-only parts load without a model."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT


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
