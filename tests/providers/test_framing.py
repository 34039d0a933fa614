"""The one SSE parser (and the NDJSON reader): the spec's rules, any split, bounded events."""

from __future__ import annotations

import pytest

from sluicegate.providers.framing import EventTooLarge, InvalidStream, NDJSONParser, SSEParser, event_json


def parse(
    data: bytes, splits: list[int] | None = None, limit: int = 1 << 20
) -> tuple[list[tuple[str | None, bytes]], SSEParser]:
    parser = SSEParser("p", limit)
    events = []
    if splits is None:
        pieces = [data]
    else:
        pieces = [data[a:b] for a, b in zip([0, *splits], [*splits, len(data)], strict=True)]
    for piece in pieces:
        events.extend(parser.feed(piece))
    return events, parser


STREAM = (
    b"\xef\xbb\xbf: a comment, kept alive\r\n"
    b"id: 7\r\n"
    b"retry: 3000\r\n"
    b"event: message_start\r\n"
    b'data:{"a": 1}\r\n'
    b"\r\n"
    b'data: {"b":\n'
    b"data:  2}\n"
    b"\n"
    b"unknown: field\r"
    b"data\r"
    b"\r"
    b"event: only-a-name\n"
    b"\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [("message_start", b'{"a": 1}'), (None, b'{"b":\n 2}'), (None, b""), (None, b"[DONE]")]


def test_the_spec_rules() -> None:
    events, parser = parse(STREAM)
    # one optional space removed, data lines joined by LF, CR / LF / CRLF line ends, a BOM
    # dropped, comments / id / retry / unknown fields not returned, a name without data not sent
    assert events == EXPECTED
    assert parser.last_id == b"7" and parser.comments == 1 and not parser.pending


def test_every_split_gives_the_same_events() -> None:
    for at in range(len(STREAM) + 1):
        assert parse(STREAM, [at])[0] == EXPECTED, at
    assert parse(STREAM, list(range(1, len(STREAM))))[0] == EXPECTED


def test_a_crlf_split_between_its_cr_and_its_lf_is_one_line_end() -> None:
    data = b'data: {"x": 1}\r\n\r\ndata: {"y": 2}\r\n\r\n'
    for at in range(len(data) + 1):
        assert parse(data, [at])[0] == [(None, b'{"x": 1}'), (None, b'{"y": 2}')], at


def test_an_event_past_the_bound_is_refused() -> None:
    with pytest.raises(EventTooLarge):
        parse(b"data: " + b"x" * 5000 + b"\n\n", limit=4096)
    with pytest.raises(EventTooLarge):
        # many lines, no blank line between them: one growing event
        parse(b"".join(b'data: {"n": %d}\n' % i for i in range(1000)), limit=4096)
    with pytest.raises(EventTooLarge):
        parse(b"data: " + b"y" * 5000, [1000, 2000, 3000, 4000, 4500], limit=4096)


@pytest.mark.parametrize(
    "data", [b'{"broken', b"\xff\xfe{}", b"[1, 2]", b'"text"', b"null"], ids=["json", "utf8", "array", "str", "null"]
)
def test_event_data_must_be_a_json_object(data: bytes) -> None:
    with pytest.raises(InvalidStream):
        event_json("p", data)


def test_ndjson_lines_any_split_bounded() -> None:
    data = b'{"a": 1}\n\n{"b": 2}\r\n{"c": 3}'
    for at in range(len(data) + 1):
        parser = NDJSONParser("p")
        got = parser.feed(data[:at]) + parser.feed(data[at:]) + parser.close()
        assert got == [{"a": 1}, {"b": 2}, {"c": 3}], at
    with pytest.raises(EventTooLarge):
        NDJSONParser("p", 4096).feed(b"z" * 5000)
    with pytest.raises(InvalidStream):
        NDJSONParser("p").feed(b"[1]\n")
