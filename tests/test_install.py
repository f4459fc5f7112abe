"""The environment `make venv` builds from pyproject.toml: lm-evaluation-harness with its HF extra at the
pinned version, torch still the CPU build installed first (nothing pulled a CUDA one), `pip check` clean."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def pinned(name: str) -> str:
    [version] = set(re.findall(rf'"{re.escape(name)}(?:\[[^\]]*\])?==([^"]+)"', PYPROJECT.read_text()))
    return version  # one version, however many extras pin it


def test_the_harness_is_installed_as_pinned_and_keeps_the_cpu_torch():
    import torch

    assert importlib.metadata.version("lm_eval") == pinned("lm-eval")
    assert importlib.metadata.version("datasets") == pinned("datasets")
    for extra in ("transformers", "accelerate", "peft"):  # lm-eval[hf]
        importlib.metadata.version(extra)
    assert torch.__version__ == f"{pinned('torch')}+cpu" and torch.version.cuda is None
    assert not [d.metadata["Name"] for d in importlib.metadata.distributions()
                if (d.metadata["Name"] or "").lower().startswith(("nvidia-", "triton"))]


def test_pip_check_is_clean():
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
