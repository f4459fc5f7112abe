"""Readers for raw inputs: WARC(.gz), JSONL(.gz/.zst) and single HTML files.

Each reader yields, in file order, one of:
  RawDoc  - a record that becomes a document,
  Reject  - a record that cannot be used, with its reason (it goes to quarantine),
  Skip    - a record that is not a document by nature (WARC request/metadata records, blank lines),
            counted by reason but not stored.
A broken file (truncated gzip, corrupt bytes) never raises: the records before the damage are kept
and the damage itself is a Reject. Memory is bounded by the largest accepted record.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

BINARY_MAGIC = (
    b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"%PDF", b"PK\x03\x04", b"\x1f\x8b", b"\x28\xb5\x2f\xfd",
    b"RIFF", b"\x00\x00\x01\x00", b"OggS", b"ID3", b"wOFF", b"wOF2", b"\x7fELF",
)
TEXT_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


@dataclass
class RawDoc:
    locator: str
    content: bytes
    content_type: str
    charset: str | None = None
    url: str | None = None
    fetch_date: dt.datetime | None = None
    native_id: str | None = None


@dataclass
class Reject:
    locator: str
    reason: str
    detail: str
    size: int = 0
    sample: bytes = b""


@dataclass
class Skip:
    reason: str


Item = Union[RawDoc, Reject, Skip]


@dataclass(frozen=True)
class Limits:
    max_record_bytes: int
    html_content_types: tuple[str, ...]
    sample_bytes: int


# Control bytes that do not occur in text (tab, newline, form feed, carriage return and escape do).
_CONTROL_BYTES = bytes(b for b in range(32) if b not in (9, 10, 12, 13, 27))


def looks_binary(data: bytes) -> bool:
    """True for payloads that are not text whatever their declared type (images, archives, ...)."""
    head = data[:1024]
    if head.startswith(TEXT_BOMS):
        return False
    if head.startswith(BINARY_MAGIC) or b"\x00" in head:
        return True
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    return bool(head) and controls / len(head) > 0.1


def _reject(locator: str, reason: str, detail: str, data: bytes, limits: Limits, size: int | None = None) -> Reject:
    return Reject(locator, reason, detail, len(data) if size is None else size, data[: limits.sample_bytes])


def _check_payload(locator: str, content: bytes, limits: Limits) -> Reject | None:
    if not content.strip():
        return _reject(locator, "empty_payload", "the payload has no content", content, limits)
    if looks_binary(content):
        return _reject(locator, "binary_payload", "the payload is binary data, not text", content, limits)
    return None


# ---------------------------------------------------------------------------------------------
# WARC


def read_warc(path: Path, limits: Limits) -> Iterator[Item]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    size = path.stat().st_size
    if size == 0:
        yield Reject("file", "empty_file", "the file is empty", 0)
        return
    seen = 0
    last_start = 0
    # The items of the last record are held back until the next record (or the tail check) shows
    # that the record was complete: FastWARC yields a record cut short by truncation as if whole.
    held: list[Item] = []  # zero or one item
    with open(path, "rb") as handle:
        records = iter(ArchiveIterator(handle, parse_http=True))
        while True:
            try:
                record = next(records)
            except StopIteration:
                break
            except Exception as exc:  # a corrupt stream must not end the run: keep what came before
                yield from held
                yield Reject(f"offset={last_start}", "corrupt_file", f"{type(exc).__name__}: {exc}", size)
                return
            yield from held
            seen += 1
            last_start = record.stream_pos
            held = [_warc_record(record, WarcRecordType, limits)]
    damage, last_record_whole = _tail_damage(path, last_start, size)
    if damage and not last_record_whole:
        yield Reject(f"offset={last_start}", "truncated_file", f"the record is cut short: {damage}", size)
        return
    yield from held
    if damage:
        yield Reject(f"offset={last_start}", "truncated_file", damage, size)
    elif seen == 0:
        yield Reject("file", "not_a_warc", "no WARC record could be read from the file", size)


def _warc_record(record, types, limits: Limits) -> Item:
    locator = f"offset={record.stream_pos}"
    kind = record.record_type
    if kind not in (types.response, types.resource):
        return Skip(f"warc_{kind}_record")
    url = record.headers.get("WARC-Target-URI")
    if record.content_length > limits.max_record_bytes:
        head = record.reader.read(limits.sample_bytes)
        return _reject(locator, "oversize_record", f"{record.content_length} bytes exceed the cap", head, limits,
                       size=record.content_length)
    if kind == types.response:
        if not record.is_http:
            return Skip("warc_response_not_http")
        status = record.http_headers.status_code
        if status is not None and not 200 <= status < 300:
            return Skip(f"http_status_{status // 100}xx")
        mime = (record.http_content_type or "").lower()
        charset = _clean_charset(record.http_charset)
    else:
        declared = record.headers.get("Content-Type") or ""
        mime = declared.split(";")[0].strip().lower()
        charset = _charset_param(declared)
    content = record.reader.read()
    if mime not in limits.html_content_types:
        return _reject(locator, "non_html_payload", f"content type {mime or 'missing'!r}", content, limits)
    if rejected := _check_payload(locator, content, limits):
        return rejected
    date = record.record_date
    if date is not None and date.tzinfo is None:
        date = date.replace(tzinfo=dt.timezone.utc)
    return RawDoc(locator, content, mime, charset, url, date, record.record_id)


def _charset_param(content_type: str) -> str | None:
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            return _clean_charset(value)
    return None


def _clean_charset(value: str | None) -> str | None:
    cleaned = (value or "").strip().strip("\"'").strip().lower()
    return cleaned or None


def _tail_damage(path: Path, last_start: int, size: int) -> tuple[str | None, bool]:
    """(why the file ends badly after the last record's start, or None; whether that record is whole).

    FastWARC stops silently at a truncation, so the tail is checked here: for gzip, every member
    from the last record's to the end of the file must decompress completely; for plain WARC, the
    last record's declared length must fit in the file.
    """
    with open(path, "rb") as handle:
        handle.seek(last_start)
        if handle.read(2) == b"\x1f\x8b":
            handle.seek(last_start)
            return _gzip_tail_damage(handle)
        handle.seek(last_start)
        head = handle.read(64 * 1024)
    end = head.find(b"\r\n\r\n")
    if not head.startswith(b"WARC/") or end < 0:
        return f"no complete WARC header at offset {last_start}", False
    length = None
    for line in head[:end].split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length" and value.strip().isdigit():
            length = int(value.strip())
    if length is None:
        return f"the record at offset {last_start} has no Content-Length", False
    expected_end = last_start + end + 4 + length
    if expected_end > size:
        return f"the record at offset {last_start} needs {expected_end - size} more bytes than the file has", False
    return None, True


def _gzip_tail_damage(handle) -> tuple[str | None, bool]:
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    members = 0
    data = handle.read(1 << 20)
    while data:
        try:
            decoder.decompress(data)
        except zlib.error as exc:
            return f"gzip data error: {exc}", members > 0
        if decoder.eof:
            members += 1
            data = decoder.unused_data or handle.read(1 << 20)
            if not data:
                return None, True
            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
            continue
        data = handle.read(1 << 20)
    return "the last gzip member is truncated", members > 0


# ---------------------------------------------------------------------------------------------
# JSONL


class TruncatedStream(EOFError):
    """The compressed stream ended inside a frame or member."""


class _DecodingReader(io.RawIOBase):
    """Decompresses gzip or zstd (multi-member/multi-frame) incrementally.

    Unlike GzipFile, it hands out every byte decoded before a truncation and raises
    TruncatedStream only afterwards; unlike zstandard's stream_reader, it notices a cut frame.
    """

    def __init__(self, raw, new_decoder):
        self._raw = raw
        self._new_decoder = new_decoder
        self._decoder = new_decoder()
        self._in_frame = False
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            data = self._raw.read(1 << 20)
            if not data:
                if self._in_frame:
                    raise TruncatedStream("the compressed stream ends in the middle of a frame")
                return 0
            while data:
                self._in_frame = True
                self._pending += self._decoder.decompress(data)
                if not self._decoder.eof:
                    break
                data = self._decoder.unused_data
                self._decoder = self._new_decoder()
                self._in_frame = False
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_text_stream(path: Path) -> io.BufferedIOBase:
    """A binary stream of the file's decompressed bytes (.zst, .gz or plain)."""
    name = path.name.lower()
    raw = open(path, "rb")
    if name.endswith(".zst"):
        import zstandard

        decompressor = zstandard.ZstdDecompressor()
        return io.BufferedReader(_DecodingReader(raw, decompressor.decompressobj), buffer_size=1 << 20)
    if name.endswith(".gz"):
        return io.BufferedReader(
            _DecodingReader(raw, lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)), buffer_size=1 << 20
        )
    return io.BufferedReader(raw, buffer_size=1 << 20)  # type: ignore[arg-type]


def read_jsonl(path: Path, limits: Limits, *, text_field: str, id_field: str | None, url_field: str | None,
               date_field: str | None, content_type: str) -> Iterator[Item]:
    if path.stat().st_size == 0:
        yield Reject("file", "empty_file", "the file is empty", 0)
        return
    lineno = 0
    with open_text_stream(path) as stream:
        while True:
            try:
                line = stream.readline(limits.max_record_bytes + 1)
                if len(line) > limits.max_record_bytes and not line.endswith(b"\n"):
                    lineno += 1
                    skipped = _skip_rest_of_line(stream)
                    yield _reject(f"line={lineno}", "oversize_record", "the line exceeds the cap", line, limits,
                                  size=len(line) + skipped)
                    continue
            except Exception as exc:  # truncated or corrupt compressed stream
                yield Reject(f"line={lineno + 1}", "truncated_file", f"{type(exc).__name__}: {exc}", 0)
                return
            if not line:
                break
            lineno += 1
            if not line.strip():
                yield Skip("blank_line")
                continue
            yield _jsonl_record(line, f"line={lineno}", limits, text_field, id_field, url_field, date_field,
                                content_type)
    if lineno == 0:
        yield Reject("file", "empty_file", "the file has no lines", 0)


def _skip_rest_of_line(stream) -> int:
    skipped = 0
    while True:
        chunk = stream.readline(1 << 20)
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return skipped


def _jsonl_record(line: bytes, locator: str, limits: Limits, text_field: str, id_field: str | None,
                  url_field: str | None, date_field: str | None, content_type: str) -> Item:
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _reject(locator, "invalid_utf8", str(exc), line, limits)
    try:
        obj = json.loads(decoded)
    except json.JSONDecodeError as exc:
        return _reject(locator, "invalid_json", str(exc), line, limits)
    if not isinstance(obj, dict):
        return _reject(locator, "not_an_object", f"a JSON {type(obj).__name__}, not an object", line, limits)
    text = obj.get(text_field)
    if not isinstance(text, str):
        return _reject(locator, "missing_text_field", f"no string field {text_field!r}", line, limits)
    if not text.strip():
        return _reject(locator, "empty_text", f"field {text_field!r} is empty", line, limits)
    content = text.encode("utf-8", errors="surrogatepass")
    url = obj.get(url_field) if url_field else None
    native_id = obj.get(id_field) if id_field else None
    return RawDoc(
        locator, content, content_type, "utf-8",
        url=url if isinstance(url, str) else None,
        fetch_date=_parse_date(obj.get(date_field)) if date_field else None,
        native_id=str(native_id) if native_id is not None else None,
    )


def _parse_date(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


# ---------------------------------------------------------------------------------------------
# HTML files


def read_html_file(path: Path, limits: Limits, *, url: str | None, charset: str | None) -> Iterator[Item]:
    size = path.stat().st_size
    if size == 0:
        yield Reject("file", "empty_file", "the file is empty", 0)
        return
    if size > limits.max_record_bytes:
        with open(path, "rb") as handle:
            head = handle.read(limits.sample_bytes)
        yield _reject("file", "oversize_record", f"{size} bytes exceed the cap", head, limits, size=size)
        return
    content = path.read_bytes()
    if rejected := _check_payload("file", content, limits):
        yield rejected
        return
    yield RawDoc("file", content, "text/html", charset, url=url)
