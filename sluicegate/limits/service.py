"""The long-lived side of cost control: the counter backend, its fallback, and the housekeeping.

One `LimitsService` per gateway, kept across config reloads (budgets do not reset when the config
changes). It owns:
- the backend: in-process counters (the default), or Redis shared by every instance, created on
  first use with its URL resolved through the vault;
- the fallback while Redis is down: budgets fail closed (503 `budget_store_unavailable`); rate
  limits are kept in this process at 1/`instances` of their size, logged once a minute and
  counted in `status()`;
- settlements that could not reach Redis, retried until it answers (settlement is idempotent);
- the housekeeping loop, once a second: the reaper (reservations whose lease or TTL ran out are
  settled at their estimate and audited), lease renewal of this instance's calls in flight, and
  the reconciliation of budget counters with the audit trail (`limits.reconcile`);
- budget alerts (log, audit event, webhook) when a settlement crosses a threshold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from sluicegate.audit.events import AuditEvent
from sluicegate.limits.config import LimitsConfig
from sluicegate.limits.counters import Counters, CountersUnavailable, Level, MemoryCounters, Reaped
from sluicegate.limits.plan import CONCURRENT_TTL_S, is_slot
from sluicegate.vault.refs import is_secret_ref

if TYPE_CHECKING:
    import aiohttp

    from sluicegate.audit.writer import AuditWriter
    from sluicegate.config.snapshot import Snapshot
    from sluicegate.limits.plan import Applied, Held
    from sluicegate.limits.redis import RedisCounters
    from sluicegate.vault import Vault

log = logging.getLogger("sluicegate.limits")

#: how often the housekeeping loop runs
TICK_S = 1.0
#: a degraded-mode warning is logged at most this often
WARN_EVERY_S = 60.0


#: a Redis found empty is loaded by one instance, which holds the claim this long at most; the
#: others' calls wait for it this long, then budgets refuse (503) and rate limits go local
LOAD_HOLD_S = 10.0
LOAD_WAIT_S = 5.0
LOAD_POLL_S = 0.05


class Reconciling(Protocol):
    """What compares counters with the ledger (`limits.reconcile.Reconciler`)."""

    async def __call__(self) -> None: ...

    async def seed(self, snapshot: Snapshot | None = None) -> int: ...

    async def spent(self, now: float, snapshot: Snapshot | None = None) -> list[tuple[str, int, float]]: ...


class LimitsService:
    """Counters, fallback and housekeeping for every snapshot's limits stage."""

    def __init__(self, audit: AuditWriter | None = None, vault: Vault | None = None) -> None:
        self.audit = audit
        self.vault = vault
        self.config = LimitsConfig()
        #: whether counters live in a shared store (Redis)
        self.shared = False
        self.memory = MemoryCounters()
        #: in-process counters for rate limits while the shared store is down
        self.fallback = MemoryCounters()
        self._shared: Counters | None = None
        self._shared_key: tuple[Any, ...] | None = None
        self._retired: list[Counters] = []
        self._connecting: asyncio.Lock | None = None
        #: this instance's reservations in the shared store (renewed while their calls run)
        self.in_flight: set[str] = set()
        #: settlements the shared store did not take yet: request id -> (counters, actual, windows)
        self.unsettled: dict[str, tuple[Counters, tuple[int, ...], tuple[tuple[str, ...], ...]]] = {}
        self.http: Callable[[], aiohttp.ClientSession | None] = lambda: None
        self.reconciler: Reconciling | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_warning = 0.0
        self._last_renew = 0.0
        self._last_reconcile = time.monotonic()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: figures for `/readyz` and tests
        self.degraded_calls = 0
        self.store_errors = 0
        self.reaped = 0
        self.alerts_fired = 0
        self.drift = 0
        #: times this instance loaded a Redis found empty from the audit trail
        self.reloaded = 0

    # -- configuration -----------------------------------------------------------------------

    def configure(self, config: LimitsConfig) -> None:
        """Take a new config's `limits:` (the backend is rebuilt only when its settings changed)."""
        self.config = config
        self.shared = config.backend == "redis"
        key = (config.backend, config.redis, config.reservation_lease_s) if self.shared else None
        if key != self._shared_key and self._shared is not None:
            # Calls in flight still settle through the backend they reserved in: close it at shutdown.
            self._retired.append(self._shared)
            self._shared = None
        self._shared_key = key

    async def counters(self) -> Counters:
        """The backend of the current config (Redis is connected on first use)."""
        if not self.shared:
            return self.memory
        if self._shared is not None:
            return self._shared
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._shared is None:
                self._shared = await self._connect()
        return self._shared

    async def _connect(self) -> Counters:
        from sluicegate.limits.redis import RedisCounters

        redis = self.config.redis
        assert redis is not None
        url = await self.redis_url(redis.url)
        counters = RedisCounters(
            url,
            key_prefix=redis.key_prefix,
            timeout_s=redis.timeout_s,
            lease_s=self.config.reservation_lease_s,
            on_empty=self._load_shared,
        )
        # Window boundaries by the server's clock from the first call (best effort: a store that
        # is down now is measured on its first answer).
        with contextlib.suppress(CountersUnavailable):
            await counters.sync_clock()
        return counters

    async def redis_url(self, url: str) -> str:
        """`limits.redis.url`, resolved by the vault when it is a secret reference."""
        if is_secret_ref(url):
            if self.vault is None:
                raise CountersUnavailable("the Redis URL is a secret reference and no vault is configured")
            try:
                return await self.vault.aresolve(url)
            except Exception as exc:
                raise CountersUnavailable(f"cannot resolve the Redis URL ({type(exc).__name__})") from None
        return url

    async def _load_shared(self, counters: RedisCounters) -> None:
        """Redis holds no counters (a new one, or restarted without its data): load the budgets'
        spend of their current windows from the audit trail before anything is charged in it, so a
        restart gives no budget back. One instance claims the load; the others wait for its mark,
        and take the claim over if it is dropped (the loader failed) or expires (it died)."""
        for _ in range(round(LOAD_WAIT_S / LOAD_POLL_S)):  # the mark and the claim are in Redis: polled
            if await counters.claim_seeding(LOAD_HOLD_S):
                try:
                    await self._load(counters)
                except BaseException:
                    with contextlib.suppress(CountersUnavailable):
                        await counters.drop_claim()
                    raise
                return
            if await counters.is_seeded():
                return
            await asyncio.sleep(LOAD_POLL_S)

    async def _load(self, counters: RedisCounters) -> None:
        buckets: list[tuple[str, int, float]] = []
        if self.reconciler is not None:
            if self.audit is not None:  # what this instance queued is in the trail first
                await asyncio.to_thread(self.audit.wait_idle, 5.0)
            try:
                buckets = await self.reconciler.spent(counters.clock())
            except Exception as exc:  # budgets refuse until the trail answers
                log.error("cannot read the audit trail to load the counters in Redis (%s)", type(exc).__name__)
                raise CountersUnavailable("the counters in Redis cannot be loaded from the ledger") from None
        loaded = await counters.seed(buckets)
        self.reloaded += 1
        if loaded:
            log.warning(
                "the limits store in Redis held no counters (restarted without its data?): "
                "%d budget counters loaded from the audit trail",
                loaded,
            )

    def degraded(self) -> None:
        """Count a call whose rate limits were kept locally; warn at most once a minute."""
        self.degraded_calls += 1
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning(
                "the limits store is unavailable: budgets refuse calls (503), rate limits are kept in this "
                "process at 1/%d of their size (%d calls so far)",
                self.config.redis.instances if self.config.redis else 1,
                self.degraded_calls,
            )

    # -- settlement ------------------------------------------------------------------------

    async def settle(
        self, held: Held, request_id: str, actual: tuple[int, ...], windows: tuple[tuple[str, ...], ...]
    ) -> list[Level] | None:
        """Settle a call's reservation; a shared store that fails gets it again on the next tick."""
        counters: Counters = held.counters  # type: ignore[assignment]
        self.in_flight.discard(request_id)
        try:
            return await counters.settle(request_id, actual, windows)
        except CountersUnavailable:
            self.store_errors += 1
            self.unsettled[request_id] = (counters, actual, windows)
            return None

    def alerts(
        self, applied: Sequence[Applied], levels: Sequence[Level], actual: Sequence[int], call_info: dict[str, Any]
    ) -> None:
        """Fire the alerts of every budget threshold this settlement crossed."""
        for applied_, level, spent in zip(applied, levels, actual, strict=True):
            rule = applied_.rule
            if not rule.alerts or spent <= 0:
                continue
            before = level.used - spent
            for threshold, pct in rule.alerts:
                if before < threshold <= level.used:
                    self._alert(applied_, pct, level, call_info)

    def _alert(self, applied: Applied, pct: float, level: Level, call_info: dict[str, Any]) -> None:
        self.alerts_fired += 1
        rule = applied.rule
        currency = self.config.currency
        window = rule.window.label if rule.window is not None else ""
        message = (
            f"budget '{rule.name}' of {applied.describe()} reached {pct:g}% of {rule.limit / 1e6:.2f} {currency} "
            f"({window}): {level.used / 1e6:.6f} {currency} spent"
        )
        log.warning("%s", message)
        payload = {
            "type": "budget_alert",
            "budget": rule.name,
            "scope": rule.scope,
            "value": applied.value,
            "window": window,
            "threshold_pct": pct,
            "limit_micro": rule.limit,
            "used_micro": level.used,
            "currency": currency,
            "ts": time.time(),
            "message": message,
        }
        self._audit(
            request_id=f"alert_{call_info.get('request_id', '')}",
            outcome="budget_alert",
            reason=message,
            rule=f"limits.budgets.{rule.name}",
            consumer=call_info.get("consumer"),
            cost=None,
        )
        webhook = self.config.alerts.webhook
        if webhook:
            self._spawn(self._post_alert(webhook, payload))

    async def _post_alert(self, url: str, payload: dict[str, Any]) -> None:
        session = self.http()
        if session is None:
            return
        import aiohttp

        headers = {"content-type": "application/json"}
        for name, value in self.config.alerts.headers.items():
            headers[name] = await self.vault.aresolve(value) if self.vault is not None and "://" in value else value
        try:
            timeout = aiohttp.ClientTimeout(total=self.config.alerts.timeout_s)
            async with session.post(url, data=orjson.dumps(payload), headers=headers, timeout=timeout) as resp:
                if resp.status >= 300:
                    log.error("the budget alert webhook answered %d", resp.status)
        except Exception as exc:
            log.error("cannot send a budget alert to its webhook (%s)", type(exc).__name__)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        try:
            task = asyncio.ensure_future(coro)
        except RuntimeError:  # no running loop (tests calling outside one)
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _audit(
        self,
        *,
        request_id: str,
        outcome: str,
        reason: str,
        rule: str | None,
        consumer: str | None,
        cost: int | None,
        key_id: str | None = None,
        model: str | None = None,
        provider: str | None = None,
        endpoint: str = "limits",
        tokens: int | None = None,
    ) -> None:
        if self.audit is None:
            return
        self.audit.submit(
            AuditEvent(
                request_id=request_id[:64],
                ts=time.time(),
                endpoint=endpoint,
                consumer=consumer,
                key_id=key_id,
                model_requested=model,
                provider=provider,
                status=0,
                decision="allowed",
                outcome=outcome,
                reason=reason,
                rule=rule,
                total_tokens=tokens,
                cost_micro_usd=cost,
            )
        )

    # -- housekeeping ------------------------------------------------------------------------

    async def seed(self, snapshot: Snapshot | None = None) -> None:
        """Load budgets' current spend from the audit trail into in-process counters that do not
        exist yet (at startup; for a reload's new budgets, before its config serves)."""
        if self.reconciler is None:
            return
        try:
            await self.reconciler.seed(snapshot)
        except Exception:
            log.exception("cannot seed the budget counters from the audit trail; they start from zero")

    def start(self) -> None:
        """Run the housekeeping loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop the loop, settle what can be, and close the shared store."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self._retry_unsettled()
        for counters in [*self._retired, *([self._shared] if self._shared is not None else [])]:
            with contextlib.suppress(Exception):
                await counters.close()
        self._retired.clear()
        self._shared = None

    async def _run(self) -> None:
        while True:
            # Leases are renewed three times per lease at least.
            await asyncio.sleep(min(TICK_S, self.config.reservation_lease_s / 3))
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("limits housekeeping failed")

    async def tick(self) -> None:
        """One round of housekeeping: settle what failed, renew leases, reap, reconcile."""
        await self._retry_unsettled()
        backends: list[Counters] = [self.memory, self.fallback]
        if self.shared:
            try:
                backends.append(await self.counters())
            except CountersUnavailable:
                pass
        now = time.monotonic()
        if (
            self._shared is not None
            and self.in_flight
            and now - self._last_renew >= self.config.reservation_lease_s / 3
        ):
            self._last_renew = now
            with contextlib.suppress(CountersUnavailable):
                await self._shared.renew(list(self.in_flight))
        for counters in backends:
            try:
                reaped = await counters.reap()
            except CountersUnavailable:
                continue
            for item in reaped:
                self._on_reaped(item)
                # A concurrency slot is freed, not spent: undo what settling at the amount added.
                for key, amount in zip(item.keys, item.amounts, strict=True):
                    if is_slot(key):
                        with contextlib.suppress(CountersUnavailable):
                            await counters.adjust(key, -amount, CONCURRENT_TTL_S)
        interval = self.config.reconcile_interval_s
        if self.reconciler is not None and interval > 0 and now - self._last_reconcile >= interval:
            self._last_reconcile = now
            await self.reconciler()

    async def _retry_unsettled(self) -> None:
        for request_id, (counters, actual, windows) in list(self.unsettled.items()):
            try:
                await counters.settle(request_id, actual, windows)
            except CountersUnavailable:
                return
            del self.unsettled[request_id]

    def _on_reaped(self, item: Reaped) -> None:
        self.reaped += 1
        self.in_flight.discard(item.request_id)
        try:
            meta = orjson.loads(item.meta) if item.meta else {}
        except orjson.JSONDecodeError:
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
        cost = meta.get("cost")
        tokens = meta.get("tokens")
        log.warning(
            "reservation of request %s was never settled (its instance stopped?): settled at its estimate",
            item.request_id,
        )
        self._audit(
            request_id=item.request_id,
            outcome="reservation_reaped",
            reason="the call's instance did not settle its reservation in time; settled at its estimate",
            rule=None,
            consumer=_text(meta.get("consumer")),
            key_id=_text(meta.get("key")),
            model=_text(meta.get("model")),
            provider=_text(meta.get("provider")),
            endpoint=_text(meta.get("endpoint")) or "limits",
            cost=cost if isinstance(cost, int) and cost > 0 else None,
            tokens=tokens if isinstance(tokens, int) and tokens > 0 else None,
        )

    def status(self) -> dict[str, Any]:
        """Figures for `/readyz`."""
        return {
            "backend": self.config.backend,
            "holding": len(self.in_flight) if self.shared else self.memory.holding,
            "unsettled": len(self.unsettled),
            "degraded_calls": self.degraded_calls,
            "store_errors": self.store_errors,
            "reaped": self.reaped,
            "alerts": self.alerts_fired,
            "drift_micro": self.drift,
            "reloaded": self.reloaded,
        }


def _text(value: Any) -> str | None:
    return value[:200] if isinstance(value, str) and value else None


def local_limit(limit: int, instances: int) -> int:
    """An instance's share of a limit while the shared store is down (at least 1)."""
    return max(1, math.ceil(limit / instances))
