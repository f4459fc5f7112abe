"""PII redaction for the filtering stage: e-mail addresses, IP addresses and phone numbers are
replaced by placeholder tokens, and each replacement is counted by kind.

The patterns follow the ones used for large web corpora (BigScience ROOTS, dolma): precise rather
than exhaustive, so ordinary numbers (years, versions, prices, ISBNs) are left alone. IPv4 addresses
must have four octets of 0-255 and not be part of a longer dotted number (a version like 1.2.3.4.5);
IPv6 needs at least three colon-separated groups; phone numbers need a separator structure typical of
phone numbers and 9 to 15 digits.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

EMAIL_TOKEN = "|||EMAIL_ADDRESS|||"
IP_TOKEN = "|||IP_ADDRESS|||"
PHONE_TOKEN = "|||PHONE_NUMBER|||"

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
# Each pattern starts with the character class a match must begin with, and only then looks behind
# (its lookbehind spans that first character): Python's re then skips in C to the positions that can
# start a match, instead of trying the lookbehind at every character (2-4x faster on web text). They
# match exactly what the plain spelling does, e.g. for IPv4 (?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d).
_IPV4 = re.compile(r"\d(?<![\d.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?!\d|\.\d)")
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{1,4}:){2,7}(?::|[0-9A-Fa-f]{1,4})(?![0-9A-Fa-f:])"
                   r"|(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{1,4}:)*:(?::?[0-9A-Fa-f]{1,4}){1,7}(?![0-9A-Fa-f:])")
# Every IPv6 match holds two colons with at most four hex digits between them: a search for that is
# ~100x cheaper than the full pattern, which then runs only where it can match.
_IPV6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:")
_PHONE_BODY = r"(?:\(\d{1,4}\)[ .-]?\d{2,4}(?:[ .-]\d{2,4}){1,3}|\d{2,4}(?:[ .-]\d{2,4}){2,4})"
# (?<![\w+])(?:\+\d{1,3}[ .-]?)?<body>(?![\w-]), with the first character (+, ( or a digit) taken first
_PHONE = re.compile(
    r"[+(\d](?<![\w+].)"
    r"(?:(?<=\+)\d{1,3}[ .-]?" + _PHONE_BODY +
    r"|(?<=\()\d{1,4}\)[ .-]?\d{2,4}(?:[ .-]\d{2,4}){1,3}"
    r"|(?<=\d)\d{1,3}(?:[ .-]\d{2,4}){2,4})(?![\w-])"
)


def _valid_ipv4(candidate: str) -> bool:
    try:
        ipaddress.IPv4Address(candidate)
    except ValueError:
        return False
    return True


def _valid_ipv6(candidate: str) -> bool:
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


_DATE_START = re.compile(r"(?:19|20)\d\d[-./](?:0?[1-9]|1[0-2])[-./]")


def _phone_digits_ok(candidate: str) -> bool:
    """9 to 15 digits, and not a date with a time after it (2023-10-12 15)."""
    digits = sum(ch.isdigit() for ch in candidate)
    return 9 <= digits <= 15 and not _DATE_START.match(candidate)


@dataclass(frozen=True)
class PiiRedactor:
    emails: bool = True
    ip_addresses: bool = True
    phone_numbers: bool = True

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """(text with PII replaced by tokens, {kind: replacements})."""
        counts: dict[str, int] = {}

        def replace(pattern: re.Pattern, token: str, kind: str, valid=None):
            nonlocal text

            def substitute(match: re.Match) -> str:
                if valid is not None and not valid(match.group(0)):
                    return match.group(0)
                counts[kind] = counts.get(kind, 0) + 1
                return token

            text = pattern.sub(substitute, text)

        # Cheap tests first: most documents have no '@' and no ':h:' for an IPv6 address.
        if self.emails and "@" in text:
            replace(_EMAIL, EMAIL_TOKEN, "email")
        if self.ip_addresses:
            replace(_IPV4, IP_TOKEN, "ip_address", _valid_ipv4)
            if _IPV6_HINT.search(text):
                replace(_IPV6, IP_TOKEN, "ip_address", _valid_ipv6)
        if self.phone_numbers:
            replace(_PHONE, PHONE_TOKEN, "phone_number", _phone_digits_ok)
        return text, counts
