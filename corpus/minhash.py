"""MinHash signatures and LSH band keys for near-duplicate detection, with datasketch's hash scheme pinned.

A document becomes a set of shingles: n-grams of its normalised tokens. Tokens are the runs of word
characters (`\\w`: letters, digits, underscore) of the lowercased text, so case, punctuation and spacing
do not matter; for languages written without spaces, every word character is a token. A text shorter
than n tokens is one shingle.

Tokenising and hashing run vectorised over the whole text: its code points (UTF-32) are looked up in a
table of word characters, and each token's 64-bit hash is a polynomial in its code points taken from
prefix sums, so no Python code runs per token. A shingle's hash combines its tokens' hashes the same
way. The signature then applies datasketch's "affine32" permutations (MurmurHash3 finaliser, then
a*h+b mod 2^32 with odd a) from `datasketch.MinHash(num_perm, seed, scheme="affine32")` to the upper 32
bits of the shingle hashes, vectorised over the document. The result equals
`datasketch.MinHash(..., hashfunc=shingle_hash, scheme="affine32").update_batch(shingles)` bit for bit
(a test checks it), so signatures stay comparable with datasketch's own sketches.

Band keys are 64-bit xxh3 hashes of each band's rows; two documents are LSH candidates when they share
a band key. The exact-duplicate key is the 128-bit xxh3 of the token hash sequence.

Memory is bounded whatever the length of a document: `MinHasher.sketch` hashes the text in pieces of
at most CHUNK_CHARS characters, cut after a space or newline (so no token and no context of
lowercasing spans two pieces), carries the last n-1 token hashes into the next piece so every shingle
is seen once, permutes SHINGLE_BLOCK shingles at a time, and streams the exact key through xxh3. Its
signature and exact key equal those of the whole text at once; only a run of more than CHUNK_CHARS
characters without a space or newline is cut inside (hashed as two tokens there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, cached_property
from typing import TYPE_CHECKING, Iterator

import numpy as np
import xxhash

if TYPE_CHECKING:
    from datasketch import MinHash

_WORD = re.compile(r"\w+")
_WORD_CHAR = re.compile(r"\w")
_MASK64 = (1 << 64) - 1
# Base of the polynomial token hash and of the combination of token hashes into n-gram hashes (odd,
# so invertible mod 2^64: a token's hash is recovered from prefix sums by multiplying by the inverse).
_BASE = 0x100000001B3
_BASE_INVERSE = pow(_BASE, -1, 1 << 64)
CHUNK_CHARS = 1 << 18  # characters hashed at a time (~20 bytes of transient arrays each)
SHINGLE_BLOCK = 1 << 13  # shingles permuted at a time (x num_perm x 4 bytes: 3.7 MB at 112)


@cache
def _word_characters() -> np.ndarray:
    """bool[0x110000]: whether each code point is a word character for `\\w` (built once, ~0.1 s)."""
    every = "".join(map(chr, range(0x110000)))
    marked = _WORD_CHAR.sub("\x01", re.sub(r"\W", "\x00", every))
    return np.frombuffer(marked.encode("latin-1"), dtype=np.uint8).astype(bool)


class _Powers:
    """BASE^k and BASE^-k mod 2^64 for k < n, grown on demand."""

    def __init__(self) -> None:
        self.forward = np.ones(1, dtype=np.uint64)
        self.inverse = np.ones(1, dtype=np.uint64)

    def upto(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.forward) < n:
            size = max(n, 2 * len(self.forward))
            with np.errstate(over="ignore"):
                self.forward = np.cumprod(np.r_[np.uint64(1), np.full(size - 1, _BASE, dtype=np.uint64)],
                                          dtype=np.uint64)
                self.inverse = np.cumprod(np.r_[np.uint64(1), np.full(size - 1, _BASE_INVERSE, dtype=np.uint64)],
                                          dtype=np.uint64)
        return self.forward[:n], self.inverse[:n]


_POWERS = _Powers()


def _fmix64(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        values = values ^ (values >> np.uint64(33))
        values = values * np.uint64(0xFF51AFD7ED558CCD)
        values = values ^ (values >> np.uint64(33))
        values = values * np.uint64(0xC4CEB9FE1A85EC53)
        return values ^ (values >> np.uint64(33))


def token_hashes(text: str, chars: bool = False) -> np.ndarray:
    """uint64 hashes of the normalised tokens of `text` (see the module docstring), in order."""
    codes = np.frombuffer(text.lower().encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    word = _word_characters()[codes]
    if chars:
        starts = np.flatnonzero(word)
        ends = starts + 1
    else:
        edges = np.diff(word.view(np.int8), prepend=np.int8(0), append=np.int8(0))
        starts = np.flatnonzero(edges == 1)
        ends = np.flatnonzero(edges == -1)
    if not len(starts):
        return np.zeros(0, dtype=np.uint64)
    forward, inverse = _POWERS.upto(len(codes) + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(codes) + 1, dtype=np.uint64)
        np.cumsum(codes.astype(np.uint64) * forward[: len(codes)], out=prefix[1:])
        hashes = (prefix[ends] - prefix[starts]) * inverse[starts]
    return _fmix64(hashes)


def _cut(text: str, start: int, size: int) -> int:
    """The end of the piece starting at `start`: just after the last space or newline within `size`
    characters (or at `size` if there is none), or the end of the text."""
    end = start + size
    if end >= len(text):
        return len(text)
    cut = max(text.rfind(" ", start, end), text.rfind("\n", start, end)) + 1
    return cut if cut > start else end


def token_hash_chunks(text: str, chars: bool = False, chunk_chars: int = CHUNK_CHARS) -> Iterator[np.ndarray]:
    """token_hashes(text) in consecutive pieces (their concatenation is the same array), each from at
    most `chunk_chars` characters of the text."""
    start = 0
    while start < len(text):
        end = _cut(text, start, chunk_chars)
        yield token_hashes(text[start:end], chars)
        start = end


def tokens(text: str, chars: bool = False) -> list[str]:
    """The normalised tokens as text (what token_hashes hashes): lowercased `\\w` runs, or characters."""
    lowered = text.lower()
    return _WORD_CHAR.findall(lowered) if chars else _WORD.findall(lowered)


def combine(hashes: np.ndarray, n: int) -> np.ndarray:
    """Hashes of every window of n consecutive token hashes (one window of all of them if fewer than n),
    a polynomial in the token hashes computed in their own width with wraparound."""
    count = len(hashes) - n + 1
    if count <= 0:
        n, count = len(hashes), 1
    multiplier = hashes.dtype.type(_BASE & ((1 << (8 * hashes.dtype.itemsize)) - 1))
    with np.errstate(over="ignore"):
        combined = hashes[:count].copy()
        for offset in range(1, n):
            combined *= multiplier
            combined += hashes[offset:offset + count]
    return combined


def shingle_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """uint32 shingle hashes: the upper half of the combined token hashes."""
    return (combine(hashes, n) >> np.uint64(32)).astype(np.uint32)


def shingle_hash(shingle: str, chars: bool = False) -> int:
    """The hash of one shingle given as text (its tokens joined): the scalar twin, for datasketch."""
    hashes = token_hashes(shingle, chars)
    return int(shingle_hashes(hashes, len(hashes))[0])


def shingles(text: str, n: int, chars: bool = False) -> list[str]:
    """The shingles as text, for checking against datasketch and exact Jaccard (not used on the hot path)."""
    words = tokens(text, chars)
    if not words:
        return []
    size = min(n, len(words))
    joiner = "" if chars else " "
    return [joiner.join(words[i:i + size]) for i in range(len(words) - size + 1)]


@dataclass(frozen=True)
class MinHasher:
    """Signatures with `num_perm` permutations, banded as `bands` x `rows`."""

    num_perm: int = 112
    bands: int = 14
    rows: int = 8
    ngram: int = 5
    seed: int = 1
    scheme: str = "affine32"

    def __post_init__(self) -> None:
        if self.scheme != "affine32":
            raise ValueError(f"unsupported MinHash scheme {self.scheme!r}; pinned: affine32")
        if self.bands * self.rows != self.num_perm:
            raise ValueError(f"bands x rows must equal num_perm ({self.bands} x {self.rows} != {self.num_perm})")

    @cached_property
    def _permutations(self) -> tuple[np.ndarray, np.ndarray]:
        from datasketch import MinHash  # lazily: it imports scipy (~0.4 s), which the filter stage never needs

        a, b = MinHash(num_perm=self.num_perm, seed=self.seed, scheme=self.scheme).permutations
        return a.astype(np.uint32), b.astype(np.uint32)

    def signature_of_hashes(self, hashes: np.ndarray) -> np.ndarray | None:
        """uint32[num_perm] from the token hashes, or None for a text without tokens (it can only be an
        exact duplicate)."""
        if not len(hashes):
            return None
        return self._min_permuted(shingle_hashes(hashes, self.ngram))

    def _min_permuted(self, shingled: np.ndarray, minimum: np.ndarray | None = None) -> np.ndarray:
        """The element-wise minimum of `minimum` and every shingle's permutations, SHINGLE_BLOCK at a time."""
        a, b = self._permutations
        for start in range(0, len(shingled), SHINGLE_BLOCK):
            block = shingled[start:start + SHINGLE_BLOCK].copy()
            with np.errstate(over="ignore"):
                # datasketch's _fmix for 32 bits, then the affine permutations
                block ^= block >> np.uint32(16)
                block *= np.uint32(0x85EBCA6B)
                block ^= block >> np.uint32(13)
                block *= np.uint32(0xC2B2AE35)
                block ^= block >> np.uint32(16)
                permuted = block[:, None] * a[None, :]
                permuted += b[None, :]
            lowest = permuted.min(axis=0)
            minimum = lowest if minimum is None else np.minimum(minimum, lowest)
        assert minimum is not None
        return minimum

    def signature(self, text: str, chars: bool = False) -> np.ndarray | None:
        return self.signature_of_hashes(token_hashes(text, chars))

    def sketch(self, text: str, chars: bool = False, signature: bool = True,
               chunk_chars: int = CHUNK_CHARS) -> tuple[np.ndarray | None, bytes]:
        """(signature or None, exact key) of the text in bounded memory: the same values as
        signature(text) and exact_key(token_hashes(text)), computed a piece of the text at a time."""
        exact = xxhash.xxh3_128()
        minimum = None
        tail = np.zeros(0, dtype=np.uint64)  # the last ngram-1 token hashes: shingles span pieces
        total = 0
        for hashes in token_hash_chunks(text, chars, chunk_chars):
            exact.update(hashes.astype("<u8").tobytes())
            total += len(hashes)
            if not signature:
                continue
            window = np.concatenate([tail, hashes])
            if len(window) >= self.ngram:
                minimum = self._min_permuted(shingle_hashes(window, self.ngram), minimum)
                window = window[len(window) - self.ngram + 1:]
            tail = window
        if signature and total and minimum is None:  # fewer than ngram tokens: one shingle of them all
            minimum = self._min_permuted(shingle_hashes(tail, self.ngram))
        return minimum, exact.digest()

    def band_keys(self, signature: np.ndarray) -> list[int]:
        """One 64-bit key per band: documents sharing any key are candidate duplicates."""
        data = signature.astype("<u4").tobytes()
        width = self.rows * 4
        return [xxhash.xxh3_64_intdigest(data[i * width:(i + 1) * width], seed=i) for i in range(self.bands)]

    def datasketch_minhash(self, text: str, chars: bool = False) -> MinHash:
        """The same signature computed by datasketch itself (the reference the tests compare with)."""
        from datasketch import MinHash

        sketch = MinHash(num_perm=self.num_perm, seed=self.seed, scheme=self.scheme,
                         hashfunc=lambda shingle: shingle_hash(shingle, chars))
        sketch.update_batch(shingles(text, self.ngram, chars))
        return sketch


def exact_key(hashes: np.ndarray) -> bytes:
    """128-bit key of the token hash sequence: equal keys mean the same text up to case and punctuation."""
    return xxhash.xxh3_128_digest(hashes.astype("<u8").tobytes())


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """The probability that a pair of this Jaccard similarity shares at least one band."""
    return 1 - (1 - similarity ** rows) ** bands
