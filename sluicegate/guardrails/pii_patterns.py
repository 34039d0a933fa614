"""The `pii` guard's pattern detectors: a stateless regex that finds candidates, and a pure
validator that decides on a candidate from its text and its surroundings.

Validators check the format (Luhn and card ranges, IBAN country formats, phone numbering plans,
`ipaddress`, top-level domains) and the context (a version string, a URL's host, a date, a git
remote), and drop what is never personal data (private networks, reserved top-level domains).
Samples that stand for personal data in docs and tests (test card numbers, `example.com`
addresses, documentation address ranges) are reported like real ones. National ids are in
`pii_ids`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

FLAGS = re.IGNORECASE
#: an address longer than RFC 5321 allows is not one
EMAIL_MAX = 254

#: (text, start, end) -> is the candidate text[start:end] a finding
Validator = Callable[[str, int, int], bool]


@dataclass(frozen=True, slots=True)
class Detector:
    """One entity's pattern detector: candidates by regex, each kept only if `validate` says so."""

    entity: str
    pattern: re.Pattern[str]
    validate: Validator
    #: a candidate that fails may still hold a valid one ending at an earlier space or dash
    #: (an IBAN's groups run on into the next word: `SA03 8000 ... 7519 today`)
    shrink: bool = False
    #: a text with fewer ASCII digits than this holds no candidate (the pattern is not run)
    min_digits: int = 0
    #: a character every candidate holds (`@`, `:`); a text without it is not searched
    needs: str = ""
    #: a pattern found wherever a valid candidate is, cheaper to look for than `pattern` (the
    #: guard's one-pass prefilter uses it): a text without a match of it holds no finding
    gate: re.Pattern[str] | None = None

    def applies(self, text: str, digits: int) -> bool:
        """A cheap test that `text` may hold a candidate: its digit count, a needed character."""
        return digits >= self.min_digits and (not self.needs or self.needs in text)

    def find(self, text: str) -> list[tuple[int, int]]:
        """The spans of valid candidates in `text`."""
        out = []
        for m in self.pattern.finditer(text):
            start, end = m.span()
            if self.validate(text, start, end):
                out.append((start, end))
            elif self.shrink:
                for cut in sorted((i for i in range(start, end) if text[i] in " -"), reverse=True):
                    if self.validate(text, start, cut):
                        out.append((start, cut))
                        break
        return out


def before(text: str, start: int, n: int = 32) -> str:
    """Up to `n` characters before `start`."""
    return text[max(0, start - n) : start]


# ---------------------------------------------------------------------------------------- email

EMAIL = re.compile(r"(?<![\w.%+-])[a-z0-9._%+-]{1,64}@(?:[a-z0-9-]{1,63}\.){1,8}[a-z]{2,24}(?![\w-])", FLAGS)
#: machine mailboxes that commit logs and templates are full of
_NO_REPLY = re.compile(r"^(?:no-?reply|do-?not-?reply|mailer-daemon|postmaster)$|\.noreply$", FLAGS)


@cache
def top_level_domains() -> frozenset[str]:
    """The ICANN top-level domains, from the package's data file (see `scripts/gen_tlds.py`)."""
    text = resources.files("sluicegate.guardrails").joinpath("data", "tlds.txt").read_text("utf-8")
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


def email_ok(text: str, start: int, end: int) -> bool:
    """An address someone reads mail at: a real top-level domain (so not `.test`, `.invalid`,
    `.localhost`, `.local`), not a git remote (`git@host:org/repo`) or a URL's user
    (`https://git@host/...`). Addresses at the documentation domains (`example.com`) are
    reported: they are what a pasted address looks like in every test and sample, and an
    operator who wants them through lists them in `allow`."""
    if end - start > EMAIL_MAX:
        return False
    local, _, domain = text[start:end].lower().rpartition("@")
    if domain.rsplit(".", 1)[-1] not in top_level_domains():
        return False  # `.test`, `.invalid`, `.localhost`, `.local`, `.internal`, `x@y.shape`
    if _NO_REPLY.search(local) or domain.endswith("noreply.github.com"):
        return False
    if end < len(text) and text[end] == ":" and end + 1 < len(text) and text[end + 1] in "~/._-" + _WORD:
        return False  # scp-style remote: git@github.com:org/repo.git
    return not before(text, start, 3).endswith("://")


_WORD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

# ----------------------------------------------------------------------------------------- card

# Each pattern opens with a character class and checks the character before the match just after
# it (`(?<!X.)`): the regex engine then skips ahead to where that class matches.
CARD = re.compile(r"\d(?<![\w.+-].)(?:[ -]?\d){11,18}(?![\w]|[.-]\d)")
#: issuer (IIN) prefixes and the lengths their cards have: Visa, Mastercard, Amex, Discover,
#: Diners, JCB, UnionPay, Maestro, Mir
_CARD_RANGES: tuple[tuple[int, int, frozenset[int]], ...] = (
    (4, 4, frozenset({13, 16, 19})),
    (51, 55, frozenset({16})),
    (2221, 2720, frozenset({16})),
    (34, 34, frozenset({15})),
    (37, 37, frozenset({15})),
    (6011, 6011, frozenset({16, 17, 18, 19})),
    (644, 649, frozenset({16, 17, 18, 19})),
    (65, 65, frozenset({16, 17, 18, 19})),
    (300, 305, frozenset({14, 15, 16, 17, 18, 19})),
    (36, 36, frozenset({14, 15, 16, 17, 18, 19})),
    (38, 39, frozenset({16, 17, 18, 19})),
    (3528, 3589, frozenset({16, 17, 18, 19})),
    (62, 62, frozenset({16, 17, 18, 19})),
    (50, 50, frozenset({12, 13, 14, 15, 16, 17, 18, 19})),
    (56, 69, frozenset({12, 13, 14, 15, 16, 17, 18, 19})),
    (2200, 2204, frozenset({16, 17, 18, 19})),
)


def card_ok(text: str, start: int, end: int) -> bool:
    """A payment card number: one kind of separator, an issuer's prefix and length, Luhn-valid.

    Numbers that payment processors publish for tests (4111 1111 1111 1111 ...) are reported too:
    the gateway cannot tell a pasted test number from an issued one, and both look alike to a
    reader of the audit; redacting a test number costs nothing."""
    candidate = text[start:end]
    if " " in candidate and "-" in candidate:
        return False
    digits = candidate.replace(" ", "").replace("-", "")
    from stdnum import luhn  # the checks' libraries load on the first candidate they check

    if len(set(digits)) == 1 or not luhn.is_valid(digits):
        return False
    return any(lo <= int(digits[: len(str(lo))]) <= hi and len(digits) in lengths for lo, hi, lengths in _CARD_RANGES)


# ----------------------------------------------------------------------------------------- IBAN

IBAN = re.compile(r"[a-z](?<!\w.)[a-z]\d{2}(?:[ -]?[a-z0-9]{4}){2,7}(?:[ -]?[a-z0-9]{1,4})?(?!\w)", FLAGS)


def iban_ok(text: str, start: int, end: int) -> bool:
    """An IBAN of one of the countries that issue them: its length, its BBAN format, mod 97."""
    from stdnum import iban

    return bool(iban.is_valid(text[start:end].replace("-", " ")))


# ------------------------------------------------------------------------------------------- IP

IPV4 = re.compile(r"\d(?<![\w.].)\d{0,2}(?:\.\d{1,3}){3}(?![\w]|\.\d)")
IPV6 = re.compile(r"[0-9a-f:](?<![\w:.].)[0-9a-f.]*:[0-9a-f.]*:[0-9a-f:.]{0,42}(?<![.])(?![\w:]|\.\w)", FLAGS)
#: what makes a dotted quad a version (`v10.0.0.1`, `version 1.2.3.4`, `pkg@1.2.3.4`, `==1.2.3.4`)
_VERSION_BEFORE = re.compile(
    r"(?:\bv|\bversion\s*:?\s*|\bver\.?\s*|\brelease\s*|\bbuild\s*|\bfirmware\s*|\bfw\s*|[@=~^<>]=?\s*"
    r"|\bnode\s+|\bpython\s+)$",
    FLAGS,
)


#: public DNS resolvers, in every resolver config and network how-to: infrastructure, not people
PUBLIC_RESOLVERS = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "149.112.112.112", "208.67.222.222",
        "208.67.220.220", "2001:4860:4860::8888", "2001:4860:4860::8844", "2606:4700:4700::1111",
        "2606:4700:4700::1001", "2620:fe::fe",
    )
)  # fmt: skip


#: documentation ranges (RFC 5737, RFC 3849): what a public address looks like in samples and
#: tests, so reported like one
DOCUMENTATION_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)


def ip_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Addresses that can point at someone: global unicast, and the documentation ranges that
    stand for it. Private networks (RFC 1918, unique local), loopback, link-local, shared,
    benchmarking, multicast and reserved ranges, and the public DNS resolvers, say nothing of a
    person."""
    if any(address in net for net in DOCUMENTATION_NETWORKS if net.version == address.version):
        return True
    return address.is_global and not address.is_multicast and address not in PUBLIC_RESOLVERS


_VERSION_WORD = re.compile(
    r"\b(?:versions?|releases?|upgrade|firmware|builds?|updates?|patch|changelog|compatible|supported|deprecated)\b",
    FLAGS,
)
_LIST_BEFORE = re.compile(r"\d+(?:\.\d+){2,}\s*(?:→|->|=>|,|and|or|to)\s*$")
_LIST_AFTER = re.compile(r"\s*(?:→|->|=>|,|and|or|to)\s*\d+(?:\.\d+){2,}")


def in_version_list(text: str, start: int, end: int) -> bool:
    """A dotted number listed beside other versions (`1.10.0.4 → 1.12.3.1`) on a line that
    speaks of versions (`upgrade path`, `supported`, `firmware`)."""
    line_start = text.rfind("\n", 0, start) + 1
    if not _VERSION_WORD.search(text, line_start, start):
        return False
    return bool(_LIST_BEFORE.search(before(text, start, 40)) or _LIST_AFTER.match(text, end))


def ipv4_ok(text: str, start: int, end: int) -> bool:
    """A public IPv4 address, not a version number and not the host of a URL."""
    try:
        address = ipaddress.IPv4Address(text[start:end])
    except ValueError:
        return False
    if not ip_public(address):
        return False
    head = before(text, start)
    if _VERSION_BEFORE.search(head) or head.endswith("://") or in_version_list(text, start, end):
        return False
    # `1.2.3.4-beta`, `1.2.3.4+build`: a version's suffix
    return not (end < len(text) and text[end] in "-+" and end + 1 < len(text) and text[end + 1].isalnum())


def ipv6_ok(text: str, start: int, end: int) -> bool:
    """A public IPv6 address of three groups or more with a digit in it."""
    candidate = text[start:end]
    if not any(c.isdigit() for c in candidate) or len([g for g in candidate.split(":") if g]) < 3:
        return False  # `::2` in a slice, `dead::beef` in C++
    try:
        address = ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return ip_public(address) and not before(text, start).endswith(("://", "://["))


# ---------------------------------------------------------------------------------------- phone

# Compact E.164 (`+33612345678`), or digit groups with separators and an optional `+cc` and
# `(area)`. Groups are at most 8 digits, so a bare run of digits (an order number) never matches.
PHONE = re.compile(
    r"(?<![\w+.:/%-])(?:\+\d{7,15}|(?:\+\d{1,3}[ .-]?)?(?:\(0?\d{1,5}\)[ .-]?)?"
    r"\d{1,8}(?:(?:[ .-]|\s?\(\d{1,5}\)\s?)\d{1,8}){0,6})"
    r"(?![\w+%]|[.,:/-]\d)",
    FLAGS,
)
#: what every valid phone candidate holds: eight digits (`phone_ok` wants 8 to 15), each at most two
#: characters after the one before (a separator, or ` (` / `) ` around an area code)
PHONE_GATE = re.compile(r"\d(?:\D{0,2}\d){7}")
#: what precedes a number that is a reference rather than a phone
_REFERENCE_BEFORE = re.compile(
    r"\b(?:order|invoice|ref|reference|tracking|ticket|case|account|acct|sku|po|booking|confirmation|serial|"
    r"customer|transaction|receipt|id|pid|port|build|version|isbn|issn|lot|batch|model|part|item)\s*"
    r"(?:no\.?|nr\.?|number|id|#)?\s*[:#=]?\s*$|#\s*$|\b(?:no|nr|n[°º])\.?\s*$|[$€£¥]\s*$",
    FLAGS,
)
_DATE = re.compile(
    r"(?:19|20)\d\d[-./ ](?:0?[1-9]|1[0-2])[-./ ](?:0?[1-9]|[12]\d|3[01])"
    r"|(?:0?[1-9]|[12]\d|3[01])[-./ ](?:0?[1-9]|1[0-2])[-./ ](?:19|20)\d\d"
    r"|(?:0?[1-9]|1[0-2])[-./ ](?:0?[1-9]|[12]\d|3[01])[-./ ](?:19|20)\d\d"
)
#: a token of letters and digits just before: the number is the end of a longer code
_CODE_BEFORE = re.compile(r"\b(?=[A-Z]*\d)(?=\d*[A-Z])[A-Z0-9]{2,}[ -]$")
_AFTER_NOT_PHONE = re.compile(r"\s*(?:%|[kKmMgGtT]?[bB]\b|ms\b|s\b|sec|min|bytes|rows|items|tokens|px|em\b)")
#: the countries whose national numbering plans a number without `+` is checked against
DEFAULT_PHONE_REGIONS = ("US", "GB", "FR", "DE", "ES", "IT", "NL", "BE", "CH", "IN", "BR", "AU")


def phone_validator(regions: Sequence[str] = DEFAULT_PHONE_REGIONS) -> Validator:
    """A validator for `PHONE` candidates: a number in use in a numbering plan (with `+`: its
    country's; without: one of `regions`'), shaped as people write phones, not as a date, a time,
    an amount, a version, a reference or a quantity."""
    regions = tuple(regions)

    def phone_ok(text: str, start: int, end: int) -> bool:
        number = text[start:end]
        digits = sum(c.isdigit() for c in number)
        if not 8 <= digits <= 15:
            return False
        if _REFERENCE_BEFORE.search(before(text, start)) or _AFTER_NOT_PHONE.match(text, end):
            return False
        if _CODE_BEFORE.search(before(text, start, 16)):
            return False  # the tail of a longer code: a tracking number, a part number
        if number.startswith("+"):
            return _valid_number(number, (None,))
        groups = re.findall(r"\d+", re.sub(r"\(\d+\)", "", number))
        sizes = [len(g) for g in groups]
        separators = set(re.findall(r"[ .-]", re.sub(r"\s?\(\d+\)\s?", "", number)))
        if not 9 <= digits <= 12 or len(groups) < 2 or len(separators) > 1 or _DATE.search(number):
            return False
        if len(groups) == 2 and sizes[0] == sizes[1] and int(groups[1]) > int(groups[0]):
            return False  # a range: ports 30000-32767, ids 100000-199999
        if sizes == [3, 2, 4]:
            return False  # the shape of a US SSN (a sample one, or the id detector had it)
        if "." in separators and (len(groups) < 3 or min(sizes) < 2 or max(sizes) > 4 or len(groups) == 4 > max(sizes)):
            return False  # a decimal number, a version, an IPv4 address
        if all(n == 3 for n in sizes[1:]) and sizes[0] <= 3:
            return False  # thousands: 1 234 567 890
        return _valid_number(number, regions)

    return phone_ok


#: ranges set aside for drama and documentation (Ofcom, NANPA 555-01XX, ARCEP), by country
#: code and national number prefix: they ring no one
_FICTIONAL = {
    44: ("1134960", "1144960", "1154960", "1164960", "1174960", "1184960", "1214960", "1314960", "1414960",
         "1514960", "1614960", "1632960", "2079460", "2890180", "2920180", "7700900", "8081570", "9098790",
         "3069990"),
    33: ("19900", "26191", "36391", "46391", "56391", "63998", "73998"),
}  # fmt: skip


def _valid_number(number: str, regions: Sequence[str | None]) -> bool:
    import phonenumbers

    for region in regions:
        try:
            parsed = phonenumbers.parse(number, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(parsed):
            national, country = str(parsed.national_number), parsed.country_code or 0
            if national.startswith(_FICTIONAL.get(country, ())):
                return False
            return not (country == 1 and national[3:7] == "5550" and national[7:8] == "1")
    return False


def detectors(phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS) -> dict[str, list[Detector]]:
    """The pattern detectors of each entity but `NATIONAL_ID`, in the order they claim text."""
    return {
        "EMAIL": [Detector("EMAIL", EMAIL, email_ok, needs="@")],
        "CREDIT_CARD": [Detector("CREDIT_CARD", CARD, card_ok, min_digits=12)],
        "IBAN": [Detector("IBAN", IBAN, iban_ok, shrink=True, min_digits=8)],
        "IP_ADDRESS": [
            Detector("IP_ADDRESS", IPV4, ipv4_ok, min_digits=4, needs="."),
            Detector("IP_ADDRESS", IPV6, ipv6_ok, min_digits=1, needs=":"),
        ],
        "PHONE": [Detector("PHONE", PHONE, phone_validator(phone_regions), min_digits=8, gate=PHONE_GATE)],
    }


def count_digits(text: str) -> int:
    """ASCII digits in `text` (the detectors' gate; C-speed counting)."""
    return sum(map(text.count, "0123456789"))


__all__ = [
    "DEFAULT_PHONE_REGIONS",
    "PUBLIC_RESOLVERS",
    "Detector",
    "Validator",
    "card_ok",
    "count_digits",
    "detectors",
    "email_ok",
    "iban_ok",
    "ip_public",
    "ipv4_ok",
    "ipv6_ok",
    "phone_validator",
    "top_level_domains",
]
