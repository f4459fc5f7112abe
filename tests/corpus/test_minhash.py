"""MinHash signatures: bit-identical to datasketch with the pinned scheme; shingles; LSH probability."""

from __future__ import annotations

import numpy as np
import pytest

from corpus.minhash import MinHasher, candidate_probability, exact_key, jaccard, shingles, token_hashes, tokens
from tests.raw_inputs import english_paragraphs

PROSE = " ".join(english_paragraphs()[:4])


@pytest.mark.parametrize("text, chars", [
    (PROSE, False),
    ("three short words", False),  # fewer words than n: one shingle of all of them
    ("日本語の文章はスペースなしで書かれます。重複の検出には文字の並びを使います。", True),
])
def test_signature_equals_datasketch_update_batch(text, chars):
    hasher = MinHasher()
    ours = hasher.signature(text, chars)
    reference = hasher.datasketch_minhash(text, chars)
    assert reference.scheme == "affine32"
    assert ours.dtype == np.uint32 and np.array_equal(ours, reference.hashvalues)


def test_normalisation_ignores_case_punctuation_and_spacing():
    hasher = MinHasher()
    a = hasher.signature("The Installer, boots   from USB! " * 5)
    b = hasher.signature("the installer boots from usb\n" * 5)
    assert np.array_equal(a, b)
    assert exact_key(token_hashes("Hello,  World!")) == exact_key(token_hashes("hello world"))
    assert exact_key(token_hashes("hello world")) != exact_key(token_hashes("world hello"))


@pytest.mark.parametrize("chars", [False, True])
def test_vectorised_token_hashes_follow_the_regex_tokens(chars):
    text = "Ünïcode wörds, under_scores & digits 42; «quoted» 日本語の文章。 ÉTÉ été"
    words = tokens(text, chars)
    hashes = token_hashes(text, chars)
    assert len(hashes) == len(words)
    # equal tokens hash equally, different ones differently, wherever they are
    for i, a in enumerate(words):
        for j, b in enumerate(words):
            assert (hashes[i] == hashes[j]) == (a == b)
    assert np.array_equal(token_hashes(" ".join(words), chars), hashes) or chars


def test_a_text_without_words_has_no_signature():
    assert MinHasher().signature(" ... !!! ") is None


def test_estimated_similarity_tracks_exact_jaccard():
    hasher = MinHasher(num_perm=256, bands=32, rows=8)
    words = PROSE.split()
    edited = words[:]
    for index in range(0, len(edited), 25):
        edited[index] = "changed"
    a, b = " ".join(words), " ".join(edited)
    truth = jaccard(set(shingles(a, 5)), set(shingles(b, 5)))
    estimate = float(np.mean(hasher.signature(a) == hasher.signature(b)))
    assert 0.3 < truth < 0.9
    assert abs(estimate - truth) < 0.1


def test_band_keys_are_shared_exactly_when_a_band_is_equal():
    hasher = MinHasher()
    signature = hasher.signature(PROSE)
    other = signature.copy()
    other[: hasher.rows] += 1  # the first band differs, the others are equal
    keys, other_keys = hasher.band_keys(signature), hasher.band_keys(other)
    assert len(keys) == hasher.bands
    assert keys[0] != other_keys[0] and keys[1:] == other_keys[1:]
    # the same rows in two different bands give different keys (each band has its own seed)
    assert len(set(hasher.band_keys(np.zeros(hasher.num_perm, dtype=np.uint32)))) == hasher.bands


def test_candidate_probability_is_the_lsh_s_curve():
    assert candidate_probability(0.69, 14, 8) == pytest.approx(0.5, abs=0.03)  # FineWeb: 14 x 8
    assert candidate_probability(0.9, 14, 8) > 0.99
    assert candidate_probability(0.4, 14, 8) < 0.01


def test_only_the_pinned_scheme_and_full_bands_are_accepted():
    with pytest.raises(ValueError, match="affine32"):
        MinHasher(scheme="legacy")
    with pytest.raises(ValueError, match="bands x rows"):
        MinHasher(num_perm=100, bands=14, rows=8)
