"""A text's salient signature: a digest of the tokens whose change flips its meaning.

The semantic cache serves a stored answer only when the embeddings are close *and* the signatures
are equal, since embeddings barely tell "10 miles" from "20 miles" or "safe" from "not safe".
Salient tokens are found by structure and by small closed classes, not by example sentences:

- numbers (digits, separators, decimals, signs, number words, ordinals, scales), with the unit or
  currency next to them; physical and currency units anywhere; dates, times, months, weekdays;
- negation: not, n't, no, never, without, except ..., and un-/non- words (unsafe, non-empty);
- poles: words whose opposite flips the meaning (more/less, max/min, before/after, first/last,
  better/worse, enable/disable, add/remove, encrypt/decrypt, import/export ...), and which name or
  number follows `to`/`into` (a conversion's target) or `than` (a comparison's other side);
- names: capitalised words inside a sentence, acronyms, words with inner capitals or digits
  (iPhone, GPT-4), quoted strings, URLs, emails, paths, code identifiers, command-line flags.

Limitations: a name in lower case ("install numpy" / "install pandas") or capitalised only because
it opens a sentence is a plain word here, as are antonyms outside the closed classes: the
similarity threshold alone keeps those apart. A rewording that crosses classes ("delete" / "get
rid of", "a mile" / "1 mile", "more than 5" / "at least 6") changes the signature: a miss.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterator
from decimal import Decimal


def _table(spec: str) -> dict[str, str]:
    """`feature: word word ... | feature: ...` lines -> {word: feature}."""
    table: dict[str, str] = {}
    for group in spec.replace("|", "\n").strip().splitlines():
        feature, words = group.split(":", 1)
        table.update(dict.fromkeys(words.split(), feature.strip()))
    return table


NEGATIONS = _table("""
    neg: not no never none nobody nothing nowhere neither nor without cannot false non
    neg: impossible incorrect invalid inactive incomplete inaccurate insecure inconsistent illegal irrelevant
    neg: irregular improper dislike disagree disallow disapprove dishonest disconnect
    except: except excluding unless
    only: only
""")
#: a line holds a pole and its opposite. Where one pole is also a generic verb of requests ("show", "add",
#: "include", "enable", "start", "open", "write"), only the other is listed: the pair still differs, and
#: a rewording that drops the generic verb keeps its signature.
POLES = _table("""
    more: more greater larger bigger higher above over exceed increase raise grow longer upper ascending asc
    less: less fewer smaller lower below under decrease reduce shrink shorter descending desc
    max: max maximum most largest biggest greatest highest top longest maximise maximize
    min: min minimum least fewest smallest lowest bottom shortest minimise minimize
    before: before prior earlier previous preceding ago | after: after later next subsequent
    newest: newest latest recent | oldest: oldest earliest | last: last final
    better: better improve | worse: worse worst | faster: faster fastest quicker quickest | slower: slower slowest
    cheaper: cheaper cheapest | easier: easier easiest simpler simplest | harder: harder hardest
    same: same identical equal equivalent | differ: different differ difference distinct unequal
    x2: double twice | x3: triple thrice | always: always | sometimes: sometimes
    disable: disable deactivate | deny: deny forbid block prohibit ban | exclude: exclude | hide: hide
    remove: remove delete erase | stop: stop halt terminate prevent avoid | close: close shut | out: out off
    accept: accept approve | reject: reject decline refuse | success: succeed success successful | fail: fail failure
    encrypt: encrypt | decrypt: decrypt | encode: encode | decode: decode | compress: compress zip
    decompress: decompress unzip | serialize: serialize serialise | deserialize: deserialize deserialise
    import: import | export: export | upload: upload | download: download | push: push | pull: pull
    send: send | receive: receive | buy: buy purchase | sell: sell | win: win | lose: lose
    profit: profit gain | loss: loss | input: input | output: output | read: read load
    fire: fire dismiss | promote: promote | demote: demote | inside: inside internal | outside: outside external
    public: public | private: private | male: male | female: female
""")
_ORDINALS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth "
    "fifteenth sixteenth seventeenth eighteenth nineteenth twentieth"
).split()
ORDINALS = {word: f"ord:{n}" for n, word in enumerate(_ORDINALS, 1)}
_SMALL = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
NUMBER_WORDS = {word: Decimal(n) for n, word in enumerate(_SMALL)} | {
    word: Decimal(n)
    for n, word in zip(range(20, 100, 10), "twenty thirty forty fifty sixty seventy eighty ninety".split(), strict=True)
}
NUMBER_WORDS["half"] = Decimal("0.5")
#: scales multiply the part of the number before them; `k` and `bn` only when written onto digits
MULTIPLIERS = {"hundred": Decimal(100), "dozen": Decimal(12)}
SCALES = {"thousand": Decimal(10**3), "million": Decimal(10**6), "billion": Decimal(10**9)}
SCALES |= {"trillion": Decimal(10**12), "k": Decimal(10**3), "bn": Decimal(10**9)}
#: units next to a number (`10 km`, `10km`); the first group of lines also count on their own (`to km`)
_PHYSICAL = _table("""
    km: km kms kilometer kilometre
    mile: mile mi
    m: meter metre
    cm: cm centimeter centimetre
    mm: mm millimeter millimetre
    ft: ft foot feet
    inch: inch inches
    yd: yd yard
    kg: kg kgs kilogram kilo
    g: gram gramme
    mg: mg milligram
    lb: lb lbs pound
    oz: oz ounce
    t: tonne ton
    l: liter litre
    ml: ml milliliter millilitre
    gal: gallon gal
    °c: °c celsius centigrade
    °f: °f fahrenheit
    kelvin: kelvin
    usd: usd dollar buck
    eur: eur euro
    gbp: gbp sterling
    jpy: jpy yen
    inr: inr rupee
    chf: chf franc
    kb: kb kib kilobyte
    mb: mb mib megabyte
    gb: gb gib gigabyte
    tb: tb tib terabyte
    mph: mph
    kph: kph kmh
    kwh: kwh
""")
UNITS = _PHYSICAL | _table("""
    m: m
    g: g
    l: l
    ms: ms msec millisecond
    s: s sec secs second
    min: min mins minute
    h: h hr hrs hour
    day: day
    week: week wk
    month: month
    year: year yr
    b: b byte
    bit: bit
    %: percent pct
    cent: cent
    x: x times
    px: px pixel
    word: word
    token: token
    char: char character
    line: line
    page: page
    sentence: sentence
    paragraph: paragraph
    ghz: ghz
    mhz: mhz
    hz: hz
    w: w watt
    kw: kw kilowatt
    v: v volt
    rpm: rpm
""")
CURRENCY_SYMBOLS = {"$": "usd", "€": "eur", "£": "gbp", "¥": "jpy", "₹": "inr"}
MONTHS = {
    m: n
    for n, m in enumerate(
        "january february march april may june july august september october november december".split(), 1
    )
}
MONTHS |= {m[:3]: n for m, n in list(MONTHS.items())} | {"sept": 9}
WEEKDAYS = frozenset(
    "monday tuesday wednesday thursday friday saturday sunday today tomorrow yesterday tonight".split()
)
NON_NAMES = frozenset({"i", "i'm", "i'll", "i've", "i'd", "ok"})
#: words starting with `un` that do not negate what follows
UN_WORDS = ("under", "uni", "until", "unto", "uncle", "unary", "unanimous", "unless")
_CLASSES = NEGATIONS | POLES | ORDINALS
#: a name or quantity after these words is marked with its role, when the sentence already named one of
#: its kind: "from French to German" is not "from German to French", yet "into Spanish" is "in Spanish"
_MARKERS = {
    "to": ("to:", frozenset({"name", "n", "u"})),
    "into": ("to:", frozenset({"name", "n", "u"})),
    "in": ("to:", frozenset({"n", "u"})),  # 100 °F in °C
    "than": ("than:", frozenset({"name", "u"})),  # "more than 5" is "over 5"
}
#: a quoted text is what is being worked on, not a source: `Translate "hi" into Spanish` has no source language
_NAME_KINDS = frozenset({"name", "id", "dotted", "path", "url", "email", "call"})
_ARTICLES = frozenset({"the", "a", "an"})

_TOKEN = re.compile(
    r"""
      (?P<url>(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>"'`]*[^\s<>"'`.,;:!?)\]])
    | (?P<email>\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+)
    | (?P<quote>`[^`\n]+`|"[^"\n]+"|(?<![\w'])'[^'\n]+'(?![\w']))
    | (?P<path>(?<![\w/.~])(?:~|\.{1,2})?/[\w.-]+(?:/[\w.-]+)*/?|\b[A-Za-z]:\\[\w\\.-]+
        |\b[\w.-]+(?:/[\w.-]+)*/[\w-]+\.[A-Za-z]\w*)
    | (?P<date>\b\d{4}-\d\d?-\d\d?\b|\b\d\d?/\d\d?/\d{2,4}\b)
    | (?P<time>\b\d\d?:\d\d(?::\d\d)?(?:\s?[ap]\.?m\b\.?)?|\b\d\d?\s?[ap]m\b)
    | (?P<version>\bv?\d+(?:\.\d+){2,}\b)
    | (?P<dotted>\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+\b(?:\(\))?)
    | (?P<flag>(?<![\w-])--?[A-Za-z][\w-]*)
    | (?P<call>\b\w+\(\))
    | (?P<number>(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?)
    | (?P<word>_*[^\W\d_][\w'-]*)
    | (?P<symbol>°[CFcf]?|[$€£¥₹%])
    | (?P<comma>[,(){}\[\]])
    | (?P<stop>[.!?;:]+(?=\s|$)|\n)
    """,
    re.VERBOSE,
)
_PUNCT = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": " - "})


def signature(text: str) -> str:
    """A short stable digest (hex) of the text's salient tokens: rewordings share it."""
    joined = "\x1f".join(salient_tokens(text))
    return hashlib.blake2b(joined.encode(), digest_size=16).hexdigest()


def salient_tokens(text: str) -> list[str]:
    """The normalised salient tokens of `text`, sorted (a multiset): what `signature` digests."""
    return sorted(_Scan(unicodedata.normalize("NFKC", text).translate(_PUNCT)).run())


class _Scan:
    """One pass over a text's tokens, with the little state that numbers and sentences need."""

    def __init__(self, text: str) -> None:
        self.text = text
        words = re.findall(r"[^\W\d_]{2,}", text)
        mixed = [w for w in words if not w.isupper()]
        # shouted or title-cased text says nothing by its capitals
        self.shouting = len(words) >= 3 and len(mixed) <= 0.4 * len(words)
        self.title_case = len(mixed) >= 4 and sum(w[0].isupper() for w in mixed) >= 0.8 * len(mixed)
        self.features: list[str] = []
        self.marker = ""  # `to:` / `than:`, for the next name or quantity
        self.marked_kinds: frozenset[str] = frozenset()
        self.seen: set[str] = set()  # "name", "quantity": what this sentence named so far
        self.currency = ""  # a currency symbol just read, for the number after it
        # the number being read: total (thousands and up) + current, or its digits as written
        self.total: Decimal | None = None
        self.current: Decimal | None = None
        self.digits = ""
        self.unit = ""

    def run(self) -> list[str]:
        sentence_start, previous_end, previous_word = True, -1, ""
        for match in _TOKEN.finditer(self.text):
            kind, value = match.lastgroup or "", match.group()
            self._token(kind, value, match.start() == previous_end, sentence_start)
            # "Dr. Smith": a title's full stop does not end the sentence
            sentence_start = kind == "stop" and not (value == "." and previous_word in _TITLES)
            previous_end, previous_word = match.end(), value.casefold() if kind == "word" else ""
        self._flush("", "", attached=False)
        return self.features

    def _token(self, kind: str, value: str, attached: bool, sentence_start: bool) -> None:
        if kind == "word" and "-" in value.strip("-'") and not any(c.isdigit() for c in value):
            for i, part in enumerate(p for p in value.split("-") if p):  # one-hour, non-empty, twenty-five
                self._token(kind, part, False, sentence_start and i == 0)
            return
        lower = value.casefold()
        currency, self.currency = self.currency, ""
        if kind == "word" and self._number_words(lower, attached):
            return
        if self.total is not None and self._flush(kind, lower, attached):
            return  # the token was the number's unit
        if kind == "number":
            self._digits(value, currency)
        elif kind == "symbol":
            if value in CURRENCY_SYMBOLS:
                self.currency = CURRENCY_SYMBOLS[value]
            else:
                self._emit(f"u:{UNITS.get(lower, lower)}", marked=True)
        elif kind == "word":
            self._word(value, sentence_start)
        elif kind in ("stop", "comma"):
            self.marker = ""
            if kind == "stop":
                self.seen.clear()
        elif kind == "dotted" and all(len(part) <= 1 for part in value.split(".")):
            pass  # e.g, i.e, U.S: abbreviations, not code
        else:
            self._emit(f"{kind}:{_span(kind, value)}", marked=True)

    def _emit(self, feature: str, marked: bool = False) -> None:
        kind = feature.split(":", 1)[0]
        kind = "name" if kind in _NAME_KINDS else kind
        group = "quantity" if kind in ("n", "u") else kind
        if marked and self.marker and kind in self.marked_kinds and group in self.seen:
            feature = self.marker + feature
        self.seen.add(group)
        self.features.append(feature)
        self.marker = ""

    # -- numbers -------------------------------------------------------------------------------

    def _digits(self, value: str, currency: str) -> None:
        if "/" in value:
            self._emit(f"n:{value}", marked=True)  # a fraction or a day/month
            return
        self.digits = value.lstrip("+").replace(",", "")
        self.total, self.current, self.unit = Decimal(0), Decimal(self.digits), currency

    def _number_words(self, lower: str, attached: bool) -> bool:
        """Read a number word, a scale, or `and` inside a number; False: not part of a number."""
        if self.total is not None:
            current = Decimal(1) if self.current is None else self.current
            if lower in SCALES and (attached or lower != "k"):
                self.total, self.current, self.digits = self.total + current * SCALES[lower], None, ""
                return True
            if lower in MULTIPLIERS:
                self.current, self.digits = current * MULTIPLIERS[lower], ""
                return True
            if not self.digits and lower == "and":
                return True
            if not self.digits and lower in NUMBER_WORDS and _joins(self.current, NUMBER_WORDS[lower], self.total):
                self.current = (self.current or Decimal(0)) + NUMBER_WORDS[lower]
                return True
        if lower in NUMBER_WORDS or lower in MULTIPLIERS or (lower in SCALES and len(lower) > 2):
            self._flush("", "", attached=False)
            self.total, self.current, self.digits, self.unit = Decimal(0), NUMBER_WORDS.get(lower), "", ""
            return lower in NUMBER_WORDS or self._number_words(lower, attached)
        return False

    def _flush(self, kind: str, lower: str, attached: bool) -> bool:
        """Emit the number being read; True when the token (`kind`, `lower`) was its unit."""
        if self.total is None:
            return False
        number = self.digits or _plain(self.total + (self.current or 0))
        unit, consumed = self.unit, False
        self.total, self.current, self.digits, self.unit = None, None, "", ""
        if kind == "word" and attached and lower in ("st", "nd", "rd", "th"):
            self._emit(f"ord:{number}")
            return True
        if not unit and kind == "word":
            unit = _unit(lower, UNITS)
            consumed = bool(unit)
        elif not unit and kind == "symbol" and lower not in CURRENCY_SYMBOLS:
            unit, consumed = UNITS.get(lower, lower), True
        self._emit(f"n:{number} {unit}".rstrip(), marked=True)
        return consumed

    # -- words ---------------------------------------------------------------------------------

    def _word(self, value: str, sentence_start: bool) -> None:
        word = value.rstrip("'-")
        lower = word.casefold()
        if lower in _MARKERS:
            self.marker, self.marked_kinds = _MARKERS[lower]
            return
        if lower in _ARTICLES:
            return  # "to the USD": the marker waits for what follows
        for feature, marked in self._classify(word, lower, sentence_start):
            self._emit(feature, marked)
        self.marker = ""

    def _classify(self, word: str, lower: str, sentence_start: bool) -> Iterator[tuple[str, bool]]:
        if any(c.isdigit() for c in word):
            yield f"id:{lower}", True  # GPT-4, Python3, x86
            return
        if "_" in word:
            yield f"id:{word}", True
            return
        if lower.endswith("n't") or lower == "cannot":
            yield "neg", False
            return
        word, lower = word.removesuffix("'s"), lower.removesuffix("'s")
        if not self.shouting and not word.isupper() and any(c.isupper() for c in word[1:]):
            yield f"name:{lower}", True  # inner capitals: iPhone, JavaScript, PostgreSQL
            return
        if not self.shouting and word.isupper() and len(word) >= 2:
            yield (f"u:{UNITS[lower]}" if lower in UNITS else f"name:{lower}"), True
            return
        if (feature := _lookup(lower)) is not None:
            yield feature, False
        elif lower in WEEKDAYS:
            yield f"date:{lower}", True
        elif word[:1].isupper() and lower in MONTHS and not (sentence_start and lower == "may"):
            yield f"date:month{MONTHS[lower]}", True
        elif len(lower) > 1 and (unit := _unit(lower, _PHYSICAL)):
            yield f"u:{unit}", True
        elif _is_un_word(lower):
            yield "neg", False
        elif word[:1].isupper() and not (sentence_start or self.shouting or self.title_case or lower in NON_NAMES):
            yield f"name:{lower}", True


_TITLES = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "vs", "no", "approx", "inc", "ltd", "jr", "sr"})


def _span(kind: str, value: str) -> str:
    if kind == "quote":
        return " ".join(value[1:-1].split())  # exact case: quoted text and code are case-sensitive
    if kind in ("url", "email", "version", "flag"):
        return value.casefold()
    if kind == "time":
        return re.sub(r"[\s.]", "", value.casefold())
    return value.removesuffix("()")


def _plain(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _joins(current: Decimal | None, value: Decimal, total: Decimal) -> bool:
    """Whether a number word continues the number read so far (twenty five, hundred and two)."""
    if current is None:
        return total > 0  # "two thousand five"
    rest = current % 100
    return (current > 0 and rest == 0 and value < 100) or (rest >= 20 and rest % 10 == 0 and value < 10)


def _unit(lower: str, table: dict[str, str]) -> str:
    for form in (lower, lower.removesuffix("s"), lower.removesuffix("es")):
        if form in table and len(form) >= min(3, len(lower)):
            return table[form]
    return ""


def _is_un_word(lower: str) -> bool:
    """unsafe, unknown, uninstall, unlock: `un` + a word (under, unique, until are not)."""
    if not lower.startswith("un") or len(lower) < 4:
        return False
    return lower.startswith("unin") or not lower.startswith(UN_WORDS)


def _lookup(lower: str) -> str | None:
    """The closed-class feature of a word or of its inflected form (adds, added, adding, stopped)."""
    if lower in _CLASSES:
        return _CLASSES[lower]
    for suffix, tail in (("s", ""), ("es", ""), ("ies", "y"), ("ed", ""), ("ed", "e"), ("d", ""), ("ing", "")):
        if lower.endswith(suffix) and len(lower) - len(suffix) >= 3:
            stem = lower[: -len(suffix)] + tail
            if stem in _CLASSES:
                return _CLASSES[stem]
            if suffix in ("ed", "ing") and stem[-1] == stem[-2] and stem[:-1] in _CLASSES:
                return _CLASSES[stem[:-1]]
    if lower.endswith("ing") and lower[:-3] + "e" in _CLASSES:
        return _CLASSES[lower[:-3] + "e"]
    return None
