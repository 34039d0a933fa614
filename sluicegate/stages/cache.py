"""Cache: answer a call from a stored answer (exact, then semantic), or record its answer to store.

Runs after the router (the key names the target the call goes to) and after every stage that may
refuse it: identity, access, limits and the input guards have passed on a hit too. A hit is
answered by `relay.cached` in the client's dialect, through the output guards of the current
config; a miss is recorded as it passes (`cache.entry.Recorder`) and stored at the end when it was
a whole, successful answer no guard changed.

What the client may say: `Cache-Control: no-store` (or `x-sluicegate-cache: bypass`) neither reads
nor writes the cache; `Cache-Control: no-cache` (or `x-sluicegate-cache: refresh`) asks the
upstream and stores its answer. Every answer of a cached endpoint says `x-cache: hit|miss|bypass`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from sluicegate.cache.entry import Entry, Recorder
from sluicegate.cache.key import canonical, context_key, exact_key, last_turn
from sluicegate.cache.policy import Policies
from sluicegate.cache.state import BYPASS, HIT, MISS, CacheState
from sluicegate.dialects import TO_CHAT
from sluicegate.errors import SluicegateError
from sluicegate.stages.base import Services, register_stage

if TYPE_CHECKING:
    from sluicegate.cache.service import CacheRuntime, CacheService
    from sluicegate.call import Call
    from sluicegate.config.snapshot import Snapshot

log = logging.getLogger("sluicegate.cache")

#: endpoints whose answers are cached: every one that answers a chat
CACHED_ENDPOINTS = frozenset({"chat", "messages", "responses"})
#: the gateway's own request header, for clients that cannot set `Cache-Control`
DIRECTIVE_HEADER = b"x-sluicegate-cache"
#: identical misses tracked at once for coalescing (past it, misses simply go upstream)
MAX_INFLIGHT = 10_000


class CacheStage:
    """Looks calls up in the cache, and stores the answers of those that missed."""

    name = "cache"
    needs_body = True

    def __init__(
        self, policies: Policies, runtime: CacheRuntime, service: CacheService, header: str, coalesce_s: float
    ) -> None:
        self.policies = policies
        self.runtime = runtime
        self.service = service
        self.header = header.lower().encode()
        self.coalesce_s = coalesce_s

    async def on_request(self, call: Call) -> None:
        try:
            await self._lookup(call)
        except Exception:
            # The cache never fails a call: whatever broke, the call goes upstream (uncached).
            log.exception("the cache lookup of request %s failed; the call goes upstream", call.request_id)
            if call.cache is not None:
                call.cache.status, call.cache.reason, call.cache.recorder = BYPASS, "cache_error", None
                call.cache.entry = None

    async def _lookup(self, call: Call) -> None:
        consumer = call.consumer
        route = call.route
        if call.endpoint not in CACHED_ENDPOINTS or consumer is None or route is None or call.body is None:
            return
        policy = self.policies.for_call(consumer, call.model_requested or "")
        if not policy.enabled:
            return
        state = call.cache = CacheState(policy, self.header)
        directive = _directive(call.headers)
        if directive == "bypass":
            state.reason = "client_no_store"
            return
        body = _chat_body(call)
        reason = _uncacheable(call, body, policy.cacheable)
        if reason is not None:
            state.reason = reason
            return
        assert body is not None
        runtime = self.runtime
        scope = _scope(call, policy.scope, policy.group)
        provider = route.provider
        # The provider's address too: a provider re-pointed elsewhere does not serve its old answers.
        target = (provider.name, provider.base_url, route.upstream_model or call.model_requested or "")
        chat = canonical(body)
        state.target = route
        state.key = exact_key(runtime.keyed, scope, target, chat, call.output_cap)
        state.status = MISS
        state.recorder = Recorder(policy.max_entry_bytes)
        if directive == "refresh":
            state.reason = "client_no_cache"
            return
        raw = await runtime.backend.get(state.key)
        if raw is not None and self._hit(call, state, raw, "exact"):
            return
        if self.coalesce_s and await self._coalesce(call, state):
            return
        semantic = runtime.semantic
        if semantic is None or not policy.semantic:
            return
        text = last_turn(chat)
        if not text:
            return
        state.partition = context_key(runtime.keyed, scope, target, chat, call.output_cap, semantic.model_id)
        state.vector, state.signature, near = await semantic.lookup(state.partition, text)
        if near is not None:
            raw = await runtime.backend.get(near.key)
            if raw is not None and self._hit(call, state, raw, "semantic"):
                state.similarity = round(near.score, 4)

    async def _coalesce(self, call: Call, state: CacheState) -> bool:
        """When the same request is already on its way upstream, wait for its answer and serve it
        (True: a hit); else become the one the next identical misses wait for. A streamed call
        never waits: its first token would wait for the whole answer."""
        assert state.key is not None
        inflight = self.service.inflight
        pending = inflight.get(state.key)
        if pending is None:
            if len(inflight) < MAX_INFLIGHT:
                state.leader = inflight[state.key] = asyncio.get_running_loop().create_future()
            return False
        if call.stream:
            return False
        try:
            async with asyncio.timeout(self.coalesce_s):
                await asyncio.shield(pending)
        except TimeoutError:
            return False
        raw = await self.runtime.backend.get(state.key)
        return raw is not None and self._hit(call, state, raw, "exact")

    def _hit(self, call: Call, state: CacheState, raw: bytes, kind: str) -> bool:
        entry = Entry.read(raw)
        if entry is None:
            return False
        state.status = HIT
        state.kind = kind
        state.entry = entry
        state.age = entry.age()
        state.recorder = None
        return True

    async def on_finish(self, call: Call) -> None:
        state = call.cache
        if state is None:
            return
        leader, state.leader = state.leader, None
        try:
            written = await self._store(call, state)
        finally:
            if leader is not None and written is None:
                self._release(state, leader)
        if leader is not None and written is not None:
            # The waiting calls read the entry once it is in the store.
            written.add_done_callback(lambda _: self._release(state, leader))

    async def _store(self, call: Call, state: CacheState) -> asyncio.Future[None] | None:
        """Store the answer of a miss; the background write, if it is one."""
        if state.status != MISS or state.recorder is None or state.key is None:
            return None
        recorder, state.recorder = state.recorder, None
        if call.status != 200 or call.error is not None or call.outcome != "ok" or _changed_by_guards(call):
            return None
        if call.route is not state.target:
            return None  # another target served it (a fallback): not what the key names
        entry = recorder.entry(call)
        if entry is None:
            return None
        runtime = self.runtime
        ttl = state.policy.ttl_s
        if runtime.backend.kind == "memory" and state.vector is None:
            await runtime.backend.set(state.key, entry, ttl)
            return None
        return self.service.write(runtime, _store(runtime, state, entry, ttl))

    def _release(self, state: CacheState, leader: asyncio.Future[None]) -> None:
        """Wake the calls waiting for this one's answer."""
        if state.key is not None and self.service.inflight.get(state.key) is leader:
            del self.service.inflight[state.key]
        if not leader.done():
            leader.set_result(None)


async def _store(runtime: CacheRuntime, state: CacheState, entry: bytes, ttl: float) -> None:
    assert state.key is not None
    await runtime.backend.set(state.key, entry, ttl)
    semantic = runtime.semantic
    if semantic is not None and state.vector is not None and state.partition and state.signature is not None:
        await semantic.add(state.partition, state.key, state.vector, state.signature, ttl)


def _directive(headers: dict[bytes, bytes]) -> str | None:
    """What the client asked of the cache: `bypass` (no-store), `refresh` (no-cache), or None."""
    own = headers.get(DIRECTIVE_HEADER)
    if own is not None:
        value = own.strip().lower()
        if value in (b"bypass", b"no-store", b"off"):
            return "bypass"
        if value in (b"refresh", b"no-cache"):
            return "refresh"
    control = headers.get(b"cache-control")
    if control is not None:
        directives = {d.strip() for d in control.lower().replace(b" ", b"").split(b",")}
        if b"no-store" in directives:
            return "bypass"
        if b"no-cache" in directives or b"max-age=0" in directives:
            return "refresh"
    return None


def _chat_body(call: Call) -> dict[str, Any] | None:
    """The call's neutral chat body (after the input guards' redactions); None when the request
    has a part the translation does not carry (it is then not cached)."""
    body = call.body
    assert body is not None
    to_chat = TO_CHAT.get(call.endpoint)
    if to_chat is None:
        return body
    try:
        return to_chat(body)
    except SluicegateError:
        return None


def _uncacheable(call: Call, body: dict[str, Any] | None, cacheable: str) -> str | None:
    """Why a call is not cached, or None."""
    if body is None:
        return "untranslatable"
    guards = call.guards
    if guards is not None and guards.restorable:
        # Placeholders are restored in the answer: it holds this caller's own values.
        return "guard_restore"
    if cacheable == "deterministic":
        temperature = body.get("temperature")
        if body.get("seed") is None and not (isinstance(temperature, int | float) and temperature == 0):
            return "not_deterministic"
    return None


def _scope(call: Call, scope: str, group: str | None) -> str:
    """Who shares the call's entries: its consumer, its group, or everyone."""
    if scope == "global":
        return "*"
    if scope == "group" and group is not None:
        return "g\x00" + group
    assert call.consumer is not None
    return "c\x00" + call.consumer.name


def _changed_by_guards(call: Call) -> bool:
    """Whether an output guard rewrote the call's answer: such an answer is not stored. (A request
    the input guards redacted is keyed as redacted: its answer is what any such request gets.)"""
    guards = call.guards
    return guards is not None and any(r.action == "redact" and r.direction == "output" for r in guards.records)


def _factory(snapshot: Snapshot, services: Services) -> CacheStage | None:
    config = snapshot.config.cache
    if not config.enabled:
        return None
    runtime = services.cache.runtime(config, services.vault)
    return CacheStage(Policies(config), runtime, services.cache, config.status_header, config.coalesce_s)


register_stage("cache", _factory)

__all__ = ["BYPASS", "CACHED_ENDPOINTS", "CacheStage"]
