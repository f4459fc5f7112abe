"""The lock files: every package of an install at an exact version with its sha256 hashes, resolved
from pyproject.toml, so an install today and one next month get the same environment.

    python scripts/lock.py compile [--upgrade]   # `make lock`: resolve every lock file with uv
    python scripts/lock.py check                 # exit 1, one line per problem, if a lock and
                                                 # pyproject.toml disagree (`make venv` runs it first)

LOCKS names each lock file and the extras it holds. Each is resolved for Python 3.11 on x86_64 Linux
(manylinux_2_28, the platform of the torch CPU wheel), whatever machine runs `make lock`, and keeps
the versions already in it unless pyproject.toml needs others (`--upgrade`: the newest allowed).

torch is left out of every lock: `make`, .ci/run and the docker images install torch==TORCH first
from where they take the build they want (the local CPU wheel here; the PyTorch CPU or CUDA index in
docker/), then the lock with --no-deps. The lock is still resolved against torch's CPU wheel (the
file `pip install torch==TORCH` would take here), so torch's own dependencies are in it at exact
versions and no nvidia-* package is.

What `check` compares, for each lock file:
  - the sha256 of its inputs (pyproject.toml's requires-python, [project] dependencies and the lock's
    extras, as written) against the one recorded in its header when `make lock` wrote it;
  - every requirement of those lists (their markers taken for Python 3.11 on Linux) against the
    lock's pin of that package: pinned, and at a version the requirement allows;
  - every pin has at least one hash, and neither torch nor a CUDA package (nvidia-*, triton) is pinned.
Only the standard library and `packaging` (pip's own copy when the venv has nothing yet) are needed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
LOCKS = {
    "requirements/py311.txt": ("test", "train"),          # make venv, .ci/run: the tests and the training stages
    "requirements/py311-worker.txt": ("train",),          # docker/worker-*.Dockerfile
    "requirements/py311-all.txt": ("test", "train", "cluster", "toxicity"),  # every optional extra on top
}
NOT_LOCKED = re.compile(r"^(torch|nvidia-.*|triton)$")     # torch comes first, from its own index
DIGEST_LINE = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})$", re.M)
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")
MARKER_ENV = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def _packaging():
    try:
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name
    except ImportError:  # a venv with nothing installed yet: pip's vendored copy
        from pip._vendor.packaging.requirements import Requirement
        from pip._vendor.packaging.utils import canonicalize_name
    return Requirement, canonicalize_name


def lock_inputs(pyproject: dict, extras: tuple[str, ...]) -> dict:
    """What a lock is resolved from, each requirement as written (whitespace aside)."""
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    missing = [extra for extra in extras if extra not in optional]
    if missing:
        raise SystemExit(f"pyproject.toml has no extra {missing} (scripts/lock.py LOCKS names it)")
    clean = lambda requirements: [" ".join(r.split()) for r in requirements]  # noqa: E731
    return {"requires-python": project.get("requires-python"), "dependencies": clean(project["dependencies"]),
            "extras": {extra: clean(optional[extra]) for extra in extras}}


def inputs_digest(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def torch_pin(pyproject: dict) -> str:
    """The version of the `torch==X` requirement of pyproject.toml's extras."""
    pins = {r.split("==", 1)[1].split(";")[0].strip() for extra in pyproject["project"]["optional-dependencies"].values()
            for r in extra if re.match(r"^torch\s*==", r)}
    if len(pins) != 1:
        raise SystemExit(f"pyproject.toml: expected exactly one torch==X pin across the extras, found {sorted(pins)}")
    return pins.pop()


def header(path: str, extras: tuple[str, ...], digest: str, torch: str) -> str:
    return (f"# {path}: pyproject.toml resolved for Python {PYTHON_VERSION} on {PLATFORM}, extras "
            f"{', '.join(extras)}.\n"
            f"# Written by `make lock` (scripts/lock.py); do not edit. Install: torch=={torch} first (the CPU\n"
            f"# build; torch is not in this file), then `pip install --no-deps --require-hashes -r {path}`,\n"
            f"# then `pip install --no-deps -e .`.\n"
            f"# inputs-sha256: {digest}\n")


def torch_wheel(pip: str, version: str) -> str:
    """Where `pip install torch==version` takes torch from here; it must be a CPU build."""
    result = subprocess.run([pip, "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet",
                             "--report", "-", f"torch=={version}"], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"pip cannot find torch=={version}: {result.stderr.strip().splitlines()[-1:]}")
    [item] = json.loads(result.stdout)["install"]
    found = item["metadata"]["version"]
    if not found.endswith("+cpu"):
        raise SystemExit(f"pip would install torch {found} from {item['download_info']['url']}, not a CPU build: "
                         f"give pip the PyTorch CPU index (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu) "
                         f"and run `make lock` again")
    return item["download_info"]["url"]


def compile_locks(uv: str, pip: str, upgrade: bool, root: Path = REPO) -> None:
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    torch = torch_pin(pyproject)
    wheel = torch_wheel(pip, torch)
    uv = str(Path(uv).resolve()) if "/" in uv else uv  # uv runs in `root`
    with tempfile.TemporaryDirectory() as scratch:
        override = Path(scratch) / "torch.txt"
        override.write_text(f"torch @ {wheel}\n")
        first = None  # the later locks take the first one's versions (the worker image = the tested venv)
        for path, extras in LOCKS.items():
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            command = [uv, "--no-config", "pip", "compile", "pyproject.toml", *(f"--extra={e}" for e in extras),
                       f"--python-version={PYTHON_VERSION}", f"--python-platform={PLATFORM}", "--generate-hashes",
                       "--no-emit-package=torch", f"--override={override}", "--custom-compile-command=make lock",
                       "--quiet", f"--output-file={target}"]
            if upgrade:
                command.append("--upgrade")
            if first is not None:
                command.append(f"--constraint={first}")
            subprocess.run(command, cwd=root, check=True)
            first = first or target
            body = target.read_text()
            body = body[body.index("# This file was autogenerated"):] if "# This file was autogenerated" in body else body
            digest = inputs_digest(lock_inputs(pyproject, extras))
            target.write_text(header(path, extras, digest, torch) + body)
            print(f"{path}: {len(pins(body))} packages (extras {', '.join(extras)}; torch=={torch} not included)")


def pins(text: str) -> dict[str, tuple[str, int]]:
    """{canonical name: (version, number of hashes)} of a lock file."""
    _, canonicalize_name = _packaging()
    found: dict[str, tuple[str, int]] = {}
    current = None
    for line in text.splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match.group(1))
            found[current] = (match.group(3), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = found[current]
            found[current] = (version, hashes + 1)
        elif not line.startswith(" "):
            current = None
    return found


def check_lock(root: Path, path: str, extras: tuple[str, ...]) -> list[str]:
    """Every way the lock at `path` disagrees with pyproject.toml, one line each."""
    Requirement, canonicalize_name = _packaging()
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    lock_file = root / path
    if not lock_file.exists():
        return [f"{path} is missing: run `make lock`"]
    text = lock_file.read_text()
    inputs = lock_inputs(pyproject, extras)
    recorded = DIGEST_LINE.search(text)
    problems = []
    if recorded is None or recorded.group(1) != inputs_digest(inputs):
        problems.append(f"{path} was resolved from other requirements than pyproject.toml's requires-python, "
                        f"dependencies and extras {', '.join(extras)} now: run `make lock`")
    locked = pins(text)
    for name, (version, hashes) in sorted(locked.items()):
        if NOT_LOCKED.match(name):
            problems.append(f"{path}: {name}=={version} must not be in a lock (torch is installed first, its CPU build)")
        elif hashes == 0:
            problems.append(f"{path}: {name}=={version} has no --hash")
    for requirement in [*inputs["dependencies"], *(r for extra in extras for r in inputs["extras"][extra])]:
        parsed = Requirement(requirement.split(" #")[0])
        name = canonicalize_name(parsed.name)
        if NOT_LOCKED.match(name) or (parsed.marker and not parsed.marker.evaluate(MARKER_ENV)):
            continue
        if name not in locked:
            problems.append(f"{path}: {parsed.name} ({requirement}) is not pinned: run `make lock`")
        elif not parsed.specifier.contains(locked[name][0], prereleases=True):
            problems.append(f"{path}: {parsed.name}=={locked[name][0]} is outside pyproject.toml's "
                            f"{requirement!r}: run `make lock`")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    compile_parser = sub.add_parser("compile", help="resolve every lock file (make lock)")
    compile_parser.add_argument("--uv", default="uv", help="the uv binary")
    compile_parser.add_argument("--pip", default=str(Path(sys.executable).parent / "pip"),
                                help="the pip whose configuration says where torch's CPU wheel is")
    compile_parser.add_argument("--upgrade", action="store_true", help="the newest allowed versions, not the locked ones")
    check_parser = sub.add_parser("check", help="exit 1 if a lock and pyproject.toml disagree")
    check_parser.add_argument("--root", type=Path, default=REPO, help="the checkout to check")
    args = parser.parse_args(argv)
    if args.command == "compile":
        compile_locks(args.uv, args.pip, args.upgrade)
        return 0
    problems = [problem for path, extras in LOCKS.items() for problem in check_lock(args.root, path, extras)]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
