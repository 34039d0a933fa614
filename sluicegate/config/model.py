"""The declarative gateway configuration, as pydantic models (what the YAML file holds).

Field names are the config keys. Cross-references (a model naming a provider, a consumer naming
a model) are checked in `config.loader`, which reports every error with its path in the file.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sluicegate.admin.config import AdminConfig
from sluicegate.audit.sink_config import AuditSinkConfig
from sluicegate.cache.config import CacheConfig
from sluicegate.config.fields import ip_networks
from sluicegate.egress.config import EgressConfig
from sluicegate.limits.config import LimitsConfig, PriceConfig
from sluicegate.observability.config import ObservabilityConfig
from sluicegate.routing.config import (
    DEFAULT_FALLBACK_STATUS,
    BreakerConfig,
    RetryConfig,
    RouteRule,
    RoutingSettings,
    Strategy,
    TargetConfig,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    """Upstream timeouts in seconds; every one is explicit."""

    connect_s: float = Field(10.0, gt=0)
    #: time to the response headers, and the longest silence between two stream chunks
    read_s: float = Field(300.0, gt=0)
    total_s: float = Field(900.0, gt=0)


class ProviderConfig(_Strict):
    """An upstream: its wire protocol (`type`), where it is and which credential it takes."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    type: str = Field(min_length=1)
    base_url: str | None = None
    #: a secret reference (`env://NAME`, `file:///path`, `secret://name` ...), never the key itself;
    #: a list of references rotates between several keys (`key_rotation`)
    api_key: str | list[str] | None = None
    #: with several keys: `round_robin` spreads calls over them; `on_429` uses the first until the
    #: provider rate-limits it, then the next
    key_rotation: Literal["round_robin", "on_429"] = "round_robin"
    headers: dict[str, str] = Field(default_factory=dict)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    #: where it serves from (`eu-west`, `on-prem` ...), for `routing.pins` by region
    region: str | None = Field(None, min_length=1)
    #: settings of this provider type (e.g. `api_version` for `azure_openai`), checked by the type
    options: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(_Strict):
    """A public model name (or glob such as `gpt-*`) and where it is served."""

    name: str = Field(min_length=1)
    #: where it is served (or `targets`: several places, routed by `strategy`)
    provider: str | None = Field(None, min_length=1)
    #: the upstream's name for it; default: the name the client asked for
    model: str | None = None
    #: several places it is served, ordered per call by `strategy`, tried in turn on failure
    targets: list[TargetConfig] | None = Field(None, min_length=1, max_length=64)
    strategy: Strategy = "priority"
    #: upstream statuses that fall back to the next target (connection failures and timeouts always do)
    fallback_on_status: list[int] = Field(default_factory=lambda: list(DEFAULT_FALLBACK_STATUS))
    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    #: content-aware routing: the first rule that holds sends the call to its targets instead
    when: list[RouteRule] = Field(default_factory=list, max_length=64)
    #: the whole call, every attempt and the wait between them included (default: the first
    #: target's provider's `timeouts.total_s`); a client's shorter deadline header wins
    timeout_s: float | None = Field(None, gt=0, le=86400)
    #: what a call costs (overrides the built-in price table, looked up by the upstream model name)
    price: PriceConfig | None = None
    #: shorthands kept from earlier configs: `price.input` and `price.output`
    input_cost_per_mtok: float | None = Field(None, ge=0, description="per million input tokens")
    output_cost_per_mtok: float | None = Field(None, ge=0, description="per million output tokens")
    #: the output cap inserted in a request that names none when a budget or token limit applies
    max_output_tokens: int | None = Field(None, gt=0)
    #: names of guards applied to every call of this model
    guards: list[str] = Field(default_factory=list)


#: encodings a guard can see through (`sluicegate.guardrails.decode`)
Decoding = Literal["base64", "percent", "html"]
DECODINGS: tuple[Decoding, ...] = ("base64", "percent", "html")


class GuardConfig(_Strict):
    """A content guard, configured once and attached to consumers, groups or models by name."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: str = Field(min_length=1)
    #: block: refuse (400 `content_blocked`); redact: replace matches and go on; flag: audit only
    action: Literal["block", "redact", "flag"] = "block"
    #: which texts: what the model reads (`input`), what it writes (`output`), or both
    applies_to: Literal["input", "output", "both"] = "both"
    #: when the guard cannot run (service down, timeout): `block` fails closed, `allow` fails open
    on_error: Literal["block", "allow"] = "block"
    timeout_s: float = Field(5.0, gt=0, le=120)
    #: local kinds also scan the text with these encodings undone (nested, bounded): `html`
    #: entities, `percent` escapes, `base64` runs of 16+ characters that decode to UTF-8 text
    decode: list[Decoding] = Field(default_factory=lambda: list(DECODINGS))
    #: shorthand kept from earlier configs: true adds `base64` to `decode`, false takes it out
    decode_base64: bool | None = None
    #: with `action: redact` on input: put the original values back where the answer repeats
    #: their placeholders (non-streamed answers), so the provider never sees them but the client does
    restore: bool = False
    #: the kind's own settings, validated by the kind
    settings: dict[str, Any] = Field(default_factory=dict)

    def decodings(self) -> frozenset[Decoding]:
        """The encodings whose decoded form this guard scans too (`decode`, with `decode_base64`)."""
        out = set(self.decode)
        if self.decode_base64 is not None:
            (out.add if self.decode_base64 else out.discard)("base64")
        return frozenset(out)


Endpoint = Literal["chat", "completions", "embeddings", "models", "responses", "messages", "count_tokens", "spend"]


class AccessRules(_Strict):
    """What a consumer or group may do; a consumer's own rules and its groups' combine.

    Allow-lists (`models`, `providers`, `endpoints`) are the union of the consumer's and its
    groups'; an empty `providers` or `endpoints` everywhere means any. Restrictions
    (`time_windows`, `source_ips`, `max_tokens`, `allow_streaming`) come from the consumer when it
    sets them, else from the first of its groups, in the order listed, that does.
    """

    #: model names or globs (`gpt-*`, `*`)
    models: list[str] = Field(default_factory=list)
    #: provider names or globs
    providers: list[str] = Field(default_factory=list)
    endpoints: list[Endpoint] = Field(default_factory=list)
    #: e.g. `Mon-Fri 08:00-19:00 Europe/Paris`; a call must fall in one of them
    time_windows: list[str] | None = None
    #: CIDR ranges (`10.0.0.0/8`, `2001:db8::/32`) the call must come from
    source_ips: list[str] | None = None
    #: the largest `max_tokens` / `max_completion_tokens` a request may ask for
    max_tokens: int | None = Field(None, gt=0)
    allow_streaming: bool | None = None
    #: names of guards (see `guards`) applied to this consumer's or group's calls
    guards: list[str] = Field(default_factory=list)


class GroupConfig(AccessRules):
    """A consumer group: rules its members inherit."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.@:-]+$")


class ConsumerConfig(AccessRules):
    """An app, team or person that calls through the gateway, and what it may do."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.@-]+$")
    groups: list[str] = Field(default_factory=list)


class JWTIssuerConfig(_Strict):
    """An identity provider whose signed tokens the gateway accepts as bearer credentials.

    The token's signing key comes from `jwks_url` (fetched, cached, refetched on an unknown
    `kid`), or `public_key` (a secret reference to a PEM), or for HS* `shared_secret` (a secret
    reference). The token maps to a consumer by `consumer_claim`, else to groups by `groups_claim`.
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    issuer: str = Field(min_length=1)
    audience: str | list[str]
    #: pinned per issuer; `none` is never accepted
    algorithms: list[str] = Field(min_length=1)
    jwks_url: str | None = None
    public_key: str | None = None
    shared_secret: str | None = None
    #: a claim whose value names a configured consumer (e.g. `azp`, `client_id`, `sub`)
    consumer_claim: str | None = None
    #: a claim listing group names (e.g. `groups`)
    groups_claim: str | None = None
    leeway_s: float = Field(30.0, ge=0, le=300)
    jwks_cache_s: float = Field(300.0, gt=0)
    #: an unknown `kid` refetches the JWKS at most this often
    jwks_min_refresh_s: float = Field(10.0, ge=0)


class AwsSecretsConfig(_Strict):
    """AWS Secrets Manager for `aws-sm://name` references; credentials from the standard AWS chain."""

    region: str | None = None
    endpoint_url: str | None = None


class HashicorpVaultConfig(_Strict):
    """HashiCorp Vault KV v2 for `vault://path#field` references."""

    url: str
    #: a secret reference (`env://VAULT_TOKEN`, `file:///path`) to the Vault token
    token: str
    mount: str = "secret"
    namespace: str | None = None


class VaultConfig(_Strict):
    """Where secret references are resolved, and how long a value is cached."""

    cache_ttl_s: float = Field(5.0, ge=0, le=3600)
    aws: AwsSecretsConfig | None = None
    hashicorp: HashicorpVaultConfig | None = None


class ServerConfig(_Strict):
    """Limits and deadlines of the data plane: what a client may send, and how slowly."""

    #: the largest request body, after decoding its `Content-Encoding` (413)
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    #: a compressed body may decode to at most this many times its size (413)
    max_decoded_ratio: float = Field(100.0, ge=1)
    max_upstream_connections: int = Field(1000, gt=0)
    #: how long an upstream error body may be (bytes) before it is cut
    max_error_body_bytes: int = Field(64 * 1024, gt=0)
    #: the largest event (SSE event or NDJSON line) of an upstream stream; past it the stream is
    #: cut with an in-band error, so an upstream that never ends an event cannot fill memory
    max_stream_event_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    #: open client connections; one more is answered 503 and closed
    max_connections: int = Field(16384, gt=0)
    #: the request line and headers together (431)
    max_header_bytes: int = Field(32 * 1024, ge=1024, le=1024 * 1024)
    #: header lines in one request (431)
    max_headers: int = Field(100, ge=8, le=10_000)
    #: a request's line and headers must arrive within this time of its first byte, or of the
    #: connection's opening (408)
    header_timeout_s: float = Field(10.0, gt=0, le=3600)
    #: a request's body must arrive within this time of its headers (408)
    body_timeout_s: float = Field(60.0, gt=0, le=3600)
    #: each write to a client must be taken within this time; a client that stops reading is cut off
    write_timeout_s: float = Field(30.0, gt=0, le=3600)
    #: an idle keep-alive connection is closed after this time
    keep_alive_s: float = Field(60.0, gt=0, le=3600)
    #: CIDR ranges of the reverse proxies whose forwarding header is believed; empty: none
    trusted_proxies: list[str] = Field(default_factory=list)
    #: which header the trusted proxies set: `x-forwarded-for`, or `forwarded` (RFC 7239)
    forwarded_header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"
    #: on SIGTERM, `/readyz` answers 503 `draining` for this long while calls are still served, so
    #: a load balancer stops sending new ones before the gateway stops (SIGINT stops at once)
    drain_s: float = Field(0.0, ge=0, le=3600)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return ip_networks(value)


class AuditChainConfig(_Strict):
    """The hash chain that makes the audit trail tamper-evident (`sluicegate audit verify`)."""

    #: false stores events unchained (`verify` then reports them as inserted): for measurements
    enabled: bool = True

    #: a secret reference to the chain's key (`secret://audit-chain`, `env://...`, `aws-sm://...`);
    #: default: a random key made in the data folder (`audit-chain.key`) at the first start
    key: str | None = None
    #: references to the keys the chain was written with before `key` (a rotation): `audit verify`
    #: checks the events each one wrote
    previous_keys: list[str] = Field(default_factory=list)
    #: where anchors (chain position and head hash) are appended; default: `audit-anchors.jsonl`
    #: in the data folder. Keep it on another disk or host than the database where you can
    anchor_file: str | None = None
    #: how often the head is anchored (when it moved), and at shutdown
    anchor_interval_s: float = Field(60.0, gt=0, le=86400)


class CaptureRule(_Strict):
    """Calls whose prompt and answer are kept in the audit event (after the guards' redactions).

    A call matches when each list that is set names it: its consumer, one of its groups, its model
    (as requested); `*` matches any."""

    consumers: list[str] | None = None
    groups: list[str] | None = None
    models: list[str] | None = None
    #: request and answer are each cut to this many bytes
    max_bytes: int = Field(16 * 1024, gt=0, le=1024 * 1024)


class AuditConfig(_Strict):
    """Where and how audit events are written."""

    #: `queued`: a call's event is queued before its last byte is sent and committed within about
    #: `flush_interval_s` (a crash loses what is queued); `before_response`: it is committed (to the
    #: store, or the spill file) before the last byte is sent, shared group commits
    durability: Literal["queued", "before_response"] = "queued"
    batch_size: int = Field(500, gt=0, le=10000)
    #: how long the writer waits to fill a batch once it holds one event
    flush_interval_s: float = Field(0.05, ge=0, le=10)
    #: while the store fails, events go to the spill file and the store is tried again this often
    retry_s: float = Field(1.0, gt=0)
    #: `before_response`: past this wait for the commit, the event goes to the spill file first
    commit_timeout_s: float = Field(5.0, gt=0, le=300)
    #: events held in memory at most; past it they go to the spill file (`refuse`: calls are refused)
    max_queue_events: int = Field(100_000, gt=0)
    on_failure: Literal["log", "refuse"] = "log"
    #: failed authentications audited one by one per source address and window; the rest are
    #: counted into one summary event per source when the window closes
    auth_failures_per_window: int = Field(10, ge=0)
    auth_failure_window_s: float = Field(60.0, gt=0)
    #: copies of every stored event (with its chain hash) to files, webhooks or OTLP logs
    sinks: list[AuditSinkConfig] = Field(default_factory=list)
    chain: AuditChainConfig = Field(default_factory=AuditChainConfig)
    #: HMACs of each call's request and response bodies in its event (under a key derived from
    #: the chain's): prove what was said without keeping it
    content_hmac: bool = True
    #: calls whose content is kept in their event (off for every call by default)
    capture: list[CaptureRule] = Field(default_factory=list)


class GatewayConfig(_Strict):
    """The whole configuration file."""

    version: Literal[1] = 1
    #: SQLAlchemy URL of the store; default: SQLite in the data folder
    database_url: str | None = None
    server: ServerConfig = Field(default_factory=ServerConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    vault: VaultConfig = Field(default_factory=VaultConfig)
    providers: list[ProviderConfig] = Field(default_factory=list)
    models: list[ModelConfig] = Field(default_factory=list)
    groups: list[GroupConfig] = Field(default_factory=list)
    consumers: list[ConsumerConfig] = Field(default_factory=list)
    jwt_issuers: list[JWTIssuerConfig] = Field(default_factory=list)
    guards: list[GuardConfig] = Field(default_factory=list)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    #: the forward proxy for outbound AI traffic (off by default)
    egress: EgressConfig = Field(default_factory=EgressConfig)
