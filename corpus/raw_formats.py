"""Readers for raw inputs: WARC(.gz), JSONL(.gz/.zst) and single HTML files (.gz/.zst too).

Each reader yields, in file order, one of:
  RawDoc  - a record that becomes a document,
  Reject  - a record that cannot be used, with its reason (it goes to quarantine),
  Skip    - a record that is not a document by nature (WARC request/metadata records, blank lines),
            counted by reason but not stored.
A broken file (truncated gzip, corrupt bytes) never raises: the records before the damage are kept
and the damage itself is a Reject. Memory is bounded by the record cap (max_record_bytes): an oversize
record is measured and skipped without being held past the cap, and a compressed JSONL file is decoded
a bounded chunk at a time and only up to a cap on its decoded size (Limits.decoded_cap), so a
decompression bomb costs neither memory nor much time. A compressed HTML page (by its name, or by
its first bytes: a page saved gzip-encoded as `.html`) is decoded the same way, up to the same caps.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

BINARY_MAGIC = (
    b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"%PDF", b"PK\x03\x04", b"\x1f\x8b", b"\x28\xb5\x2f\xfd",
    b"RIFF", b"\x00\x00\x01\x00", b"OggS", b"ID3", b"wOFF", b"wOF2", b"\x7fELF",
)
UTF8_BOM = b"\xef\xbb\xbf"
TEXT_BOMS = (UTF8_BOM, b"\xff\xfe", b"\xfe\xff")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


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
    # A compressed JSONL file is decoded up to min(max_decompressed_bytes, max_compression_ratio x its
    # compressed size); the rest of it is quarantined as decompression_limit.
    max_decompressed_bytes: int = 64 << 30
    max_compression_ratio: float = 100.0

    def decoded_cap(self, compressed_size: int) -> int:
        return min(self.max_decompressed_bytes, int(self.max_compression_ratio * compressed_size))


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
                if seen == 0 and not _starts_like_warc(path):
                    yield Reject("file", "not_a_warc", f"the file does not start with a WARC record "
                                 f"({type(exc).__name__}: {exc})", size, _head(path, limits.sample_bytes))
                else:
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
        if record.http_headers.status_code is None:
            # FastWARC took the block up to its first blank line for the headers: show both parts
            block = str(record.http_headers).encode("latin-1", "replace") + record.reader.read(limits.sample_bytes)
            first = block.split(b"\n", 1)[0][:60]
            return _reject(locator, "missing_http_headers", f"the response block has no HTTP status line and headers "
                           f"(it starts with {first!r})", block, limits,
                           size=int(record.headers.get("Content-Length") or len(block)))
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


def _head(path: Path, count: int) -> bytes:
    """The first `count` bytes of the file, decompressed if it is gzip (as much as decodes)."""
    with open(path, "rb") as handle:
        data = handle.read(64 * 1024)
    if not data.startswith(b"\x1f\x8b") or count <= 0:  # (a max_length of 0 would mean no limit)
        return data[: max(count, 0)]
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, count)
    except zlib.error:
        return data[:count]


def _starts_like_warc(path: Path) -> bool:
    return _head(path, 16).startswith(b"WARC/")


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
    # Output is bounded per call (max_length), so a member that inflates ~1000x costs no memory.
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    members = 0
    data = handle.read(1 << 20)
    while True:
        try:
            out = decoder.decompress(data, 1 << 20)
        except zlib.error as exc:
            return f"gzip data error: {exc}", members > 0
        if decoder.eof:
            members += 1
            data = decoder.unused_data or handle.read(1 << 20)
            if not data:
                return None, True
            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
            continue
        data = decoder.unconsumed_tail
        if not data and len(out) < 1 << 20:  # input used up and no output held back: read on
            data = handle.read(1 << 20)
            if not data:
                return "the last gzip member is truncated", members > 0


# ---------------------------------------------------------------------------------------------
# JSONL


class TruncatedStream(EOFError):
    """The compressed stream ended inside a frame or member."""


class CorruptStream(ValueError):
    """The compressed stream holds bytes its decoder cannot decode."""


class DecompressionLimit(Exception):
    """The decoded stream goes on past its cap (a decompression bomb, or a cap set too low)."""

    def __init__(self, cap: int):
        super().__init__(f"the decoded data goes on past the cap of {cap:,} bytes")
        self.cap = cap


class _DecodingReader(io.RawIOBase):
    """Decompresses gzip or zstd (multi-member/multi-frame) incrementally, in bounded chunks.

    Unlike GzipFile, it hands out every byte decoded before a truncation or corruption and raises
    TruncatedStream / CorruptStream only afterwards; unlike zstandard's stream_reader, it notices a
    cut frame. Memory stays bounded whatever the compression ratio: zlib output is capped per call,
    and zstd input is fed in pieces of FEED bytes (a zstd block decodes to at most 128 KiB and takes
    at least 4 bytes, so a piece yields at most 8 MiB). At most `cap` bytes are handed out: a stream
    that goes on past them raises DecompressionLimit once those are read.
    """

    CHUNK = 1 << 20  # decoded bytes gathered per refill (plus at most one piece's output)
    FEED = 256  # zstd input bytes per decompress() call
    READ = 1 << 16  # compressed bytes read from the file at a time

    def __init__(self, raw, kind: str, cap: int | None = None):
        self._raw = raw
        self._kind = kind
        self._decoder = self._new_decoder()
        self._in_frame = False
        self._input = memoryview(b"")
        self._more_output = False  # zlib stopped at max_length: call again before reading more input
        self._error: Exception | None = None  # raised once what was decoded before it is handed out
        self._pending = memoryview(b"")
        self._pos = 0
        self._cap = cap
        self._delivered = 0
        self._over_cap = False

    def _new_decoder(self):
        if self._kind == "zstd":
            import zstandard

            return zstandard.ZstdDecompressor().decompressobj()
        return zlib.decompressobj(16 + zlib.MAX_WBITS)

    def readable(self) -> bool:
        return True

    def _step(self) -> bytes:
        """Feed the decoder some input; return what it decodes."""
        decoder = self._decoder
        if self._kind == "zstd":
            piece, self._input = self._input[: self.FEED], self._input[self.FEED:]
            out = decoder.decompress(piece)
            if decoder.eof:
                self._input = memoryview(bytes(decoder.unused_data) + bytes(self._input))
        else:
            out = decoder.decompress(self._input, self.CHUNK)
            self._more_output = len(out) == self.CHUNK
            self._input = memoryview(decoder.unused_data if decoder.eof else decoder.unconsumed_tail)
        if decoder.eof:
            self._decoder = self._new_decoder()
            self._in_frame = False
            self._more_output = False
        return out

    def _decode(self) -> bytes:
        """The next decoded bytes, about CHUNK of them; b"" at the clean end of the stream."""
        if self._error is not None:
            raise self._error
        chunks: list[bytes] = []
        total = 0
        while total < self.CHUNK:
            if not self._input and not self._more_output:
                data = self._raw.read(self.READ)
                if not data:
                    if self._in_frame:
                        self._error = TruncatedStream("the compressed stream ends in the middle of a frame")
                    break
                self._input = memoryview(data)
            self._in_frame = True
            try:
                out = self._step()
            except Exception as exc:  # zlib.error, zstandard.ZstdError
                self._error = CorruptStream(f"{type(exc).__name__}: {exc}")
                break
            if out:
                chunks.append(out)
                total += len(out)
        if not chunks and self._error is not None:
            raise self._error
        return b"".join(chunks)

    def readinto(self, buffer) -> int:
        if self._pos >= len(self._pending):
            if self._over_cap:
                raise DecompressionLimit(self._cap or 0)
            data = self._decode()
            if not data:
                return 0
            if self._cap is not None and self._delivered + len(data) > self._cap:
                data = data[: self._cap - self._delivered]
                self._over_cap = True
                if not data:
                    raise DecompressionLimit(self._cap)
            self._pending, self._pos = memoryview(data), 0
        count = min(len(buffer), len(self._pending) - self._pos)
        buffer[:count] = self._pending[self._pos: self._pos + count]
        self._pos += count
        self._delivered += count
        return count

    def close(self) -> None:
        self._raw.close()
        super().close()


COMPRESSION_SUFFIXES = {".zst": "zstd", ".gz": "gzip"}
COMPRESSION_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}


def compression_of(path: Path) -> str | None:
    name = path.name.lower()
    return next((kind for suffix, kind in COMPRESSION_SUFFIXES.items() if name.endswith(suffix)), None)


def without_compression_suffix(name: str) -> str:
    """`en/index.html.gz` -> `en/index.html` (the page's own name, e.g. for its URL)."""
    return next((name[: -len(suffix)] for suffix in COMPRESSION_SUFFIXES if name.lower().endswith(suffix)), name)


def sniffed_compression(path: Path) -> str | None:
    """The compression of a file by its first bytes (gzip or zstd), whatever its name."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return next((kind for magic, kind in COMPRESSION_MAGIC.items() if head.startswith(magic)), None)


def open_text_stream(path: Path, cap: int | None = None, kind: str | None = None) -> io.BufferedIOBase:
    """A binary stream of the file's decompressed bytes (`kind`: zstd or gzip; default by the name, .zst,
    .gz or plain).

    With a cap, a compressed file's stream raises DecompressionLimit after `cap` decoded bytes if
    there are more; a plain file is not capped (its size is known).
    """
    raw = open(path, "rb")
    kind = kind or compression_of(path)
    if kind is None:
        return io.BufferedReader(raw, buffer_size=1 << 20)  # type: ignore[arg-type]
    return io.BufferedReader(_DecodingReader(raw, kind, cap), buffer_size=1 << 20)


def read_jsonl(path: Path, limits: Limits, *, text_field: str, id_field: str | None, url_field: str | None,
               date_field: str | None, content_type: str) -> Iterator[Item]:
    size = path.stat().st_size
    if size == 0:
        yield Reject("file", "empty_file", "the file is empty", 0)
        return
    compressed = compression_of(path) is not None
    cap = limits.decoded_cap(size) if compressed else None
    lineno = 0
    with open_text_stream(path, cap) as stream:
        while True:
            try:
                line = stream.readline(limits.max_record_bytes + 1)
                if lineno == 0 and line.startswith(BINARY_MAGIC):
                    yield _reject("file", "not_jsonl", f"the {'decoded ' if compressed else ''}file starts with "
                                  f"{line[:8]!r}: binary data, not JSON lines", line, limits, size=size)
                    return
                if lineno == 0 and line.startswith(UTF8_BOM):
                    line = line[len(UTF8_BOM):]
                oversize = len(line) > limits.max_record_bytes and not line.endswith(b"\n")
                skipped = _skip_rest_of_line(stream) if oversize else 0
            except DecompressionLimit as exc:
                yield Reject(f"line={lineno + 1}", "decompression_limit",
                             f"{exc}: the rest of the file is not read (ingest.max_decompressed_mb / "
                             f"ingest.max_compression_ratio; the file is {size:,} bytes compressed)", exc.cap)
                return
            except TruncatedStream as exc:
                yield Reject(f"line={lineno + 1}", "truncated_file", str(exc), size)
                return
            except Exception as exc:  # a corrupt compressed stream (or an unreadable file)
                yield Reject(f"line={lineno + 1}", "corrupt_file", f"{type(exc).__name__}: {exc}", size)
                return
            if not line:
                break
            lineno += 1
            if oversize:
                yield _reject(f"line={lineno}", "oversize_record", "the line exceeds the cap", line, limits,
                              size=len(line) + skipped)
            elif not line.strip():
                yield Skip("blank_line")
            else:
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
    if text_field not in obj:
        return _reject(locator, "missing_text_field", f"no field {text_field!r}", line, limits)
    text = obj[text_field]
    if not isinstance(text, str):
        return _reject(locator, "text_not_a_string", f"field {text_field!r} is a JSON "
                       f"{'null' if text is None else type(text).__name__}, not a string", line, limits)
    if not text.strip():
        return _reject(locator, "empty_text", f"field {text_field!r} is empty", line, limits)
    try:
        content = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape (\ud800): not a character, becomes U+FFFD
        content = _LONE_SURROGATE.sub("\ufffd", text).encode("utf-8")
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
    kind = compression_of(path) or sniffed_compression(path)
    if kind is not None:
        yield _read_compressed_html(path, kind, size, limits, url=url, charset=charset)
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


def _read_compressed_html(path: Path, kind: str, size: int, limits: Limits, *, url: str | None,
                          charset: str | None) -> Item:
    """One compressed page, decoded up to the record cap and the decompression caps."""
    decoded = bytearray()  # what decoded before a failure is kept for the sample
    try:
        with open_text_stream(path, limits.decoded_cap(size), kind) as stream:
            while len(decoded) <= limits.max_record_bytes:
                piece = stream.read(min(1 << 20, limits.max_record_bytes + 1 - len(decoded)))
                if not piece:
                    break
                decoded += piece
            if len(decoded) > limits.max_record_bytes:
                total = len(decoded) + sum(iter(lambda: len(stream.read(1 << 20)), 0))
                return _reject("file", "oversize_record", f"{total} decoded bytes exceed the cap", bytes(decoded),
                               limits, size=total)
    except DecompressionLimit as exc:
        return _reject("file", "decompression_limit", f"{exc} (ingest.max_decompressed_mb / "
                       f"ingest.max_compression_ratio; the file is {size:,} bytes {kind}-compressed)", bytes(decoded),
                       limits, size=exc.cap)
    except TruncatedStream as exc:
        return _reject("file", "truncated_file", str(exc), bytes(decoded), limits, size=size)
    except Exception as exc:  # a corrupt compressed stream
        return _reject("file", "corrupt_file", f"{kind}: {type(exc).__name__}: {exc}", bytes(decoded), limits,
                       size=size)
    content = bytes(decoded)
    return _check_payload("file", content, limits) or RawDoc("file", content, "text/html", charset, url=url)
