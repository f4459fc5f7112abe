"""PII redaction: what is replaced, what is left alone, and the counts."""

from __future__ import annotations

import random
import re

import pytest

from corpus import pii
from corpus.pii import EMAIL_TOKEN, IP_TOKEN, PHONE_TOKEN, PiiRedactor


@pytest.mark.parametrize("text, expected, counts", [
    ("Write to debian-boot@lists.debian.org today.", f"Write to {EMAIL_TOKEN} today.", {"email": 1}),
    ("Mail j.doe+list@example.co.uk or a@b.io.", f"Mail {EMAIL_TOKEN} or {EMAIL_TOKEN}.", {"email": 2}),
    ("The server is 192.168.1.20, the gateway 10.0.0.1.", f"The server is {IP_TOKEN}, the gateway {IP_TOKEN}.",
     {"ip_address": 2}),
    ("Use 2001:db8:85a3::8a2e:370:7334 or fe80::1 here.", f"Use {IP_TOKEN} or {IP_TOKEN} here.", {"ip_address": 2}),
    ("Call +49 30 1234 5678 or (555) 123-4567 now.", f"Call {PHONE_TOKEN} or {PHONE_TOKEN} now.",
     {"phone_number": 2}),
])
def test_pii_is_replaced(text, expected, counts):
    assert PiiRedactor().redact(text) == (expected, counts)


@pytest.mark.parametrize("text", [
    "Version 1.2.3.4.5 of the kernel, released in 2023.",
    "Not an address: 999.168.1.20 and 1.2.3 and user@localhost.",
    "The price is 1 234 euros; the ISBN 978-3-16-148410-0 is a book.",
    "The time was 12:30:45 and the ratio 3:2.",
    "Partition sizes: 512 MB, 20 GB, 4096 bytes.",
    "Released 2023-10-12 15:30 UTC, build 2024.05.01.",
])
def test_ordinary_text_is_left_alone(text):
    assert PiiRedactor().redact(text) == (text, {})


def test_kinds_can_be_switched_off():
    text = "a@b.io on 10.0.0.1"
    assert PiiRedactor(emails=False).redact(text) == (f"a@b.io on {IP_TOKEN}", {"ip_address": 1})
    assert PiiRedactor(ip_addresses=False, emails=False).redact(text) == (text, {})


# The patterns as first written (lookbehind first); the module's take the first character first, which is
# faster and must match exactly the same spans.
PLAIN_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)")
PLAIN_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?"
    r"(?:\(\d{1,4}\)[ .-]?\d{2,4}(?:[ .-]\d{2,4}){1,3}|\d{2,4}(?:[ .-]\d{2,4}){2,4})(?![\w-])"
)


def test_the_fast_patterns_match_what_the_plain_ones_do():
    rng = random.Random(20)
    alphabet = "0123456789" * 3 + " .-+()a_\n:é٣"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(30_000)]
    texts += ["call +44 20 7946 0958 or (020) 7946 0958", "host 192.168.1.20, not 1.2.3.4.5", "x+1 555 123 4567"]
    for fast, plain in ((pii._IPV4, PLAIN_IPV4), (pii._PHONE, PLAIN_PHONE)):
        for text in texts:
            assert [m.span() for m in fast.finditer(text)] == [m.span() for m in plain.finditer(text)], text
