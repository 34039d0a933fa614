"""Access: what the consumer's rules (its own and its groups') allow this call to do.

Two stages. `access` decides on the request line and the clock alone (endpoint, source address,
time window) and runs before the body is read; `model_access` decides on the parsed body (model,
provider, streaming, `max_tokens`: the output asked for, times its choices, within the rule; the
cap inserted upstream when the request asks for no limit). Every refusal is a 403 naming the rule, and the rule id goes
to the audit event; nothing about other consumers is said.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import TYPE_CHECKING, Any

from sluicegate.errors import Forbidden, NotFound
from sluicegate.providers.base import OUTPUT_LIMITS
from sluicegate.stages.base import register_stage

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.snapshot import Consumer, Route, Snapshot


def model_not_found(model: str) -> NotFound:
    """The refusal for a model the gateway does not serve."""
    return NotFound(
        f"The model '{model}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


class AccessStage:
    """Endpoint, source address and time-window rules."""

    name = "access"
    needs_body = False

    async def on_request(self, call: Call) -> None:
        consumer = call.consumer
        if consumer is None:
            return
        check_access(consumer, call.endpoint, call.client_ip)

    async def on_finish(self, call: Call) -> None:
        return None


def check_access(consumer: Consumer, endpoint: str, client_ip: str | None, when: dt.datetime | None = None) -> None:
    """Raise `Forbidden` (naming the rule) when the consumer may not call `endpoint` from `client_ip`
    at `when` (aware; default: now). The access stage and `sluicegate policy` both decide here."""
    if consumer.endpoints is not None and endpoint not in consumer.endpoints:
        raise Forbidden(
            f"Consumer '{consumer.name}' may not call the '{endpoint}' endpoint",
            code="endpoint_not_allowed",
            rule=consumer.endpoints_rule,
        )
    if consumer.source_ips is not None:
        address = _address(client_ip)
        if address is None or not any(address in net for net in consumer.source_ips):
            raise Forbidden(
                f"Consumer '{consumer.name}' may not call from {client_ip or 'an unknown address'}",
                code="source_ip_not_allowed",
                rule=consumer.source_ips_rule,
            )
    if consumer.time_windows is not None:
        now = when if when is not None else dt.datetime.now(dt.UTC)
        if not any(w.contains(now) for w in consumer.time_windows):
            windows = "; ".join(w.text for w in consumer.time_windows)
            raise Forbidden(
                f"Consumer '{consumer.name}' may call only within: {windows}",
                code="outside_time_window",
                rule=consumer.time_windows_rule,
            )


def _address(ip: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if ip is None:
        return None
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    # An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d; match it as IPv4.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ModelAccessStage:
    """Model, provider, streaming and `max_tokens` rules; 404 for models nobody serves."""

    name = "model_access"
    needs_body = True

    async def on_request(self, call: Call) -> None:
        consumer = call.consumer
        model = call.model_requested
        if consumer is None or model is None:
            return
        check_model(call.snapshot, consumer, model, call.stream)
        if consumer.max_tokens is not None and call.body is not None and call.endpoint in OUTPUT_ENDPOINTS:
            cap = output_cap(consumer, call.body)
            if cap is not None:
                call.output_cap = cap

    async def on_finish(self, call: Call) -> None:
        return None


def check_model(snapshot: Snapshot, consumer: Consumer, model: str, stream: bool) -> Route:
    """The route of `model`; raise `NotFound` when nobody serves it, `Forbidden` (naming the rule)
    when the consumer may not use it, its providers, or a stream. The model access stage and
    `sluicegate policy` both decide here."""
    route = snapshot.route_for(model)
    if route is None:
        raise model_not_found(model)
    if not consumer.may_use(model):
        raise Forbidden(
            f"Consumer '{consumer.name}' may not use the model '{model}'",
            code="model_not_allowed",
            param="model",
            rule=consumer.models_rule,
        )
    targets = route.targets or (route,)
    if not any(consumer.may_use_provider(t.provider.name) for t in targets):
        raise Forbidden(
            f"Consumer '{consumer.name}' may not use the provider of the model '{model}'",
            code="provider_not_allowed",
            param="model",
            rule=consumer.providers_rule,
        )
    if stream and consumer.allow_streaming is False:
        raise Forbidden(
            f"Consumer '{consumer.name}' may not stream responses",
            code="streaming_not_allowed",
            param="stream",
            rule=consumer.allow_streaming_rule,
        )
    return route


#: endpoints whose answers are generated text, bounded by the `max_tokens` rule
OUTPUT_ENDPOINTS = frozenset({"chat", "completions", "responses", "messages"})
#: request fields that ask for several answers to one prompt (`best_of` generates that many)
_CHOICES = ("n", "best_of")


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def output_cap(consumer: Consumer, body: dict[str, Any]) -> int | None:
    """The `max_tokens` rule bounds the whole output: the limit the request asks for (any of its
    dialect's names) times its choices (`Forbidden` past it). A request that asks for none gets
    the cap, shared among its choices, inserted on its way upstream: returned here (None: the
    request names its own limit)."""
    cap = consumer.max_tokens
    assert cap is not None
    choices, choice_param = 1, "n"
    for param in _CHOICES:
        value = _count(body.get(param))
        if value is not None and value > choices:
            choices, choice_param = value, param
    asked: int | None = None
    param = ""
    for name in OUTPUT_LIMITS:
        value = _count(body.get(name))
        if value is not None and (asked is None or value > asked):
            asked, param = value, name
    per = f" for each of {choices} choices ('{choice_param}')" if choices > 1 else ""
    if asked is not None:
        if asked * choices > cap:
            raise Forbidden(
                f"Consumer '{consumer.name}' may ask for at most {cap} output tokens; '{param}' is {asked}{per}",
                code="max_tokens_exceeded",
                param=param,
                rule=consumer.max_tokens_rule,
            )
        return None
    if cap // choices < 1:
        raise Forbidden(
            f"Consumer '{consumer.name}' may ask for at most {cap} output tokens, fewer than {choices} choices",
            code="max_tokens_exceeded",
            param=choice_param,
            rule=consumer.max_tokens_rule,
        )
    return cap // choices


register_stage("access", lambda snapshot, services: AccessStage())
register_stage("model_access", lambda snapshot, services: ModelAccessStage())
