"""The `pii` guard's national id detectors: each a pattern for the id's written form and its
check (check digits, check letters, an embedded date), through `python-stdnum`.

Ids written as a bare run of digits (Dutch BSN, German tax id, Polish PESEL) look like any other
number, so they count only right after a word that names them. A sample number that passes its
checks (`123-45-6789`) is a finding like any other: the gateway cannot tell a sample from a real
number, and a test that pastes one expects it caught.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from sluicegate.guardrails.pii_patterns import Detector, before

FLAGS = re.IGNORECASE


#: the python-stdnum modules the checks use (`PiiGuard.prepare` imports them)
STDNUM_MODULES: list[str] = []


def _stdnum(module: str) -> Callable[[str], bool]:
    """`is_valid` of a python-stdnum module (`us.ssn`), imported on the first candidate it checks:
    the library's modules and data take a few MiB that a gateway which never sees one can keep."""
    STDNUM_MODULES.append(f"stdnum.{module}")

    def is_valid(number: str) -> bool:
        return bool(importlib.import_module(f"stdnum.{module}").is_valid(number))

    return is_valid


def _checked(is_valid: Callable[[str], bool]) -> Callable[[str, int, int], bool]:
    def check(text: str, start: int, end: int) -> bool:
        try:
            return bool(is_valid(text[start:end]))
        except ImportError:
            raise  # python-stdnum missing: a broken install, not an invalid number
        except Exception:  # stdnum raises on shapes its own pattern would not have produced
            return False

    return check


_ssn_valid = _stdnum("us.ssn")


def _ssn_ok(text: str, start: int, end: int) -> bool:
    candidate = text[start:end]
    if candidate[3] != candidate[6]:
        return False  # one separator throughout
    return _ssn_valid(candidate.replace(" ", "-"))


def _nino_ok(text: str, start: int, end: int) -> bool:
    # No check character: the prefix rules are in the pattern; spaced only as the card prints it.
    return True


def _named(pattern: str) -> Callable[[Callable[[str], bool]], Callable[[str, int, int], bool]]:
    """A check that also needs the id's name just before it (`BSN: 111222333`)."""
    name = re.compile(rf"(?:{pattern})\W{{0,12}}$", FLAGS)

    def wrap(is_valid: Callable[[str], bool]) -> Callable[[str, int, int], bool]:
        check = _checked(is_valid)
        return lambda text, start, end: bool(name.search(before(text, start, 40))) and check(text, start, end)

    return wrap


def _compile(first: str, rest: str, flags: int = 0) -> re.Pattern[str]:
    # The guard on the character before comes after the first one: a pattern that opens with a
    # character class lets the regex engine skip ahead to where that class matches.
    return re.compile(rf"{first}(?<![\w.-].){rest}(?![\w]|[.-]\w)", flags)


NATIONAL_IDS: tuple[Detector, ...] = (
    # US Social Security number: 123-45-6789 (area, group and serial rules)
    Detector("NATIONAL_ID", _compile(r"\d", r"\d{2}[- ]\d{2}[- ]\d{4}"), _ssn_ok, min_digits=9),
    # UK National Insurance number: QQ 12 34 56 C (the prefixes never issued are left out)
    Detector(
        "NATIONAL_ID",
        _compile(
            r"[a-ceghj-pr-tw-z]", r"[a-ceghj-npr-tw-z](?<!bg|gb|nk|kn|tn|nt|zz) ?\d{2} ?\d{2} ?\d{2} ?[a-d]", FLAGS
        ),
        _nino_ok,
        min_digits=6,
    ),
    # French NIR (social security): sex, year, month, place (Corsica 2A/2B), and its key
    Detector(
        "NATIONAL_ID",
        _compile(r"[12]", r" ?\d{2} ?(?:0[1-9]|1[0-2]|[2-9]\d) ?(?:\d{2}|2[ab]) ?\d{3} ?\d{3} ?\d{2}", FLAGS),
        _checked(_stdnum("fr.nir")),
        min_digits=13,
    ),
    # Spanish DNI and NIE, with their check letter
    Detector("NATIONAL_ID", _compile(r"\d", r"\d{7}-?[a-z]", FLAGS), _checked(_stdnum("es.dni")), min_digits=8),
    Detector("NATIONAL_ID", _compile(r"[xyz]", r"-?\d{7}-?[a-z]", FLAGS), _checked(_stdnum("es.nie")), min_digits=7),
    # Italian codice fiscale (letters may stand for digits: omocodia)
    Detector(
        "NATIONAL_ID",
        _compile(r"[a-z]", r"[a-z]{5}[\dlmnp-v]{2}[abcdehlmprst][\dlmnp-v]{2}[a-z][\dlmnp-v]{3}[a-z]", FLAGS),
        _checked(_stdnum("it.codicefiscale")),
        min_digits=4,  # seven digits, of which a few may be written as letters (omocodia)
    ),
    # Brazilian CPF: 390.533.447-05
    Detector("NATIONAL_ID", _compile(r"\d", r"\d{2}\.\d{3}\.\d{3}-\d{2}"), _checked(_stdnum("br.cpf")), min_digits=11),
    # Swedish personnummer (date and Luhn), Finnish henkilötunnus (date and check character)
    Detector(
        "NATIONAL_ID", _compile(r"\d", r"(?:\d{2})?\d{5}[-+]\d{4}"), _checked(_stdnum("se.personnummer")), min_digits=10
    ),
    Detector(
        "NATIONAL_ID",
        _compile(r"\d", r"\d{5}[-+a-fu-y]\d{3}[0-9a-y]", FLAGS),
        _checked(_stdnum("fi.hetu")),
        min_digits=9,
    ),
    # Canadian SIN (Luhn), Indian Aadhaar (Verhoeff), in their printed groups
    Detector("NATIONAL_ID", _compile(r"\d", r"\d{2}([ -])\d{3}\1\d{3}"), _checked(_stdnum("ca.sin")), min_digits=9),
    Detector(
        "NATIONAL_ID", _compile(r"[2-9]", r"\d{3}([ -])\d{4}\1\d{4}"), _checked(_stdnum("in_.aadhaar")), min_digits=12
    ),
    # Bare digits: only where named
    Detector(
        "NATIONAL_ID",
        _compile(r"\d", r"\d{8}"),
        _named(r"\bbsn|burgerservicenummer|sofinummer")(_stdnum("nl.bsn")),
        min_digits=9,
    ),
    Detector(
        "NATIONAL_ID",
        _compile(r"\d", r"\d ?\d{3} ?\d{3} ?\d{3}"),
        _named(r"steuer-?id|steueridentifikationsnummer|\bidnr|identifikationsnummer")(_stdnum("de.idnr")),
        min_digits=11,
    ),
    Detector("NATIONAL_ID", _compile(r"\d", r"\d{10}"), _named(r"\bpesel")(_stdnum("pl.pesel")), min_digits=11),
)

__all__ = ["NATIONAL_IDS"]
