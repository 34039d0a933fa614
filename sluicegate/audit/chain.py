"""The audit hash chain: each stored event is bound to the one before it by an HMAC.

Every event gets a chain position (`chain_seq`, 1, 2, 3 ... with no gap) and
`chain_hash = HMAC-SHA256(key, previous hash "\\n" canonical event)`, computed by the writer in the
transaction that stores it, under a lock on the chain's head row (`audit_chain`): one chain per
database, however many writers (threads, processes, instances) share it. The canonical event is
the JSON object of the event's non-null fields and its `chain_seq`, keys sorted (orjson); a column
added later is null in older events, so their canonical form does not change.

What this detects (`verify`), given the key:
- an edited event: its hash no longer matches its content and the hash before it;
- a deleted event: a gap in the positions (or an anchor's position missing);
- an inserted event: a row with no position after the chain began, or a row that does not link;
- a truncated trail: the last event is before the head row's position, or before an anchor's.
An attacker who can write the database and read the key can rewrite the whole chain: anchors
(position and head hash, written every `anchor_interval_s` to a file and the sinks, outside the
database) bound what such a rewrite can hide to the time since the last anchor.

Retention deletes a prefix of the chain as an audited operation: it writes a checkpoint (the
position and hash it deletes through, MACed) that the append-only triggers require before they
let an event be deleted, records the operation as an event of the chain, and `verify` starts
from the latest checkpoint.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa

from sluicegate.audit.events import FIELDS, AuditEvent
from sluicegate.audit.rows import Row, row_of
from sluicegate.store.db import GENESIS_HASH, audit_chain, audit_checkpoints, audit_events

if TYPE_CHECKING:
    from sluicegate.config.model import AuditChainConfig
    from sluicegate.vault import Vault

log = logging.getLogger("sluicegate.audit")

#: the chain's columns, after the event's own in a stored row
CHAIN_FIELDS = ("chain_seq", "chain_hash")
#: the head row's name (one chain per database)
HEAD = "main"
#: the file name of the default key (in the data folder) and of the anchor log
DEFAULT_KEY_FILE = "audit-chain.key"
DEFAULT_ANCHOR_FILE = "audit-anchors.jsonl"
#: the head, read under its row's lock; and moved (the parameter marker is the driver's)
_LOCK_HEAD = f"UPDATE audit_chain SET seq = seq WHERE name = '{HEAD}' RETURNING seq, hash, key_id"
_MOVE_HEAD = "UPDATE audit_chain SET seq = {m}, hash = {m}, key_id = {m} WHERE name = '" + HEAD + "'"
#: problems `verify` lists at most (the first one is what matters)
MAX_PROBLEMS = 100


@dataclass(frozen=True, slots=True)
class ChainKey:
    """The keys derived from the audit secret: one for the chain, one for content HMACs."""

    chain: bytes = field(repr=False)
    content: bytes = field(repr=False)
    #: a short hash of the chain key, safe to show and store
    key_id: str
    #: an HMAC of nothing under the content key, copied per use (cheaper than keying a new one)
    _content_base: hmac.HMAC = field(repr=False, compare=False)

    @classmethod
    def from_secret(cls, secret: str) -> ChainKey:
        raw = secret.strip().encode()
        if len(raw) < 16:
            raise ValueError("the audit chain key must be at least 16 characters")
        chain = hmac.new(raw, b"sluicegate/audit-chain/v1", hashlib.sha256).digest()
        content = hmac.new(raw, b"sluicegate/audit-content/v1", hashlib.sha256).digest()
        key_id = hashlib.sha256(b"sluicegate/audit-key-id\x00" + chain).hexdigest()[:12]
        return cls(chain, content, key_id, hmac.new(content, digestmod=hashlib.sha256))

    def content_mac(self) -> hmac.HMAC:
        """A new HMAC of content (request or response bodies) under the content key."""
        return self._content_base.copy()


def ensure_key_file(path: Path) -> str:
    """The default key's reference: a random key in the data folder, made (mode 0600) when absent."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(os.urandom(32).hex() + "\n")
        log.warning(
            "audit chain key created in %s; in production, keep it outside the database's host "
            "(audit.chain.key: a secret reference)",
            path,
        )
    return f"file://{path.resolve()}"


def load_chain_key(config: AuditChainConfig, vault: Vault, data_dir: Path) -> ChainKey:
    """The chain's key: the configured secret reference, else the key file in the data folder.

    Blocking (a vault read): at startup, in the CLI, or on a worker thread."""
    ref = config.key or ensure_key_file(data_dir / DEFAULT_KEY_FILE)
    return ChainKey.from_secret(vault.resolve(ref))


def anchor_path(config: AuditChainConfig, data_dir: Path) -> Path:
    """Where anchors are appended (relative paths are in the data folder)."""
    path = Path(config.anchor_file) if config.anchor_file else Path(DEFAULT_ANCHOR_FILE)
    return path if path.is_absolute() else data_dir / path


def canonical(fields: Mapping[str, Any], seq: int) -> bytes:
    """The bytes an event's chain hash covers: its non-null fields and position, keys sorted."""
    data = {name: value for name, value in fields.items() if value is not None}
    data["chain_seq"] = seq
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


#: (name, index in a row) in sorted name order; index -1 is the chain position
_ROW_ORDER = tuple((name, FIELDS.index(name) if name in FIELDS else -1) for name in sorted((*FIELDS, "chain_seq")))


def canonical_row(row: Row, seq: int) -> bytes:
    """`canonical` of a stored row (its values in `FIELDS` order), built in sorted order at once."""
    data = {}
    for name, index in _ROW_ORDER:
        value = seq if index < 0 else row[index]
        if value is not None:
            data[name] = value
    return orjson.dumps(data)


def link(key: bytes | hmac.HMAC, previous: str, seq: int, fields: Mapping[str, Any]) -> str:
    """The chain hash of an event at `seq` after `previous` (`key`: the key, or an HMAC keyed with
    it and fed nothing, copied)."""
    mac = key.copy() if isinstance(key, hmac.HMAC) else hmac.new(key, digestmod=hashlib.sha256)
    mac.update(previous.encode() + b"\n" + canonical(fields, seq))
    return mac.hexdigest()


def checkpoint_mac(key: bytes, seq: int, hash_: str, through_ts: float, deleted: int) -> str:
    message = f"checkpoint\n{seq}\n{hash_}\n{through_ts!r}\n{deleted}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def anchor_mac(key: bytes, seq: int, hash_: str, ts: float) -> str:
    return hmac.new(key, f"anchor\n{seq}\n{hash_}\n{ts!r}".encode(), hashlib.sha256).hexdigest()


class Chain:
    """Extends the chain inside the writer's transactions (one writer thread per process)."""

    def __init__(self, key: ChainKey) -> None:
        self.key = key
        #: the head after the last transaction this process committed (position, hash)
        self.head: tuple[int, str] = (0, GENESIS_HASH)
        #: the head the transaction in progress moves to (`committed` adopts it)
        self._pending: tuple[int, str] | None = None
        self._warned_key = False

    def extend(self, conn: sa.Connection, rows: Sequence[Row]) -> list[Row]:
        """`rows` with their chain position and hash appended; the head row is locked and moved
        in the same transaction (the caller commits, or rolls all of it back)."""
        # An UPDATE that returns the head: it takes the head row's lock (PostgreSQL) or the write
        # lock (SQLite) as it reads, so two writers can never read the same head. Plain driver
        # SQL, two statements per batch: a batch may hold a single event.
        marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        seq, previous, key_id = conn.exec_driver_sql(_LOCK_HEAD).one()
        if key_id is not None and key_id != self.key.key_id and not self._warned_key:
            self._warned_key = True
            log.warning(
                "the audit chain was written with key %s and continues with key %s from position %d: "
                "keep the old key in audit.chain.previous_keys, `audit verify` needs it for the events before",
                key_id,
                self.key.key_id,
                seq + 1,
            )
        key = hmac.new(self.key.chain, digestmod=hashlib.sha256)
        out: list[Row] = []
        for row in rows:
            seq += 1
            mac = key.copy()
            mac.update(previous.encode() + b"\n" + canonical_row(row, seq))
            previous = mac.hexdigest()
            out.append((*row, seq, previous))
        conn.exec_driver_sql(_MOVE_HEAD.format(m=marker), (seq, previous, self.key.key_id))
        self._pending = (seq, previous)
        return out

    def committed(self) -> None:
        """The transaction that extended the chain committed: its head is the head."""
        if self._pending is not None:
            self.head, self._pending = self._pending, None

    def rolled_back(self) -> None:
        self._pending = None

    def anchor(self, ts: float | None = None) -> dict[str, Any]:
        """An anchor of the current head: position, hash, time and their MAC."""
        seq, hash_ = self.head
        now = time.time() if ts is None else ts
        return {
            "kind": "anchor",
            "seq": seq,
            "hash": hash_,
            "ts": now,
            "key_id": self.key.key_id,
            "mac": anchor_mac(self.key.chain, seq, hash_, now),
        }


class AnchorFile:
    """Anchors appended to a JSON-lines file (fsynced): the second place the head is kept."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, anchor: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, orjson.dumps(anchor) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        """The anchors in the file; unreadable lines are skipped (a crash can cut the last one)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        anchors = []
        for line in data.splitlines():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("kind") == "anchor":
                anchors.append(record)
        return anchors


# -- verification ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Problem:
    """One place where the trail is not what the chain says it was."""

    #: edited | deleted | inserted | truncated | checkpoint | anchor | key
    kind: str
    #: the chain position (or the row's `seq` for a row without one)
    position: int | None
    request_id: str | None
    detail: str


@dataclass(slots=True)
class Report:
    """What `verify` found."""

    events: int = 0
    first: int | None = None
    last: int | None = None
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    key_id: str | None = None
    #: events stored before the chain began (not covered by it)
    legacy: int = 0
    checkpoint: int | None = None
    anchors: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems

    def add(self, problem: Problem) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "events": self.events,
            "first": self.first,
            "last": self.last,
            "head": {"seq": self.head_seq, "hash": self.head_hash, "key_id": self.key_id},
            "legacy_events": self.legacy,
            "checkpoint": self.checkpoint,
            "anchors_checked": self.anchors,
            "problems": [
                {"kind": p.kind, "position": p.position, "request_id": p.request_id, "detail": p.detail}
                for p in self.problems
            ],
        }


_EVENT_COLUMNS = [audit_events.c[name] for name in FIELDS]


def verify(
    engine: sa.Engine,
    key: ChainKey,
    anchors: Iterable[Mapping[str, Any]] = (),
    *,
    previous_keys: Sequence[ChainKey] = (),
    batch: int = 2000,
) -> Report:
    """Replay the chain from its latest retention checkpoint; report every break, in order.

    `previous_keys`: keys the chain was written with before `key` (`audit.chain.previous_keys`);
    an event links under the key that linked the one before it, or under another known key where
    the key changed."""
    report = Report()
    anchors = list(anchors)
    keys = [key, *previous_keys]
    by_id = {k.key_id: k for k in keys}
    with engine.connect() as conn:
        head = conn.execute(
            sa.select(audit_chain.c.seq, audit_chain.c.hash, audit_chain.c.key_id, audit_chain.c.legacy_max_seq).where(
                audit_chain.c.name == HEAD
            )
        ).one()
        report.head_seq, report.head_hash, report.key_id, legacy_max = head
        if report.key_id is not None and report.key_id not in by_id:
            known = ", ".join(by_id)
            report.add(Problem("key", None, None, f"the chain was written with key {report.key_id}, not {known}"))
            return report
        start, previous = _start(conn, keys, report)
        current = key.chain
        #: an event that did not link (position, request id, the hash before it), judged by the next
        suspect: tuple[int, str | None, str] | None = None
        #: events found put in before this point (the positions after them moved on by this many)
        shift = 0
        expected = start + 1
        by_position: dict[int, str] = {}
        wanted = {int(a["seq"]) for a in anchors if isinstance(a.get("seq"), int)}
        query = (
            sa.select(audit_events.c.seq, audit_events.c.chain_seq, audit_events.c.chain_hash, *_EVENT_COLUMNS)
            .where(audit_events.c.chain_seq > start)
            .order_by(audit_events.c.chain_seq)
        )
        for row in conn.execution_options(yield_per=batch).execute(query):
            _, position, stored, *values = row
            fields = dict(zip(FIELDS, values, strict=True))
            request_id = fields["request_id"]
            report.events += 1
            if report.first is None:
                report.first = position
            if position > report.head_seq:
                report.add(Problem("inserted", position, request_id, "a row past the chain's head"))
                continue
            if position > expected:
                report.add(
                    Problem(
                        "deleted",
                        expected,
                        None,
                        f"events at positions {expected}..{position - 1} are missing"
                        if position - 1 > expected
                        else f"the event at position {expected} is missing",
                    )
                )
            elif position < expected:  # a repeated position cannot pass the unique index, but check
                report.add(Problem("inserted", position, request_id, "a second event at this position"))
                continue
            if suspect is not None:
                # The event before did not link: its successor tells an edit from an insertion.
                at, suspect_id, before = suspect
                suspect = None
                if shift == 0 and link(current, before, position - 1, fields) == stored:
                    # This event links to the one before the suspect, at the suspect's position:
                    # the suspect was put in and the events after it moved one place on.
                    report.add(Problem("inserted", at, suspect_id, "an event that is not in the chain was put here"))
                    shift, previous = 1, before
                else:
                    report.add(Problem("edited", at, suspect_id, "its content does not match its chain hash"))
            if link(current, previous, position - shift, fields) != stored:
                # The key changed here, or the event's own content was changed, or an event was
                # put in before it, or the one before it was removed (reported above as deleted).
                other = next(
                    (k.chain for k in keys if link(k.chain, previous, position - shift, fields) == stored), None
                )
                if other is not None:
                    current = other
                elif position == expected:
                    suspect = (position, request_id, previous)
            previous = stored
            expected = position + 1
            report.last = position
            if position - shift in wanted:
                # Anchors name positions as written: after an insertion, the events moved on.
                by_position[position - shift] = stored
        if suspect is not None:
            report.add(Problem("edited", suspect[0], suspect[1], "its content does not match its chain hash"))
        if report.last is not None and report.last < report.head_seq:
            report.add(
                Problem(
                    "truncated",
                    report.last + 1,
                    None,
                    f"the trail ends at position {report.last}; the chain's head is at {report.head_seq}",
                )
            )
        elif report.last is None and report.head_seq > start:
            report.add(
                Problem(
                    "truncated", start + 1, None, f"no event after position {start}; the head is at {report.head_seq}"
                )
            )
        elif report.last is not None and report.last == report.head_seq and previous != report.head_hash:
            report.add(Problem("edited", report.last, None, "the chain's head row does not match the last event"))
        extra = conn.execute(
            sa.select(audit_events.c.seq, audit_events.c.request_id)
            .where(audit_events.c.chain_seq.is_(None), audit_events.c.seq > legacy_max)
            .order_by(audit_events.c.seq)
            .limit(MAX_PROBLEMS)
        ).all()
        for seq, request_id in extra:
            report.add(Problem("inserted", None, request_id, f"row {seq} was stored outside the chain"))
        report.legacy = conn.execute(
            sa.select(sa.func.count()).where(audit_events.c.chain_seq.is_(None), audit_events.c.seq <= legacy_max)
        ).scalar_one()
    _check_anchors(key, by_id, anchors, start, (report.last or start) - shift, report, by_position)
    report.problems.sort(key=lambda p: (p.position is None, p.position or 0))
    return report


def _start(conn: sa.Connection, keys: Sequence[ChainKey], report: Report) -> tuple[int, str]:
    """Where verification starts: the latest retention checkpoint whose MAC holds, else the genesis."""
    rows = conn.execute(
        sa.select(
            audit_checkpoints.c.seq,
            audit_checkpoints.c.hash,
            audit_checkpoints.c.through_ts,
            audit_checkpoints.c.deleted,
            audit_checkpoints.c.mac,
        ).order_by(audit_checkpoints.c.seq.desc(), audit_checkpoints.c.id.desc())
    ).all()
    for seq, hash_, through_ts, deleted, mac in rows:
        if any(hmac.compare_digest(mac, checkpoint_mac(k.chain, seq, hash_, through_ts, deleted)) for k in keys):
            report.checkpoint = seq
            return seq, hash_
        report.add(Problem("checkpoint", seq, None, "a retention checkpoint whose MAC does not hold"))
    return 0, GENESIS_HASH


def _check_anchors(
    key: ChainKey,
    by_id: Mapping[str, ChainKey],
    anchors: Iterable[Mapping[str, Any]],
    start: int,
    last: int,
    report: Report,
    hashes: dict[int, str],
) -> None:
    for anchor in anchors:
        seq, hash_, ts, mac = anchor.get("seq"), anchor.get("hash"), anchor.get("ts"), anchor.get("mac")
        if not (isinstance(seq, int) and isinstance(hash_, str) and isinstance(ts, float) and isinstance(mac, str)):
            continue
        key_id = anchor.get("key_id")
        signer = key if key_id is None else by_id.get(key_id) if isinstance(key_id, str) else None
        if signer is None:
            continue  # an unknown key's anchor
        if not hmac.compare_digest(mac, anchor_mac(signer.chain, seq, hash_, ts)):
            report.add(Problem("anchor", seq, None, "an anchor whose MAC does not hold"))
            continue
        if seq <= start:
            continue  # deleted by retention
        report.anchors += 1
        if seq > last:
            report.add(
                Problem("truncated", last + 1, None, f"an anchor names position {seq}; the trail ends at {last}")
            )
        elif seq in hashes and hashes[seq] != hash_:
            report.add(Problem("edited", seq, None, "the chain was rewritten: its hash differs from the anchor's"))
        elif seq not in hashes:
            report.add(Problem("deleted", seq, None, "the anchored event is missing"))


# -- retention ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Retained:
    """What a retention run did."""

    through_seq: int
    deleted: int
    legacy_deleted: int
    request_id: str


def insert_sql(dialect: sa.Dialect) -> str:
    """The INSERT of one chained event (its fields, then `chain_seq` and `chain_hash`), in the
    driver's own parameter style."""
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    columns = (*FIELDS, *CHAIN_FIELDS)
    return f"INSERT INTO {audit_events.name} ({', '.join(columns)}) VALUES ({', '.join([marker] * len(columns))})"


def retain(engine: sa.Engine, chain: Chain, older_than_ts: float, *, operator: str | None = None) -> Retained:
    """Delete the events older than `older_than_ts`, as one audited operation.

    In one transaction: lock the head, find the longest prefix of the chain whose events are all
    older, write a retention checkpoint through it (MACed), delete that prefix and the events from
    before the chain began that are as old, and append an event recording the operation."""
    with engine.begin() as conn:
        conn.execute(sa.update(audit_chain).where(audit_chain.c.name == HEAD).values(seq=audit_chain.c.seq))
        head_seq, head_hash = conn.execute(
            sa.select(audit_chain.c.seq, audit_chain.c.hash).where(audit_chain.c.name == HEAD)
        ).one()
        newer = conn.execute(
            sa.select(sa.func.min(audit_events.c.chain_seq)).where(
                audit_events.c.chain_seq.is_not(None), audit_events.c.ts > older_than_ts
            )
        ).scalar_one()
        through = head_seq if newer is None else newer - 1
        last = conn.execute(
            sa.select(audit_checkpoints.c.seq, audit_checkpoints.c.hash)
            .order_by(audit_checkpoints.c.seq.desc(), audit_checkpoints.c.id.desc())
            .limit(1)
        ).one_or_none()
        if last is not None and through <= last[0]:
            through, hash_ = last
        elif through == head_seq:
            hash_ = head_hash
        elif through == 0:
            hash_ = GENESIS_HASH
        else:
            hash_ = conn.execute(
                sa.select(audit_events.c.chain_hash).where(audit_events.c.chain_seq == through)
            ).scalar_one()
        chained = sa.and_(audit_events.c.chain_seq.is_not(None), audit_events.c.chain_seq <= through)
        legacy = sa.and_(audit_events.c.chain_seq.is_(None), audit_events.c.ts <= older_than_ts)
        count = conn.execute(sa.select(sa.func.count()).where(chained)).scalar_one()
        legacy_count = conn.execute(sa.select(sa.func.count()).where(legacy)).scalar_one()
        if count or legacy_count:
            # The checkpoint first: the append-only triggers let an event go only once one covers it.
            conn.execute(
                audit_checkpoints.insert().values(
                    seq=through,
                    hash=hash_,
                    through_ts=older_than_ts,
                    deleted=count + legacy_count,
                    created_at=time.time(),
                    key_id=chain.key.key_id,
                    mac=checkpoint_mac(chain.key.chain, through, hash_, older_than_ts, count + legacy_count),
                )
            )
            conn.execute(sa.delete(audit_events).where(sa.or_(chained, legacy)))
        request_id = f"retention-{time.time_ns():x}"
        record = _retention_event(request_id, through, count + legacy_count, older_than_ts, operator)
        try:
            conn.exec_driver_sql(insert_sql(conn.dialect), chain.extend(conn, [row_of(record)]))
        except BaseException:
            chain.rolled_back()
            raise
    chain.committed()
    return Retained(through, count, legacy_count, request_id)


def _retention_event(
    request_id: str, through: int, deleted: int, older_than_ts: float, operator: str | None
) -> AuditEvent:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(older_than_ts))
    return AuditEvent(
        request_id=request_id,
        ts=time.time(),
        endpoint="audit_retention",
        consumer=operator,
        status=200,
        decision="retention",
        outcome="audit_retention",
        reason=f"deleted {deleted} events older than {when}, through chain position {through}",
    )
