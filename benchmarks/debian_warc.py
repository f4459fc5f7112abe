"""The benchmark WARC of real documentation pages in many languages, built deterministically from four
Debian 12 documentation packages (fetched with `apt-get download`, unpacked with `dpkg-deb -x`, never
installed), as ../shared/benchmarks/datatrove/README.md describes it, so figures can be compared with
the ones there.

Every regular `*.html`/`*.htm` file (no symlinks) becomes one WARC/1.0 `response` record: an HTTP/1.1
200 header block with `Content-Type: text/html; charset=utf-8`, `WARC-Identified-Payload-Type:
text/html`, a record id that is the uuid5 of its URL and a fixed date; the records are ordered by the
sha1 of their URL (so the four sources mix), one gzip member each (warcio `WARCWriter(gzip=True)`),
after one `warcinfo` record. The same package versions give the same bytes.

    .venv/bin/python benchmarks/debian_warc.py                 # benchmarks/.cache/debian-warc/
    .venv/bin/python benchmarks/debian_warc.py --copy-to /work/cache/debian-docs.warc.gz

Writes `full/debian-docs.warc.gz`, the same records cut in two at the record boundary nearest the middle
(`halves/part-0.warc.gz`, `halves/part-1.warc.gz`: the work of two datatrove tasks, which shard by
file) and `build.json` (versions, counts, sha256; compared with the README's).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmarks" / ".cache" / "debian-warc"
WARC_NAME = "debian-docs.warc.gz"
# (package, version, folder of its HTML inside the package, URL of a file's path relative to that folder)
PACKAGES = (
    ("python3.11-doc", "3.11.2-6+deb12u9", "usr/share/doc/python3.11/html",
     lambda rel: f"https://docs.python.org/3.11/{rel}"),
    ("postgresql-doc-15", "15.20-0+deb12u1", "usr/share/doc/postgresql-doc-15/html",
     lambda rel: f"https://www.postgresql.org/docs/15/{rel}"),
    ("debian-handbook", "11.20220922", "usr/share/doc/debian-handbook/html",
     lambda rel: "https://debian-handbook.info/browse/{}/stable/{}".format(*rel.split("/", 1))),
    ("installation-guide-amd64", "20230508+deb12u1", "usr/share/doc/installation-guide-amd64",
     lambda rel: "https://www.debian.org/releases/bookworm/amd64/{1}.{0}.html".format(
         rel.split("/", 1)[0], rel.split("/", 1)[1].rsplit(".", 1)[0])),
)
# What the datatrove README measured (the same packages and layout).
REFERENCE = {"responses": 6597, "sha256": "c442bd160ebb6db9d8d879a43969b5b8d46b76a9c25750e37a11ea5251c501b3",
             "pages": {"python3.11-doc": 530, "postgresql-doc-15": 1169, "debian-handbook": 3302,
                       "installation-guide-amd64": 1596}}
DATE = "2026-11-01T00:00:00Z"
NAMESPACE = uuid.NAMESPACE_URL


def fetch(package: str, version: str, debs: Path) -> Path:
    """The unpacked package (apt-get download of exactly `version`, then dpkg-deb -x)."""
    tree = debs / f"{package}_{version}"
    if (tree / ".unpacked").exists():
        return tree
    debs.mkdir(parents=True, exist_ok=True)
    pattern = f"{package}_{version.replace(':', '%3a')}_*.deb"
    if not list(debs.glob(pattern)):
        done = subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=debs, capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise SystemExit(f"apt-get download {package}={version} failed: {done.stderr.strip().splitlines()[-1:]}"
                             " (Debian may have replaced that version: set it in PACKAGES and record it)")
    [deb] = debs.glob(pattern)
    shutil.rmtree(tree, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    (tree / ".unpacked").touch()
    return tree


def pages(debs: Path) -> tuple[list[tuple[str, Path]], dict[str, dict]]:
    """(url, file) of every page, ordered by the sha1 of the URL; per package its version, pages and bytes."""
    found, per_package = [], {}
    for package, version, folder, url_of in PACKAGES:
        root = fetch(package, version, debs) / folder
        files = sorted(path for path in root.rglob("*") if path.suffix in (".html", ".htm")
                       and path.is_file() and not path.is_symlink())
        found += [(url_of(path.relative_to(root).as_posix()), path) for path in files]
        per_package[package] = {"version": version, "pages": len(files),
                                "html_bytes": sum(path.stat().st_size for path in files)}
    urls = [url for url, _ in found]
    if len(set(urls)) != len(urls):
        raise SystemExit("two pages map to the same URL")
    found.sort(key=lambda item: hashlib.sha1(item[0].encode()).hexdigest())
    return found, per_package


def record_id(url: str) -> str:
    return f"<urn:uuid:{uuid.uuid5(NAMESPACE, url)}>"


def write_warc(path: Path, entries: list[tuple[str, Path]], per_package: dict) -> list[int]:
    """The WARC of `entries` (a warcinfo record first); returns the byte offset where each response starts."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    offsets = []
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        writer = WARCWriter(handle, gzip=True, warc_version="WARC/1.0")
        info = writer.create_warcinfo_record(path.name, {
            "software": "pretrain-pipeline benchmarks/debian_warc.py",
            "format": "WARC File Format 1.0",
            "description": "Debian 12 documentation: " + ", ".join(f"{name} {p['version']}"
                                                                  for name, p in per_package.items())})
        info.rec_headers.replace_header("WARC-Record-ID", record_id(f"warcinfo:{path.name}"))
        info.rec_headers.replace_header("WARC-Date", DATE)
        writer.write_record(info)
        for url, file in entries:
            offsets.append(handle.tell())
            body = file.read_bytes()
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                               ("Content-Length", str(len(body)))], protocol="HTTP/1.1")
            record = writer.create_warc_record(url, "response", payload=io.BytesIO(body), length=len(body),
                                               http_headers=http, warc_headers_dict={
                                                   "WARC-Record-ID": record_id(url), "WARC-Date": DATE,
                                                   "WARC-Identified-Payload-Type": "text/html"})
            writer.write_record(record)
    os.replace(tmp, path)
    return offsets


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def build(cache: Path = CACHE) -> dict:
    """Build (or reuse) the WARC and its two halves under `cache`; returns build.json's content."""
    done = cache / "build.json"
    if done.exists():
        info = json.loads(done.read_text())
        if (cache / "full" / WARC_NAME).exists() and sha256(cache / "full" / WARC_NAME) == info["sha256"]:
            return info
    entries, per_package = pages(cache / "debs")
    warc = cache / "full" / WARC_NAME
    warc.parent.mkdir(parents=True, exist_ok=True)
    offsets = write_warc(warc, entries, per_package)
    middle = min(offsets, key=lambda offset: abs(offset - warc.stat().st_size / 2))
    halves = cache / "halves"
    halves.mkdir(parents=True, exist_ok=True)
    cut = offsets.index(middle)
    with open(warc, "rb") as source:  # gzip members are independent: cutting at a record boundary is valid
        (halves / "part-0.warc.gz").write_bytes(source.read(middle))
        (halves / "part-1.warc.gz").write_bytes(source.read())
    digest = sha256(warc)
    info = {"packages": per_package, "responses": len(entries), "bytes": warc.stat().st_size, "sha256": digest,
            "html_bytes": sum(p["html_bytes"] for p in per_package.values()),
            "halves": {"part-0.warc.gz": {"responses": cut, "bytes": middle},
                       "part-1.warc.gz": {"responses": len(entries) - cut, "bytes": warc.stat().st_size - middle}},
            "reference": REFERENCE, "same_bytes_as_reference": digest == REFERENCE["sha256"],
            "same_pages_as_reference": all(per_package[name]["pages"] == count
                                           for name, count in REFERENCE["pages"].items())}
    done.write_text(json.dumps(info, indent=2))
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--copy-to", type=Path, help="also copy the finished WARC here")
    args = parser.parse_args(argv)
    info = build(args.cache)
    if args.copy_to:
        args.copy_to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.cache / "full" / WARC_NAME, args.copy_to)
    print(f"{args.cache / 'full' / WARC_NAME}: {info['responses']:,} responses, {info['bytes'] / 1e6:.1f} MB, "
          f"sha256 {info['sha256'][:12]}… ({'the same bytes as' if info['same_bytes_as_reference'] else 'differs from'}"
          f" the datatrove README's {REFERENCE['sha256'][:12]}…; pages per package "
          f"{'as' if info['same_pages_as_reference'] else 'NOT as'} there)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
