"""URL normalisation for URL dedup: the forms of one page's address that crawls write differently.

`normalized_url` keeps what names the page and drops what does not: the scheme (http and https
serve the same page), the fragment (#section: a position inside the page), the default port, the
case of the host, a trailing dot of the host, an empty path (`/`), tracking parameters (`utm_*`,
`gclid`, `fbclid`) and the order of the query parameters. The path keeps its case (servers often
treat it as significant). `url_key` is its 64-bit xxh3 hash, or None for a missing or unparsable URL.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

import xxhash

TRACKING_PARAMETERS = ("gclid", "fbclid", "mc_cid", "mc_eid")
DEFAULT_PORTS = {"http": 80, "https": 443}


def normalized_url(url: str | None) -> str | None:
    if not url or not url.strip():
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return None
    scheme = parts.scheme.lower()
    netloc = host if port is None or DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    query = sorted((key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True)
                   if not key.lower().startswith("utm_") and key.lower() not in TRACKING_PARAMETERS)
    return f"{netloc}{parts.path or '/'}" + (f"?{urlencode(query)}" if query else "")


def url_key(url: str | None) -> int | None:
    normalized = normalized_url(url)
    return None if normalized is None else xxhash.xxh3_64_intdigest(normalized.encode("utf-8", "surrogatepass"))
