"""The lock files (requirements/*.txt, scripts/lock.py): they agree with pyproject.toml, a change to
either alone is caught, torch stays out of them and its pin is the same everywhere it is written."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

LOCK_SCRIPT = REPO / "scripts" / "lock.py"
_spec = importlib.util.spec_from_file_location("lock_script", LOCK_SCRIPT)
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)


def check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LOCK_SCRIPT), "check", "--root", str(root)], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def checkout(tmp_path) -> Path:
    """pyproject.toml and the lock files, copied to be changed."""
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "requirements", tmp_path / "requirements")
    return tmp_path


def test_every_lock_matches_pyproject():
    result = check(REPO)
    assert result.returncode == 0, result.stderr
    for path in lock.LOCKS:
        text = (REPO / path).read_text()
        assert lock.DIGEST_LINE.search(text), f"{path} has no inputs-sha256 line"


def test_a_dependency_added_without_make_lock_is_caught(checkout):
    pyproject = checkout / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"pyyaml>=6,<7",', '"pyyaml>=6,<7",\n    "boltons>=24",'))
    result = check(checkout)
    assert result.returncode == 1
    for path in lock.LOCKS:
        assert f"{path} was resolved from other requirements than pyproject.toml's" in result.stderr
        assert f"{path}: boltons (boltons>=24) is not pinned: run `make lock`" in result.stderr


def test_a_bound_tightened_without_make_lock_is_caught(checkout):
    pyproject = checkout / "pyproject.toml"
    pinned = lock.pins((REPO / "requirements/py311.txt").read_text())["pyarrow"][0]
    pyproject.write_text(pyproject.read_text().replace('"pyarrow>=26,<27"', f'"pyarrow>=26,<{pinned}"'))
    result = check(checkout)
    assert result.returncode == 1
    assert f"requirements/py311.txt: pyarrow=={pinned} is outside pyproject.toml's 'pyarrow>=26,<{pinned}'" \
        in result.stderr


def test_a_lock_edited_by_hand_is_caught(checkout):
    path = checkout / "requirements/py311.txt"
    text = path.read_text()
    version = lock.pins(text)["sqlalchemy"][0]
    assert version.startswith("2.0."), "prefect 3.8.8's scheduler creates no flow run with sqlalchemy 2.1"
    text = text.replace(f"sqlalchemy=={version}", "sqlalchemy==2.1.9")
    text = re.sub(r"(^datasketch==\S+) \\\n(\s+--hash=\S+( \\)?\n)+", r"\1\n", text, flags=re.M)
    path.write_text(text + "torch==2.13.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    problems = check(checkout).stderr.splitlines()
    assert "requirements/py311.txt: sqlalchemy==2.1.9 is outside pyproject.toml's " \
           "'sqlalchemy[asyncio]>=2.0.36,<2.1': run `make lock`" in problems
    assert any(re.fullmatch(r"requirements/py311.txt: datasketch==\S+ has no --hash", p) for p in problems)
    assert "requirements/py311.txt: torch==2.13.0 must not be in a lock (torch is installed first, its CPU build)" \
        in problems


def test_no_lock_holds_torch_or_a_cuda_package_and_every_lock_pins_the_tested_versions():
    tested = lock.pins((REPO / "requirements/py311.txt").read_text())
    for path in lock.LOCKS:
        pins = lock.pins((REPO / path).read_text())
        assert not [name for name in pins if lock.NOT_LOCKED.match(name)]
        assert all(hashes for _, hashes in pins.values())
        shared = set(pins) & set(tested)
        assert {name: pins[name][0] for name in shared} == {name: tested[name][0] for name in shared}, \
            f"{path} pins other versions than the tested lock"
    # torch's own dependencies are locked (resolved against its CPU wheel)
    assert {"sympy", "networkx", "filelock", "jinja2", "fsspec"} <= set(tested)


def test_the_torch_pin_is_the_same_in_pyproject_makefile_and_dockerfiles():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    version = lock.torch_pin(pyproject)
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^TORCH_VERSION\s*:?=\s*(\S+)$", makefile, re.M).group(1) == version
    assert "pip install --quiet --no-deps torch==$(TORCH_VERSION)" in makefile
    for dockerfile in sorted((REPO / "docker").glob("*.Dockerfile")):
        assert re.search(r"^ARG TORCH_VERSION=(\S+)$", dockerfile.read_text(), re.M).group(1) == version, dockerfile
    for path in lock.LOCKS:
        assert f"Install: torch=={version} first" in (REPO / path).read_text()


def test_the_venv_is_the_lock():
    """What this test session runs in was installed from the lock: same version of every locked package."""
    from importlib.metadata import distributions

    from packaging.utils import canonicalize_name

    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
    locked = lock.pins((REPO / "requirements/py311.txt").read_text())
    assert {name: installed.get(name) for name in locked} == {name: version for name, (version, _) in locked.items()}
    assert installed["torch"].endswith("+cpu")
