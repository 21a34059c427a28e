"""Customer.io reporting-webhook signatures, as pure functions.

Customer.io signs every request with ``X-CIO-Signature``: the lowercase hex
HMAC-SHA256 of ``b"v0:" + X-CIO-Timestamp + b":" + raw body``, keyed with the
signing key's literal UTF-8 bytes (the key looks like hex; it is never
hex-decoded).  Verification must run over the raw bytes as received:
re-serialised JSON does not match.

``verify`` needs no server and works from any framework::

    verify(body, request.headers, ["key-1", "key-2"], tolerance=300, now=time.time())

Several keys are accepted so that a key can be rotated without downtime.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

from ._exceptions import MissingSignature, SignatureMismatch, StaleTimestamp
from .settings import DEFAULT_TOLERANCE

__all__ = [
    "DEFAULT_TOLERANCE",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "sign",
    "signed_headers",
    "verify",
    "verify_values",
]

SIGNATURE_HEADER = "X-CIO-Signature"
TIMESTAMP_HEADER = "X-CIO-Timestamp"


def sign(body: bytes, timestamp: int | str, key: str) -> str:
    """Return the hex signature Customer.io would send for ``body`` at ``timestamp``."""
    message = b"v0:" + str(timestamp).encode("ascii") + b":" + body
    return hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signed_headers(body: bytes, key: str, *, timestamp: int) -> dict[str, str]:
    """Headers for a correctly signed request (for tests and ``cio-webhooks send``)."""
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(body, timestamp, key),
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    return value


_HEX = "0123456789abcdef"


def verify(
    body: bytes,
    headers: Mapping[str, str],
    keys: Iterable[str],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float,
) -> int:
    """Check that ``body`` was signed by Customer.io with one of ``keys``.

    Returns the request timestamp (unix seconds) on success.  Raises
    ``MissingSignature`` when a header is absent or malformed,
    ``SignatureMismatch`` when no key produces the signature, and
    ``StaleTimestamp`` (carrying ``skew``) when the signature is valid but the
    timestamp is more than ``tolerance`` seconds from ``now``.  A ``tolerance``
    of 0 disables the timestamp check: the caller gets the timestamp and judges
    it (the receiver does, so that an authentic late retry is never refused).
    The signature is checked before the timestamp so that an unauthenticated
    caller learns nothing about our clock.

    Parsing is strict: the signature is exactly 64 lowercase hex characters
    (nothing stripped, no uppercase) and the timestamp is 1 to 20 ASCII digits (no
    sign, spaces, underscores or other digits).  ``headers`` may be any mapping;
    lookups try the canonical and the lowercase name.  A mapping cannot carry a
    header twice: callers holding raw header lists refuse repeated headers first.
    """
    return verify_values(
        body,
        _header(headers, SIGNATURE_HEADER),
        _header(headers, TIMESTAMP_HEADER),
        keys,
        tolerance=tolerance,
        now=now,
    )


def verify_values(
    body: bytes,
    signature: str | None,
    raw_timestamp: str | None,
    keys: Iterable[str],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float,
) -> int:
    """``verify`` for a caller that has already read the two header values (the
    receiver, from its scan of the raw header list; None: the header is absent)."""
    if not signature or not raw_timestamp:
        raise MissingSignature("missing X-CIO-Signature or X-CIO-Timestamp header")
    if not (len(raw_timestamp) <= 20 and raw_timestamp.isascii() and raw_timestamp.isdigit()):
        raise MissingSignature("X-CIO-Timestamp is not unix seconds in ASCII digits")
    # strip(_HEX) leaves nothing exactly when every character is lowercase hex.
    if len(signature) != 64 or signature.strip(_HEX):
        raise MissingSignature("X-CIO-Signature is not 64 lowercase hex characters")
    expected = signature.encode("ascii")
    message = b"v0:" + raw_timestamp.encode("ascii") + b":" + body
    matched = False
    for key in keys:
        digest = hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()
        # Keep looping after a match so the time taken does not reveal which key matched.
        matched |= hmac.compare_digest(digest.encode("ascii"), expected)
    if not matched:
        raise SignatureMismatch("signature does not match any configured signing key")
    timestamp = int(raw_timestamp)
    if tolerance > 0:
        skew = now - timestamp
        if abs(skew) > tolerance:
            raise StaleTimestamp(skew=skew, tolerance=tolerance)
    return timestamp
