#!/usr/bin/env python3
"""Build the small, real, multilingual sample corpus in ``data/sample/``.

The sample is cut from three Debian documentation packages (no web crawling
involved, only the Debian package archive):

* ``installation-guide-amd64`` and ``installation-guide-i386``: the Debian
  installation manual as DocBook HTML in 19 languages.  The two packages hold
  the *same* manual built for two architectures, so about half of their pages
  are byte-identical and most of the rest differ only in a few words
  ("64-bit PC" / "32-bit PC", ...): natural exact and near duplicates.
* ``debian-handbook``: "The Debian Administrator's Handbook" in 26 locale
  folders.  Several of those folders (da-DK, el-GR, hr-HR, ko-KR, ro-RO, ...)
  are in fact mostly *untranslated*: the pages under a non-English locale
  folder contain English text - useful ground truth for language ID.

Output (under ``--out``, default ``data/sample``)::

    web/sample-0000{0,1,2}.warc.gz   request+response pairs, gzip per record
    jsonl/sample-text-00000.jsonl.zst  {"id","text","url","lang_hint"} lines
    html/<lang>/*.html               raw pages, original bytes
    licenses/*.copyright             the packages' copyright files, verbatim
    manifest.json                    machine-readable ground truth
    SAMPLE.md                        human-readable description + licences

The packages are fetched with ``apt-get download`` (pinned versions) and
unpacked with ``dpkg-deb -x`` into a cache directory outside the repository;
nothing is installed.  Everything is deterministic: two runs produce
byte-identical files (fixed seed, fixed WARC dates and uuid5 record ids,
gzip members with mtime 0, single-shot zstd at a fixed level).

Usage::

    python scripts/build_sample_corpus.py --out data/sample
    python scripts/build_sample_corpus.py --out /tmp/s --cache-dir /tmp/c --apt-update

Requires Python >= 3.11, ``warcio`` and ``zstandard``; ``apt-get`` and
``dpkg-deb`` (Debian/Ubuntu) unless the .deb files are already in the cache
directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import random
import re
import shutil
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from email.utils import format_datetime
from html.parser import HTMLParser
from pathlib import Path

import zstandard
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

# --------------------------------------------------------------------------
# Constants (changing any of these changes the sample)
# --------------------------------------------------------------------------

SEED = 20240301
# Pinned package versions (Debian 12 "bookworm"); --allow-other-versions lifts the pin.
PACKAGES: dict[str, str] = {
    "installation-guide-amd64": "20230508+deb12u1",
    "installation-guide-i386": "20230508+deb12u1",
    "debian-handbook": "11.20220922",
}
IG_PACKAGES = ("installation-guide-amd64", "installation-guide-i386")
HB_PACKAGE = "debian-handbook"

WARC_BASE_DATE = dt.datetime(2024, 3, 1, 0, 0, 0, tzinfo=dt.UTC)
WARC_FILES = 3
UUID_NS = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/pretrain-pipeline/sample")
USER_AGENT = "pretrain-pipeline-sample/1.0 (+https://www.debian.org/doc/)"
ZSTD_LEVEL = 19

MIN_TEXT_BYTES = 1500        # skip pages with less extracted text (UTF-8 bytes)
MAX_HTML_BYTES = 60_000      # skip very large pages to keep the sample small
NEAR_DUP_MIN_JACCARD = 0.80  # char-5-gram Jaccard for an amd64/i386 pair to count as "near"
MAX_CODE_SHARE = 0.35       # non-English pages: at most this share of the text in <pre> blocks
TRANSLATED_MAX_EN = 0.10     # non-English page counts as translated if <10% of its prose is English
MISLABELLED_MIN_EN = 0.90    # ... and as "English in a non-English folder" if >=90% is

# Handbook locales with many (da-DK, el-GR, hr-HR, ko-KR, ro-RO: nearly all)
# untranslated pages; "English in a non-English folder" pages come from these.
HB_UNTRANSLATED_LOCALES = ("da-DK", "el-GR", "hr-HR", "ko-KR", "ro-RO", "zh-TW",
                           "cs-CZ", "pl-PL", "nl-NL", "sv-SE", "tr-TR", "vi-VN")

# --- how many pages go where -------------------------------------------------
# WARCs
WARC_IG_NEAR_PAIRS_PER_LANG = 3      # amd64+i386 copies, differing bytes, both in the WARCs
WARC_IG_EXACT_PAIR_LANGS = 8         # languages that also get one byte-identical pair
WARC_IG_SINGLES_PER_LANG = 8         # further installation-guide pages per language
WARC_HB_TRANSLATED = {               # handbook locale -> pages (fully translated ones only)
    "ar-MA": 3, "fa-IR": 3, "nb-NO": 4, "de-DE": 3, "es-ES": 3, "pt-BR": 3,
    "ca-ES": 3, "id-ID": 3, "it-IT": 2, "fr-FR": 2,
}
WARC_HB_EN = 16                      # en-US handbook pages
WARC_HB_MISLABELLED = 16             # English pages from HB_UNTRANSLATED_LOCALES
# JSONL
JSONL_IG_PER_LANG = 8
JSONL_IG_NEAR_PAIRS = 8              # near-duplicate pairs inside the jsonl file
JSONL_HB_TRANSLATED = {"de-DE": 5, "es-ES": 5, "pt-BR": 5, "nb-NO": 5, "ca-ES": 4,
                       "id-ID": 4, "it-IT": 3, "ru-RU": 3, "fr-FR": 2, "sv-SE": 2,
                       "ar-MA": 2, "fa-IR": 2}
JSONL_HB_EN = 10
JSONL_HB_MISLABELLED = 6
# raw HTML
HTML_IG = {"en": 5, "de": 5, "fr": 5, "ja": 5, "ru": 5, "es": 4, "zh_CN": 4, "el": 3,
           "ko": 3, "it": 3}
HTML_HB_TRANSLATED = {"de-DE": 2, "es-ES": 2, "ru-RU": 2, "fr-FR": 2, "nb-NO": 2}
HTML_HB_EN = 2
HTML_HB_MISLABELLED = 3

# Non-HTML responses (package, path below the package's doc root, content type).
NON_HTML = [
    ("installation-guide-amd64", "en/install.css", "text/css"),
    ("debian-handbook", "html/en-US/images/inst-complete-txt.png", "image/png"),
    ("debian-handbook", "html/en-US/Common_Content/images/warning.svg", "image/svg+xml"),
]
NO_CHARSET_LANG = "ru"  # one installation-guide page in this language is served without charset

IG_PAGE_RE = re.compile(r"^(ch\d\ds\d\d|ap[a-z]s\d\d)\.html$")  # sections, not chapter TOCs
HB_PAGE_RE = re.compile(r"^sect\.[a-z0-9.-]+\.html$")
META_CHARSET_RE = re.compile(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lang_of_locale(locale: str) -> str:
    """Folder locale ('zh_CN', 'pt-BR', 'en') -> ISO 639-1 code ('zh', 'pt', 'en')."""
    return re.split(r"[-_]", locale)[0].lower()


def warc_date(seconds: int) -> dt.datetime:
    return WARC_BASE_DATE + dt.timedelta(seconds=seconds)


def iso(d: dt.datetime) -> str:
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


def record_id(kind: str, url: str) -> str:
    return f"<urn:uuid:{uuid.uuid5(UUID_NS, kind + ' ' + url)}>"


# --------------------------------------------------------------------------
# Text extraction (stdlib html.parser)
# --------------------------------------------------------------------------

BLOCK_TAGS = {
    "p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "ul", "ol", "dl", "dt",
    "dd", "pre", "table", "tr", "blockquote", "hr", "section", "article",
    "header", "footer", "caption", "figure", "figcaption", "body", "td", "th",
}
SKIP_TAGS = {"head", "script", "style", "noscript", "title"}
VOID_TAGS = {"br", "img", "meta", "link", "hr", "input", "area", "base", "col", "wbr"}
NAV_CLASSES = {"navheader", "navfooter", "docnav"}
NAV_IDS = {"banner", "title"}
PARA = "\x00"


class TextExtractor(HTMLParser):
    """Plain text with paragraph breaks; drops <head>, scripts and the manuals'
    navigation bars. ``prose`` is the same text without <pre> blocks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.prose: list[str] = []
        self.skip_tag: str | None = None
        self.skip_depth = 0
        self.pre = 0

    def _brk(self) -> None:
        self.parts.append(PARA)
        self.prose.append(PARA)

    def handle_starttag(self, tag, attrs):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth += 1
            return
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        if tag in SKIP_TAGS or classes & NAV_CLASSES or a.get("id") in NAV_IDS:
            if tag not in VOID_TAGS:
                self.skip_tag, self.skip_depth = tag, 1
            return
        if tag == "br":
            self.parts.append("\n")
            self.prose.append("\n")
        elif tag in BLOCK_TAGS:
            self._brk()
            if tag == "pre":
                self.pre += 1

    def handle_startendtag(self, tag, attrs):
        if tag in VOID_TAGS:
            self.handle_starttag(tag, attrs)
        else:  # <div/> etc.: start and end
            self.handle_starttag(tag, attrs)
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag in BLOCK_TAGS:
            if tag == "pre" and self.pre:
                self.pre -= 1
            self._brk()

    def handle_data(self, data):
        if self.skip_tag is not None:
            return
        if self.pre:
            self.parts.append(data)
        else:
            d = re.sub(r"\s+", " ", data)
            self.parts.append(d)
            self.prose.append(d)

    @staticmethod
    def _join(chunks: list[str]) -> str:
        paras = []
        for block in "".join(chunks).split(PARA):
            lines = [ln.rstrip() for ln in block.split("\n")]
            while lines and not lines[0].strip():
                lines.pop(0)
            while lines and not lines[-1].strip():
                lines.pop()
            if not lines:
                continue
            # outside <pre> blocks the lines are single-spaced runs: strip them
            text = "\n".join(lines)
            if "\n" not in text:
                text = text.strip()
            if text:
                paras.append(text)
        return "\n\n".join(paras)

    def text(self) -> str:
        return self._join(self.parts)

    def prose_text(self) -> str:
        return self._join(self.prose)


def extract(html_text: str) -> tuple[str, str]:
    p = TextExtractor()
    p.feed(html_text)
    p.close()
    return p.text(), p.prose_text()


def char_ngrams(text: str, n: int = 5) -> set[str]:
    t = " ".join(text.split())
    return {t[i:i + n] for i in range(max(0, len(t) - n + 1))}


def word_shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    w = text.split()
    return {tuple(w[i:i + n]) for i in range(max(0, len(w) - n + 1))}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def en_overlap(prose: str, en_prose: str) -> float:
    """Share (by characters) of the page's prose paragraphs that are English,
    i.e. occur in the English version of the same page: verbatim, or with at
    least half of their word 3-grams found there (untranslated paragraphs are
    copies of the English source, sometimes with a translated cross-reference
    inside)."""
    en_paras = set(en_prose.split("\n\n"))
    en_sh = word_shingles(en_prose, 3)
    total = english = 0
    for para in prose.split("\n\n"):
        if len(para) < 20:
            continue
        total += len(para)
        if para in en_paras:
            english += len(para)
            continue
        sh = word_shingles(para, 3)
        if len(sh) >= 3 and len(sh & en_sh) / len(sh) >= 0.5:
            english += len(para)
    return english / total if total else 0.0


# --------------------------------------------------------------------------
# Fetch + unpack the packages
# --------------------------------------------------------------------------

def run(cmd: list[str], cwd: Path | None = None) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"command failed ({r.returncode}): {' '.join(cmd)}\n"
                           f"{r.stdout}\n{r.stderr}")
    return r.stdout


def fetch_packages(cache: Path, apt_update: bool, allow_other: bool) -> dict[str, dict]:
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if apt_update:
        log("apt-get update ...")
        run(["apt-get", "update"])
    info: dict[str, dict] = {}
    for pkg, version in PACKAGES.items():
        existing = sorted(debs.glob(f"{pkg}_*.deb"))
        pinned = [d for d in existing if d.name.startswith(f"{pkg}_{version.replace(':', '%3a')}_")]
        deb = pinned[0] if pinned else (existing[-1] if existing and allow_other else None)
        if deb is None:
            spec = pkg if allow_other else f"{pkg}={version}"
            log(f"apt-get download {spec} ...")
            try:
                run(["apt-get", "download", spec], cwd=debs)
            except RuntimeError as e:
                raise SystemExit(
                    f"{e}\nCould not download {spec}. Run `apt-get update` first (or pass "
                    "--apt-update), pass --allow-other-versions if the pinned version is gone "
                    f"from the archive, or put the .deb into {debs} by hand.") from e
            existing = sorted(debs.glob(f"{pkg}_*.deb"))
            deb = existing[-1]
        real_version = run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
        if real_version != version and not allow_other:
            raise SystemExit(f"{deb} has version {real_version}, expected {version}")
        dest = cache / "extract" / f"{pkg}_{real_version}"
        marker = dest / ".extracted"
        if not marker.exists():
            log(f"dpkg-deb -x {deb.name} ...")
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir(parents=True)
            run(["dpkg-deb", "-x", str(deb), str(dest)])
            marker.write_text("ok\n")
        info[pkg] = {
            "name": pkg,
            "version": real_version,
            "deb": deb.name,
            "deb_sha256": sha256_file(deb),
            "root": dest / "usr" / "share" / "doc" / pkg,
        }
    return info


# --------------------------------------------------------------------------
# Page inventory
# --------------------------------------------------------------------------

@dataclass
class Page:
    package: str
    version: str
    locale: str          # folder name: 'de', 'zh_CN', 'de-DE', 'en-US'
    name: str            # file name: 'ch03s02.html', 'sect.apt-get.html'
    path: Path
    rel: str             # path inside the package, e.g. usr/share/doc/.../de/ch03s02.html
    raw: bytes
    text: str
    prose: str
    meta_charset: str | None
    mtime: int
    arch: str | None = None   # installation-guide only
    en_overlap: float = 0.0
    eligible: bool = False
    true_lang: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def lang(self) -> str:
        return lang_of_locale(self.locale)

    @property
    def is_ig(self) -> bool:
        return self.package in IG_PACKAGES

    @property
    def url(self) -> str:
        if self.is_ig:
            return f"https://www.debian.org/releases/stable/{self.arch}/{self.locale}/{self.name}"
        return f"https://debian-handbook.info/browse/{self.locale}/stable/{self.name}"

    @property
    def code_share(self) -> float:
        """Share of the text (characters, whitespace-free) inside <pre> blocks."""
        t = len("".join(self.text.split()))
        return 1 - len("".join(self.prose.split())) / t if t else 0.0

    @property
    def text_bytes(self) -> int:
        return len(self.text.encode("utf-8"))

    @property
    def key(self) -> tuple:
        """Pages sharing a key carry (near) identical text; a key is used once
        in the whole sample except for the deliberate duplicate pairs."""
        if self.is_ig:
            return ("ig", self.locale, self.name)
        return ("hb", self.true_lang, self.name)


def load_page(pkg: dict, locale: str, path: Path, arch: str | None) -> Page:
    raw = path.read_bytes()
    m = META_CHARSET_RE.search(raw[:4096])
    charset = m.group(1).decode("ascii") if m else None
    html_text = raw.decode(charset or "utf-8", errors="replace")
    text, prose = extract(html_text)
    return Page(
        package=pkg["name"], version=pkg["version"], locale=locale, name=path.name,
        path=path, rel=str(Path("usr/share/doc") / pkg["name"] / path.relative_to(pkg["root"])),
        raw=raw, text=text, prose=prose, meta_charset=charset,
        mtime=int(path.stat().st_mtime), arch=arch,
    )


def inventory(pkgs: dict[str, dict]) -> dict[tuple, Page]:
    pages: dict[tuple, Page] = {}
    for pkg_name in IG_PACKAGES:
        pkg = pkgs[pkg_name]
        arch = pkg_name.rsplit("-", 1)[1]
        for d in sorted(p for p in pkg["root"].iterdir() if p.is_dir()):
            for f in sorted(d.iterdir()):
                if IG_PAGE_RE.match(f.name):
                    pages[(pkg_name, d.name, f.name)] = load_page(pkg, d.name, f, arch)
    pkg = pkgs[HB_PACKAGE]
    for d in sorted(p for p in (pkg["root"] / "html").iterdir() if p.is_dir()):
        for f in sorted(d.iterdir()):
            if HB_PAGE_RE.match(f.name):
                pages[(HB_PACKAGE, d.name, f.name)] = load_page(pkg, d.name, f, None)

    # English prose per (package, page) for the translation check
    en_prose: dict[tuple, str] = {}
    for (pkg_name, loc, name), p in pages.items():
        if loc in ("en", "en-US"):
            en_prose[(pkg_name, name)] = p.prose
    for (pkg_name, loc, name), p in pages.items():
        size_ok = p.text_bytes >= MIN_TEXT_BYTES and len(p.raw) <= MAX_HTML_BYTES
        if loc in ("en", "en-US"):
            p.en_overlap, p.true_lang, p.eligible = 1.0, "en", size_ok
            continue
        p.en_overlap = en_overlap(p.prose, en_prose.get((pkg_name, name), ""))
        if p.en_overlap < TRANSLATED_MAX_EN:
            # <pre> blocks (commands, config files, English comments) are not
            # translated: skip pages that are mostly code
            p.true_lang, p.eligible = p.lang, size_ok and p.code_share <= MAX_CODE_SHARE
        elif p.en_overlap >= MISLABELLED_MIN_EN and pkg_name == HB_PACKAGE:
            p.true_lang, p.eligible = "en", size_ok
        else:  # partly translated: ambiguous ground truth, not used
            p.true_lang, p.eligible = "mixed", False
    return pages


# --------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------

@dataclass
class Item:
    page: Page
    dest: str                        # 'warc', 'jsonl', 'html'
    near_duplicate_of: str | None = None
    duplicate_kind: str | None = None  # 'near' | 'exact'
    jaccard_char5: float | None = None
    jaccard_word5: float | None = None
    no_charset: bool = False


class Selector:
    def __init__(self, pages: dict[tuple, Page], rng: random.Random):
        self.pages = pages
        self.rng = rng
        self.used: set[tuple] = set()
        self.items: list[Item] = []

    def take(self, page: Page, dest: str, **kw) -> Item:
        self.used.add(page.key)
        it = Item(page, dest, **kw)
        self.items.append(it)
        return it

    def candidates(self, package: str, locale: str, *, true_lang: str | None = None) -> list[Page]:
        out = [p for (pk, loc, _), p in self.pages.items()
               if pk == package and loc == locale and p.eligible and p.key not in self.used
               and (true_lang is None or p.true_lang == true_lang)]
        return sorted(out, key=lambda p: p.name)

    def sample(self, cands: list, k: int, what: str, quiet: bool = False) -> list:
        if len(cands) < k:  # some translations are partial: take what there is
            if not quiet:
                log(f"  note: {what}: wanted {k}, only {len(cands)} candidate(s)")
            k = len(cands)
        return self.rng.sample(cands, k)

    # ---- installation-guide pairs --------------------------------------
    def ig_pairs(self, locale: str, dest: str, n_near: int, n_exact: int,
                 quiet: bool = False) -> int:
        near, exact = [], []
        for a in self.candidates("installation-guide-amd64", locale):
            b = self.pages.get(("installation-guide-i386", locale, a.name))
            if b is None or not b.eligible or b.true_lang != a.true_lang:
                continue
            if a.raw == b.raw:
                exact.append((a, b, 1.0, 1.0))
            else:
                jc = jaccard(char_ngrams(a.text), char_ngrams(b.text))
                jw = jaccard(word_shingles(a.text), word_shingles(b.text))
                if NEAR_DUP_MIN_JACCARD <= jc < 1.0:
                    near.append((a, b, jc, jw))
        chosen = self.sample(near, n_near, f"near pairs {locale}", quiet) if n_near else []
        if n_exact:
            picked = self.sample(exact, n_exact, f"exact pairs {locale}")
            chosen += [(a, b, None, None) for a, b, _, _ in picked]
        for a, b, jc, jw in chosen:
            kind = "near" if jc is not None else "exact"
            # randomise which copy is the "original" one
            first, second = (a, b) if self.rng.random() < 0.7 else (b, a)
            self.take(first, dest)
            self.take(second, dest, near_duplicate_of=first.url, duplicate_kind=kind,
                      jaccard_char5=round(jc, 4) if jc is not None else 1.0,
                      jaccard_word5=round(jw, 4) if jw is not None else 1.0)
        return len(chosen)

    def ig_singles(self, locale: str, dest: str, k: int) -> list[Item]:
        # pick page names first, then the architecture (25% i386)
        names = self.sample([p.name for p in self.candidates("installation-guide-amd64", locale)
                             if ("installation-guide-i386", locale, p.name) in self.pages],
                            k, f"ig singles {locale}")
        out = []
        for name in names:
            pkg = IG_PACKAGES[1] if self.rng.random() < 0.25 else IG_PACKAGES[0]
            p = self.pages[(pkg, locale, name)]
            if not p.eligible:
                p = self.pages[("installation-guide-amd64", locale, name)]
            out.append(self.take(p, dest))
        return out

    def hb(self, locale: str, dest: str, k: int, true_lang: str) -> list[Item]:
        c = self.candidates(HB_PACKAGE, locale, true_lang=true_lang)
        return [self.take(p, dest) for p in self.sample(c, k, f"handbook {locale}/{true_lang}")]

    def hb_mislabelled(self, dest: str, k: int) -> list[Item]:
        out = []
        locs = self.rng.sample(HB_UNTRANSLATED_LOCALES, len(HB_UNTRANSLATED_LOCALES))
        for i in range(k):
            loc = locs[i % len(locs)]
            c = self.candidates(HB_PACKAGE, loc, true_lang="en")
            out += [self.take(p, dest) for p in self.sample(c, 1, f"mislabelled {loc}")]
        return out


def select(pages: dict[tuple, Page], seed: int) -> Selector:
    rng = random.Random(seed)
    s = Selector(pages, rng)
    ig_locales = sorted({loc for (pk, loc, _) in pages if pk == "installation-guide-amd64"})

    # --- WARC pages
    exact_langs = set(rng.sample(ig_locales, WARC_IG_EXACT_PAIR_LANGS))
    for loc in ig_locales:
        s.ig_pairs(loc, "warc", WARC_IG_NEAR_PAIRS_PER_LANG, 1 if loc in exact_langs else 0)
    for loc in ig_locales:
        singles = s.ig_singles(loc, "warc", WARC_IG_SINGLES_PER_LANG)
        if loc == NO_CHARSET_LANG:
            singles[0].no_charset = True
    for loc, k in sorted(WARC_HB_TRANSLATED.items()):
        s.hb(loc, "warc", k, lang_of_locale(loc))
    s.hb("en-US", "warc", WARC_HB_EN, "en")
    s.hb_mislabelled("warc", WARC_HB_MISLABELLED)

    # --- JSONL pages
    got = 0
    for loc in rng.sample(ig_locales, len(ig_locales)):
        if got < JSONL_IG_NEAR_PAIRS:
            got += s.ig_pairs(loc, "jsonl", 1, 0, quiet=True)
    for loc in ig_locales:
        s.ig_singles(loc, "jsonl", JSONL_IG_PER_LANG)
    for loc, k in sorted(JSONL_HB_TRANSLATED.items()):
        s.hb(loc, "jsonl", k, lang_of_locale(loc))
    s.hb("en-US", "jsonl", JSONL_HB_EN, "en")
    s.hb_mislabelled("jsonl", JSONL_HB_MISLABELLED)

    # --- raw HTML files
    for loc, k in sorted(HTML_IG.items()):
        s.ig_singles(loc, "html", k)
    for loc, k in sorted(HTML_HB_TRANSLATED.items()):
        s.hb(loc, "html", k, lang_of_locale(loc))
    s.hb("en-US", "html", HTML_HB_EN, "en")
    s.hb_mislabelled("html", HTML_HB_MISLABELLED)
    return s


# --------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------

def page_meta(it: Item) -> dict:
    p = it.page
    return {
        "url": p.url,
        "lang": p.lang,
        "locale": p.locale,
        "true_lang": p.true_lang,
        "mislabelled": p.true_lang != p.lang,
        "package": p.package,
        "package_version": p.version,
        "source_path": p.rel,
        "near_duplicate_of": it.near_duplicate_of,
        "duplicate_kind": it.duplicate_kind,
        "jaccard_char5": it.jaccard_char5,
        "jaccard_word5": it.jaccard_word5,
        "en_overlap": round(p.en_overlap, 4),
        "code_share": round(p.code_share, 4),
        "text_bytes": p.text_bytes,
    }


PAGE_META_KEYS = ("url", "lang", "locale", "true_lang", "mislabelled", "package",
                  "package_version", "source_path", "near_duplicate_of", "duplicate_kind",
                  "jaccard_char5", "jaccard_word5", "en_overlap", "code_share", "text_bytes")


def http_date(ts: dt.datetime | int) -> str:
    if isinstance(ts, int):
        ts = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    return format_datetime(ts, usegmt=True)


def write_warcs(out_dir: Path, items: list[Item], extras: list[dict], rng: random.Random,
                pkgs: dict[str, dict]) -> list[dict]:
    """items: pages for the WARCs; extras: non-HTML responses (all go to file 0)."""
    entries: list[dict] = [{"kind": "page", "item": it} for it in items if not it.no_charset]
    rng.shuffle(entries)
    per_file = [entries[i::WARC_FILES] for i in range(WARC_FILES)]
    # the oddities all go into the first file, at random positions
    odd = [{"kind": "page", "item": it} for it in items if it.no_charset]
    odd += [{"kind": "extra", **ex} for ex in extras]
    for e in odd:
        per_file[0].insert(rng.randrange(len(per_file[0]) + 1), e)

    files_meta = []
    for fi, recs in enumerate(per_file):
        name = f"sample-{fi:05d}.warc.gz"
        path = out_dir / name
        records_meta = []
        with open(path, "wb") as fh:
            writer = WARCWriter(fh, gzip=True)
            info_id = record_id("warcinfo", name)
            info_body = (
                "software: pretrain-pipeline scripts/build_sample_corpus.py\r\n"
                "format: WARC File Format 1.0\r\n"
                "description: Sample crawl built offline from Debian documentation packages "
                + ", ".join(f"{k} {v['version']}" for k, v in sorted(pkgs.items()))
                + "; URLs are plausible, not fetched.\r\n"
                "isPartOf: pretrain-pipeline-sample\r\n"
                f"http-header-user-agent: {USER_AGENT}\r\n"
            ).encode("utf-8")
            info = writer.create_warc_record(
                "", "warcinfo", payload=io.BytesIO(info_body), length=len(info_body),
                warc_headers_dict={
                    "WARC-Record-ID": info_id,
                    "WARC-Date": iso(warc_date(fi * 3600)),
                    "WARC-Filename": name,
                    "Content-Type": "application/warc-fields",
                })
            writer.write_record(info)
            for ri, e in enumerate(recs):
                when = warc_date(fi * 3600 + 1 + ri * 7)
                if e["kind"] == "page":
                    it: Item = e["item"]
                    p = it.page
                    url, body, mtime = p.url, p.raw, p.mtime
                    ctype = "text/html" if it.no_charset else f"text/html; charset={p.meta_charset}"
                    meta = page_meta(it)
                    meta.update({"kind": "html", "content_type": ctype,
                                 "http_charset": None if it.no_charset else p.meta_charset,
                                 "meta_charset": p.meta_charset})
                else:
                    url, body, mtime, ctype = e["url"], e["body"], e["mtime"], e["content_type"]
                    meta = {k: None for k in PAGE_META_KEYS}
                    for k in ("url", "package", "package_version", "source_path"):
                        meta[k] = e[k]
                    meta.update({"mislabelled": False, "kind": "non-html", "content_type": ctype,
                                 "http_charset": None, "meta_charset": None})
                resp_id, req_id = record_id("response", url), record_id("request", url)
                host_path = re.match(r"https://([^/]+)(/.*)", url)
                host, upath = host_path.group(1), host_path.group(2)
                req_http = StatusAndHeaders(f"GET {upath} HTTP/1.1", [
                    ("Host", host),
                    ("User-Agent", USER_AGENT),
                    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                    ("Accept-Encoding", "identity"),
                    ("Connection", "close"),
                ], is_http_request=True)
                resp_http = StatusAndHeaders("200 OK", [
                    ("Date", http_date(when)),
                    ("Server", "Apache"),
                    ("Last-Modified", http_date(mtime)),
                    ("Content-Type", ctype),
                    ("Content-Length", str(len(body))),
                    ("Connection", "close"),
                ], protocol="HTTP/1.1")
                req = writer.create_warc_record(
                    url, "request", http_headers=req_http,
                    warc_headers_dict={"WARC-Record-ID": req_id, "WARC-Date": iso(when),
                                       "WARC-Warcinfo-ID": info_id,
                                       "WARC-Concurrent-To": resp_id})
                resp = writer.create_warc_record(
                    url, "response", payload=io.BytesIO(body), length=len(body),
                    http_headers=resp_http,
                    warc_headers_dict={"WARC-Record-ID": resp_id, "WARC-Date": iso(when),
                                       "WARC-Warcinfo-ID": info_id})
                writer.write_record(req)
                offset = fh.tell()
                writer.write_record(resp)
                meta.update({"warc_file": f"web/{name}", "response_offset": offset,
                             "response_length": fh.tell() - offset,
                             "response_record_id": resp_id, "request_record_id": req_id,
                             "warc_date": iso(when), "payload_bytes": len(body)})
                records_meta.append(meta)
        files_meta.append({"path": f"web/{name}", "warcinfo_record_id": info_id,
                           "records": records_meta})
    return files_meta


def write_jsonl(out_dir: Path, items: list[Item], rng: random.Random) -> dict:
    items = list(items)
    rng.shuffle(items)
    lines, meta = [], []
    for it in items:
        p = it.page
        arch = f"{p.arch}/" if p.arch else ""
        short = "ig" if p.is_ig else "dah"
        rid = f"{short}/{arch}{p.locale}/{p.name.removesuffix('.html')}"
        lines.append(json.dumps({"id": rid, "text": p.text, "url": p.url, "lang_hint": p.lang},
                                ensure_ascii=False))
        m = page_meta(it)
        m["id"] = rid
        m["lang_hint"] = p.lang
        meta.append(m)
    data = ("\n".join(lines) + "\n").encode("utf-8")
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True,
                                    write_content_size=True, threads=0)
    name = "sample-text-00000.jsonl.zst"
    (out_dir / name).write_bytes(cctx.compress(data))
    return {"path": f"jsonl/{name}", "lines": meta, "uncompressed_bytes": len(data)}


def write_html(out_dir: Path, items: list[Item]) -> list[dict]:
    meta = []
    for it in sorted(items, key=lambda i: (i.page.lang, i.page.package, i.page.locale, i.page.name)
                     ):
        p = it.page
        stem = f"{p.package}_{p.locale}_{p.name}"
        rel = Path(p.lang) / stem
        (out_dir / p.lang).mkdir(parents=True, exist_ok=True)
        (out_dir / rel).write_bytes(p.raw)
        m = page_meta(it)
        m.update({"path": f"html/{rel.as_posix()}", "charset": p.meta_charset,
                  "bytes": len(p.raw), "sha256": hashlib.sha256(p.raw).hexdigest()})
        meta.append(m)
    return meta


# --------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------

def verify_warcs(out: Path, warcs: list[dict]) -> dict:
    counts: dict = {}
    for wf in warcs:
        c = Counter()
        urls = []
        with open(out / wf["path"], "rb") as fh:
            for rec in ArchiveIterator(fh, check_digests=True):
                c[rec.rec_type] += 1
                if rec.rec_type == "response":
                    body = rec.content_stream().read()
                    assert int(rec.http_headers.get_header("Content-Length")) == len(body)
                    urls.append(rec.rec_headers.get_header("WARC-Target-URI"))
        expected = [r["url"] for r in wf["records"]]
        if urls != expected or c["request"] != c["response"] or c["warcinfo"] != 1:
            raise SystemExit(f"WARC verification failed for {wf['path']}: {dict(c)}")
        counts[wf["path"]] = dict(sorted(c.items()))
    return counts


# --------------------------------------------------------------------------
# SAMPLE.md
# --------------------------------------------------------------------------

def human(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def copyright_excerpt(text: str, max_lines: int) -> str:
    lines = text.rstrip("\n").split("\n")
    cut = lines[:max_lines]
    if len(lines) > max_lines:
        cut.append(f"[... {len(lines) - max_lines} more lines, verbatim in licenses/ ...]")
    return "\n".join(cut)


def write_sample_md(out: Path, manifest: dict, copyrights: dict[str, str]) -> None:
    s = manifest["summary"]
    pk = manifest["packages"]
    L = []
    a = L.append
    a("# Sample corpus (`data/sample/`)")
    a("")
    a("A small, **real**, multilingual corpus for the demo and the test suite of the "
      "pipeline (ingest, HTML cleaning, language ID, MinHash near-dedup, quality filters). "
      "Every page is real documentation text taken from Debian documentation packages; "
      "nothing is generated. URLs are *plausible* URLs derived from the package paths; "
      "the pages were not crawled from them.")
    a("")
    a("**Generated file - do not edit by hand.** Rebuild (byte-identical) with:")
    a("")
    a("```sh")
    a(manifest["build"]["command"])
    a("```")
    a("")
    a("The script downloads the pinned `.deb` files with `apt-get download` (run "
      "`apt-get update` once first, or add `--apt-update`), unpacks them with `dpkg-deb -x` into "
      f"the cache directory (default `/tmp/pretrain-sample-cache`, `--cache-dir`), installs "
      "nothing, and needs `warcio` and `zstandard`. Seed: "
      f"`{manifest['build']['seed']}`.")
    a("")
    a("## Source packages and licences")
    a("")
    a("| package | version | .deb sha256 | licence |")
    a("|---|---|---|---|")
    for p in pk:
        a(f"| `{p['name']}` | `{p['version']}` | `{p['deb_sha256'][:16]}…` | {p['license']} |")
    a("")
    a("The copyright files are copied verbatim to `licenses/`. Their terms:")
    a("")
    a("**installation-guide-amd64 / installation-guide-i386** "
      "(`/usr/share/doc/installation-guide-*/copyright`, identical in both packages) - "
      "note: GPL **version 2** as written, no \"or later\"; the manual's legal notice says "
      "\"under the terms of the GNU General Public License\" and Appendix F reproduces the GPL-2:")
    a("")
    a("```text")
    a(copyrights["installation-guide-amd64"].rstrip("\n"))
    a("```")
    a("")
    a("**debian-handbook** (`/usr/share/doc/debian-handbook/copyright`, DEP-5): "
      "`GPL-2.0+ or CC-BY-SA-3.0`:")
    a("")
    a("```text")
    a(copyright_excerpt(copyrights["debian-handbook"], 27))
    a("```")
    a("")
    a("The handbook is redistributed here under the GPL-2.0+ option (CC-BY-SA-3.0 "
      "<https://creativecommons.org/licenses/by-sa/3.0/> applies equally). Both manuals are "
      "redistributed unmodified (WARC/HTML: original bytes; JSONL: tags stripped).")
    a("")
    a("## Files")
    a("")
    a("| file | size | content |")
    a("|---|---|---|")
    for f in manifest["files"]:
        a(f"| `{f['path']}` | {human(f['bytes'])} | {f['description']} |")
    a(f"| **total** | **{human(s['total_bytes'])}** | (plus this file) |")
    a("")
    a("### `web/` - WARC files")
    a("")
    a("WARC/1.0, gzip-compressed per record (one gzip member per record, as written by "
      "warcio's `WARCWriter(gzip=True)`; mtime 0). Each file: one `warcinfo` record, then per "
      "URL a `request` record and a `response` record (`HTTP/1.1 200 OK`, `Date`, "
      "`Last-Modified` (the file's mtime in the package), `Content-Type`, `Content-Length`). "
      "The charset in `Content-Type` is the one the page declares in its `<meta>`; "
      "**every HTML page in these packages is UTF-8**.")
    a("")
    a("| WARC | warcinfo | request | response | HTML pages | non-HTML |")
    a("|---|---|---|---|---|---|")
    for w in manifest["warc_files"]:
        c = w["record_counts"]
        nh = sum(1 for r in w["records"] if r["kind"] == "non-html")
        a(f"| `{w['path']}` | {c.get('warcinfo', 0)} | {c.get('request', 0)} | "
          f"{c.get('response', 0)} | {len(w['records']) - nh} | {nh} |")
    a("")
    a("HTML pages per folder language (`lang`) in the WARCs; `true_lang` differs for the "
      "mislabelled handbook pages:")
    a("")
    a(lang_table(s["warc_pages_by_lang"], s["warc_pages_by_true_lang"]))
    a("")
    a(f"- **Duplicate pairs** (installation-guide amd64 vs i386 copy of the same page, same "
      f"language): {s['warc_near_duplicate_pairs']} near-duplicate pairs (different bytes, "
      f"char-5-gram Jaccard of extracted text {s['warc_near_jaccard_min']:.2f}-"
      f"{s['warc_near_jaccard_max']:.2f}) and {s['warc_exact_duplicate_pairs']} byte-identical "
      "pairs under different URLs. In the manifest the second copy has `near_duplicate_of` = "
      "URL of the first, `duplicate_kind` = `near`|`exact`. About half of the "
      "installation-guide pages are byte-identical between the two architectures; the others "
      "differ in words like \"64-bit PC\"/\"32-bit PC\", \"amd64\"/\"i386\", or whole "
      "paragraphs. No other page in the sample shares text with another (apart from code "
      "blocks and boilerplate).")
    a(f"- **English text in non-English folders** ({len(s['warc_mislabelled'])} pages; "
      "`true_lang` = `en`, `mislabelled` = true): handbook locale folders "
      f"{', '.join(HB_UNTRANSLATED_LOCALES)} are largely untranslated. These pages have "
      f"≥ {MISLABELLED_MIN_EN:.0%} of their prose (by characters) copied from the en-US page "
      "(`en_overlap`); only titles/navigation may be translated:")
    for u in s["warc_mislabelled"]:
        a(f"  - {u}")
    a("- **Non-HTML responses** (in `web/sample-00000.warc.gz`):")
    for r in s["warc_non_html"]:
        a(f"  - {r['url']} - `{r['content_type']}`, {r['payload_bytes']} bytes "
          f"(`{r['source_path']}` from `{r['package']}`)")
    a(f"- **No charset in the HTTP header** (also in `web/sample-00000.warc.gz`): "
      f"{s['warc_no_charset']} is served with "
      "`Content-Type: text/html` only; the page itself declares UTF-8 in a `<meta>` tag "
      "(Russian text: decoding it as Latin-1/cp1252 gives mojibake).")
    a("")
    a("### `jsonl/` - extracted text")
    a("")
    a(f"`{manifest['jsonl_files'][0]['path']}`: {s['jsonl_lines']} lines "
      "`{\"id\", \"text\", \"url\", \"lang_hint\"}` (zstd level "
      f"{ZSTD_LEVEL}, one frame, {human(manifest['jsonl_files'][0]['uncompressed_bytes'])} "
      "uncompressed). Text extracted with `html.parser` (head, scripts and the manuals' "
      "navigation bars dropped; paragraphs separated by a blank line; `<pre>` blocks keep "
      "their line breaks). Pages not used in the WARCs or in `html/`. `lang_hint` is the "
      "folder language - wrong for the mislabelled handbook pages "
      f"({len(s['jsonl_mislabelled'])} lines, see manifest `true_lang`). It also holds "
      f"{s['jsonl_near_duplicate_pairs']} amd64/i386 near-duplicate pairs.")
    a("")
    a(lang_table(s["jsonl_by_lang"], s["jsonl_by_true_lang"]))
    a("")
    a("### `html/` - raw pages")
    a("")
    a(f"{s['html_files']} pages copied byte-for-byte from the packages into "
      "`html/<folder language>/<package>_<locale>_<page>.html` (all UTF-8 with a `<meta>` "
      "charset; installation-guide pages are HTML 4 without a doctype, handbook pages are "
      f"XHTML with an XML declaration). Mislabelled: {', '.join(s['html_mislabelled']) or 'none'}.")
    a("")
    a(lang_table(s["html_by_lang"], s["html_by_true_lang"]))
    a("")
    a("## `manifest.json`")
    a("")
    a("Machine-readable ground truth: packages (version, sha256 of the .deb, licence); per "
      "WARC file one entry per request/response pair, in file order (`kind` = "
      "`html`|`non-html`, `url`, `lang`, `locale`, `true_lang`, `mislabelled`, "
      "`package`, `source_path`, `content_type`, `http_charset`, `meta_charset`, "
      "`near_duplicate_of`, `duplicate_kind`, `jaccard_char5`, `jaccard_word5`, "
      "`en_overlap`, `text_bytes`, record ids, `response_offset`/`response_length` of the "
      "response's gzip member); per JSONL line (`id` + the same fields); per HTML file "
      "(`path`, `sha256` + the same fields); sizes and sha256 of every file; a summary.")
    a("")
    a("Selection rules: installation-guide section pages (`chNNsNN.html`, `apXsNN.html`, not "
      "chapter/TOC pages) and handbook section pages (`sect.*.html`); extracted text ≥ "
      f"{MIN_TEXT_BYTES} bytes; HTML ≤ {MAX_HTML_BYTES} bytes. `en_overlap` = share (by "
      "characters) of a page's prose paragraphs (outside `<pre>`) that are untranslated "
      "English, i.e. found verbatim in the English version of the same page or with ≥ 50% "
      "of their word 3-grams there. A non-English page is used with `true_lang` = its folder "
      f"language only if `en_overlap` < {TRANSLATED_MAX_EN:.0%} (so it may still hold a stray "
      "English paragraph, as real pages do), with `true_lang` = `en` if ≥ "
      f"{MISLABELLED_MIN_EN:.0%} (handbook only), and never if in between: many handbook "
      "translations (de-DE, fr-FR, ja-JP, ...) are paragraph-by-paragraph mixtures of the "
      "translation and untranslated English. Each page text is used once in the whole sample "
      "except the deliberate duplicate pairs (English handbook pages count as the same text "
      "whatever their folder).")
    a("")
    (out / "SAMPLE.md").write_text("\n".join(L), encoding="utf-8")


def lang_table(by_lang: dict, by_true: dict) -> str:
    langs = sorted(set(by_lang) | set(by_true))
    head = "| " + " | ".join(["", *langs, "total"]) + " |"
    sep = "|" + "---|" * (len(langs) + 2)
    r1 = ("| folder `lang` | " + " | ".join(str(by_lang.get(x, 0)) for x in langs)
          + f" | {sum(by_lang.values())} |")
    r2 = ("| `true_lang` | " + " | ".join(str(by_true.get(x, 0)) for x in langs)
          + f" | {sum(by_true.values())} |")
    return f"{head}\n{sep}\n{r1}\n{r2}"


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def build(out: Path, cache: Path, apt_update: bool, allow_other: bool, seed: int) -> None:
    pkgs = fetch_packages(cache, apt_update, allow_other)
    log("reading pages ...")
    pages = inventory(pkgs)
    log(f"  {len(pages)} section pages, {sum(p.eligible for p in pages.values())} eligible")
    sel = select(pages, seed)
    rng = random.Random(seed + 1)

    # clean only what this script owns
    for sub in ("web", "jsonl", "html", "licenses"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    for f in ("manifest.json", "SAMPLE.md"):
        (out / f).unlink(missing_ok=True)
    for sub in ("web", "jsonl", "html", "licenses"):
        (out / sub).mkdir(parents=True)

    extras = []
    for pkg_name, rel, ctype in NON_HTML:
        pkg = pkgs[pkg_name]
        src = pkg["root"] / rel
        if pkg_name in IG_PACKAGES:
            arch = pkg_name.rsplit("-", 1)[1]
            url = f"https://www.debian.org/releases/stable/{arch}/{rel}"
        else:
            r = rel.removeprefix("html/")
            loc, rest = r.split("/", 1)
            url = f"https://debian-handbook.info/browse/{loc}/stable/{rest}"
        extras.append({"url": url, "body": src.read_bytes(), "mtime": int(src.stat().st_mtime),
                       "content_type": ctype, "package": pkg_name,
                       "package_version": pkg["version"],
                       "source_path": f"usr/share/doc/{pkg_name}/{rel}"})

    by_dest = defaultdict(list)
    for it in sel.items:
        by_dest[it.dest].append(it)
    log("writing WARCs ...")
    warcs = write_warcs(out / "web", by_dest["warc"], extras, rng, pkgs)
    log("writing JSONL ...")
    jsonl = write_jsonl(out / "jsonl", by_dest["jsonl"], rng)
    log("writing HTML ...")
    html_files = write_html(out / "html", by_dest["html"])

    copyrights = {}
    for name in ("installation-guide-amd64", "installation-guide-i386", HB_PACKAGE):
        copyrights[name] = (pkgs[name]["root"] / "copyright").read_text(encoding="utf-8")
    (out / "licenses" / "installation-guide.copyright").write_text(
        copyrights["installation-guide-amd64"], encoding="utf-8")
    (out / "licenses" / "debian-handbook.copyright").write_text(
        copyrights[HB_PACKAGE], encoding="utf-8")
    ig_same = copyrights["installation-guide-amd64"] == copyrights["installation-guide-i386"]

    log("verifying WARCs ...")
    counts = verify_warcs(out, warcs)
    for w in warcs:
        w["record_counts"] = counts[w["path"]]

    # ---- summary
    warc_pages = [r for w in warcs for r in w["records"] if r["kind"] == "html"]
    near = [r for r in warc_pages if r["duplicate_kind"] == "near"]
    summary = {
        "warc_records": sum(sum(c.values()) for c in counts.values()),
        "warc_html_pages": len(warc_pages),
        "warc_pages_by_lang": dict(sorted(Counter(r["lang"] for r in warc_pages).items())),
        "warc_pages_by_true_lang": dict(sorted(Counter(r["true_lang"] for r in warc_pages).items())
                                        ),
        "warc_pages_by_package": dict(sorted(Counter(r["package"] for r in warc_pages).items())),
        "warc_near_duplicate_pairs": len(near),
        "warc_exact_duplicate_pairs": sum(r["duplicate_kind"] == "exact" for r in warc_pages),
        "warc_near_jaccard_min": min(r["jaccard_char5"] for r in near),
        "warc_near_jaccard_max": max(r["jaccard_char5"] for r in near),
        "warc_mislabelled": sorted(r["url"] for r in warc_pages if r["mislabelled"]),
        "warc_non_html": [{k: r[k] for k in ("url", "content_type", "payload_bytes", "package",
                                            "source_path", "warc_file")}
                          for w in warcs for r in w["records"] if r["kind"] == "non-html"],
        "warc_no_charset": next(r["url"] for r in warc_pages if r["http_charset"] is None),
        "jsonl_lines": len(jsonl["lines"]),
        "jsonl_by_lang": dict(sorted(Counter(r["lang"] for r in jsonl["lines"]).items())),
        "jsonl_by_true_lang": dict(sorted(Counter(r["true_lang"] for r in jsonl["lines"]).items())),
        "jsonl_near_duplicate_pairs": sum(r["near_duplicate_of"] is not None
                                          for r in jsonl["lines"]),
        "jsonl_mislabelled": sorted(r["id"] for r in jsonl["lines"] if r["mislabelled"]),
        "html_files": len(html_files),
        "html_by_lang": dict(sorted(Counter(r["lang"] for r in html_files).items())),
        "html_by_true_lang": dict(sorted(Counter(r["true_lang"] for r in html_files).items())),
        "html_mislabelled": sorted(r["path"] for r in html_files if r["mislabelled"]),
    }

    problems = []
    if not 250 <= summary["warc_html_pages"] <= 450:
        problems.append(f"{summary['warc_html_pages']} WARC pages (want 250-450)")
    if len(summary["warc_pages_by_lang"]) < 8:
        problems.append("fewer than 8 languages in the WARCs")
    if summary["warc_near_duplicate_pairs"] < 40:
        problems.append(f"{summary['warc_near_duplicate_pairs']} near-duplicate pairs (want >= 40)")
    if len(summary["warc_mislabelled"]) < 10:
        problems.append(f"{len(summary['warc_mislabelled'])} mislabelled pages (want >= 10)")
    if problems:
        raise SystemExit("sample does not meet its targets: " + "; ".join(problems))

    files = []
    for w in warcs:
        files.append({"path": w["path"], "description":
                      f"{w['record_counts'].get('response', 0)} responses"})
    files.append({"path": jsonl["path"], "description": f"{len(jsonl['lines'])} JSONL lines"})
    html_bytes = sum(h["bytes"] for h in html_files)
    for f in files:
        p = out / f["path"]
        f["bytes"] = p.stat().st_size
        f["sha256"] = sha256_file(p)
    files.append({"path": "html/", "bytes": html_bytes,
                  "description": f"{len(html_files)} raw HTML files in "
                                 f"{len(summary['html_by_lang'])} language folders"})
    for lic in sorted((out / "licenses").iterdir()):
        files.append({"path": f"licenses/{lic.name}", "bytes": lic.stat().st_size,
                      "sha256": sha256_file(lic), "description": "copyright file, verbatim"})

    ig_licence = "GPL-2 (\"licensed under the terms of the GNU GPL, version 2\")"
    licences = {
        "installation-guide-amd64": ig_licence,
        "installation-guide-i386": ig_licence,
        HB_PACKAGE: "GPL-2.0+ or CC-BY-SA-3.0",
    }
    manifest = {
        "description": "Real multilingual sample corpus built from Debian documentation packages",
        "build": {
            "command": "python scripts/build_sample_corpus.py --out data/sample",
            "script": "scripts/build_sample_corpus.py",
            "seed": seed,
            "warc_base_date": iso(WARC_BASE_DATE),
            "zstd_level": ZSTD_LEVEL,
        },
        "packages": [
            {"name": k, "version": v["version"], "deb": v["deb"], "deb_sha256": v["deb_sha256"],
             "license": licences[k], "copyright_file": f"usr/share/doc/{k}/copyright",
             "copyright_copy": ("licenses/installation-guide.copyright" if k in IG_PACKAGES
                                else "licenses/debian-handbook.copyright")}
            for k, v in sorted(pkgs.items())
        ],
        "installation_guide_copyright_identical": ig_same,
        "summary": summary,
        "files": files,
        "warc_files": warcs,
        "jsonl_files": [jsonl],
        "html_files": html_files,
    }
    # every file but manifest.json and SAMPLE.md
    manifest["summary"]["data_bytes"] = sum(f["bytes"] for f in files)
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n",
                                       encoding="utf-8")
    manifest["files"].append({"path": "manifest.json",
                              "bytes": (out / "manifest.json").stat().st_size,
                              "description": "ground truth (this listing)"})
    manifest["summary"]["total_bytes"] = (manifest["summary"]["data_bytes"]
                                          + manifest["files"][-1]["bytes"])
    write_sample_md(out, manifest, copyrights)

    log("done:")
    for f in manifest["files"]:
        log(f"  {f['path']:45s} {human(f['bytes']):>10s}  {f['description']}")
    log(f"  WARC records: {counts}")
    log(f"  WARC pages by lang: {summary['warc_pages_by_lang']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("data/sample"),
                    help="output directory (default: data/sample)")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/pretrain-sample-cache"),
                    help="where .deb files are downloaded and unpacked")
    ap.add_argument("--apt-update", action="store_true", help="run `apt-get update` first")
    ap.add_argument("--allow-other-versions", action="store_true",
                    help="use whatever package version apt offers (output will differ)")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    build(args.out, args.cache_dir, args.apt_update, args.allow_other_versions, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
