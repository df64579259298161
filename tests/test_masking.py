"""Secrets in URLs are masked wherever a person reads them, the rest left as it was."""

from __future__ import annotations

import pytest

from engine import TransportError
from engine._ops.masking import mask_text, mask_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AK%2F1&X-Amz-Signature=ab&X-Amz-Expires=60",
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60",
        ),
        (
            "https://storage.googleapis.com/b/o?X-Goog-Credential=c&X-Goog-Signature=s",
            "https://storage.googleapis.com/b/o?X-Goog-Credential=***&X-Goog-Signature=***",
        ),
        (
            "https://a.blob.core.windows.net/c/b?sv=2022&se=2030&sp=r&sig=abc%3D",
            "https://a.blob.core.windows.net/c/b?sv=2022&se=2030&sp=r&sig=***",
        ),
        (
            "https://h/f?token=t&access_token=a&page=2",
            "https://h/f?token=***&access_token=***&page=2",
        ),
        ("https://h/f?Signature=s#frag", "https://h/f?Signature=***#frag"),
        ("ftp://alice:s3cret@h/f", "ftp://alice:***@h/f"),
        ("https://h/f?sig=", "https://h/f?sig="),
        ("https://h/path/token=x", "https://h/path/token=x"),
        ("https://alice@h/f", "https://alice@h/f"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    """Signatures, credentials, tokens and passwords become ***; nothing else changes."""
    assert mask_url(url) == shown


def test_text_and_errors_mask_every_url_in_them() -> None:
    """A line with URLs in it, and a TransferError's message, show none of their secrets."""
    text = "from https://h/a?sig=1 to http://u:p@h/b: failed"
    assert mask_text(text) == "from https://h/a?sig=*** to http://u:***@h/b: failed"
    assert str(TransportError("https://h/f?X-Amz-Signature=zz: reset")) == (
        "https://h/f?X-Amz-Signature=***: reset"
    )
