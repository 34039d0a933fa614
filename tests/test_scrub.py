"""The scrubber: a call's credentials, whole or in runs of 8+ characters, never survive it."""

from __future__ import annotations

import random
import string

import pytest

from sluicegate.scrub import MIN_RUN, NOTHING, REDACTED, Scrubber

KEY = "sk-proj-Zq3vX9pL2mN8bR4tY7wK1cF6hJ0dS5gA"


def leaks(text: str, secret: str = KEY) -> list[str]:
    """Every run of 8 characters of `secret` still in `text`."""
    return [secret[i : i + MIN_RUN] for i in range(len(secret) - MIN_RUN + 1) if secret[i : i + MIN_RUN] in text]


@pytest.mark.parametrize(
    "text",
    [
        f"Incorrect API key provided: {KEY}.",
        f"key={KEY[:20]}",  # cut by the upstream
        f"{KEY[:12]}****{KEY[-4:]}",  # a masked echo that keeps 12 characters
        f"{KEY[5:30]} and again {KEY}{KEY}",
        f"prefix{KEY[:8]}",  # the shortest run that is removed
        f'{{"error": "bad key {KEY}"}}' * 3,
    ],
    ids=["whole", "cut", "masked", "middle-and-twice", "eight", "repeated"],
)
def test_whole_keys_and_runs_of_eight_are_removed(text: str) -> None:
    scrubbed = Scrubber([KEY])(text, None)
    assert not leaks(scrubbed) and REDACTED in scrubbed


def test_text_without_the_key_is_unchanged_and_shorter_runs_stay() -> None:
    scrub = Scrubber([KEY])
    assert scrub("The model is overloaded.") == "The model is overloaded."
    assert scrub(f"last four {KEY[-4:]}") == f"last four {KEY[-4:]}"  # 4 characters say nothing


def test_scrub_first_then_cut_never_leaves_a_prefix_at_the_cut() -> None:
    scrub = Scrubber([KEY])
    for at in range(60):
        text = "x" * at + KEY + " tail"
        cut = scrub(text, 50)
        assert len(cut) <= 50 and not leaks(cut), at


def test_every_value_given_is_removed_and_short_values_whole() -> None:
    other = "hdr-secret-0123456789"
    scrub = Scrubber([KEY, None, "", other, "pin42"])
    text = f"{KEY} {other[:9]} pin42"
    assert scrub(text, None) == f"{REDACTED} {REDACTED} {REDACTED}"


def test_random_texts_never_keep_a_run() -> None:
    rng = random.Random(7)
    scrub = Scrubber([KEY])
    alphabet = string.ascii_letters + string.digits + "-_ "
    for _ in range(300):
        start = rng.randrange(len(KEY) - MIN_RUN)
        piece = KEY[start : rng.randrange(start + MIN_RUN, len(KEY) + 1)]
        noise = "".join(rng.choices(alphabet, k=rng.randrange(0, 40)))
        text = noise + piece + noise[::-1] + KEY[: rng.randrange(0, len(KEY))]
        assert not leaks(scrub(text, rng.randrange(10, 200))), text


def test_no_secret_scrubs_nothing_and_the_repr_shows_no_value() -> None:
    assert NOTHING("anything " * 3, None) == "anything " * 3
    assert not NOTHING
    assert KEY not in repr(Scrubber([KEY])) and KEY[:8] not in repr(Scrubber([KEY]))
