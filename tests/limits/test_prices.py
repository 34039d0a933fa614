"""Prices: the built-in table, where a model's price comes from, and exact costs in micro-units."""

from __future__ import annotations

import itertools
import json
from datetime import date
from importlib import resources
from typing import Any

import pytest

from sluicegate.call import Call
from sluicegate.config.model import GatewayConfig, ModelConfig, ProviderConfig
from sluicegate.config.snapshot import build_snapshot
from sluicegate.limits.config import PriceConfig
from sluicegate.limits.prices import (
    MAX_IMAGE_PARTS,
    MAX_MEMO,
    Price,
    PriceBook,
    builtin_table,
    call_cost,
    cost,
    count_images,
    micro,
    parse_table,
    worst_case,
)

#: the models the table promises, by provider
PROMISED = (
    "gpt-4o gpt-4o-mini gpt-4.1 gpt-4.1-mini gpt-4.1-nano o1 o3 o3-mini o4-mini gpt-5 gpt-5-mini gpt-5-nano "
    "text-embedding-3-small text-embedding-3-large "
    "claude-opus-4-1 claude-opus-4 claude-sonnet-4-5 claude-sonnet-4 claude-3-7-sonnet claude-haiku-4-5 "
    "claude-3-5-haiku gemini-2.5-pro gemini-2.5-flash gemini-2.5-flash-lite gemini-2.0-flash "
    "mistral-large-latest mistral-medium-latest mistral-small-latest deepseek-chat deepseek-reasoner"
).split()


def model(name: str = "m", **fields: Any) -> ModelConfig:
    return ModelConfig(name=name, provider="p", **fields)


# -- the built-in table ------------------------------------------------------------------------


def test_the_table_is_dated_and_says_config_overrides_it() -> None:
    raw = json.loads(resources.files("sluicegate.limits").joinpath("data", "prices.json").read_text("utf-8"))
    table = builtin_table()
    assert table.as_of == date.fromisoformat(raw["as_of"]) and date(2025, 1, 1) <= table.as_of <= date.today()
    assert table.currency == raw["currency"] == "USD"
    assert "list prices" in raw["note"] and "overrides" in raw["note"]
    assert set(PROMISED) <= set(table.models)


def test_every_entry_is_priced_sensibly() -> None:
    for name, entry in builtin_table().models.items():
        price = entry.price
        assert price.input is not None and price.output is not None, name
        assert price.input > 0, name
        if price.cached_input is not None:
            assert price.cached_input < price.input, name
        if price.cache_write is not None:
            assert price.cache_write > price.input, name
        cap = entry.max_output_tokens
        assert cap is None or 1000 <= cap <= 200_000, name


def test_list_prices_that_are_easy_to_get_wrong() -> None:
    book = PriceBook()
    assert book.price_for(None, "gpt-4o-mini") == Price(input=150_000, output=600_000, cached_input=75_000)
    assert book.price_for(None, "gpt-4o") == Price(input=2_500_000, output=10_000_000, cached_input=1_250_000)
    sonnet = book.price_for(None, "claude-sonnet-4-5")
    assert sonnet == Price(input=3_000_000, output=15_000_000, cached_input=300_000, cache_write=3_750_000)
    haiku = book.price_for(None, "claude-3-5-haiku")
    assert haiku == Price(input=800_000, output=4_000_000, cached_input=80_000, cache_write=1_000_000)
    embed = book.price_for(None, "text-embedding-3-small")
    assert embed == Price(input=20_000, output=0)


def test_a_malformed_table_is_refused() -> None:
    with pytest.raises(ValueError, match="as_of"):
        parse_table({"currency": "USD", "models": {}})
    with pytest.raises(ValueError):
        parse_table({"as_of": "2025-01-01", "currency": "USD", "models": {"m": {"input": -1}}})
    with pytest.raises(ValueError, match="max_output_tokens"):
        parse_table({"as_of": "2025-01-01", "currency": "USD", "models": {"m": {"input": 1, "max_output_tokens": 0}}})
    with pytest.raises(ValueError):
        parse_table({"as_of": "2025-01-01", "currency": "USD", "models": {"m": {"input": 1, "typo": 2}}})


# -- lookups ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream", "entry"),
    [
        ("gpt-4o", "gpt-4o"),
        ("GPT-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("o1-preview", "o1"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
        ("openai/gpt-4o", "gpt-4o"),
        ("openai/gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("anthropic/claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-opus-4-0", "claude-opus-4"),
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
        ("claude-3-5-haiku@20241022", "claude-3-5-haiku"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
        ("models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("gemini-2.0-flash-001", "gemini-2.0-flash"),
        ("gemini-2.5-flash-lite-preview-06-17", "gemini-2.5-flash-lite"),
        ("deepseek-reasoner", "deepseek-reasoner"),
    ],
)
def test_upstream_names_find_their_entry(upstream: str, entry: str) -> None:
    found = builtin_table().find(upstream)
    assert found is not None and found[0] == entry
    assert PriceBook().price_for(None, upstream) == Price.from_config(builtin_table().models[entry].price)


@pytest.mark.parametrize(
    "upstream",
    [
        # another model of the family, priced apart: never the shorter family's price
        "claude-opus-4-5",
        "claude-opus-4-5-20251101",
        "o3-pro",
        "o1-mini",
        "gpt-4o-audio-preview",
        "gpt-4o-realtime-preview",
        "gemini-2.0-flash-lite",
        "gpt-4",
        "gpt-4o-",
        "my-own-model",
    ],
)
def test_other_models_have_no_built_in_price(upstream: str) -> None:
    assert builtin_table().find(upstream) is None
    assert PriceBook().price_for(None, upstream) is None
    assert PriceBook().price_for(None, "") is None


def test_the_mini_model_is_never_priced_as_its_bigger_sibling() -> None:
    book = PriceBook()
    mini = book.price_for(None, "gpt-4o-mini-2024-07-18")
    big = book.price_for(None, "gpt-4o-2024-08-06")
    assert mini is not None and big is not None
    assert mini.input == 150_000 and big.input == 2_500_000


def test_config_price_overrides_the_table_field_by_field() -> None:
    cfg = model(price=PriceConfig(input=2.0, per_request=0.01))
    book = PriceBook([cfg])
    # given fields win; the rest come from the upstream model's entry (gpt-4o), except the cache
    # prices, which follow the input price the config sets
    assert book.price_for(cfg, "gpt-4o-2024-08-06") == Price(input=2_000_000, output=10_000_000, per_request=10_000)
    # a config that sets only the output keeps the table's input and cache prices
    out = model("out", price=PriceConfig(output=12.0))
    assert PriceBook([out]).price_for(out, "claude-sonnet-4-5") == Price(
        input=3_000_000, output=12_000_000, cached_input=300_000, cache_write=3_750_000
    )
    # free input stays free, cached or not: the worst case of a free-input model has no input part
    free = model(price=PriceConfig(input=0, output=2.0))
    free_price = PriceBook([free]).price_for(free, "gpt-4o-mini")
    assert free_price == Price(input=0, output=2_000_000)
    assert free_price is not None and worst_case(free_price, 10_000, 100) == 200
    # the table's reasoning price is not taken over an output the config sets; one set with it is
    table = parse_table(
        {"as_of": "2025-01-01", "currency": "USD", "models": {"r": {"input": 1, "output": 4, "reasoning": 9}}}
    )
    both = model("both", price=PriceConfig(output=1.0, reasoning=3.0))
    assert PriceBook([out, both], table).price_for(out, "r") == Price(input=1_000_000, output=12_000_000)
    assert PriceBook([out, both], table).price_for(both, "r") == Price(
        input=1_000_000, output=1_000_000, reasoning=3_000_000
    )
    # no entry for the upstream: the rest are defaults (cached at input, reasoning at output)
    assert book.price_for(cfg, "private-model") == Price(input=2_000_000, output=0, per_request=10_000)
    # by the entry's name, as the stages ask
    assert book.price_for("m", "private-model") == book.price_for(cfg, "private-model")


def test_legacy_fields_are_the_price_and_the_table_is_not_consulted() -> None:
    cfg = model("gpt-4o-mini", input_cost_per_mtok=0.15, output_cost_per_mtok=0.6)
    price = PriceBook([cfg]).price_for(cfg, "gpt-4o-mini")
    # cached tokens cost what input tokens cost, as before cached prices existed
    assert price == Price(input=150_000, output=600_000)
    assert price is not None and price.cached_input == 150_000 and price.reasoning == 600_000
    only_input = model(input_cost_per_mtok=1.0)
    assert PriceBook([only_input]).price_for(only_input, "gpt-4o") == Price(input=1_000_000, output=0)


def test_price_block_wins_over_legacy_fields_which_fill_its_input_and_output() -> None:
    cfg = model(price=PriceConfig(output=3.0), input_cost_per_mtok=1.0, output_cost_per_mtok=9.0)
    assert PriceBook([cfg]).price_for(cfg, "nothing-known") == Price(input=1_000_000, output=3_000_000)


def test_the_upstream_name_defaults_to_the_entrys_model_then_its_name() -> None:
    aliased = model("team", model="claude-haiku-4-5-20251001")
    plain = model("gpt-4.1-mini")
    book = PriceBook([aliased, plain])
    assert book.price_for("team", None) == book.price_for(None, "claude-haiku-4-5")
    assert book.price_for("gpt-4.1-mini", None) == book.price_for(None, "gpt-4.1-mini")
    assert book.price_for("unknown-entry", None) is None


def test_a_book_takes_a_whole_config() -> None:
    config = GatewayConfig(
        providers=[ProviderConfig(name="p", type="openai")],
        models=[model("cheap", price=PriceConfig(input=0.5, output=0.5))],
    )
    cheap = Price(input=500_000, output=500_000)
    assert PriceBook(config).price_for("cheap", "x") == cheap
    assert PriceBook(build_snapshot(config).config.models).price_for("cheap", "x") == cheap


def test_lookups_are_remembered_within_a_bound() -> None:
    book = PriceBook([model("open-*")])
    first = book.price_for("open-*", "gpt-4o-2024-08-06")
    assert book.price_for("open-*", "gpt-4o-2024-08-06") is first
    for i in range(MAX_MEMO * 2):
        book.price_for("open-*", f"client-chosen-{i}")
    assert len(book._memo) <= MAX_MEMO
    # an entry the book was not built from is priced by its own fields, not by its name
    stranger = model("open-*", price=PriceConfig(input=7.0))
    assert book.price_for(stranger, "x") == Price(input=7_000_000)
    assert book.price_for("open-*", "x") is None


def test_max_output_tokens() -> None:
    capped = model("a", model="gpt-4o", max_output_tokens=1000)
    uncapped = model("b", model="claude-3-5-haiku-20241022")
    book = PriceBook([capped, uncapped])
    assert book.max_output_tokens_for(capped, None) == 1000
    assert book.max_output_tokens_for("b", None) == 8192
    assert book.max_output_tokens_for(None, "gpt-5-2025-08-07") == 128000
    assert book.max_output_tokens_for(None, "mistral-large-latest") is None
    assert book.max_output_tokens_for(None, "unknown") is None


# -- arithmetic -------------------------------------------------------------------------------


def test_amounts_become_exact_micro_units() -> None:
    assert micro(0.15) == 150_000 and micro(0.075) == 75_000 and micro(0.005) == 5_000
    assert micro(0.0000005) == 1 and micro(0.0000004) == 0 and micro(3) == 3_000_000
    assert Price.from_config(PriceConfig(input=0.1, output=0.3)) == Price(input=100_000, output=300_000)


def test_unset_detail_prices_follow_input_and_output() -> None:
    price = Price(input=5, output=7)
    assert (price.cached_input, price.cache_write, price.reasoning) == (5, 5, 7)
    assert Price(input=5, output=7, cached_input=0).cached_input == 0
    with pytest.raises(ValueError):
        Price(input=-1)


def test_cost_is_exact_with_every_kind_of_token() -> None:
    price = Price(
        input=3_000_000,
        output=15_000_000,
        cached_input=300_000,
        cache_write=3_750_000,
        reasoning=20_000_000,
        per_request=1_000,
        per_image=2_500,
    )
    # 1000 prompt tokens: 600 read from the cache, 300 written to it, 100 plain;
    # 500 completion tokens: 200 reasoning, 300 answer; 2 images; one request
    tokens = 100 * 3_000_000 + 600 * 300_000 + 300 * 3_750_000 + 300 * 15_000_000 + 200 * 20_000_000
    assert tokens == 10_105_000_000
    expected = 10_105 + 1_000 + 2 * 2_500
    got = cost(price, 1000, 500, cached=600, cache_write=300, reasoning=200, images=2, requests=1)
    assert got == expected == 16_105
    assert cost(price, 1000, 500, cached=600, cache_write=300, reasoning=200, requests=0) == 10_105


def test_cost_rounds_once_half_up_after_summing() -> None:
    price = Price(input=150_000, output=600_000)
    # parts that each round to 0 alone but sum to more than a half: 3 x 0.25 = 0.75 -> 1
    assert cost(Price(input=250_000, output=250_000), 2, 1) == 1
    assert cost(Price(input=250_000, output=0), 1, 0) == 0
    assert cost(Price(input=500_000, output=0), 1, 0) == 1  # exactly a half: up
    assert cost(Price(input=500_000, output=0), 5, 0) == 3  # 2.5: up, not to even
    assert cost(price, 7, 10) == 7  # 1.05 + 6 = 7.05
    assert cost(price, 1_000_000, 1_000_000) == 750_000


def test_cost_clamps_details_larger_than_their_totals() -> None:
    price = Price(input=1_000_000, output=2_000_000, cached_input=0, cache_write=4_000_000, reasoning=0)
    # more cached than prompt: all of the prompt is cached; nothing left for writes
    assert cost(price, 10, 0, cached=50, cache_write=5) == 0
    # writes beyond what cache reads leave: cut to the rest
    assert cost(price, 10, 0, cached=4, cache_write=50) == 24
    assert cost(price, 0, 10, reasoning=99) == 0
    assert cost(price, -5, -5, cached=-1, cache_write=-1, reasoning=-1, images=-3, requests=-1) == 0


def test_the_worst_case_is_never_below_the_cost_of_any_split() -> None:
    prices = [
        Price(input=3_000_000, output=15_000_000, cached_input=300_000, cache_write=3_750_000),
        Price(input=150_000, output=600_000, reasoning=900_000, per_request=7, per_image=3),
        Price(input=1, output=1, cached_input=5, cache_write=2, reasoning=3),
        Price(input=333_333, output=777_777),
    ]
    for price in prices:
        for prompt, completion in [(0, 0), (1, 1), (7, 3), (1001, 999), (123_457, 4_097)]:
            ceiling = worst_case(price, prompt, completion, images=2)
            for cached, written, reasoning in itertools.product(
                {0, prompt // 3, prompt}, {0, prompt // 2, prompt}, {0, completion // 2, completion}
            ):
                actual = cost(price, prompt, completion, cached, written, reasoning, images=2)
                assert actual <= ceiling, (price, prompt, completion, cached, written, reasoning)


def test_the_worst_case_rounds_up_and_counts_requests_and_images() -> None:
    price = Price(input=1, output=0, per_request=10, per_image=100)
    assert worst_case(price, 1, 0) == 1 + 10
    assert worst_case(price, 0, 0, images=3) == 10 + 300
    sonnet = Price(input=3_000_000, output=15_000_000, cached_input=300_000, cache_write=3_750_000)
    assert worst_case(sonnet, 1000, 100) == 1000 * 3_750_000 // 1_000_000 + 1_500


# -- calls and images -------------------------------------------------------------------------


def _call(body: dict[str, Any] | None = None) -> Call:
    config = GatewayConfig(providers=[ProviderConfig(name="p", type="openai")], models=[model("m")])
    call = Call("req_1", "chat", build_snapshot(config), {})
    call.body = body
    return call


def test_call_cost_reads_the_calls_usage_details() -> None:
    price = Price(input=1_000_000, output=2_000_000, cached_input=100_000, reasoning=4_000_000, per_request=5)
    call = _call({"messages": []})
    call.upstream_status = 200
    call.prompt_tokens, call.completion_tokens = 100, 50
    call.cached_tokens, call.reasoning_tokens = 40, 10
    assert call_cost(price, call) == 60 + 4 + 80 + 40 + 5


def test_call_cost_charges_the_request_and_images_only_when_the_upstream_answered() -> None:
    price = Price(input=1_000_000, output=0, per_request=1_000, per_image=500)
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    call = _call({"messages": [{"role": "user", "content": [image, image]}]})
    assert call_cost(price, call) == 0  # refused before it was sent
    call.upstream_status = 500
    assert call_cost(price, call) == 0  # the upstream failed: providers do not bill it
    call.upstream_status = 200
    assert call_cost(price, call) == 1_000 + 2 * 500
    call.upstream_status = None
    call.prompt_tokens = 3  # usage recorded: it reached the upstream
    assert call_cost(price, call) == 3 + 1_000 + 2 * 500


def test_images_are_counted_in_every_dialect() -> None:
    openai = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {}}]},
            {"role": "user", "content": "just text"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
        ]
    }
    responses = {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]}
    anthropic = {
        "messages": [
            {"role": "user", "content": [{"type": "image", "source": {}}, {"type": "text", "text": "x"}]},
            {"role": "user", "content": [{"type": "tool_result", "content": [{"type": "image", "source": {}}]}]},
        ]
    }
    assert count_images(openai) == 2
    assert count_images(responses) == 1
    assert count_images({"input": "a string"}) == 0
    assert count_images(anthropic) == 2
    assert count_images({"messages": "nonsense"}) == 0
    assert count_images({}) == 0


def test_counting_images_is_bounded() -> None:
    many = {"messages": [{"role": "user", "content": [{"type": "image_url"}] * (MAX_IMAGE_PARTS * 3)}]}
    assert count_images(many) < MAX_IMAGE_PARTS


def test_the_longest_matching_name_wins() -> None:
    table = parse_table(
        {
            "as_of": "2025-01-01",
            "currency": "EUR",
            "models": {"fam": {"input": 1, "output": 1}, "fam-001": {"input": 2, "output": 2}},
        }
    )
    found = table.find("fam-001-20250101")
    assert found is not None and found[0] == "fam-001"
    found = table.find("fam-002")
    assert found is not None and found[0] == "fam"
    assert PriceBook(table=table).price_for(None, "fam-001-latest") == Price(input=2_000_000, output=2_000_000)
