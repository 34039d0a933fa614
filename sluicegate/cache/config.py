"""The `cache:` section of the config: which calls are answered from stored answers, for whom,
for how long, and where entries and vectors live.

    cache:
      enabled: true
      backend: memory              # or redis (shared by instances; entries encrypted)
      default:                     # every call, unless a rule below says otherwise
        ttl_s: 3600
        scope: consumer            # consumer | group | global: who shares an entry
        cacheable: all             # all | deterministic (temperature 0, or a seed)
      rules:                       # the first rule that matches a call sets what it names
        - models: [gpt-4o*]
          consumers: [batch-jobs]
          scope: group
          semantic: true
      semantic:
        threshold: 0.9

A rule matches when each list it sets names the call: its consumer, one of its groups, its model
(as requested); `*` globs. What a rule leaves unset comes from `default`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: who shares an entry: the consumer alone, the consumer's group, or every caller
Scope = Literal["consumer", "group", "global"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CachePolicy(_Strict):
    """How the calls a rule (or the default) covers are cached; None: as the default says."""

    enabled: bool | None = None
    #: how long an entry is served, in seconds
    ttl_s: float | None = Field(None, gt=0, le=30 * 86400)
    scope: Scope | None = None
    #: `deterministic`: only requests with `temperature: 0` or a `seed` are cached
    cacheable: Literal["all", "deterministic"] | None = None
    #: the largest entry stored (the answer as the cache keeps it), in bytes
    max_entry_bytes: int | None = Field(None, gt=0, le=64 * 1024 * 1024)
    #: what a hit costs the caller's budgets: nothing (`none`), or what the call cost (`full`)
    charge: Literal["none", "full"] | None = None
    #: also answer when the last user turn means the same as a stored one (`cache.semantic`)
    semantic: bool | None = None


#: what `cache.default` holds where it names nothing
DEFAULT_POLICY = CachePolicy(
    enabled=True,
    ttl_s=3600,
    scope="consumer",
    cacheable="all",
    max_entry_bytes=1024 * 1024,
    charge="none",
    semantic=False,
)


class CacheRule(CachePolicy):
    """A policy for the calls it names (each list that is set must name the call)."""

    consumers: list[str] | None = None
    groups: list[str] | None = None
    models: list[str] | None = None


class RedisCacheConfig(_Strict):
    """The Redis the `redis` backend keeps entries in, and the key entries are encrypted with."""

    #: a secret reference or a URL (`redis://`, `rediss://`, `unix://`)
    url: str = "redis://127.0.0.1:6379/0"
    #: a secret reference to the encryption key (any length; a key is derived from it);
    #: unset: a random key file in the data folder (one instance only: share a vault secret)
    key: str | None = None
    #: earlier keys, still read (their entries expire on their own)
    previous_keys: list[str] = Field(default_factory=list)
    prefix: str = Field("sluicegate:cache:", min_length=1, max_length=100)
    #: each command's bound; past it the lookup is a miss (a slow Redis never slows a call)
    timeout_s: float = Field(0.05, gt=0, le=10)


class SemanticConfig(_Strict):
    """The semantic cache: the embedding model, the vector index and the similarity threshold."""

    #: `local`: the MiniLM model the `sluicegate[semantic]` extra ships; else the name of an
    #: embeddings model the gateway routes to (`models:`)
    embedder: str = "local"
    #: cosine similarity a stored turn needs (its signature must be equal too); the default is the
    #: lowest at which the labelled set has no false hit (docs/cache.md: precision and recall)
    threshold: float = Field(0.94, gt=0, le=1)
    #: `memory`: in-process, exact search; `pgvector`: PostgreSQL shared by instances
    index: Literal["memory", "pgvector"] = "memory"
    #: the PostgreSQL (with pgvector) of the `pgvector` index: a secret reference or a URL
    pgvector_url: str | None = None
    #: vectors the in-process index keeps at most (least recently used go first)
    max_vectors: int = Field(100_000, gt=0, le=10_000_000)
    #: a lookup that has no vector after this long is a miss
    timeout_ms: float = Field(250, gt=0, le=10_000)
    #: texts embedded together at most (texts that arrive while the model runs go together next)
    batch_size: int = Field(16, gt=0, le=256)
    #: how long a batch waits for more texts before it runs (0: never waits)
    batch_wait_ms: float = Field(0, ge=0, le=100)
    #: the last user turn is embedded up to this many tokens (the rest is not read by the model)
    max_tokens: int = Field(256, ge=2, le=512)

    @model_validator(mode="after")
    def _url_for_pgvector(self) -> SemanticConfig:
        if self.index == "pgvector" and not self.pgvector_url:
            raise ValueError("cache.semantic.index 'pgvector' needs cache.semantic.pgvector_url")
        return self


class CacheConfig(_Strict):
    """Answers kept and served again for the same (or, semantic, an equivalent) request."""

    enabled: bool = False
    backend: Literal["memory", "redis"] = "memory"
    #: what the in-process backend holds at most, in bytes (least recently used go first)
    memory_max_bytes: int = Field(256 * 1024 * 1024, gt=0)
    redis: RedisCacheConfig = Field(default_factory=RedisCacheConfig)
    default: CachePolicy = Field(default_factory=lambda: DEFAULT_POLICY)
    rules: list[CacheRule] = Field(default_factory=list)
    semantic: SemanticConfig = Field(default_factory=SemanticConfig)
    #: the response header that says hit, miss or bypass
    status_header: str = Field("x-cache", pattern=r"^[A-Za-z0-9-]+$")
    #: a request that misses while the same one is on its way upstream (in this process) waits
    #: for that answer instead of asking again, at most this long (0: never waits); streamed
    #: requests never wait (their first token would wait for the whole answer)
    coalesce_s: float = Field(30.0, ge=0, le=600)

    @model_validator(mode="after")
    def _complete_default(self) -> CacheConfig:
        # The default names every field: a rule inherits from it, never from an unset value.
        filled = {k: v if v is not None else getattr(DEFAULT_POLICY, k) for k, v in self.default}
        object.__setattr__(self, "default", CachePolicy(**filled))
        return self
