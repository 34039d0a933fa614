"""The `egress:` section: the forward proxy's listener, who may use it, and what it does per host."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sluicegate.config.fields import ip_networks
from sluicegate.egress.hosts import normalise, parse_pattern, shipped_ai_hosts

#: what the proxy does with a destination
Action = Literal["block", "intercept", "allow", "deny"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _patterns(value: list[str]) -> list[str]:
    for text in value:
        parse_pattern(text)
    return value


class EgressCAConfig(_Strict):
    """The organisation's CA that signs the certificates the proxy shows for intercepted hosts."""

    #: a secret reference (`file:///etc/sluicegate/ca.pem`, `secret://egress-ca-cert`) to the CA
    #: certificate (PEM)
    cert: str = Field(min_length=1)
    #: a secret reference to the CA's private key (PEM, unencrypted; EC or RSA)
    key: str = Field(min_length=1)
    #: how long a leaf certificate is valid
    leaf_validity_h: float = Field(24.0, ge=1, le=24 * 90)
    #: a leaf is replaced by a new one this long before it expires
    renew_before_h: float = Field(6.0, gt=0, le=24 * 30)
    #: leaf certificates (and their TLS contexts) kept in memory, least recently used dropped first
    max_cached: int = Field(1000, ge=1, le=100_000)

    @model_validator(mode="after")
    def _renewal(self) -> EgressCAConfig:
        if self.renew_before_h >= self.leaf_validity_h:
            raise ValueError("renew_before_h must be shorter than leaf_validity_h")
        return self


class EgressConfig(_Strict):
    """The forward proxy (`HTTPS_PROXY=http://gateway:3128`): off unless `enabled`.

    A destination's action is the first that applies: `deny`, `block`, `intercept`, `allow`
    (host lists), then `ai_hosts` for a known AI host (the shipped list and `extra_ai_hosts`),
    then `default`. In host lists `*.example.com` matches any name under `example.com`, and `*`
    elsewhere one label (`bedrock-runtime.*.amazonaws.com`)."""

    enabled: bool = False
    #: where the proxy listens (`0.0.0.0` to take the organisation's traffic)
    host: str = "127.0.0.1"
    port: int = Field(3128, ge=1, le=65535)
    #: the approved gateway's URL, named in the message a blocked client gets
    gateway_url: str | None = None
    #: clients from these networks may use the proxy without authenticating; others must send
    #: `Proxy-Authorization: Basic` with a gateway API key as the password (407 otherwise)
    source_networks: list[str] = Field(default_factory=list)
    #: proxy authentication even from `source_networks`
    require_auth: bool = False
    #: what to do with a known AI host no list below names: `block` (403) or `intercept`
    ai_hosts: Literal["block", "intercept"] = "block"
    #: AI hosts to add to the shipped list (`sluicegate/egress/data/ai_hosts.yaml`)
    extra_ai_hosts: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)
    block: list[str] = Field(default_factory=list)
    intercept: list[str] = Field(default_factory=list)
    allow: list[str] = Field(default_factory=list)
    #: what to do with any other host
    default: Literal["allow", "deny"] = "allow"
    #: ports a `CONNECT` tunnel may go to, and ports a plain `http://` request may name
    connect_ports: list[int] = Field(default_factory=lambda: [443])
    http_ports: list[int] = Field(default_factory=lambda: [80])
    #: private, loopback and link-local destinations are refused unless in these networks
    private_networks: list[str] = Field(default_factory=list)
    #: host -> `address:port` used instead of DNS (tests, split-horizon setups); trusted as
    #: configured, so exempt from the private-range refusal
    resolve: dict[str, str] = Field(default_factory=dict)
    #: intercepted calls from a source network with no gateway key are this consumer's
    #: (CIDR -> consumer name); proxy authentication and a gateway key the app sends come first
    network_consumers: dict[str, str] = Field(default_factory=dict)
    #: the CA for `intercept` (required when any host is intercepted)
    ca: EgressCAConfig | None = None
    #: open client connections; one more is answered 503 and closed
    max_connections: int = Field(1024, ge=1, le=1_000_000)
    #: the request line and headers of a proxy request (431 past it)
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)
    #: a proxy request's head must arrive within this time of the connection's opening (408)
    header_timeout_s: float = Field(10.0, gt=0, le=3600)
    #: connecting to an allowed destination (502 past it)
    connect_timeout_s: float = Field(10.0, gt=0, le=600)
    #: a tunnel with no byte either way for this long is closed
    idle_timeout_s: float = Field(300.0, gt=0, le=86400)

    _check_sources = field_validator("source_networks", "private_networks")(ip_networks)
    _check_hosts = field_validator("extra_ai_hosts", "deny", "block", "intercept", "allow")(_patterns)

    @field_validator("network_consumers")
    @classmethod
    def _network_keys(cls, value: dict[str, str]) -> dict[str, str]:
        ip_networks(list(value))
        return value

    @field_validator("resolve")
    @classmethod
    def _addresses(cls, value: dict[str, str]) -> dict[str, str]:
        for host, target in value.items():
            if normalise(host) is None:
                raise ValueError(f"resolve: '{host}' is not a host name")
            address, sep, port = target.rpartition(":")
            if not sep or not address or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"resolve.{host}: '{target}' is not address:port")
        return value

    @model_validator(mode="after")
    def _needs_ca(self) -> EgressConfig:
        if self.ca is None and (self.intercept or self.ai_hosts == "intercept"):
            raise ValueError("egress.ca (the CA's certificate and key) is required to intercept")
        if self.enabled:
            shipped_ai_hosts()  # read at config load (once per process), never on the event loop
        return self
