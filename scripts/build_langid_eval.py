#!/usr/bin/env python3
"""Build the language-ID evaluation set ``benchmarks/data/langid_paragraphs.jsonl.zst``.

Real prose paragraphs whose language is known from where they come from: the Debian installation
manual (package ``installation-guide-amd64``, DocBook HTML in 19 languages). Translations of that
manual are partial: a page in ``de/`` can hold paragraphs the translators have not reached yet,
which are then the English original. So a paragraph is labelled with its folder's language only if
it does **not** also occur, exactly or near-exactly, in the English version of the same page:

* exact: its whitespace-normalised text equals a paragraph (or any text block) of the English page;
* near-exact: at least ``NEAR_EN_MIN_SHARE`` of its word 3-grams occur in the English page, or at
  least ``NEAR_EN_MIN_CHAR_SHARE`` of its character 8-grams do (untranslated paragraphs are copies
  of an older English text, sometimes with a translated cross-reference inside);
* and, as a second, independent net for English left over from an *older* English text, no
  paragraph outside ``en/`` may consist of English function words for more than
  ``MAX_EN_STOPWORD_SHARE`` of its words.

Paragraphs are the ``<p>`` elements of each page, outside navigation bars, tables, ``<pre>``
blocks and title pages. A paragraph is kept only if it is prose: at least ``MIN_CHARS`` characters,
mostly letters, and not mostly identifiers, commands, file names or URLs (see ``prose_problem``).
Exact duplicates within a language are dropped. Then at most ``CAP_PER_LANG`` paragraphs per
language are drawn with a seeded RNG, so no language dominates.

Output (all deterministic: two runs give byte-identical files)::

    benchmarks/data/langid_paragraphs.jsonl.zst   {"id","lang","text","package","path"} per line
    benchmarks/data/LANGID_EVAL.md                how it was built, licences, counts per language
    tests/data/langid_paragraphs_small.jsonl      a subset for unit tests (plain JSONL)
    tests/data/README.md                          licence note for the subset

``lang`` is the ISO 639-1 code that fastText's lid.176 uses (``zh_CN`` folder -> ``zh``).

Usage (from the repository root)::

    python scripts/build_langid_eval.py
    python scripts/build_langid_eval.py --cache-dir /tmp/c --apt-update

The pinned .deb is fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into the
cache directory (default ``/tmp/pretrain-sample-cache``, shared with build_sample_corpus.py);
nothing is installed. Needs Python >= 3.11 and ``zstandard``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import re
import shutil
import subprocess
import sys
import unicodedata
from collections import Counter, defaultdict
from html.parser import HTMLParser
from pathlib import Path

import zstandard

# --------------------------------------------------------------------------
# Constants (changing any of these changes the output)
# --------------------------------------------------------------------------

SEED = 20261123
PACKAGE = "installation-guide-amd64"
VERSION = "20230508+deb12u1"          # Debian 12 "bookworm"; --allow-other-versions lifts the pin
CAP_PER_LANG = 150
MIN_CHARS = 80
MIN_LETTER_SHARE = 0.70               # letters among non-space characters
MAX_CODE_SHARE = 0.25                 # characters inside <code>/<kbd>/<tt>/... or URL-like links
MAX_IDENT_TOKEN_SHARE = 0.25          # whitespace tokens that look like paths, identifiers, URLs
NEAR_EN_MIN_SHARE = 0.30              # word 3-grams of the paragraph found in the English page
NEAR_EN_MIN_CHAR_SHARE = 0.50         # character 8-grams found in the English page (CJK-safe)
MAX_EN_STOPWORD_SHARE = 0.20          # outside en/: share of words that are English function words
SMALL_LANGS = ("de", "el", "en", "es", "fr", "ja", "nl", "pt", "ru", "sv", "vi", "zh")
SMALL_PER_LANG = 15
ZSTD_LEVEL = 19

REPO = Path(__file__).resolve().parents[1]
OUT_DATA = REPO / "benchmarks" / "data" / "langid_paragraphs.jsonl.zst"
OUT_MD = REPO / "benchmarks" / "data" / "LANGID_EVAL.md"
OUT_SMALL = REPO / "tests" / "data" / "langid_paragraphs_small.jsonl"
OUT_SMALL_MD = REPO / "tests" / "data" / "README.md"

# Folder -> fastText lid.176 label.
FOLDER_LANG = {"zh_CN": "zh", "pt_BR": "pt"}
LANG_NAMES = {
    "ca": "Catalan", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "es": "Spanish", "fr": "French", "id": "Indonesian", "it": "Italian", "ja": "Japanese",
    "ko": "Korean", "nl": "Dutch", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian",
    "sv": "Swedish", "vi": "Vietnamese", "zh": "Chinese (simplified)",
}
# Function words that are frequent in English prose and rare as words in the other 18 languages
# (no "a", "to", "on", "is", "die", "den", ... which are words elsewhere).
EN_STOPWORDS = frozenset(
    "the and of you your that this with for are be can will from which by if it not or have has "
    "should would there their these those when what into been was were its also then than".split())

SKIP_TAGS = {"head", "script", "style", "pre", "table", "title"}
SKIP_CLASSES = {"navheader", "navfooter", "docnav", "titlepage", "toc", "screen", "programlisting",
                "literallayout", "synopsis"}
BLOCK_TAGS = {"div", "ul", "ol", "dl", "dt", "dd", "li", "pre", "table", "blockquote", "h1", "h2", "h3",
              "h4", "h5", "h6", "hr", "p", "br"}
CODE_TAGS = {"code", "kbd", "tt", "samp", "var"}
CODE_CLASSES = {"command", "filename", "userinput", "computeroutput", "literal", "option",
                "replaceable", "package", "systemitem", "envar", "varname", "prompt", "guimenu",
                "guimenuitem", "guilabel", "keycap", "keysym", "email", "ulink"}
VOID_TAGS = {"br", "img", "meta", "link", "hr", "input", "area", "base", "col", "wbr"}

URL_RE = re.compile(r"(?:[a-z][a-z0-9+.-]*://|www\.)\S+", re.IGNORECASE)
IDENT_RE = re.compile(r"[/\\_=<>{}|@#$~^*]|\w\.\w|\w::?\w|--?\w|\(\)|\d+[.:]\d+")
WORD_RE = re.compile(r"\w+", re.UNICODE)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


# --------------------------------------------------------------------------
# Paragraphs of one DocBook page (stdlib html.parser)
# --------------------------------------------------------------------------

class Paragraphs(HTMLParser):
    """Collects ``<p>`` paragraphs outside skipped regions, with the number of characters inside
    code-like inline elements; ``blocks`` holds every text block of the page (for the English
    comparison, which must see text wherever it is)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.skip: list[str] = []       # stack of open tags while inside a skipped region
        self.in_p = False
        self.buf: list[str] = []
        self.code_chars = 0
        self.code_depth: list[str] = []  # open code-like inline tags inside the paragraph
        self.paragraphs: list[tuple[str, int]] = []
        self.block_buf: list[str] = []
        self.blocks: list[str] = []

    # -- helpers
    def _flush_p(self) -> None:
        if self.in_p:
            raw = "".join(self.buf)
            text = norm(raw)
            if text:
                self.paragraphs.append((text, self.code_chars))
        self.in_p, self.buf, self.code_chars, self.code_depth = False, [], 0, []

    def _flush_block(self) -> None:
        text = norm("".join(self.block_buf))
        if text:
            self.blocks.append(text)
        self.block_buf = []

    # -- parser callbacks
    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        if self.skip:
            if tag not in VOID_TAGS:
                self.skip.append(tag)
            return
        if tag in BLOCK_TAGS:
            self._flush_block()
        if tag in SKIP_TAGS or classes & SKIP_CLASSES:
            self._flush_p()
            if tag not in VOID_TAGS:
                self.skip.append(tag)
            return
        if tag == "p":
            self._flush_p()
            self.in_p = True
            return
        if self.in_p and tag in BLOCK_TAGS and tag != "br":
            # a list or other block inside <p>: the paragraph's prose ends here
            self._flush_p()
            return
        if self.in_p and tag not in VOID_TAGS and (
                tag in CODE_TAGS or classes & CODE_CLASSES
                or (tag == "a" and URL_RE.match(attrs.get("href") or "") is not None and "ulink" in classes)):
            self.code_depth.append(tag)
        elif self.in_p and tag not in VOID_TAGS and self.code_depth:
            self.code_depth.append(tag)
        if tag == "br" and self.in_p:
            self.buf.append(" ")

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID_TAGS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if self.skip:
            # pop up to the matching tag (tolerates unclosed inner tags)
            if tag in self.skip:
                while self.skip:
                    if self.skip.pop() == tag:
                        break
            if not self.skip:
                self.block_buf = []
            return
        if tag in BLOCK_TAGS:
            self._flush_block()
        if tag == "p":
            self._flush_p()
            return
        if self.code_depth and tag in self.code_depth:
            while self.code_depth:
                if self.code_depth.pop() == tag:
                    break

    def handle_data(self, data):
        if self.skip:
            return
        self.block_buf.append(data)
        if self.in_p:
            self.buf.append(data)
            if self.code_depth:
                self.code_chars += len(norm(data))


def page_paragraphs(html: str) -> tuple[list[tuple[str, int]], list[str]]:
    parser = Paragraphs()
    parser.feed(html)
    parser.close()
    parser._flush_p()
    parser._flush_block()
    return parser.paragraphs, parser.blocks


# --------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------

def prose_problem(text: str, code_chars: int) -> str | None:
    """None if the paragraph is prose, else the reason it is not."""
    if len(text) < MIN_CHARS:
        return "short"
    nonspace = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in nonspace)
    if letters / len(nonspace) < MIN_LETTER_SHARE:
        return "few_letters"
    if code_chars / len(text) > MAX_CODE_SHARE:
        return "code_or_identifiers"
    tokens = text.split()
    ident = sum(1 for t in tokens if URL_RE.search(t) or IDENT_RE.search(t.strip(".,;:!?()[]\"'«»“”")))
    # CJK text has few whitespace tokens: judge it by code characters only
    if len(tokens) >= 8 and ident / len(tokens) > MAX_IDENT_TOKEN_SHARE:
        return "code_or_identifiers"
    return None


def word3(text: str) -> set[tuple[str, ...]]:
    w = [x.lower() for x in WORD_RE.findall(text)]
    return {tuple(w[i:i + 3]) for i in range(len(w) - 2)}


def char8(text: str) -> set[str]:
    t = text.lower()
    return {t[i:i + 8] for i in range(len(t) - 7)}


class EnglishPage:
    def __init__(self, blocks: list[str], paragraphs: list[str]):
        self.exact = set(blocks) | set(paragraphs)
        joined = "\n".join(sorted(self.exact))
        self.w3: set = set()
        self.c8: set = set()
        for block in self.exact:
            self.w3 |= word3(block)
            self.c8 |= char8(block)
        self.sha = hashlib.sha256(joined.encode()).hexdigest()

    def english_reason(self, text: str) -> str | None:
        if text in self.exact:
            return "in_english_page_exact"
        w = word3(text)
        if len(w) >= 3 and len(w & self.w3) / len(w) >= NEAR_EN_MIN_SHARE:
            return "in_english_page_near"
        c = char8(text)
        if c and len(c & self.c8) / len(c) >= NEAR_EN_MIN_CHAR_SHARE:
            return "in_english_page_near"
        return None


def en_stopword_share(text: str) -> float:
    words = [w.lower() for w in WORD_RE.findall(text)]
    return sum(w in EN_STOPWORDS for w in words) / len(words) if words else 0.0


# --------------------------------------------------------------------------
# Package
# --------------------------------------------------------------------------

def run(cmd: list[str], cwd: Path | None = None) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return r.stdout


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_package(cache: Path, apt_update: bool, allow_other: bool) -> dict:
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if apt_update:
        log("apt-get update ...")
        run(["apt-get", "update"])
    existing = sorted(debs.glob(f"{PACKAGE}_*.deb"))
    pinned = [d for d in existing if d.name.startswith(f"{PACKAGE}_{VERSION}_")]
    deb = pinned[0] if pinned else (existing[-1] if existing and allow_other else None)
    if deb is None:
        spec = PACKAGE if allow_other else f"{PACKAGE}={VERSION}"
        log(f"apt-get download {spec} ...")
        try:
            run(["apt-get", "download", spec], cwd=debs)
        except RuntimeError as e:
            raise SystemExit(f"{e}\nCould not download {spec}. Run `apt-get update` first (or pass --apt-update), "
                             f"pass --allow-other-versions, or put the .deb into {debs} by hand.") from e
        deb = sorted(debs.glob(f"{PACKAGE}_*.deb"))[-1]
    version = run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
    if version != VERSION and not allow_other:
        raise SystemExit(f"{deb} has version {version}, expected {VERSION}")
    dest = cache / "extract" / f"{PACKAGE}_{version}"
    if not (dest / ".extracted").exists():
        log(f"dpkg-deb -x {deb.name} ...")
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        run(["dpkg-deb", "-x", str(deb), str(dest)])
        (dest / ".extracted").write_text("ok\n")
    return {"name": PACKAGE, "version": version, "deb": deb.name, "deb_sha256": sha256_file(deb),
            "root": dest / "usr" / "share" / "doc" / PACKAGE}


# --------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------

def read_html(path: Path) -> str:
    raw = path.read_bytes()
    m = re.search(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_.:-]+)""", raw[:4096], re.IGNORECASE)
    return raw.decode(m.group(1).decode("ascii") if m else "utf-8", errors="replace")


def collect(pkg: dict) -> tuple[dict[str, list[dict]], dict[str, Counter], dict[str, int]]:
    root: Path = pkg["root"]
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    english: dict[str, EnglishPage] = {}
    for f in sorted((root / "en").glob("*.html")):
        paras, blocks = page_paragraphs(read_html(f))
        english[f.name] = EnglishPage(blocks, [t for t, _ in paras])
    candidates: dict[str, list[dict]] = {}
    dropped: dict[str, Counter] = {}
    pages_seen: dict[str, int] = {}
    for folder in folders:
        lang = FOLDER_LANG.get(folder, folder.split("_")[0].lower())
        seen: set[str] = set()
        kept: list[dict] = []
        why: Counter = Counter()
        files = sorted(f for f in (root / folder).glob("*.html"))
        pages_seen[lang] = len(files)
        for f in files:
            paras, _ = page_paragraphs(read_html(f))
            en_page = english.get(f.name)
            for index, (text, code_chars) in enumerate(paras):
                reason = prose_problem(text, code_chars)
                if reason is None and lang != "en":
                    if en_page is None:
                        reason = "no_english_page"
                    else:
                        reason = en_page.english_reason(text)
                    if reason is None and en_stopword_share(text) > MAX_EN_STOPWORD_SHARE:
                        reason = "english_function_words"
                if reason is None and text in seen:
                    reason = "duplicate"
                if reason is not None:
                    why[reason] += 1
                    continue
                seen.add(text)
                rel = f"usr/share/doc/{PACKAGE}/{folder}/{f.name}"
                kept.append({"id": f"{PACKAGE}/{folder}/{f.name}#p{index}", "lang": lang, "text": text,
                             "package": f"{PACKAGE}={pkg['version']}", "path": rel})
        why["kept_candidates"] = len(kept)
        candidates[lang] = kept
        dropped[lang] = why
    return candidates, dropped, pages_seen


def select(candidates: dict[str, list[dict]], seed: int, cap: int) -> list[dict]:
    rows: list[dict] = []
    for lang in sorted(candidates):
        rng = random.Random(f"{seed}:{lang}")   # per-language stream: one language's change moves no other
        pool = sorted(candidates[lang], key=lambda r: r["id"])
        chosen = rng.sample(pool, min(cap, len(pool)))
        rows.extend(sorted(chosen, key=lambda r: r["id"]))
    return rows


def jsonl_bytes(rows: list[dict]) -> bytes:
    out = io.StringIO()
    for r in rows:
        out.write(json.dumps({k: r[k] for k in ("id", "lang", "text", "package", "path")},
                             ensure_ascii=False, sort_keys=False) + "\n")
    return out.getvalue().encode("utf-8")


def small_subset(rows: list[dict], seed: int) -> list[dict]:
    out = []
    by_lang = defaultdict(list)
    for r in rows:
        by_lang[r["lang"]].append(r)
    for lang in SMALL_LANGS:
        pool = by_lang.get(lang, [])
        rng = random.Random(f"{seed}:small:{lang}")
        out.extend(sorted(rng.sample(pool, min(SMALL_PER_LANG, len(pool))), key=lambda r: r["id"]))
    return out


def write_md(pkg: dict, rows: list[dict], dropped: dict[str, Counter], pages: dict[str, int], copyright_text: str,
             data: bytes, compressed: bytes, small: list[dict], command: str) -> None:
    counts = Counter(r["lang"] for r in rows)
    chars = defaultdict(int)
    for r in rows:
        chars[r["lang"]] += len(r["text"])
    reasons = ["short", "few_letters", "code_or_identifiers", "in_english_page_exact", "in_english_page_near",
               "english_function_words", "no_english_page", "duplicate"]
    lines = []
    a = lines.append
    a("# Language-ID evaluation set (`langid_paragraphs.jsonl.zst`)")
    a("")
    a("Real prose paragraphs with a reliably known language, for measuring the language-ID stage "
      "(`benchmarks/bench_clean_langid.py`). Every paragraph is text of the Debian installation manual as "
      "shipped in a Debian package; nothing is generated or machine-translated by us.")
    a("")
    a("**Generated file - do not edit by hand.** Rebuild (byte-identical) from the repository root with:")
    a("")
    a("```sh")
    a(command)
    a("```")
    a("")
    a(f"The script fetches the pinned `.deb` with `apt-get download {PACKAGE}={pkg['version']}` (run `apt-get update` "
      "first, or add `--apt-update`), unpacks it with `dpkg-deb -x` into the cache directory "
      "(default `/tmp/pretrain-sample-cache`), installs nothing, and needs only the standard library and "
      f"`zstandard`. Seed: `{SEED}`.")
    a("")
    a("## Source")
    a("")
    a("| package | version | .deb | .deb sha256 |")
    a("|---|---|---|---|")
    a(f"| `{PACKAGE}` | `{pkg['version']}` | `{pkg['deb']}` | `{pkg['deb_sha256']}` |")
    a("")
    a("The manual as DocBook HTML, `usr/share/doc/installation-guide-amd64/<lang>/*.html`, in 19 languages. "
      "Each record's `path` is the page inside the package and its `id` is `package/folder/page#p<index>` "
      "(the index of the `<p>` element in the page).")
    a("")
    a("## How paragraphs are chosen")
    a("")
    a("1. **Paragraphs** are the `<p>` elements of every page, outside the navigation header and footer, "
      "title pages, tables of contents, tables, `<pre>`/screen/program listings, scripts and `<head>`. A list "
      "or other block inside a `<p>` ends the paragraph. Whitespace is collapsed to single spaces "
      "(Unicode NFC), so a paragraph is one line of text.")
    a(f"2. **Prose only**: at least {MIN_CHARS} characters; at least {MIN_LETTER_SHARE:.0%} of the non-space "
      f"characters are letters; at most {MAX_CODE_SHARE:.0%} of the characters inside code-like inline "
      "elements (`<code>`, `<kbd>`, `<tt>`, DocBook `command`, `filename`, `userinput`, `literal`, `option`, "
      "`package`, URL links, ...); and, for text with 8 or more whitespace-separated tokens, at most "
      f"{MAX_IDENT_TOKEN_SHARE:.0%} of the tokens look like paths, identifiers, options, version numbers or URLs.")
    a("3. **No untranslated English.** Translations are partial: a page under `de/` can still hold English "
      "paragraphs. A paragraph outside `en/` is dropped if it occurs in the English version of the same page "
      "(`en/<same file>`): exactly (equal to any text block of the English page), or near-exactly "
      f"(≥ {NEAR_EN_MIN_SHARE:.0%} of its lowercased word 3-grams, or ≥ {NEAR_EN_MIN_CHAR_SHARE:.0%} of its "
      "character 8-grams, occur in the English page). As a second, independent net for English left over from "
      "an older version of the English text, a paragraph outside `en/` is also dropped if more than "
      f"{MAX_EN_STOPWORD_SHARE:.0%} of its words are English function words "
      f"({', '.join(sorted(EN_STOPWORDS))}). Language ID itself is never used to choose paragraphs.")
    a("4. **No duplicates**: a text that already occurred in the same language is dropped.")
    a(f"5. **Cap**: at most {CAP_PER_LANG} paragraphs per language, drawn with `random.Random(\"{SEED}:<lang>\")` "
      "from the candidates sorted by id; the output is sorted by language, then id.")
    a("")
    a("`lang` is the ISO 639-1 code used by fastText's `lid.176` model (folder `zh_CN` → `zh`). "
      "The manual's Chinese is simplified Chinese; Portuguese is `pt` (the folder is `pt`).")
    a("")
    a("## Counts")
    a("")
    a(f"{len(rows)} paragraphs in {len(counts)} languages; `langid_paragraphs.jsonl.zst` is "
      f"{len(compressed):,} bytes ({len(data):,} bytes of JSONL, zstd level {ZSTD_LEVEL}), sha256 "
      f"`{hashlib.sha256(compressed).hexdigest()}`.")
    a("")
    a("Per language: pages read, `<p>` paragraphs dropped by reason, candidates left, paragraphs in the set, and "
      "their mean length in characters.")
    a("")
    head = ["lang", "language", "pages"] + [r.replace("_", " ") for r in reasons] + ["candidates", "**in set**",
                                                                                    "mean chars"]
    a("| " + " | ".join(head) + " |")
    a("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    total = Counter()
    for lang in sorted(dropped):
        d = dropped[lang]
        total.update(d)
        cells = [f"`{lang}`", LANG_NAMES.get(lang, lang), str(pages[lang])] + [str(d.get(r, 0)) for r in reasons]
        cells += [str(d["kept_candidates"]), f"**{counts[lang]}**", f"{chars[lang] / max(counts[lang], 1):.0f}"]
        a("| " + " | ".join(cells) + " |")
    cells = ["all", "", str(sum(pages.values()))] + [str(total.get(r, 0)) for r in reasons]
    cells += [str(total["kept_candidates"]), f"**{len(rows)}**", f"{sum(chars.values()) / max(len(rows), 1):.0f}"]
    a("| " + " | ".join(cells) + " |")
    a("")
    a(f"The unit-test subset `tests/data/langid_paragraphs_small.jsonl` ({len(small)} lines, plain JSONL) holds "
      f"{SMALL_PER_LANG} paragraphs of this set for each of {', '.join(SMALL_LANGS)}, drawn with "
      f"`random.Random(\"{SEED}:small:<lang>\")`.")
    a("")
    a("## Licence")
    a("")
    a(f"The paragraphs are excerpts of the Debian Installation Guide, redistributed under its licence. The package's "
      f"copyright file (`/usr/share/doc/{PACKAGE}/copyright`, verbatim; the same text is in "
      "`data/sample/licenses/installation-guide.copyright`):")
    a("")
    a("```text")
    a(copyright_text.rstrip("\n"))
    a("```")
    a("")
    a("So: GNU GPL version 2 (the full text is in `/usr/share/common-licenses/GPL-2` on Debian systems and in "
      "Appendix F of the manual itself). The paragraphs are unmodified apart from whitespace normalisation and "
      "the removal of markup.")
    a("")
    OUT_MD.write_text("\n".join(lines), encoding="utf-8")


def write_small_md(copyright_text: str, small: list[dict]) -> None:
    counts = Counter(r["lang"] for r in small)
    text = f"""# Test data

## `langid_paragraphs_small.jsonl`

{len(small)} real paragraphs with known language ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}),
one JSON object per line: `{{"id", "lang", "text", "package", "path"}}`. A subset of the language-ID
evaluation set `benchmarks/data/langid_paragraphs.jsonl.zst`; see `benchmarks/data/LANGID_EVAL.md` for
how paragraphs were chosen (untranslated English removed by comparison with the English page). Generated
by `scripts/build_langid_eval.py` - do not edit by hand.

Source: Debian package `{PACKAGE}` (the Debian Installation Guide), version `{VERSION}`. Licence: GNU GPL
version 2. The package's copyright file, verbatim:

```text
{copyright_text.rstrip()}
```
"""
    OUT_SMALL_MD.write_text(text, encoding="utf-8")


def build(cache: Path, apt_update: bool, allow_other: bool, seed: int, command: str) -> None:
    pkg = fetch_package(cache, apt_update, allow_other)
    log(f"reading {pkg['root']} ...")
    candidates, dropped, pages = collect(pkg)
    rows = select(candidates, seed, CAP_PER_LANG)
    data = jsonl_bytes(rows)
    compressed = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True,
                                          write_checksum=True).compress(data)
    OUT_DATA.parent.mkdir(parents=True, exist_ok=True)
    OUT_DATA.write_bytes(compressed)
    small = small_subset(rows, seed)
    OUT_SMALL.parent.mkdir(parents=True, exist_ok=True)
    OUT_SMALL.write_bytes(jsonl_bytes(small))
    copyright_text = (pkg["root"] / "copyright").read_text(encoding="utf-8")
    write_md(pkg, rows, dropped, pages, copyright_text, data, compressed, small, command)
    write_small_md(copyright_text, small)
    counts = Counter(r["lang"] for r in rows)
    log(f"{len(rows)} paragraphs in {len(counts)} languages -> {OUT_DATA.relative_to(REPO)} "
        f"({len(compressed):,} bytes); {len(small)} -> {OUT_SMALL.relative_to(REPO)}")
    log("  " + ", ".join(f"{k}:{v}" for k, v in sorted(counts.items())))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/pretrain-sample-cache"),
                    help="where the .deb is downloaded and unpacked (outside the repository)")
    ap.add_argument("--apt-update", action="store_true", help="run `apt-get update` first")
    ap.add_argument("--allow-other-versions", action="store_true",
                    help=f"accept another version of {PACKAGE} than the pinned {VERSION}")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)
    command = "python scripts/build_langid_eval.py" + ("" if args.seed == SEED else f" --seed {args.seed}")
    build(args.cache_dir, args.apt_update, args.allow_other_versions, args.seed, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
