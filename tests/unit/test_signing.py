"""orders.signing: the one ``t=...,v1=...`` HMAC signature of the billing and sandbox webhooks."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from adapters.sandbox import protocol
from dispatcher.billing import receiver
from orders.errors import InvalidSignature
from orders.signing import SignatureHeader, signature, signature_header

BODY = b'{"id":"evt_1"}'
T = 1_700_000_000


def test_signature_is_the_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(b"s3cret", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert signature("s3cret", T, BODY) == expected


def test_header_carries_one_v1_per_secret_in_order() -> None:
    header = signature_header(["new", "old"], T, BODY)
    assert header == f"t={T},v1={signature('new', T, BODY)},v1={signature('old', T, BODY)}"
    assert signature_header("new", T, BODY) == f"t={T},v1={signature('new', T, BODY)}"


def test_header_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        signature_header([], T, BODY)


def test_parsed_header_matches_either_secret_of_a_rotation() -> None:
    parsed = SignatureHeader.parse(signature_header(["new", "old"], T, BODY))
    assert parsed is not None
    assert parsed.timestamp == T
    assert parsed.matches("new", BODY)
    assert parsed.matches("old", BODY)
    assert not parsed.matches("other", BODY)
    assert not parsed.matches("new", BODY + b" ")
    # A receiver holding both secrets of a rotation (Stripe's endpoint secrets, for one)
    assert parsed.matches(["other", "old"], BODY)
    assert not parsed.matches(["other", "another"], BODY)
    assert not parsed.matches([], BODY)


def test_parse_skips_unknown_keys_and_spaces() -> None:
    digest = signature("k", T, BODY)
    parsed = SignatureHeader.parse(f" t={T} , v2=abc, v1={digest} ")
    assert parsed == SignatureHeader(T, (digest,))


@pytest.mark.parametrize(
    "header",
    [
        "",
        f"t={T}",
        "v1=" + "0" * 64,
        "t=abc,v1=" + "0" * 64,
        "t=9999999999999,v1=" + "0" * 64,  # 13 digits
        "t=-5,v1=" + "0" * 64,
        f"t={T},v1=" + "0" * 63,
        f"t={T},v1=" + "A" * 64,  # upper-case hex is not what hexdigest writes
        f"t={T},v1=" + "é" * 64,  # would make compare_digest raise TypeError
        "t=١٢٣,v1=" + "0" * 64,  # digits, but not ASCII ones
        f"t={T},t={T + 1},v1=" + "0" * 64,  # which one was signed?
        f"t={T},t=abc,v1=" + "0" * 64,
    ],
)
def test_parse_refuses_headers_without_a_timestamp_and_a_sha256_digest(header: str) -> None:
    assert SignatureHeader.parse(header) is None


def test_billing_receiver_and_sandbox_sign_with_the_same_function() -> None:
    assert receiver.sign("k", BODY, timestamp=T) == protocol.signature_header("k", T, BODY)
    assert receiver.signature is signature
    assert protocol.SignatureHeader is SignatureHeader


def test_receiver_refuses_a_malformed_digest_as_an_invalid_signature() -> None:
    # Given a header whose v1 holds non-ASCII text (compare_digest would raise TypeError)
    header = f"t={T},v1=" + "é" * 64
    # Then the receiver answers with its one error, naming what is missing
    with pytest.raises(InvalidSignature, match="no timestamp or no v1"):
        receiver.verify("k", header, BODY, now=T)
