"""PII redaction: what is replaced, what is left alone, and the counts."""

from __future__ import annotations

import pytest

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
