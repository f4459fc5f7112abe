"""Headless Debian Chromium against the Prefect UI: the rendered DOM and a screenshot of a page (flags
from DESIGN.md §2: no sandbox, no GPU, no network beyond the page)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=20000"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError("no chromium on PATH: `make test` installs Debian's chromium package")
    return found


def render(url: str, profile: Path, *, screenshot: Path | None = None, size: str = "1600,1400") -> str:
    """The DOM after the page's scripts ran; with `screenshot`, also a PNG of the window."""
    base = [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={size}"]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True)
    return dom
