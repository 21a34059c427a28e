"""signature.verify: the shared vector, tampering, tolerance and key rotation."""

from __future__ import annotations

import json

import pytest

from cio_webhooks import MissingSignature, SignatureMismatch, StaleTimestamp, sign, verify
from cio_webhooks.signature import signed_headers, verify_values

from .conftest import SAMPLES

VECTOR = json.loads((SAMPLES / "email_sent_with_content.signature-vector.json").read_text())
BODY = (SAMPLES / "email_sent_with_content.raw.json").read_bytes()
KEY = VECTOR["signing_key"]
TS = int(VECTOR["x_cio_timestamp"])
HEADERS = {
    "X-CIO-Timestamp": VECTOR["x_cio_timestamp"],
    "X-CIO-Signature": VECTOR["x_cio_signature"],
}


def test_known_vector_signs_to_the_published_signature() -> None:
    assert sign(BODY, VECTOR["x_cio_timestamp"], KEY) == VECTOR["x_cio_signature"]


def test_known_vector_verifies_and_returns_the_timestamp() -> None:
    assert verify(BODY, HEADERS, [KEY], tolerance=300, now=TS + 10) == TS


def test_key_is_used_as_text_not_hex_decoded() -> None:
    hex_decoded = bytes.fromhex(KEY).decode("latin-1")
    with pytest.raises(SignatureMismatch):
        verify(BODY, HEADERS, [hex_decoded], tolerance=0, now=TS)


def test_lowercase_header_names_are_accepted() -> None:
    lower = {k.lower(): v for k, v in HEADERS.items()}
    assert verify(BODY, lower, [KEY], tolerance=0, now=0) == TS


@pytest.mark.parametrize(
    "body",
    [
        BODY + b" ",
        BODY[:-1],
        BODY.replace(b'"sent"', b'"SENT"'),
        # Re-serialised JSON is the classic bug: same data, different bytes.
        json.dumps(json.loads(BODY)).encode(),
    ],
    ids=["trailing-space", "truncated", "changed-value", "reserialised"],
)
def test_any_change_to_the_body_is_rejected(body: bytes) -> None:
    with pytest.raises(SignatureMismatch):
        verify(body, HEADERS, [KEY], tolerance=0, now=TS)


def test_a_changed_timestamp_is_rejected() -> None:
    headers = {**HEADERS, "X-CIO-Timestamp": str(TS + 1)}
    with pytest.raises(SignatureMismatch):
        verify(BODY, headers, [KEY], tolerance=0, now=TS)


def test_body_only_signature_of_the_seed_write_ups_is_rejected() -> None:
    import hashlib
    import hmac

    body_only = hmac.new(KEY.encode(), BODY, hashlib.sha256).hexdigest()
    with pytest.raises(SignatureMismatch):
        verify(BODY, {**HEADERS, "X-CIO-Signature": body_only}, [KEY], tolerance=0, now=TS)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-CIO-Signature": VECTOR["x_cio_signature"]},
        {"X-CIO-Timestamp": VECTOR["x_cio_timestamp"]},
        {"X-CIO-Signature": VECTOR["x_cio_signature"], "X-CIO-Timestamp": "yesterday"},
        {"X-CIO-Signature": "", "X-CIO-Timestamp": VECTOR["x_cio_timestamp"]},
    ],
    ids=["none", "no-timestamp", "no-signature", "non-integer-timestamp", "empty-signature"],
)
def test_missing_or_malformed_headers(headers: dict[str, str]) -> None:
    with pytest.raises(MissingSignature):
        verify(BODY, headers, [KEY], tolerance=0, now=TS)


def _signed_at(raw_timestamp: str) -> dict[str, str]:
    """Headers whose signature is right for ``raw_timestamp`` taken byte for byte."""
    import hashlib
    import hmac

    message = b"v0:" + raw_timestamp.encode("utf-8") + b":" + BODY
    digest = hmac.new(KEY.encode(), message, hashlib.sha256).hexdigest()
    return {"X-CIO-Timestamp": raw_timestamp, "X-CIO-Signature": digest}


@pytest.mark.parametrize(
    "signature",
    [
        VECTOR["x_cio_signature"].upper(),
        " " + VECTOR["x_cio_signature"],
        VECTOR["x_cio_signature"] + "\n",
        VECTOR["x_cio_signature"][:63],
        VECTOR["x_cio_signature"] + "0",
        "zz\u00e9" * 21 + "z",
    ],
    ids=["uppercase", "leading-space", "trailing-newline", "63-chars", "65-chars", "not-hex"],
)
def test_signature_must_be_exactly_64_lowercase_hex(signature: str) -> None:
    with pytest.raises(MissingSignature):
        verify(BODY, {**HEADERS, "X-CIO-Signature": signature}, [KEY], tolerance=0, now=TS)


@pytest.mark.parametrize(
    "raw_timestamp",
    [
        "+" + VECTOR["x_cio_timestamp"],
        "-" + VECTOR["x_cio_timestamp"],
        " " + VECTOR["x_cio_timestamp"],
        VECTOR["x_cio_timestamp"] + " ",
        VECTOR["x_cio_timestamp"][:4] + "_" + VECTOR["x_cio_timestamp"][4:],
        "\u0661\u0667\u0660\u0660",  # Arabic-Indic digits: int() reads them, we do not
        "\uff11\uff17\uff10\uff10",  # fullwidth digits
        "1" * 21,
    ],
    ids=[
        "plus",
        "minus",
        "leading-space",
        "trailing-space",
        "underscore",
        "arabic",
        "fullwidth",
        "21-digits",
    ],
)
def test_timestamp_must_be_ascii_digits_even_when_signed(raw_timestamp: str) -> None:
    with pytest.raises(MissingSignature):
        verify(BODY, _signed_at(raw_timestamp), [KEY], tolerance=0, now=TS)


def test_rotation_accepts_old_and_new_key() -> None:
    new = "new-key"
    assert verify(BODY, HEADERS, [new, KEY], tolerance=0, now=TS) == TS
    new_headers = signed_headers(BODY, new, timestamp=TS)
    assert verify(BODY, new_headers, [new, KEY], tolerance=0, now=TS) == TS


def test_no_keys_means_nothing_verifies() -> None:
    with pytest.raises(SignatureMismatch):
        verify(BODY, HEADERS, [], tolerance=0, now=TS)


@pytest.mark.parametrize("offset", [-301, 301, 10_000])
def test_outside_tolerance_is_stale_with_the_skew(offset: int) -> None:
    with pytest.raises(StaleTimestamp) as caught:
        verify(BODY, HEADERS, [KEY], tolerance=300, now=TS + offset)
    assert caught.value.skew == offset


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_inside_tolerance_is_accepted(offset: int) -> None:
    assert verify(BODY, HEADERS, [KEY], tolerance=300, now=TS + offset) == TS


def test_tolerance_zero_disables_the_timestamp_check() -> None:
    assert verify(BODY, HEADERS, [KEY], tolerance=0, now=TS + 10**9) == TS


def test_bad_signature_is_reported_before_staleness() -> None:
    with pytest.raises(SignatureMismatch):
        verify(BODY, HEADERS, ["wrong"], tolerance=300, now=TS + 10_000)


def test_errors_do_not_contain_the_key() -> None:
    with pytest.raises(SignatureMismatch) as caught:
        verify(BODY, HEADERS, ["super-secret-key"], tolerance=0, now=TS)
    assert "super-secret-key" not in str(caught.value)


@pytest.mark.parametrize(
    ("signature", "timestamp"),
    [(VECTOR["x_cio_signature"], VECTOR["x_cio_timestamp"]), (None, "1"), ("a" * 64, None)],
    ids=["vector", "no-signature", "no-timestamp"],
)
def test_verify_values_is_verify_on_the_header_values(
    signature: str | None, timestamp: str | None
) -> None:
    # The receiver reads the two values in its one scan of the raw header list.
    headers = {
        name: value
        for name, value in (("X-CIO-Signature", signature), ("X-CIO-Timestamp", timestamp))
        if value is not None
    }
    if signature is None or timestamp is None:
        with pytest.raises(MissingSignature):
            verify_values(BODY, signature, timestamp, [KEY], now=TS)
        with pytest.raises(MissingSignature):
            verify(BODY, headers, [KEY], now=TS)
    else:
        assert verify_values(BODY, signature, timestamp, [KEY], now=TS) == TS
        assert verify(BODY, headers, [KEY], now=TS) == TS
