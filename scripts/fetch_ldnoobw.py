"""Refresh data/ldnoobw/ from the npm package naughty-words (the LDNOOBW lists, CC-BY-4.0).

    python scripts/fetch_ldnoobw.py [--version 1.2.0]

Needs `npm` (the npm registry). Writes one <lang>.json per language and the package's LICENSE.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "data" / "ldnoobw"
SKIP = {"package.json", "bower.json", "package-lock.json", "tlh.json", "fr-CA-u-sd-caqc.json"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default="1.2.0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(["npm", "pack", f"naughty-words@{args.version}"], cwd=scratch, check=True,
                       capture_output=True)
        [tarball] = Path(scratch).glob("naughty-words-*.tgz")
        with tarfile.open(tarball) as archive:
            for member in archive.getmembers():
                name = Path(member.name).name
                if member.name.count("/") != 1 or name in SKIP:
                    continue
                if name.endswith(".json"):
                    words = json.load(archive.extractfile(member))
                    (OUT / name).write_text(json.dumps(words, ensure_ascii=False, indent=2) + "\n")
                elif name == "LICENSE":
                    (OUT / name).write_bytes(archive.extractfile(member).read())
    print(f"wrote {len(list(OUT.glob('*.json')))} lists to {OUT}")


if __name__ == "__main__":
    main()
