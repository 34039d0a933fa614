"""Change notifications between instances, over Redis pub/sub: a key created or revoked through one
instance, or by `sluicegate keys`, reaches every instance's key index at once.

The database stays the truth and each instance still polls the keys' version (every 0.25 s), so
a notification that is lost (Redis away, a reconnect, a publisher without Redis) delays a change
by one poll at most, never more. The channel is `<limits.redis.key_prefix>:changes` on the Redis
that holds the limits (`limits.backend: redis`); a message is the name of what changed (`keys`).

`ChangeListener` runs in a thread of its own with redis-py's blocking client: one connection per
process, reconnected with a backoff; on every (re)subscription it reloads once, so what was
published while it was away is picked up. redis-py is imported only when a listener or a publisher
is made (the `redis` extra).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("sluicegate.changes")

KEYS = "keys"
#: how long a publisher or a (re)connecting listener waits for Redis
TIMEOUT_S = 2.0
#: a listener's pause after Redis failed, doubled up to MAX_BACKOFF_S
BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0


def channel(key_prefix: str) -> str:
    """The channel of the instances that share this limits key prefix."""
    return f"{key_prefix}:changes"


def publish(url: str, key_prefix: str, what: str) -> int | None:
    """Tell every listening instance that `what` changed: how many heard it, or None when Redis could
    not be reached (they see the change at their next poll instead)."""
    import redis
    from redis.exceptions import RedisError

    client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
    try:
        return int(client.publish(channel(key_prefix), what))
    except (RedisError, OSError) as exc:
        log.warning("cannot notify the instances through Redis (%s); they poll the change", type(exc).__name__)
        return None
    finally:
        client.close()


class ChangeListener:
    """Calls `on_change(what)` for each notification on the channel, in its own thread."""

    def __init__(self, url: str, key_prefix: str, on_change: Callable[[str], None]) -> None:
        self.url = url
        self.key_prefix = key_prefix
        self.on_change = on_change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: subscriptions made (the first, and one per reconnect), and notifications heard
        self.subscriptions = 0
        self.heard = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sluicegate-changes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(TIMEOUT_S + 2)

    def _run(self) -> None:
        import redis
        from redis.exceptions import RedisError

        backoff = BACKOFF_S
        while not self._stop.is_set():
            client = redis.Redis.from_url(
                self.url, socket_timeout=None, socket_connect_timeout=TIMEOUT_S, health_check_interval=5
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(channel(self.key_prefix))
                self.subscriptions += 1
                backoff = BACKOFF_S
                self._changed(KEYS)  # whatever was published while this one was not listening
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self.heard += 1
                        data = message.get("data")
                        self._changed(data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data))
            except (RedisError, OSError) as exc:
                if self.subscriptions:
                    log.warning(
                        "change notifications from Redis interrupted (%s); polling meanwhile", type(exc).__name__
                    )
            finally:
                pubsub.close()
                client.close()
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _changed(self, what: str) -> None:
        try:
            self.on_change(what)
        except Exception as exc:  # the store is away: the poll retries
            log.error("cannot apply a change notification (%s)", type(exc).__name__)
