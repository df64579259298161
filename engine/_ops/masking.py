"""Secrets in URLs, masked in every line a person may read.

A presigned URL carries its signature in the query (S3's ``X-Amz-Signature``, GCS's
``X-Goog-Signature``, Azure SAS's ``sig``...), and a URL may carry a password before
its host.  Such a URL is stored whole (the request needs it), but printed, logged or
listed it shows ``***`` in place of each secret, so a pasted error line or a
terminal recording gives nothing away.  The rest of the URL stays as it was: it is
what tells a person which download the line is about.
"""

from __future__ import annotations

import re

MASK = "***"

SECRET_PARAMETERS = frozenset(
    {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
        "x-goog-credential",
        "x-goog-security-token",
        "sig",
        "signature",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "api_key",
        "apikey",
        "key",
        "password",
        "passwd",
        "secret",
        "client_secret",
    }
)
"""Query parameters whose value is a secret (compared without case)."""

_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*:)[^/?#@]*@")
_PARAMETER = re.compile(r"([?&;])([^=&;#]+)=([^&;#]*)")


def _mask_parameter(match: re.Match[str]) -> str:
    sep, name, value = match.groups()
    if name.lower() in SECRET_PARAMETERS and value:
        return f"{sep}{name}={MASK}"
    return match.group(0)


def mask_url(url: str) -> str:
    """``url`` with its password and secret query values replaced by ``***``."""
    if "@" in url:
        url = _PASSWORD.sub(rf"\g<1>{MASK}@", url, count=1)
    query = url.find("?")
    if query < 0:
        return url
    return url[:query] + _PARAMETER.sub(_mask_parameter, url[query:])


def _mask_found(match: re.Match[str]) -> str:
    """A URL found in text, masked; the punctuation after it (``URL: why``, ``(URL)``)
    is the sentence's, not the URL's."""
    found = match.group(0)
    url = found.rstrip(".,:;)]")
    return mask_url(url) + found[len(url) :]


def mask_text(text: str) -> str:
    """Every URL in ``text`` masked (``mask_url``); text without one is returned as is."""
    if "://" not in text:
        return text
    return _URL.sub(_mask_found, text)
