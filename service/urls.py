"""URLs fit for messages: user information and query strings (tokens, presigned signatures) masked.

A leaf (it imports nothing of the product): the object store's client, the engine's remote readers, the jobs and
the API all mask URLs with these before a URL reaches a message, a log line or a job record.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit


def mask_url(url: str) -> str:
    """``url`` with its user information and query string (tokens, signatures) masked."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"***@{host}" if "@" in parts.netloc else host
    query = "?***" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


URL_IN_TEXT = re.compile(r"(?i)\b(?:s3|https?)://[^\s'\"]+")


def mask_text(text: str) -> str:
    """``text`` (a GDAL message, say) with every URL in it masked as :func:`mask_url` does."""
    return URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)


__all__ = ["URL_IN_TEXT", "mask_text", "mask_url"]
